"""Moved to experiments/problems/finetune.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.problems import finetune as _moved

sys.modules[__name__] = _moved
