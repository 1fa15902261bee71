"""Moved to experiments/parallel/memory.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.parallel import memory as _moved

sys.modules[__name__] = _moved
