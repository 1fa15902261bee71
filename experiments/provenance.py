"""Moved to experiments/training/provenance.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.training import provenance as _moved

sys.modules[__name__] = _moved
