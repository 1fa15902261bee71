"""Prints the parity suite's table for WORKSPACE: `python -m tests.parity.table`.

Every registry entry, each case's reference (package and version), the measured relative
parameter difference and the tolerance the test holds it to; entries without a case with the
reason. Runs every case once (about two minutes on 2 cores).
"""

import optimizers
from tests.parity import harness
from tests.parity import test_authors
from tests.parity import test_pytorch_optimizer
from tests.parity import test_torch_optim


def main():
  rows = []
  for module in (test_torch_optim, test_pytorch_optimizer, test_authors):
    for case in module.CASES:
      rows.append((case, harness.run_case(case)))
  for case in test_pytorch_optimizer.SAM_CASES:
    rows.append((case, test_pytorch_optimizer.run_sam(case)))
  print("| entry | case | reference | measured | tolerance |")
  print("|---|---|---|---|---|")
  for name in optimizers.names():
    for case, diff in rows:
      if case.entry == name:
        print(f"| {name} | {case.id} | {harness.version(case.package)} | {diff:.2g} | "
              f"{case.tolerance:g} |")
    if name in test_pytorch_optimizer.NONE:
      print(f"| {name} | - | {test_pytorch_optimizer.NONE[name]} | - | - |")


if __name__ == "__main__":
  main()
