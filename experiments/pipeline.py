"""Moved to experiments/parallel/pipeline.py; this old name is that module (the same object, so
imports and monkeypatches through it keep working)."""

import sys

from experiments.parallel import pipeline as _moved

sys.modules[__name__] = _moved
