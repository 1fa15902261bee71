"""Moved to experiments/training/workdir_lock.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.training import workdir_lock as _moved

sys.modules[__name__] = _moved
