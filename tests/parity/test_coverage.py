"""Every registry entry has a parity case or says, in the suite and its docstring, why not."""

import inspect

import optimizers
from tests.parity import test_authors
from tests.parity import test_pytorch_optimizer
from tests.parity import test_torch_optim

MODULES = (test_authors, test_torch_optim, test_pytorch_optimizer)


def test_every_registry_entry_has_a_case_or_a_reason():
  covered = {c.entry for m in MODULES for c in m.CASES}
  # Entries compared by hand (a reference that needs two gradients per step, e.g. SAM).
  covered |= {c.entry for c in test_pytorch_optimizer.SAM_CASES}
  none = dict(test_pytorch_optimizer.NONE)
  missing = sorted(set(optimizers.names()) - covered - set(none))
  assert not missing, f"registry entries with neither a parity case nor a reason: {missing}"
  for name, why in none.items():
    assert why.startswith("none, because"), name
    doc = inspect.getdoc(optimizers.get_builder(name)) or ""
    assert "Parity: none, because" in doc, f"{name}: its docstring does not say why"
