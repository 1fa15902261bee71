"""Rebuilds the shipped built-in corpora (`experiments/problems/corpora/*.xz`) from a tree.

    python -m scripts.make_corpus [--root=/path/to/lib/python3.11]

`--root` defaults to pyenv's CPython 3.11.7 standard library, the tree the shipped files were
made from. The bytes must hash to `experiments.problems.data.SHIPPED` (the pins the loader
checks), else nothing is written: a new corpus is a deliberate change of those pins and of every
figure measured on it, not a side effect of rebuilding.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from experiments import configs_util
from experiments.problems import data

_ROOT = flags.DEFINE_string(
    "root", os.path.expanduser("~/.pyenv/versions/3.11.7/lib/python3.11"),
    "the standard library tree to build from")
_FORCE = flags.DEFINE_bool("force", False, "write even when the hash differs from the pins")


def main(argv):
  del argv
  if not os.path.isdir(_ROOT.value):
    print(f"ERROR: {_ROOT.value} is not a directory; pass --root=<a CPython lib/python3.X>",
          file=sys.stderr)
    return 2
  for kind in data.SHIPPED:
    train, val = data.KINDS[kind][1](data._files(kind, _ROOT.value))  # pylint: disable=protected-access
    digest = data._digest(train, val)  # pylint: disable=protected-access
    if digest != data.SHIPPED[kind] and not _FORCE.value:
      print(f"ERROR: {kind} from {_ROOT.value} hashes to {digest}, not the pinned "
            f"{data.SHIPPED[kind]}; --force writes it anyway (then update SHIPPED)",
            file=sys.stderr)
      return 2
    data.write_shipped_corpus(kind, train, val)
    print(f"{kind}: {digest} -> {data.shipped_corpus_path(kind, 'train')} (+ val)")
  return 0


if __name__ == "__main__":
  configs_util.run(main)
