"""pmap's old address: `experiments.parallel.pmap` (layout helpers) is this module;
`make_pmap_train_step` is `experiments.training.step.make_pmap_train_step`."""

import sys

from experiments.parallel import pmap as _pmap

sys.modules[__name__] = _pmap
