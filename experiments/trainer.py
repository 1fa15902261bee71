"""The training loop's old address: this module is `experiments.training.loop` (the same module
object, so `trainer.train_and_evaluate` and a monkeypatch of `trainer.X` keep working)."""

import sys

from experiments.training import loop as _loop

sys.modules[__name__] = _loop
