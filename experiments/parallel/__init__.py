"""How a run uses its devices: meshes and shardings, multi-host, pipeline stages, gradient
compression, memory accounting, and the parallel strategies the trainer steps through.

  sharding.py     meshes (data, fsdp, model, stage) and the shardings of params, states, batches
  distributed.py  jax.distributed on SLURM / TPU pods / a local launcher; cross-process checks
  pipeline.py     GPipe stages over the `stage` axis
  compression.py  compressed data-parallel gradients (PowerSGD, top-k, sign) with error feedback
  memory.py       where the bytes go (per-device trees, saved activations, XLA's analysis)
  pmap.py         pmap's layout: replicate, unreplicate, shard a batch
  strategies.py   jit over a mesh, compressed data parallel, pmap: one interface

Nothing here imports `experiments.training` (the loop sits above): a strategy is handed the train
step to compile.
"""
