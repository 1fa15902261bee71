"""One run per workdir: an advisory `fcntl.flock` on `<workdir>/.lock`.

The kernel drops the lock when its holder dies (kill -9 included), so a lock left by a dead run
never blocks a resume; the file itself stays and names the last holder. Written by hand: absl,
orbax and the standard library have no inter-process lock with a holder's identity. On network
file systems without flock support the lock is advisory at best: one workdir per run there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirLock:
  """Held from `acquire()` to `release()` (or process exit)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      who = (f"process {holder.get('pid')} on {holder.get('host')} (started "
             f"{holder.get('start')}: {holder.get('cmd')})") if holder else "another process"
      raise WorkdirLockedError(
          f"workdir {os.path.dirname(self.path)} is in use by {who}. Wait for it to finish or "
          "stop it (its checkpoint lets a rerun resume), or use another --workdir.") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cmd": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}
