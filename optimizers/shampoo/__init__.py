"""Shampoo and SOAP: Kronecker-factored preconditioners, one piece per module.

  statistics.py    factor statistics G_(i) G_(i)^T and mode products with a block
  matrix_roots.py  inverse p-th roots (coupled Newton, eigh) with a failure check
  linalg.py        batched QR and eigh of many stacks in one LAPACK call (CPU deadlock)
  blocking.py      which leaves get factors; blocking and merging of dimensions
  layout.py        what both share: schedule checks, each tree's blocks, the factor state
  grafting.py      per-block grafting onto a diagonal method's step length
  shampoo.py       the `shampoo` registry entry
  soap.py          the `soap` registry entry (Adam in Shampoo's eigenbasis)
"""

from optimizers.shampoo import shampoo  # noqa: F401  (registers "shampoo")
from optimizers.shampoo import soap  # noqa: F401  (registers "soap")
