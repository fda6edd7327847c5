"""What feeding costs: the league's MAE pre-training step fed by the host pipeline, by the dataset
on the devices (``data.on_device``), and by both with K steps per call (``steps_per_call``).

  python -m benchmarks.feed --data folder:runs/fashion_mnist
  python -m benchmarks.feed --data folder:DATA --batch_size 256 --batch_size 1024 \
      --batch_size 4096 --steps_per_call 8 --steps_per_call 32 --steps 256   # on a GPU

The step is the trainer's own (``train.setup_run`` / ``make_train_step`` / ``jit_train_step``)
for ``configs/league_fashion_mnist.py:row=mae,protocol=pretrain`` (the league's 0.80 M ViT,
28 px, 4 px patches, mask 0.75), at its batch (160) or ``--batch_size``. Feeds, timed in
alternating rounds (``--rounds``) so that background load falls on all alike:

- ``host``: the trainer's host feeder over the Python pipeline (``--host memory``: the folder
  decoded into memory, ``data.in_memory``, the fastest host path; ``lazy``: PNGs decoded per
  batch; ``none``: skipped), one step per call;
- ``device``: ``data.on_device``, at one step per call and at each ``--steps_per_call`` K;
- ``synthetic``: the same compiled step (and K) on one batch made once on the devices: the
  step alone, the ceiling of any feed.

One JSON line per (batch, feed, K): ``images_per_sec`` (images of all timed steps over their
seconds, the device waited for at the end of each round), ``step_s``, ``mfu`` (FLOPs of the
step, XLA's count or the analytic matmul count where XLA's leaves library calls out, over the
devices' peak), ``data_over_synthetic`` (over the synthetic line of the same K) and
``peak_bytes``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

from benchmarks import Workload, analytic_flops, peak_flops, peak_rss, reset_peak_rss
from benchmarks.mae_step import cost_flops, step_flops
from mim_jax import config as config_lib
from mim_jax import data, train
from mim_jax.core.errors import UserError

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "league_fashion_mnist.py") + ":row=mae,protocol=pretrain"


def league_config(dataset: str, batch_size: int, host: str):
  c = config_lib.load(CONFIG)
  c.dataset, c.batch_size = dataset, batch_size or c.batch_size
  c.data.pipeline, c.data.in_memory = "python", host == "memory"
  return c


def workload_of(c) -> Workload:
  """The analytic FLOP count's description of the config's MAE."""
  m = c.model
  return Workload("league_mae", c.image_size, int(m.variant.split("/")[1]), m.variant, m.width,
                  m.depth, m.heads, m.decoder_width, m.decoder_depth, m.decoder_heads,
                  c.batch_size, m.mask_ratio)


class Fed:
  """One feed of one compiled step: ``run(calls)`` -> seconds of ``calls`` calls."""

  def __init__(self, name, step_fn, take, k, state):
    self.name, self.step_fn, self.take, self.k, self.state = name, step_fn, take, k, state
    self.step, self.seconds, self.steps = 0, 0.0, 0

  def run(self, calls: int) -> None:
    jax.block_until_ready(self.state)
    t0 = time.perf_counter()
    for _ in range(calls):
      self.state, metrics = self.step_fn(self.state, self.take(self.step, self.k))
      self.step += self.k
    jax.block_until_ready((self.state, metrics))
    self.seconds += time.perf_counter() - t0
    self.steps += calls * self.k


def bench_batch(args, batch_size: int) -> list:
  c = league_config(args.data, batch_size, args.host)
  mesh = train.make_mesh()
  run = train.setup_run(c, mesh)
  step = train.make_train_step(run.method, run.tx, run.schedule, run.base_key)
  init = jax.jit(run.init, out_shardings=run.state_sharding)
  split, size = run.streams[""]
  device_c = league_config(args.data, batch_size, args.host)
  device_c.data.on_device = True
  device = data.train_feeder(device_c, run.streams, mesh, 0, {"": 0})
  fns = {k: train.jit_train_step(step, mesh, run.state_sharding, steps=k)
         for k in sorted({1, *args.steps_per_call})}
  first = device.take(0)
  compiled = fns[1].lower(init(), first).compile()
  dev = mesh.devices.flat[0]
  flops, flops_source = step_flops(cost_flops(compiled) * mesh.size,
                                   analytic_flops(workload_of(c), size))
  peak, peak_source = peak_flops(dev.device_kind, dev.platform, "float32", args.peak_flops)
  feeds = []
  if args.host != "none":
    host = data.train_feeder(c, run.streams, mesh, 0, {"": 0})
    feeds.append(Fed(f"host_{args.host}", fns[1], host.take, 1, init()))
  for k in sorted({1, *args.steps_per_call}):
    feeds.append(Fed("device", fns[k], device.take, k, init()))
    fixed = device.take(0, k)
    feeds.append(Fed("synthetic", fns[k], lambda step, k, fixed=fixed: fixed, k, init()))
  rss = reset_peak_rss()
  for fed in feeds:  # compile and warm up, untimed
    fed.run(1)
    fed.seconds = fed.steps = 0
  for _ in range(args.rounds):
    for fed in feeds:
      fed.run(max(1, args.steps // (fed.k * args.rounds)))
  stats = dev.memory_stats() or {}
  peak_bytes = stats.get("peak_bytes_in_use") or peak_rss(rss)[0]
  rows, synthetic = [], {f.k: f.steps * size / f.seconds for f in feeds if f.name == "synthetic"}
  for fed in feeds:
    rate = fed.steps * size / fed.seconds
    rows.append({
        "workload": "league_mae", "data": args.data, "feed": fed.name, "steps_per_call": fed.k,
        "batch_size": size, "steps": fed.steps, "images_per_sec": rate,
        "step_s": fed.seconds / fed.steps,
        "mfu": flops * fed.steps / fed.seconds / (peak * mesh.size) if peak else None,
        "data_over_synthetic": rate / synthetic[fed.k],
        "flops_per_step": flops, "flops_source": flops_source, "peak_source": peak_source,
        "peak_bytes": int(peak_bytes), "devices": mesh.size, "device_kind": dev.device_kind,
        "load_avg_1m": os.getloadavg()[0]})
  return rows


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--data", required=True, help="the dataset, e.g. folder:runs/fashion_mnist")
  ap.add_argument("--batch_size", type=int, action="append",
                  help="global batch; repeatable (default: the league's 160)")
  ap.add_argument("--steps_per_call", type=int, action="append",
                  help="K of the fused feeds; repeatable (default: 8 and 32)")
  ap.add_argument("--steps", type=int, default=64, help="timed steps per feed, all rounds")
  ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over the feeds")
  ap.add_argument("--host", choices=["memory", "lazy", "none"], default="memory",
                  help="the host feed: the folder in memory, decoded per batch, or none")
  ap.add_argument("--peak_flops", type=float, default=0.0, help="peak FLOP/s of one device")
  args = ap.parse_args(argv)
  args.batch_size = args.batch_size or [0]
  args.steps_per_call = args.steps_per_call or [8, 32]
  if any(k < 1 for k in args.steps_per_call) or args.steps < 1 or args.rounds < 1:
    ap.error("--steps_per_call, --steps and --rounds must be >= 1")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    for batch_size in args.batch_size:
      for row in bench_batch(args, batch_size):
        print(json.dumps(row), flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
