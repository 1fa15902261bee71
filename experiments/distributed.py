"""Moved to experiments/parallel/distributed.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.parallel import distributed as _moved

sys.modules[__name__] = _moved
