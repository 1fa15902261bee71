"""Moved to experiments/training/validate.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.training import validate as _moved

sys.modules[__name__] = _moved
