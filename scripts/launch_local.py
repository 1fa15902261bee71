r"""Runs N processes of a JAX program on this machine, as a multi-host cluster would.

  python -m scripts.launch_local --num_processes=2 --devices_per_process=4 -- \
      --config=configs/speedrun_cpu.py --workdir=runs/two_procs --config.mesh.data=-1

Each process gets M fake CPU devices (`--xla_force_host_platform_device_count=M`) and the flags
`--config.distributed.coordinator_address=127.0.0.1:PORT --config.distributed.num_processes=N
--config.distributed.process_id=i` after the user's arguments; `experiments.parallel.distributed`
starts `jax.distributed` with CPU collectives (gloo) from them. Output lines are prefixed with
`[i]`; the collective library's connection chatter (`[Gloo] Rank ... connected`, "Starting /
Connecting to JAX distributed service") is left out unless `--verbose`. Every process's whole
output also goes to `<log_dir>/process_<i>.log` (default: a new directory under the system's
temporary directory). At the end one line per process gives its exit status, the last step it
logged and its log file. SIGTERM and SIGINT are forwarded to every process. When a process
fails the others get `--grace_s` seconds, then SIGTERM. Exit status: the worst process's
(128+N for signal N).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(devices_per_process: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [
      f"--xla_force_host_platform_device_count={devices_per_process}"])
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def exit_status(returncode: int) -> int:
  """Popen's -N (killed by signal N) as the shell's 128+N."""
  return 128 - returncode if returncode < 0 else returncode


# Lines that only say the processes found each other: in the log files, not on the terminal.
CHATTER = re.compile(r"(Starting|Connecting to) JAX distributed service on")
# Gloo's message, printed by C++ threads through C stdio's buffer when a collective first
# connects: a flush can put it, without its newline, in front of a line the program itself
# writes (CI lost a process's `STOPPED` line that way), so only the message is cut out and its
# newline, arriving later on a line of its own, is dropped.
GLOO = re.compile(r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. "
                  r"Expected number of connected peer ranks is : \d+")
# The message is written in pieces (`<<` by `<<`, each into C stdio's buffer), so a flush, or two
# of a process's threads writing at once, can split it between pieces: CI printed `[Gloo] Rank
# 1 is connected to 7 peer ranks. Expected number of connected peer ranks is : [Gloo] Rank 3 is
# connected to 77` then ` peer ranks. Expected number of connected peer ranks is : 7`, and
# `[Gloo] Rank READY pid=22694` (the program's own line after the message's first piece). The
# pieces (with the numbers they print) are cut out of every line; a line left with nothing but
# numbers and spaces was chatter only.
GLOO_PIECE = re.compile(r"\[Gloo\] Rank \d*|\d* is connected to \d*|\d* peer ranks\. ?"
                        r"|Expected number of connected peer ranks is : \d*")
# "step 12/400 | loss", "Done: step 400/400", "Stopped by signal 15 at step 12/400", ...
STEP = re.compile(r"\bstep (\d+)/(\d+)")


class _Output:
  """One process's output: streamed (chatter left out) and written whole to its log file."""

  def __init__(self, index: int, log_path: str, verbose: bool):
    self.index, self.log_path, self.verbose = index, log_path, verbose
    self.last_step: str | None = None
    self._stray_newlines = 0  # Gloo messages seen without their newline

  def shown(self, line: str) -> str | None:
    """What of `line` goes to the terminal (None: nothing)."""
    if self.verbose:
      return line
    if CHATTER.search(line):
      return None
    body = line.rstrip("\n")
    found = list(GLOO.finditer(body))
    # A whole message with more text after it on the line: its newline comes later.
    self._stray_newlines += sum(m.end() < len(body) for m in found)
    rest = GLOO_PIECE.sub("", GLOO.sub("", body))
    if rest != body:
      if not rest.strip(" 0123456789"):
        return None
      return rest + line[len(body):]
    if not body.strip() and self._stray_newlines:
      self._stray_newlines -= 1
      return None
    return line

  def pump(self, stream, lock: threading.Lock) -> None:
    with open(self.log_path, "w", encoding="utf-8") as log:
      for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        log.write(line)
        log.flush()
        steps = STEP.findall(line)
        if steps:
          self.last_step = "/".join(steps[-1])
        shown = self.shown(line)
        if shown is not None:
          with lock:
            sys.stdout.write(f"[{self.index}] {shown}")
            sys.stdout.flush()
    stream.close()


def launch(num_processes: int, devices_per_process: int, module: str, args: list[str],
           grace_s: float = 30.0, log_dir: str | None = None, verbose: bool = False) -> int:
  """Starts the processes, streams their output, returns the worst exit status."""
  if log_dir is None:
    log_dir = tempfile.mkdtemp(prefix=f"launch_local_{time.strftime('%Y%m%d-%H%M%S')}_")
  os.makedirs(log_dir, exist_ok=True)
  outputs = [_Output(i, os.path.join(log_dir, f"process_{i}.log"), verbose)
             for i in range(num_processes)]
  address = f"127.0.0.1:{free_port()}"
  env = child_env(devices_per_process)
  procs = []
  for i in range(num_processes):
    cmd = [sys.executable, "-m", module, *args,
           f"--config.distributed.coordinator_address={address}",
           f"--config.distributed.num_processes={num_processes}",
           f"--config.distributed.process_id={i}"]
    # Own session: a Ctrl-C in the terminal reaches the children once, through us.
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True))

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  lock = threading.Lock()
  pumps = [threading.Thread(target=out.pump, args=(p.stdout, lock), daemon=True)
           for out, p in zip(outputs, procs)]
  for t in pumps:
    t.start()
  try:
    failed_at = None
    while any(p.poll() is None for p in procs):
      if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
        failed_at = time.monotonic()
      if failed_at is not None and time.monotonic() - failed_at > grace_s:
        # The survivors may wait forever in a collective with the dead process.
        forward(signal.SIGTERM, None)
        failed_at = float("inf")
      time.sleep(0.05)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  for t in pumps:
    t.join()
  for out, p in zip(outputs, procs):
    status = exit_status(p.returncode)
    step = f"last step {out.last_step}" if out.last_step else "no step logged"
    print(f"[launch] process {out.index}: exit {status}{_meaning(status)}, {step}, "
          f"log {out.log_path}", flush=True)
  return max(exit_status(p.returncode) for p in procs)


def _meaning(status: int) -> str:
  """experiments.train's exit statuses in words."""
  if status == 0:
    return " (done)"
  if status == 1:
    return " (diverged or failed)"
  if status == 2:
    return " (user error)"
  if status == 3:
    return " (workdir cannot be written)"
  if status > 128:
    return f" (signal {status - 128})"
  return ""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--module", default="experiments.train",
                      help="Python module each process runs with `python -m`.")
  parser.add_argument("--grace_s", type=float, default=30.0,
                      help="Seconds the others may run on after one process fails.")
  parser.add_argument("--log_dir", default=None,
                      help="Where process_<i>.log (each process's whole output) goes "
                           "(default: a new directory under the temporary directory).")
  parser.add_argument("--verbose", action="store_true",
                      help="Also stream the collectives' connection messages.")
  argv = sys.argv[1:] if argv is None else list(argv)
  # The launcher's flags before `--`, the program's after it: an unknown flag before `--` is
  # the launcher's error (a typo of its own, or a program flag missing its `--`), not something
  # every process refuses in its own log.
  own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  ours = parser.parse_args(own)
  if ours.num_processes < 1 or ours.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  if ours.module == "experiments.train" and not any(
      a.lstrip("-").split("=", 1)[0] == "config" for a in rest):
    parser.error("the trainer needs its flags after `--`, --config among them, e.g. -- "
                 "--config=configs/speedrun_cpu.py --workdir=runs/two_procs --config.mesh.data=-1")
  return launch(ours.num_processes, ours.devices_per_process, ours.module, rest, ours.grace_s,
                ours.log_dir, ours.verbose)


if __name__ == "__main__":
  sys.exit(main())
