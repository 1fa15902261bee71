"""The tuned-comparison harness: what `python -m experiments.compare` runs, in layers.

  scoring.py    AlgoPerf performance profiles and scores, the speedrun's record rule, Welch
  spaces.py     search spaces by one rule from each optimizer's reference point; edge reports
  records.py    the spaces as a table, quasi-random trials, run records, `plan` and `sweep`
  runs.py       one sweep run's trainer config, trained through experiments/training/loop.py
  report.py     the score report as text
  plots.py      validation curves and performance profiles as PNGs
  workspace.py  WORKSPACE.md's generated results section

Each module imports only those above it in this list (and `runs.py` the trainer); the
command line (experiments/compare.py) sits on top.
"""
