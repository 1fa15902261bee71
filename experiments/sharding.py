"""Moved to experiments/parallel/sharding.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.parallel import sharding as _moved

sys.modules[__name__] = _moved
