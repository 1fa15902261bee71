"""What a run trains on: the workloads (the GPT speedrun and the notes' small problems), their
data (the built-in corpus, .bin shards, deterministic batch streams) and LoRA fine-tuning of a
finished run.

  workloads.py  a config -> `Workload` (init, loss, eval metric, batches, target)
  data.py       the built-in corpus from the Python install, shards, the batch iterator
  finetune.py   LoRA on a base run's checkpoint (frozen base, trainable adapters)
"""
