"""The training side, top to bottom:

  loop.py     `train_and_evaluate`: set a run up from its config, then `loop` (steps + actions)
  actions.py  periodic actions (progress, evaluation, checkpoints, preemption) and the clock
  step.py     the train step every parallel strategy compiles, on one `loss_and_grads`

Below them: experiments/parallel/ (strategies, shardings), experiments/training/train_state.py (the
optimizer and initial state from a config), checkpoints, metrics, validation.
"""
