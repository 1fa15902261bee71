r"""Regenerates WORKSPACE.md's results section and README.md's headline from the records.

  python -m scripts.update_workspace records/ [--workspace=WORKSPACE.md] [--out_dir=results]
      [--allow_edges]

The command line only: the section is written by experiments/harness/workspace.py, as
`experiments.compare`'s flags say (--workspace, --out_dir, --baseline, --r_max, --alpha).
"""

from __future__ import annotations

from absl import app

from experiments import configs_util
from experiments import compare
from experiments.harness import records as records_lib


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m scripts.update_workspace RECORDS_DIR "
                         "[--workspace=WORKSPACE.md] [--out_dir=results] [--allow_edges]")
  # As `compare all`: no headline from records tuned at an edge of a search space.
  compare.check_edges(records_lib.read_records(argv[1]), compare.FLAGS.allow_edges)
  compare.update_from_flags(argv[1])


if __name__ == "__main__":
  configs_util.run(main)
