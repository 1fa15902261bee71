"""What a newcomer hits (issue 23), run as a user would: `python -m experiments.train` and
`scripts/launch_local.py` in a subprocess, asserting the exit status and the one message line.

README promises: exit 0 done (and --help), 1 diverged, 2 user error with one `ERROR:` line.
"""

import json
import os
import re
import sys

import pytest

import optimizers
from tests.test_train import CONFIG, ROOT, TINY, run_cli, start

TRAIN = [sys.executable, "-m", "experiments.train"]


def error_lines(out: str) -> list[str]:
  return [l for l in out.splitlines() if l.startswith("ERROR:") or "] ERROR:" in l]


def assert_one_error(rc: int, out: str, status: int = 2) -> str:
  """The README's promise for a user error: exit `status`, one ERROR: line, no traceback."""
  assert rc == status, out
  errors = error_lines(out)
  assert len(errors) == 1, out
  assert "Traceback" not in out, out
  return errors[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


def test_1_a_missing_or_broken_config_file_is_exit_2_and_one_line_listing_the_configs(tmp_path):
  rc, out = start([*TRAIN, "--config=configs/nope.py", f"--workdir={tmp_path / 'x'}"])
  line = assert_one_error(rc, out)
  assert "'configs/nope.py' does not exist" in line
  assert "configs/speedrun_cpu.py" in line and "configs/speedrun_cpu_muon.py" in line
  rc, out = start([*TRAIN, "--config=configs/speedrun_cpu_mun.py", f"--workdir={tmp_path / 'x'}"])
  assert "did you mean 'configs/speedrun_cpu_muon.py'?" in assert_one_error(rc, out)
  broken = {"raises.py": ("raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
            "noget.py": ("X = 1\n", "defines no get_config()"),
            "getfails.py": ("def get_config():\n  return 1 / 0\n",
                            r"get_config\(\) in .* raised ZeroDivisionError")}
  for name, (text, expected) in broken.items():
    (tmp_path / name).write_text(text)
    rc, out = start([*TRAIN, f"--config={tmp_path / name}", f"--workdir={tmp_path / 'x'}"])
    line = assert_one_error(rc, out)
    assert re.search(expected, line) and name in line, line
  muon = os.path.join(ROOT, "configs", "speedrun_cpu_muon.py")
  rc, out = start([*TRAIN, f"--config={muon}:bogus", f"--workdir={tmp_path / 'x'}"])
  assert "get_config('bogus')" in assert_one_error(rc, out)
  assert not (tmp_path / "x").exists()


def test_every_config_file_refuses_a_variant_it_does_not_have(tmp_path):
  """`--config=configs/speedrun_cpu.py:bogus` used to run the full speedrun without a word."""
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  files = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and f != "__init__.py")
  assert len(files) >= 20
  for name in files:
    with pytest.raises(ValueError, match="variant"):
      configs_util.load(os.path.join(ROOT, "configs", name) + ":bogus")
  rc, out = start([*TRAIN, "--config=configs/speedrun_cpu.py:bogus", f"--workdir={tmp_path / 'x'}"])
  assert "speedrun_cpu.py has no variants (got 'bogus')" in assert_one_error(rc, out)
  assert not (tmp_path / "x").exists()


def test_2_a_mesh_that_does_not_fit_says_what_fits_and_how_to_get_devices(tmp_path):
  # start() runs on one plain CPU device, as a fresh machine would.
  rc, out = start([*TRAIN, f"--config={CONFIG}", f"--workdir={tmp_path / 'x'}",
                   f"--config.data.cache_dir={tmp_path / 'corpus'}", "--config.mesh.fsdp=3"])
  line = assert_one_error(rc, out)
  assert line.startswith("ERROR: mesh: 1 device does not split into data=-1 x fsdp=3"), line
  assert "1 devices" not in line
  assert "must multiply to a divisor of 1 (1)" in line
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=N" in line
  assert "scripts/launch_local.py" in line
  rc, out = start([*TRAIN, f"--config={CONFIG}", f"--workdir={tmp_path / 'x'}",
                   f"--config.data.cache_dir={tmp_path / 'corpus'}", "--config.mesh.data=2"])
  line = assert_one_error(rc, out)
  assert "needs 2 devices but 1 device is available" in line, line
  assert not (tmp_path / "x").exists() and not (tmp_path / "corpus").exists()


@pytest.mark.parametrize("flag", ["--help", "--helpfull", "--helpshort"])
def test_3_help_exits_0(flag):
  rc, out = start([*TRAIN, flag])
  assert rc == 0, out
  assert "--workdir" in out and "Exit status" in out
  rc, out = start([*TRAIN, f"--config={CONFIG}", flag])
  assert rc == 0, out


@pytest.mark.slow
def test_4_the_launcher_prints_one_summary_line_per_process_without_gloo_chatter(tmp_path,
                                                                                 corpus):
  args = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in TINY.items()
                                   if k != "mesh.data"] + ["--config.mesh.data=-1"]
  launch = [sys.executable, "-m", "scripts.launch_local", "--num_processes=2",
            "--devices_per_process=4", f"--log_dir={tmp_path / 'logs'}", "--"]
  rc, out = start([*launch, *args, f"--workdir={tmp_path / 'w'}",
                   f"--config.data.cache_dir={corpus}", "--config.train.steps=2"])
  assert rc == 0, out
  assert "[Gloo]" not in out and "JAX distributed service" not in out, out
  summary = [l for l in out.splitlines() if l.startswith("[launch]")]
  assert summary == [f"[launch] process {i}: exit 0 (done), last step 2/2, "
                     f"log {tmp_path / 'logs' / f'process_{i}.log'}" for i in (0, 1)], out
  for i in (0, 1):
    log = (tmp_path / "logs" / f"process_{i}.log").read_text()
    assert "Done: step 2/2" in log
  # A user error through the launcher: each process's one ERROR: line, and the summary says so.
  rc, out = start([*launch, *args, f"--workdir={tmp_path / 'w2'}",
                   f"--config.data.cache_dir={corpus}", "--config.mesh.fsdp=3"])
  assert rc == 2, out
  errors = error_lines(out)
  assert sorted(l[:4] for l in errors) == ["[0] ", "[1] "], out
  assert all("8 devices do not split into data=-1 x fsdp=3" in l for l in errors), out
  assert "Traceback" not in out, out
  summary = [l for l in out.splitlines() if l.startswith("[launch]")]
  assert len(summary) == 2 and all("exit 2 (user error)" in l for l in summary), out


def test_5_a_warmup_longer_than_the_run_is_warned_about_as_it_happens(tmp_path, corpus):
  rc, out = run_cli(tmp_path / "w", corpus, "--config.train.steps=4", "--config.train.log_every=1",
                    "--config.schedule.warmup_steps=10", "--config.optimizer.learning_rate=0.004")
  assert rc == 0, out
  warnings = [l for l in out.splitlines() if "Config: schedule.warmup_steps" in l]
  assert len(warnings) == 1, out
  assert ("schedule.warmup_steps=10 >= train.steps=4: the warmup is shortened to the run's 4 "
          "steps (the learning rate rises linearly from 0 and the last step uses 75% of the peak;"
          " the warmup_cosine decay never starts)") in warnings[0], warnings
  rows = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
  assert lr[4] == pytest.approx(0.75 * 0.004)  # what the warning says
  assert not error_lines(out)


def test_6_an_unknown_optimizer_name_suggests_the_closest(tmp_path):
  rc, out = run_cli(tmp_path / "w", tmp_path / "corpus", "--config.optimizer.name=adamz")
  line = assert_one_error(rc, out)
  assert "Unknown optimizer 'adamz'; did you mean 'adam', 'adamw' or 'nadamw'?" in line, line
  assert "Known optimizers: adadelta" in line and "soap" in line
  # Checked before the corpus is built and before anything is written.
  assert not (tmp_path / "w").exists() and not (tmp_path / "corpus").exists()
  with pytest.raises(ValueError, match="Unknown optimizer 'mun'; did you mean 'muon' or "
                                       "'normuon'\\? Known optimizers: "):
    optimizers.create("mun", learning_rate=0.1)
  with pytest.raises(ValueError, match="Unknown optimizer 'xyz'; known optimizers: adadelta"):
    optimizers.create("xyz")


def test_the_validation_plot_marks_values_above_its_axis_as_clipped(tmp_path):
  from scripts import plots  # pylint: disable=g-import-not-at-top
  (tmp_path / "a").mkdir()
  rows = [{"step": 0, "val_loss": 5.95}, {"step": 10, "train_loss": 2.7, "val_loss": 2.6},
          {"step": 20, "train_loss": 2.2, "val_loss": 2.1}]
  (tmp_path / "a" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  ax_val = plots.draw([str(tmp_path / "a")]).axes[1]
  assert ax_val.get_ylim()[1] == 3.0
  assert "clipped" in ax_val.get_title() and "5.95 at step 0" in ax_val.get_title()
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "metrics.jsonl").write_text(json.dumps({"step": 10, "val_loss": 2.5}) + "\n")
  assert plots.draw([str(tmp_path / "b")]).axes[1].get_title() == "validation loss"


def _script_text(name: str) -> str:
  with open(os.path.join(ROOT, "scripts", f"{name}.py")) as f:
    return f.read()


# The absl binaries under scripts/ (launch_local.py parses its own arguments).
_SCRIPTS = sorted(n for n in (f[:-3] for f in os.listdir(os.path.join(ROOT, "scripts"))
                              if f.endswith(".py"))
                  if "app.run(" in _script_text(n) or "configs_util.run(main)" in _script_text(n))


def test_every_script_runs_through_the_shared_flag_parsing():
  # None calls absl's app.run itself: its --help exits 1 and a bad flag prints a usage page.
  assert len(_SCRIPTS) >= 12
  for name in _SCRIPTS:
    text = _script_text(name)
    assert "configs_util.run(main)" in text and "app.run(" not in text, name


@pytest.mark.parametrize("name", _SCRIPTS)
def test_a_script_given_an_unknown_flag_is_exit_2_and_one_line(name):
  rc, out = start([sys.executable, "-m", f"scripts.{name}", "--no_such_flag=1"])
  line = assert_one_error(rc, out)
  assert "no_such_flag" in line and "--help lists the flags" in line, line


def test_a_script_s_own_checks_and_config_files_are_one_line_and_status_2():
  # A main's app.UsageError (was absl's usage page and status 1), a config file that does not
  # exist and an override naming no field (were ml_collections' traceback at first use).
  for args, parts in (
      (["scripts.check_branched_cooldown", "--optimizers=adamw,foo"],
       ["--optimizers: no base config for foo; choose from adamw,"]),
      (["scripts.bench_train_step", "--config=configs/speedrn_cpu.py"],
       ["the config file 'configs/speedrn_cpu.py' does not exist; did you mean "
        "'configs/speedrun_cpu.py'?"]),
      (["scripts.bench_train_step", "--config=configs/speedrun_cpu.py", "--config.train.stpes=3"],
       ["--config.train.stpes: the config has no field 'train.stpes'; did you mean "
        "'train.steps'?"]),
      (["scripts.bench_mfu", "--sizes=small,huge"], ["--sizes: choose from small, large"]),
      # A directory that is no run: report printed an empty table (status 0), plots and
      # quantize_eval a traceback.
      (["scripts.report", "/nonexistent_run"],
       ["no training run's workdir (none holds a metrics.jsonl): /nonexistent_run"]),
      (["scripts.plots", "/nonexistent_run"],
       ["not a training run's workdir (no metrics.jsonl): /nonexistent_run"]),
      (["scripts.quantize_eval", "--workdir=/nonexistent_run"],
       ["'/nonexistent_run' is not a training run's workdir"])):
    rc, out = start([sys.executable, "-m", *args])
    line = assert_one_error(rc, out)
    assert all(p in line for p in parts), (args, line)


def test_launch_local_keeps_its_flags_and_the_program_s_apart():
  # Before, an unknown flag before `--` went to every process, and the trainer without its
  # --config failed in each process on the launcher's own --config.distributed flags.
  launch = [sys.executable, "-m", "scripts.launch_local", "--num_processes=2"]
  for args, message in (
      ([], "the trainer needs its flags after `--`, --config among them"),
      (["--config=configs/speedrun_cpu.py"], "unrecognized arguments: --config="),
      (["--num_procs=2", "--", "--config=configs/speedrun_cpu.py"],
       "unrecognized arguments: --num_procs=2")):
    rc, out = start([*launch, *args])
    assert rc == 2 and message in out and "[launch]" not in out, (args, out)


def test_a_script_s_help_exits_0():
  rc, out = start([sys.executable, "-m", "scripts.report", "--help"])
  assert rc == 0 and "report" in out, out
