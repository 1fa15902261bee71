"""Moved to experiments/parallel/compression.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.parallel import compression as _moved

sys.modules[__name__] = _moved
