"""Times mim_jax's MAE training step on named workloads; prints one JSON line per workload.

  python -m benchmarks.mae_step --workload tiny32 [--workload base224 | --workload all]
      [--dtype float32|bfloat16] [--steps N] [--warmup N] [--batch_size B]
      [--peak_flops F] [--peer torch [--torch_compile] [--rounds R]]
      [--masking random|amt|both]

The step is the project's own: ``train.make_train_step`` over ``methods.get("mae")``, AdamW from
``optim.make_optimizer``, jitted by ``train.jit_train_step`` on ``train.make_mesh()``, fed a
random [B, H, W, 3] float32 batch sharded over the mesh's "data" axis. Compilation is done
before timing; each timed step ends with ``jax.block_until_ready``; ``step_s`` is the median.
FLOPs come from XLA's cost analysis of the compiled step. With ``--peer torch`` the PyTorch
peer (``benchmarks.torch_peer``, in its own process) is timed in alternating rounds, and a
third line gives ``jax_over_torch`` = JAX images/s over torch images/s. ``--masking amt`` times
the AMT step instead (amt.md: r 0.45 / t 0.40, the weights drawn from a random attention cache);
``--masking both`` times MAE and MAE + AMT in alternating rounds and adds a line with
``amt_speedup`` (MAE step time over MAE + AMT step time) and ``amt_flops_ratio``. See README.md.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import (INSTALL_HINT, WORKLOADS, Workload, peak_flops, peak_rss,
                        reset_peak_rss, select)
from mim_jax import config as config_lib
from mim_jax import data, methods, optim, train
from mim_jax.models.vit import parse_variant

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# The JAX side.
# ---------------------------------------------------------------------------------------------
def make_config(w: Workload, dtype: str = "float32", batch_size: int = 0, masking="random"):
  """mim_jax's config of the workload, from ``base_config("mae")`` like a real run."""
  c = config_lib.base_config("mae")
  c.model.masking = masking          # amt: config.amt's defaults, the MAE + AMT recipe's ratios
  c.image_size = w.image_size
  c.batch_size = batch_size or w.batch_size
  c.compute_dtype = dtype
  c.total_steps = 100_000          # only shapes the lr schedule, which costs the same anyway
  m = c.model
  m.variant = w.variant
  size, patch = parse_variant(w.variant)
  if patch != w.patch_size:
    raise ValueError(f"workload {w.name}: variant {w.variant} has patch {patch}, "
                     f"not {w.patch_size}")
  # Explicit overrides only where the variant differs, as a config file would write them.
  m.width = 0 if w.width == size.dim else w.width
  m.depth = 0 if w.depth == size.depth else w.depth
  m.heads = 0 if w.heads == size.heads else w.heads
  m.mlp_ratio = w.mlp_ratio
  m.decoder_width, m.decoder_depth, m.decoder_heads = (
      w.decoder_width, w.decoder_depth, w.decoder_heads)
  m.mask_ratio = w.mask_ratio
  m.norm_pix_loss = True
  config_lib.validate(c)
  return c


def cost_flops(compiled) -> float:
  """``flops`` of XLA's cost analysis of a compiled program (a dict, or a list of one dict
  per program in older JAX). For an SPMD program it is the FLOPs of one device's share."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  if not analysis or "flops" not in analysis:
    raise RuntimeError(f"XLA's cost analysis gave no 'flops': {analysis!r}")
  return float(analysis["flops"])


class JaxStep:
  """The compiled train step of a workload, its state and a fixed random batch."""

  def __init__(self, w: Workload, dtype="float32", batch_size=0, devices=None, seed=0,
               masking="random"):
    self.workload = w
    self.config = config = make_config(w, dtype, batch_size, masking)
    self.batch_size = config.batch_size
    self.mesh = mesh = train.make_mesh(devices)
    self.devices = mesh.devices.size
    if self.batch_size % self.devices:
      raise ValueError(f"batch_size {self.batch_size} does not divide over "
                       f"{self.devices} devices")
    # AMT's cache gets one map per image of the batch (ids 0..B-1), in its 'amt' stage.
    info = data.DatasetInfo(1000, w.channels, 1_281_167, base_split_size=self.batch_size)
    method = methods.get("mae")(config, channels=w.channels, data_info=info)
    stage = "amt" if masking == "amt" else None
    schedule, _ = train.schedule_for(config, num_examples=1_281_167)
    tx = optim.make_optimizer(config.optimizer, schedule)
    base_key = jax.random.key(config.seed + seed)
    init = train.state_initializer(method, tx, base_key)
    self.state = jax.jit(init, out_shardings=NamedSharding(mesh, P()))()
    self.params = sum(int(x.size) for x in jax.tree.leaves(self.state["params"]))
    images = np.random.default_rng(seed).standard_normal(
        (self.batch_size, w.image_size, w.image_size, w.channels), dtype=np.float32)
    batch = {"image": images}
    if stage:
      rng = np.random.default_rng(seed + 1)
      batch["id"] = np.arange(self.batch_size, dtype=np.int32)
      self.state["extra"]["amt_cache"] = jax.device_put(
          rng.uniform(size=self.state["extra"]["amt_cache"].shape).astype(np.float16),
          NamedSharding(mesh, P()))
    self.batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    step = train.jit_train_step(train.make_train_step(method, tx, schedule, base_key,
                                                      stage=stage), mesh)
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.flops_per_device = cost_flops(self.compiled)
    self.flops = self.flops_per_device * self.devices
    self.metrics = None
    self._rss_reset = reset_peak_rss()

  def run(self, steps: int) -> list:
    """Seconds of each of ``steps`` steps, each timed until its outputs are ready."""
    times = []
    jax.block_until_ready(self.state)
    for _ in range(steps):
      t0 = time.perf_counter()
      self.state, self.metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready((self.state, self.metrics))
      times.append(time.perf_counter() - t0)
    return times

  def peak_bytes(self):
    """Device peak from its memory statistics; on a device without them, host peak RSS."""
    stats = None
    try:
      stats = self.mesh.devices.flat[0].memory_stats()
    except Exception:  # some backends raise instead of returning None
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      return int(stats["peak_bytes_in_use"]), "memory_stats()['peak_bytes_in_use'] (device 0)"
    return peak_rss(self._rss_reset)

  def loss(self):
    return None if self.metrics is None else float(jax.device_get(self.metrics["loss"]))


# ---------------------------------------------------------------------------------------------
# The torch peer, in its own process (benchmarks/torch_peer.py --serve).
# ---------------------------------------------------------------------------------------------
def require_peer(name: str):
  if name != "torch":
    raise SystemExit(f"error: unknown --peer {name!r}; known: torch")
  missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
  if missing:
    raise SystemExit(f"error: --peer torch: {', '.join(missing)} not installed; {INSTALL_HINT}")


class TorchPeerProcess:
  """Starts the peer, then sends it JSON commands and reads one JSON answer per command."""

  def __init__(self, w: Workload, dtype: str, batch_size: int, torch_compile: bool):
    cmd = [sys.executable, "-m", "benchmarks.torch_peer", "--serve", "--workload", w.name,
           "--dtype", dtype, "--batch_size", str(batch_size)]
    if torch_compile:
      cmd.append("--torch_compile")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=REPO_ROOT, env=env)  # its stderr goes to ours
    self.ready = None

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait()
      raise RuntimeError(f"the torch peer exited (code {code}); its error is above")
    msg = json.loads(line)
    if "error" in msg:
      raise RuntimeError(f"torch peer: {msg['error']}")
    return msg

  def wait_ready(self):
    if self.ready is None:
      self.ready = self._read()
    return self.ready

  def request(self, **cmd):
    self.wait_ready()
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def run(self, steps: int) -> list:
    return self.request(cmd="run", steps=steps)["times"]

  def close(self):
    if self.proc.poll() is None:
      try:
        self.request(cmd="quit")
      except (RuntimeError, OSError, ValueError):
        pass
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------------------------------------
# One workload: build, warm up, alternate timed rounds, report.
# ---------------------------------------------------------------------------------------------
def split_steps(steps: int, rounds: int) -> list:
  """``steps`` spread over ``rounds`` rounds as evenly as possible (no empty round)."""
  rounds = max(1, min(rounds, steps))
  return [steps // rounds + (i < steps % rounds) for i in range(rounds)]


def summarize(times, batch_size, flops, peak):
  step_s = statistics.median(times)
  return {"step_s": step_s, "images_per_sec": batch_size / step_s,
          "mfu": flops / step_s / peak if peak else None,
          "step_s_min": min(times), "step_s_max": max(times)}


def bench_workload(w: Workload, args):
  """The JSON rows of one workload: mim_jax, and with --peer torch, torch and the ratio."""
  load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  peer = None
  if args.peer:
    peer = TorchPeerProcess(w, args.dtype, args.batch_size or w.batch_size, args.torch_compile)
  try:
    jx = JaxStep(w, args.dtype, args.batch_size, masking=args.masking)
    dev = jx.mesh.devices.flat[0]
    peak, peak_source = peak_flops(dev.device_kind, dev.platform, args.dtype, args.peak_flops)
    if peer:
      ready = peer.wait_ready()
      if ready["device"] != ("cpu" if dev.platform == "cpu" else "cuda"):
        raise SystemExit(f"error: JAX runs on {dev.platform} but torch on {ready['device']}: "
                         f"install the jax and torch builds of the same accelerator")
    if peer and jx.devices > 1:
      print(f"warning: JAX uses {jx.devices} devices and the torch peer one; restrict JAX "
            f"to one (e.g. CUDA_VISIBLE_DEVICES=0) for a like-for-like ratio", file=sys.stderr)
    jx.run(args.warmup)
    if peer:
      peer.run(args.warmup)
    jax_times, torch_times = [], []
    for n in split_steps(args.steps, args.rounds if peer else 1):
      jax_times += jx.run(n)
      if peer:
        torch_times += peer.run(n)

    common = {"workload": w.name, "dtype": args.dtype, "batch_size": jx.batch_size,
              "steps": args.steps, "warmup": args.warmup, "load_avg_1m_at_start": load_1m}
    peak_bytes, peak_bytes_source = jx.peak_bytes()
    jax_row = dict(common, impl="mim_jax", **summarize(jax_times, jx.batch_size, jx.flops, peak))
    jax_row.update(  # per device: its share of the FLOPs over its peak
        mfu=jx.flops_per_device / jax_row["step_s"] / peak if peak else None,
        flops_per_step=jx.flops, flops_source="xla cost_analysis of the compiled step",
        peak_flops=peak, peak_source=peak_source, peak_bytes=peak_bytes,
        peak_bytes_source=peak_bytes_source, devices=jx.devices, device_kind=dev.device_kind,
        compile_s=jx.compile_s, params=jx.params, loss=jx.loss(), jax=jax.__version__)
    rows = [jax_row]
    if peer:
      info = peer.request(cmd="info")
      from benchmarks.torch_peer import params_match
      match = params_match(info["params"], jx.params, w)
      if not match:
        print(f"warning: parameter counts differ: mim_jax {jx.params}, torch {info['params']}",
              file=sys.stderr)
      # torch runs the whole batch on one device.
      torch_row = dict(common, impl="torch",
                       **summarize(torch_times, jx.batch_size, jx.flops, peak))
      torch_row.update(flops_per_step=jx.flops,
                       flops_source="xla cost_analysis of the mim_jax step (same model)",
                       peak_flops=peak, peak_source=peak_source)
      info["params"] = dict(info["params"], mim_jax=jx.params, same_model=match)
      torch_row.update(info)
      rows.append(torch_row)
      rows.append({"workload": w.name, "dtype": args.dtype,
                   "jax_over_torch": torch_row["step_s"] / jax_row["step_s"]})
    return rows
  finally:
    if peer:
      peer.close()


def bench_amt(w: Workload, args):
  """MAE and MAE + AMT on the same workload and batch, in alternating rounds."""
  load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  steps = {m: JaxStep(w, args.dtype, args.batch_size, masking=m) for m in ("random", "amt")}
  dev = steps["random"].mesh.devices.flat[0]
  peak, _ = peak_flops(dev.device_kind, dev.platform, args.dtype, args.peak_flops)
  times = {m: [] for m in steps}
  for m in steps:
    steps[m].run(args.warmup)
  for n in split_steps(args.steps, max(args.rounds, 3)):
    for m in steps:
      times[m] += steps[m].run(n)
  rows = []
  for m, jx in steps.items():
    row = {"workload": w.name, "impl": "mim_jax", "masking": m, "dtype": args.dtype,
           "batch_size": jx.batch_size, "steps": args.steps, "load_avg_1m_at_start": load_1m,
           "device_kind": dev.device_kind, "devices": jx.devices,
           **summarize(times[m], jx.batch_size, jx.flops, peak)}
    row.update(mfu=jx.flops_per_device / row["step_s"] / peak if peak else None,
               flops_per_step=jx.flops, loss=jx.loss())
    rows.append(row)
  mae, amt_row = rows
  rows.append({"workload": w.name, "dtype": args.dtype,
               "amt_speedup": mae["step_s"] / amt_row["step_s"],
               "amt_flops_ratio": amt_row["flops_per_step"] / mae["flops_per_step"]})
  return rows


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workload", action="append",
                  help=f"one of {sorted(WORKLOADS)} or 'all'; repeatable (default tiny32)")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                  help="mim_jax's config.compute_dtype (parameters stay float32)")
  ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  ap.add_argument("--batch_size", type=int, default=0, help="0: the workload's batch")
  ap.add_argument("--peak_flops", type=float, default=0.0,
                  help="peak FLOP/s of one device for mfu; default: table or CPU estimate")
  ap.add_argument("--peer", choices=["torch"], default=None,
                  help="also time the PyTorch peer (HF ViTMAEForPreTraining)")
  ap.add_argument("--rounds", type=int, default=0,
                  help="with --peer: alternating jax/torch rounds (default min(steps, 3))")
  ap.add_argument("--torch_compile", action="store_true", help="with --peer: torch.compile")
  ap.add_argument("--masking", choices=["random", "amt", "both"], default="random",
                  help="MAE's random masking, AMT (amt.md), or both with their ratio")
  args = ap.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    ap.error("--steps must be >= 1 and --warmup >= 0")
  args.rounds = args.rounds or min(args.steps, 3)
  try:
    args.workloads = select(args.workload)
  except ValueError as e:
    ap.error(str(e))
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.peer:
    require_peer(args.peer)
    # Both processes share an accelerator: keep JAX from taking 75% of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
  if args.peer and args.masking != "random":
    raise SystemExit("error: --peer compares MAE with random masking only")
  for name in args.workloads:
    if args.masking == "both":
      rows = bench_amt(WORKLOADS[name], args)
    else:
      rows = bench_workload(WORKLOADS[name], args)
    for row in rows:
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
