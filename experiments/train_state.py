"""Moved to experiments/training/train_state.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.training import train_state as _moved

sys.modules[__name__] = _moved
