r"""Model FLOPs utilization of the CPU speedrun's train step, against its PyTorch peer.

  .venv/bin/python -m scripts.bench_mfu
  .venv/bin/python -m scripts.bench_mfu --sizes=small --optimizers=adamw --rounds=9

In one run it prints:
  1. the float32 matmul rate (JAX, NumPy, torch) at 2048^3 and at the model's own shapes;
  2. the step's model FLOPs counted from the config (6 x parameters-in-matmuls per token plus
     the causal attention's half of its T x T scores and values), beside XLA's cost analysis
     of the compiled step (which counts the full T x T products and the elementwise work);
  3. per model size ("small": the speedrun, "large": the budget comparison's larger model,
     width `configs/workload_speedrun.WIDE_WIDTH`, 4.08x the parameters) and
     optimizer, the trainer's own jitted step (`experiments.parallel.strategies`, metrics and
     donation included) timed in interleaved rounds with the same architecture in PyTorch
     (scripts/torch_gpt.py, AdamW, eager and `torch.compile`): median ms, MFU (model FLOPs /
     step time / the 2048^3 rate measured in the same rounds), the ratio of total time to
     AdamW's over all rounds, and the ratio of the step's FLOPs in XLA's cost analysis to
     AdamW's (the optimizer's own arithmetic: where its matrices run no faster than the model's,
     the step-time ratio cannot fall below it; a preconditioner refresh behind a conditional and
     LAPACK's eigendecompositions are counted as XLA counts them);
  4. a profile of the small AdamW step from a JAX profiler trace: each XLA kernel's time,
     attributed by the HLO op's name scope (models/gpt.py names "attention", "norm_rotary",
     "loss"; experiments/training/step.py names "optimizer"), as shares of the kernels' time,
     and the host's share of the wall time (no kernel running).

Timings on a shared machine are noisy: read the ratios measured in the same rounds.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import gzip
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see experiments/train.py
import re
import statistics
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import workload_speedrun
from experiments import configs_util
from experiments.parallel import sharding as sharding_lib
from experiments.parallel import strategies
from experiments.problems import workloads as workloads_lib
from experiments.training import step as step_lib
from experiments.training import train_state
from models import gpt

_SIZES = flags.DEFINE_list("sizes", ["small", "large"], "Model sizes: small (the speedrun's), "
                           "large (the budget comparison's width, WIDE_WIDTH: 4.08x the "
                           "parameters).")
_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adamw", "muon", "shampoo", "soap"],
                                "Optimizers (configs/speedrun_cpu[_<name>].py).")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Interleaved rounds.")
# Shampoo and SOAP refresh their preconditioners every 10 steps: rounds x steps should be a
# multiple of 10 so every optimizer's total time holds the same share of those steps.
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per runner per round.")
_TORCH = flags.DEFINE_bool("torch", True, "Time the PyTorch peer (eager and torch.compile).")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 5, "Traced steps (0: no profile).")

SIZES = {"small": {}, "large": {"width": workload_speedrun.WIDE_WIDTH}}
flags.register_validator("sizes", lambda v: set(v) <= set(SIZES),
                         f"--sizes: choose from {', '.join(SIZES)}")


def config_path(optimizer: str) -> str:
  """The CPU speedrun's config file of `optimizer` (AdamW's is the plain one)."""
  suffix = "" if optimizer == "adamw" else f"_{optimizer}"
  return f"configs/speedrun_cpu{suffix}.py"


flags.register_validator(
    "optimizers", lambda v: all(os.path.exists(config_path(o)) for o in v),
    "--optimizers: each needs its config, configs/speedrun_cpu_<name>.py (adamw: speedrun_cpu.py)")


def config_for(optimizer: str, size: str):
  cfg = configs_util.load(config_path(optimizer))
  cfg.model.update(SIZES[size])
  return cfg


# ---- matmul rates ---------------------------------------------------------------------------

def _rate(fn, flops: float, repeats: int = 10) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return flops / min(times) / 1e9


def jax_matmul_rate(m: int, k: int, n: int) -> float:
  a = jnp.asarray(np.random.default_rng(0).standard_normal((m, k), np.float32))
  b = jnp.asarray(np.random.default_rng(1).standard_normal((k, n), np.float32))
  f = jax.jit(jnp.dot)
  return _rate(lambda: f(a, b).block_until_ready(), 2.0 * m * k * n)


def matmul_runner(n: int) -> "Runner":
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(jnp.dot)
  return Runner(f"matmul {n}^3", lambda: f(a, a))


def matmul_rates(model_cfgs: dict, tokens: int) -> tuple[float, list]:
  """(JAX's 2048^3 rate, rows of (what, GFLOP/s)); torch and NumPy at 2048^3 beside it."""
  rows = []
  top = jax_matmul_rate(2048, 2048, 2048)
  rows.append(("jax 2048^3", top))
  a = np.random.default_rng(0).standard_normal((2048, 2048), np.float32)
  rows.append(("numpy 2048^3", _rate(lambda: a @ a, 2.0 * 2048 ** 3)))
  if _TORCH.value:
    import torch  # pylint: disable=g-import-not-at-top
    t = torch.from_numpy(a)
    rows.append(("torch 2048^3", _rate(lambda: t @ t, 2.0 * 2048 ** 3)))
  for size, mc in model_cfgs.items():
    d, h, v = mc.width, mc.mlp_ratio * mc.width, mc.vocab_size
    for m, k, n in sorted({(tokens, d, d), (tokens, d, h), (tokens, h, d), (tokens, d, v)}):
      rows.append((f"jax {size} {m}x{k}x{n}", jax_matmul_rate(m, k, n)))
  return top, rows


# ---- FLOPs ----------------------------------------------------------------------------------

def model_flops(mc: gpt.GPTConfig, batch: int, seq: int, causal: bool = True) -> float:
  """Training FLOPs of one step: 3 x (2 x matmul parameters per token + attention)."""
  d, f = mc.width, mc.mlp_ratio * mc.width
  per_layer = 2 * (4 * d * d + 2 * d * f)
  # Scores q.k and the values' weighted sum: 2 x (2 x T x D) per token; causal: half of them.
  attention = 2 * 2 * seq * d * (0.5 if causal else 1.0)
  per_token = mc.num_layers * (per_layer + attention) + 2 * d * mc.vocab_size
  return 3.0 * per_token * batch * seq


# ---- the runners ----------------------------------------------------------------------------

@dataclasses.dataclass
class Runner:
  name: str
  step: callable  # runs one step; returns something to wait for
  times: list = dataclasses.field(default_factory=list)

  def round(self, n: int) -> None:
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
      out = self.step()
    jax.block_until_ready(out)
    self.times.append((time.perf_counter() - t0) / n)


def jax_runner(cfg, name: str, workdir: str):
  """The trainer's step for `cfg` (strategy, donation, metrics), on one real batch."""
  mesh = sharding_lib.make_mesh(cfg.mesh)
  workload = workloads_lib.build(cfg, workdir)
  strategy = strategies.from_config(cfg, mesh, workload)
  tx, schedule = train_state.make_optimizer(cfg)
  with strategy.context():
    strategy.prepare(train_state.make_init_state(workload.init_params, tx, strategy.extra_init),
                     cfg.seed)
    strategy.compile(functools.partial(step_lib.make_train_step, workload.loss_fn, tx,
                                       schedule))
    box = {"state": strategy.init(cfg.seed)}
  batch = strategy.place_batch(next(workload.batches(cfg.seed)))

  def step():
    box["state"], metrics = strategy.step(box["state"], batch)
    return metrics

  t0 = time.perf_counter()
  jax.block_until_ready(step())
  compile_s = time.perf_counter() - t0
  compiled = strategy._step.lower(box["state"], batch, *strategy.frozen).compile()  # pylint: disable=protected-access
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  info = {"xla_flops": float(cost.get("flops", 0.0)), "compile_s": compile_s,
          "hlo": compiled.as_text(), "params": workload.init_params(0)}
  return Runner(name, step), info


def torch_runners(cfg, params: dict):
  import torch  # pylint: disable=g-import-not-at-top
  from scripts import torch_gpt  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  mc = gpt.GPTConfig.from_config(cfg.model)
  tokens = np.random.default_rng(0).integers(
      0, mc.vocab_size, (cfg.train.batch_size, cfg.data.seq_len + 1))
  batch = torch.from_numpy(tokens).long()
  o = cfg.optimizer
  runners = []
  for name in ("torch eager", "torch.compile"):
    model = torch_gpt.load_jax_params(torch_gpt.GPT(mc), params)
    opt = torch.optim.AdamW(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                            eps=o.eps, weight_decay=o.weight_decay)
    loss_fn = model.loss if name == "torch eager" else torch.compile(model.loss)

    def step(model=model, opt=opt, loss_fn=loss_fn):
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(batch)
      loss.backward()
      opt.step()
      return None

    t0 = time.perf_counter()
    step()
    print(f"  {name}: first step (compilation) {time.perf_counter() - t0:.1f} s", flush=True)
    runners.append(Runner(name, step))
  return runners


# ---- the profile ----------------------------------------------------------------------------

CATEGORIES = ("matmuls", "attention", "norms and rotary", "elementwise", "loss",
              "optimizer update")


def hlo_categories(hlo: str) -> dict[str, str]:
  """Instruction name -> category, from the optimized HLO's op names and fused computations."""
  bodies, current = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%(\S+) ", line)
    if m and line.rstrip().endswith("{"):
      current = m.group(1)
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  out = {}
  for lines in bodies.values():
    for line in lines:
      m = re.match(r"^\s+(?:ROOT )?%(\S+) = \S+ (\w[\w-]*)\(", line)
      if not m:
        continue
      name, op = m.groups()
      meta = re.search(r'op_name="([^"]*)"', line)
      meta = meta.group(1) if meta else ""
      calls = re.search(r"calls=%([\w.\-]+)", line)
      has_dot = op in ("dot", "convolution") or bool(
          calls and any(re.search(r"= \S+ (dot|convolution)\(", x)
                        for x in bodies.get(calls.group(1), [])))
      if "optimizer" in meta:
        cat = "optimizer update"
      elif "attention" in meta:
        cat = "attention"
      elif "loss" in meta:
        cat = "loss"
      elif has_dot:
        cat = "matmuls"
      elif "norm_rotary" in meta:
        cat = "norms and rotary"
      else:
        cat = "elementwise"
      out[name] = cat
  return out


def profile(runner: Runner, hlo: str, steps: int) -> tuple[dict, float, float]:
  """(category -> share of kernel time, host share of the wall, ms per step) from a trace."""
  names = hlo_categories(hlo)
  with tempfile.TemporaryDirectory() as d:
    jax.block_until_ready(runner.step())
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      out = None
      for _ in range(steps):
        out = runner.step()
      jax.block_until_ready(out)
    wall = time.perf_counter() - t0
    path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  per_cat = collections.Counter()
  spans = []
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      per_cat[names[e["name"]]] += e["dur"]
      spans.append((e["ts"], e["ts"] + e["dur"]))
  spans.sort()
  busy, end = 0.0, -1e30
  first = spans[0][0] if spans else 0.0
  last = max((b for _, b in spans), default=0.0)
  for a, b in spans:
    if b > end:
      busy += b - max(a, end)
      end = b
  total = sum(per_cat.values()) or 1.0
  shares = {c: per_cat[c] / total for c in CATEGORIES}
  host = 1.0 - busy / max(last - first, 1e-9)
  return shares, host, wall / steps * 1e3


# ---- main -----------------------------------------------------------------------------------

def main(argv):
  del argv
  print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPU cores; "
        f"load average {os.getloadavg()[0]:.2f}", flush=True)
  base = configs_util.load("configs/speedrun_cpu.py")
  tokens = int(base.train.batch_size) * int(base.data.seq_len)
  model_cfgs = {s: gpt.GPTConfig.from_config(config_for("adamw", s).model) for s in _SIZES.value}
  top, rate_rows = matmul_rates(model_cfgs, tokens)
  print("\n## float32 matmul rates (best of 10)")
  for what, r in rate_rows:
    print(f"  {what:32s} {r:7.1f} GFLOP/s")

  results = []
  with tempfile.TemporaryDirectory() as workdir:
    for size in _SIZES.value:
      mc = model_cfgs[size]
      flops = model_flops(mc, base.train.batch_size, base.data.seq_len)
      print(f"\n## {size} model: width {mc.width}, {mc.num_layers} layers, "
            f"{tokens} tokens per step", flush=True)
      runners, infos = [], {}
      for opt in _OPTIMIZERS.value:
        r, info = jax_runner(config_for(opt, size), f"jax {opt}", workdir)
        runners.append(r)
        infos[opt] = info
        print(f"  jax {opt}: compiled in {info['compile_s']:.1f} s", flush=True)
      first = infos[_OPTIMIZERS.value[0]]
      full = model_flops(mc, base.train.batch_size, base.data.seq_len, causal=False)
      print(f"  model FLOPs per step {flops / 1e9:.2f} G (causal attention counted at half; "
            f"full T x T: {full / 1e9:.2f} G); "
            f"XLA cost analysis of the {_OPTIMIZERS.value[0]} step: "
            f"{first['xla_flops'] / 1e9:.2f} G", flush=True)
      if _TORCH.value:
        runners += torch_runners(config_for("adamw", size), first["params"])
      # The 2048^3 product runs in every round too: on a shared machine the MFU of a round is
      # its step rate over the matmul rate measured beside it.
      runners.append(matmul_runner(2048))
      for _ in range(_ROUNDS.value):
        for r in runners:
          r.round(_STEPS.value)
      ref, mm = runners[0].times, runners[-1].times
      print(f"  matmul 2048^3 in the rounds: {2 * 2048 ** 3 / statistics.median(mm) / 1e9:.1f} "
            f"GFLOP/s (median); MFU = model FLOPs / step time / that rate, per round")
      print(f"  {'runner':16s} {'ms/step':>8s} {'MFU':>6s} {'x ' + runners[0].name:>14s} "
            f"{'XLA FLOPs x':>12s}  (median ms and MFU of the rounds; ratio of the total "
            "times; the step's XLA FLOPs over the first's)")
      xla_flops = {f"jax {o}": info["xla_flops"] for o, info in infos.items()}
      for r in runners[:-1]:
        ms = statistics.median(r.times) * 1e3
        ratio = sum(r.times) / sum(ref)  # totals: amortized preconditioner refreshes
        mfu = statistics.median([flops / t / (2 * 2048 ** 3 / m) for t, m in zip(r.times, mm)])
        fx = (f"{xla_flops[r.name] / first['xla_flops']:12.3f}" if r.name in xla_flops
              else f"{'-':>12s}")
        print(f"  {r.name:16s} {ms:8.1f} {mfu:6.3f} {ratio:14.3f} {fx}")
        results.append((size, r.name, ms, mfu, ratio))
      if size == "small" and _PROFILE_STEPS.value and "adamw" in infos:
        shares, host, ms = profile(runners[_OPTIMIZERS.value.index("adamw")],
                                   infos["adamw"]["hlo"], _PROFILE_STEPS.value)
        print(f"\n## profile of the small AdamW step (JAX profiler trace, {ms:.0f} ms/step "
              "traced): shares of the kernels' time")
        for c in CATEGORIES:
          print(f"  {c:18s} {100 * shares[c]:5.1f}%")
        print(f"  host work (no kernel running): {100 * host:.1f}% of the wall time")
  print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  configs_util.run(main)
