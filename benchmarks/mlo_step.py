"""What MLO-MAE's rounds cost: step time of each hypergradient mode against a plain MAE step, and
the memory of the unrolled mode as K grows. Prints one JSON line per measurement.

  python -m benchmarks.mlo_step [--config configs/mlo_mae_digits.py] [--batch_size B]
      [--steps N] [--rounds R] [--modes finite_difference,jvp,unroll] [--memory_ks 1,2,4]
      [--no_time] [--no_memory]

The steps are the project's: MLO-MAE's round (``MLOMAE.make_train_step``: K MAE updates, one
head update, one masking-network update) in each ``mlo.hypergrad`` mode, and MAE's step
(``train.make_train_step`` on the same model, optimizer and batch size, one update), each
jitted on ``train.make_mesh()`` and fed fixed random batches of the config's stream sizes.
Compilation comes first; then the steps are timed in R alternating rounds of N steps each (so a
load change on the machine hits every step alike), each step until its outputs are ready;
``step_s`` is the median.
Rows:
  mode rows    ``round_s``, ``mae_step_s``, ``round_over_mae`` (one round over one MAE step) and
               ``per_mae_update_over_mae`` (round / K over one MAE step: the price of each MAE
               update with the levels above it), pre-training images/s (K * B per round);
  memory rows  for the unrolled mode at each K (with and without ``jax.checkpoint``) and the
               first-order modes at K = 2: XLA's memory analysis of the compiled round, i.e.
               ``temp_bytes`` (the step's working buffers) and ``total_bytes`` (arguments +
               outputs + temps - aliased), which is the peak the program needs on a device; on
               a GPU also the allocator's peak after running it (``device_peak_bytes``).
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from benchmarks import xla_memory
from benchmarks.mae_step import JaxStep
from mim_jax import methods, train
from mim_jax import config as config_lib
from mim_jax.core import optim, sharding
from mim_jax.methods.mlo_mae import HYPERGRADS


def load_config(spec: str, batch_size: int, overrides=()):
  c = config_lib.load(spec)
  if batch_size:
    c.batch_size = batch_size
  for key, value in overrides:
    config_lib.override(c, key, str(value))
  c.mlo.head_batch_size = c.mlo.masker_batch_size = 0     # every level at batch_size
  return c


def random_batch(c, sizes: dict, seed: int = 0):
  rng = np.random.default_rng(seed)
  image = lambda n: rng.standard_normal((n, c.image_size, c.image_size, 1 if c.dataset ==
                                         "digits" else 3), dtype=np.float32)
  out = {}
  for name, n in sizes.items():
    out[name] = {"image": image(n), "label": rng.integers(0, 10, n).astype(np.int32)}
  return out


class Step:
  """A compiled step with its state and batch; ``run(n)`` times n steps."""

  def __init__(self, name, method, tx, c, batch, mesh, key):
    self.name = name
    init = train.state_initializer(method, tx, key)
    self.state = jax.jit(init, out_shardings=sharding.replicated(mesh))()
    self.batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    step = train.jit_train_step(train.make_train_step(method, tx, optim.warmup_cosine(
        1e-4, 0, 1000), key), mesh)
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.metrics = None

  run = JaxStep.run   # the same timing loop: seconds of each step, until its outputs are ready

  def memory(self) -> dict:
    return xla_memory(self.compiled)


def mlo_step(c, mode: str, steps: int, remat: bool, mesh, key):
  c = config_lib.ConfigDict(c.to_dict())
  c.mlo.hypergrad, c.mlo.unroll_steps, c.mlo.remat = mode, steps, remat
  method = methods.get("mlo_mae")(c, 1 if c.dataset == "digits" else 3, num_classes=10)
  tx = method.optimizer(optim.warmup_cosine(1e-4, 0, 1000), 1000)
  b = c.batch_size
  batch = random_batch(c, {"pretrain": steps * b, "train": b, "heldout": b})
  return Step(f"{mode}_k{steps}", method, tx, c, batch, mesh, key)


def mae_step(c, mesh, key):
  m = config_lib.base_config("mae")
  for group in ("optimizer", "data"):
    m[group] = c[group]
  m.model.update({k: v for k, v in c.model.items() if k in m.model})
  for k in ("dataset", "image_size", "batch_size", "compute_dtype"):
    m[k] = c[k]
  method = methods.get("mae")(m, 1 if c.dataset == "digits" else 3)
  tx = optim.make_optimizer(m.optimizer, optim.warmup_cosine(1e-4, 0, 1000))
  batch = random_batch(c, {"image": c.batch_size})["image"]
  return Step("mae", method, tx, m, {"image": batch["image"]}, mesh, key)


def device_peak(mesh):
  try:
    stats = mesh.devices.flat[0].memory_stats()
  except Exception:  # some backends raise instead of returning None
    stats = None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def time_modes(c, args, mesh, key):
  k = c.mlo.unroll_steps
  runners = [mae_step(c, mesh, key)] + [mlo_step(c, mode, k, c.mlo.remat, mesh, key)
                                        for mode in args.modes]
  for r in runners:
    r.run(args.warmup)
  times = {r.name: [] for r in runners}
  for _ in range(args.rounds):
    for r in runners:
      times[r.name] += r.run(args.steps)
  mae_s = statistics.median(times["mae"])
  dev = mesh.devices.flat[0]
  rows = []
  for r in runners[1:]:
    round_s = statistics.median(times[r.name])
    rows.append({"kind": "time", "mode": r.name.rsplit("_k", 1)[0], "unroll_steps": k,
                 "batch_size": c.batch_size, "round_s": round_s, "mae_step_s": mae_s,
                 "round_over_mae": round_s / mae_s,
                 "per_mae_update_over_mae": round_s / k / mae_s,
                 "pretrain_images_per_sec": k * c.batch_size / round_s,
                 "mae_images_per_sec": c.batch_size / mae_s,
                 "compile_s": r.compile_s, "steps_timed": len(times[r.name]),
                 "device_kind": dev.device_kind, "devices": mesh.devices.size,
                 "loss": float(r.metrics["loss"]), **r.memory()})
  return rows


def memory_rows(c, args, mesh, key):
  rows = []
  plans = [("unroll", k, remat) for k in args.memory_ks for remat in (True, False)]
  plans += [(mode, 2, True) for mode in HYPERGRADS if mode != "unroll"]
  for mode, k, remat in plans:
    r = mlo_step(c, mode, k, remat, mesh, key)
    row = {"kind": "memory", "mode": mode, "unroll_steps": k, "remat": remat,
           "batch_size": c.batch_size, "compile_s": r.compile_s, **r.memory()}
    if mesh.devices.flat[0].platform != "cpu":
      r.run(1)
      row["device_peak_bytes"] = device_peak(mesh)
    rows.append(row)
    print(json.dumps(row), flush=True)
    del r
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/mlo_mae_digits.py")
  ap.add_argument("--batch_size", type=int, default=0)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--modes", default=",".join(HYPERGRADS))
  ap.add_argument("--memory_ks", default="1,2,4")
  ap.add_argument("--no_time", action="store_true")
  ap.add_argument("--no_memory", action="store_true")
  args = ap.parse_args(argv)
  args.modes = [m for m in args.modes.split(",") if m]
  args.memory_ks = [int(k) for k in args.memory_ks.split(",") if k]
  for mode in args.modes:
    if mode not in HYPERGRADS:
      ap.error(f"unknown mode {mode!r}; choose from {HYPERGRADS}")
  c = load_config(args.config, args.batch_size)
  mesh, key = train.make_mesh(), jax.random.key(0)
  if not args.no_time:
    for row in time_modes(c, args, mesh, key):
      print(json.dumps(row), flush=True)
  if not args.no_memory:
    memory_rows(c, args, mesh, key)


if __name__ == "__main__":
  main()
