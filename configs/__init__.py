"""Config files: `python -m experiments.train --config=configs/<name>.py[:variant]`."""

import os


def no_variant(arg: str | None, config_file: str) -> None:
  """Refuses `--config=<file>:<arg>` for a config that has no variants (else it runs silently)."""
  if arg:
    raise ValueError(f"{os.path.basename(config_file)} has no variants (got {arg!r}); "
                     f"use the file without ':{arg}'")
