"""Times mim_jax's training step (MAE, MixMIM) on named workloads; prints one JSON line each.

  python -m benchmarks.mae_step --workload tiny32 [--workload base224 | --workload all]
      [--dtype float32|bfloat16] [--steps N] [--warmup N] [--batch_size B]
      [--peak_flops F] [--peer torch [--torch_compile] [--rounds R]]
      [--masking random|amt|both] [--compare [--rounds R]] [--pipelined]
      [--data folder:PATH [--pipeline tf|python] [--num_workers N] [--in_memory]]

The step is the project's own: ``train.make_train_step`` over ``methods.get(workload.method)``
("mae", or "mixmim" for the ``mixmim_*`` workloads), AdamW from ``optim.make_optimizer``,
jitted by ``train.jit_train_step`` on ``train.make_mesh()``, fed a random [B, H, W, 3] float32
batch sharded over the mesh's "data" axis. Compilation is done before timing; each timed step
ends with ``jax.block_until_ready`` (``--pipelined``: each round's steps are queued back to back
and waited for once); ``step_s`` is the median. FLOPs come from XLA's cost analysis of the
compiled step (the analytic count where XLA misses library calls: ``step_flops``). With
``--peer torch`` the PyTorch peer (``benchmarks.torch_peer``, in its own process; MAE workloads
only) is timed in alternating rounds, and a third line gives
``jax_over_torch`` = JAX images/s over torch images/s. ``--masking amt`` times the AMT step
instead (amt.md: r 0.45 / t 0.40, the weights drawn from a random attention cache);
``--masking both`` times MAE and MAE + AMT in alternating rounds and adds a line with
``amt_speedup`` (MAE step time over MAE + AMT step time) and ``amt_flops_ratio``.
``--compare`` times the listed workloads (default: base224 and mixmim_b224, i.e. MAE ViT-B/16
and MixMIM-B) in alternating rounds, each in its own worker process (its own peak memory), and
adds a line of ratios against the first MAE workload, e.g. ``mixmim_over_mae_images_per_sec``.
``--data SPEC`` adds a line for the same step fed by the input pipeline from a real dataset
(``data_over_synthetic``: below 1 when the step waits for its input; ``--in_memory``: the
folder decoded into memory first, ``data.in_memory``, and not timed).
See README.md.
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

from benchmarks import (INSTALL_HINT, WORKLOADS, Workload, analytic_flops, peak_flops,
                        peak_rss, reset_peak_rss, select)
from benchmarks.torch_peer import serve
from mim_jax import data, methods, train
from mim_jax import config as config_lib
from mim_jax.core import optim, sharding
from mim_jax.models.hierarchical import parse_hier_variant
from mim_jax.models.vit import parse_variant

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARE_DEFAULT = ["base224", "mixmim_b224"]   # --compare without --workload


# ---------------------------------------------------------------------------------------------
# The JAX side.
# ---------------------------------------------------------------------------------------------
def make_config(w: Workload, dtype: str = "float32", batch_size: int = 0, masking="random",
                overrides=None):
  """mim_jax's config of the workload, from ``base_config(w.method)`` like a real run, with
  ``overrides`` ({dotted key: value}, e.g. ``{"model.remat": "block"}``) applied last."""
  if w.method == "mixmim":
    if masking != "random":
      raise ValueError(f"workload {w.name}: masking {masking!r} is MAE's (AMT); MixMIM draws "
                       f"its own mixing mask")
    c = config_lib.base_config("mixmim")
  else:
    c = config_lib.base_config("mae")
    c.model.masking = masking        # amt: config.amt's defaults, the MAE + AMT recipe's ratios
  c.image_size = w.image_size
  c.batch_size = batch_size or w.batch_size
  c.compute_dtype = dtype
  c.total_steps = 100_000          # only shapes the lr schedule, which costs the same anyway
  m = c.model
  m.variant = w.variant
  if w.method == "mixmim":
    _hierarchical_encoder(m, w)
  else:
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
  for key, value in (overrides or {}).items():
    config_lib.override(c, key, str(value))
  config_lib.validate(c)
  return c


def _hierarchical_encoder(m, w: Workload):
  """MixMIM's encoder keys: 'hierarchical', the size, overrides only where the size differs;
  one mask (and pairing group) per device (``mask_groups`` 0), as the official code."""
  size = parse_hier_variant(w.variant)
  m.encoder = "hierarchical"
  m.width = 0 if w.width == size.embed_dim else w.width
  m.patch_size = 0 if w.patch_size == size.patch_size else w.patch_size
  m.stage_depths = () if tuple(w.stage_depths) == size.depths else tuple(w.stage_depths)
  m.stage_heads = () if tuple(w.stage_heads) == size.heads else tuple(w.stage_heads)
  m.window_sizes = () if tuple(w.window_sizes) == size.window_sizes else tuple(w.window_sizes)
  m.mask_groups = 0


def step_flops(xla_flops: float, analytic: float):
  """FLOPs of one step and where they come from: XLA's cost analysis, unless it counts under
  half the analytic matmul FLOPs. On a GPU it leaves out the matmuls and attention XLA hands to
  cuBLAS / cuDNN as library calls (ViT-B/16 MAE at batch 256 on an H100: 0.14 of 14.96 TFLOP),
  which would make the MFU meaningless; the analytic count (matmuls only) is used there."""
  if xla_flops >= 0.5 * analytic:
    return xla_flops, "xla cost_analysis of the compiled step"
  return analytic, (f"analytic (matmuls only): XLA's cost analysis counted "
                    f"{xla_flops / analytic:.2f} of it, leaving out library calls")


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
  """The compiled train step of a workload, its state and a fixed random batch.

  Also a *runner* (what ``bench_compare`` drives, in this process or behind
  ``JaxWorkerProcess``): ``ready()`` describes it, ``run(n)`` times n steps, ``info()`` gives
  its peak memory and last loss, ``close()``.
  """

  def __init__(self, w: Workload, dtype="float32", batch_size=0, devices=None, seed=0,
               masking="random", overrides=None):
    self.workload = w
    self.config = config = make_config(w, dtype, batch_size, masking, overrides)
    self.batch_size = config.batch_size
    self.mesh = mesh = train.make_mesh(devices, fsdp=config.mesh.fsdp)
    self.devices = mesh.devices.size
    if self.batch_size % self.devices:
      raise ValueError(f"batch_size {self.batch_size} does not divide over "
                       f"{self.devices} devices")
    if w.method == "mixmim" and not config.model.mask_groups:
      config.model.mask_groups = self.devices   # one mask per device of this step's mesh
    # AMT's cache gets one map per image of the batch (ids 0..B-1), in its 'amt' stage.
    info = data.DatasetInfo(1000, w.channels, 1_281_167, base_split_size=self.batch_size)
    method = methods.get(w.method)(config, channels=w.channels, data_info=info)
    stage = "amt" if masking == "amt" else None
    schedule, _ = train.schedule_for(config, num_examples=1_281_167)
    tx = optim.make_optimizer(config.optimizer, schedule)
    base_key = jax.random.key(config.seed + seed)
    init = train.state_initializer(method, tx, base_key)
    shardings = sharding.state_shardings(jax.eval_shape(init), mesh, config.mesh)
    self.state = jax.jit(init, out_shardings=shardings)()
    self.params = sum(int(x.size) for x in jax.tree.leaves(self.state["params"]))
    images = np.random.default_rng(seed).standard_normal(
        (self.batch_size, w.image_size, w.image_size, w.channels), dtype=np.float32)
    batch = {"image": images}
    if stage:
      rng = np.random.default_rng(seed + 1)
      batch["id"] = np.arange(self.batch_size, dtype=np.int32)
      self.state["extra"]["amt_cache"] = jax.device_put(
          rng.uniform(size=self.state["extra"]["amt_cache"].shape).astype(np.float16),
          sharding.replicated(mesh))
    self.batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    step = train.jit_train_step(train.make_train_step(method, tx, schedule, base_key,
                                                      stage=stage), mesh, shardings)
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.xla_flops = cost_flops(self.compiled) * self.devices
    # The analytic count is random masking's (AMT keeps and decodes other token counts).
    analytic = analytic_flops(w, self.batch_size) if masking == "random" else 0.0
    self.flops, self.flops_source = step_flops(self.xla_flops, analytic)
    self.flops_per_device = self.flops / self.devices
    self.metrics = None
    self._rss_reset = reset_peak_rss()

  def run(self, steps: int, pipelined: bool = False) -> list:
    """Seconds of each of ``steps`` steps, each timed until its outputs are ready; or, with
    ``pipelined``, the steps dispatched back to back (as training runs them) and waited for
    once: each of the ``steps`` entries is the round's mean."""
    times = []
    jax.block_until_ready(self.state)
    if pipelined:
      t0 = time.perf_counter()
      for _ in range(steps):
        self.state, self.metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready((self.state, self.metrics))
      return [(time.perf_counter() - t0) / steps] * steps
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

  def ready(self) -> dict:
    """What the step is (JSON-able): the fields of its row that do not come from timing."""
    dev = self.mesh.devices.flat[0]
    return {"ready": True, "workload": self.workload.name, "method": self.workload.method,
            "batch_size": self.batch_size, "devices": self.devices,
            "device_kind": dev.device_kind, "platform": dev.platform,
            "flops_per_step": self.flops, "flops_per_device": self.flops_per_device,
            "flops_source": self.flops_source, "xla_flops_per_step": self.xla_flops,
            "params": self.params, "compile_s": self.compile_s, "jax": jax.__version__}

  def info(self) -> dict:
    """After the timed steps: peak memory and the last loss."""
    peak_bytes, source = self.peak_bytes()
    return {"peak_bytes": peak_bytes, "peak_bytes_source": source, "loss": self.loss()}

  def close(self):
    pass


# ---------------------------------------------------------------------------------------------
# The torch peer, in its own process (benchmarks/torch_peer.py --serve).
# ---------------------------------------------------------------------------------------------
def require_peer(name: str):
  if name != "torch":
    raise SystemExit(f"error: unknown --peer {name!r}; known: torch")
  missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
  if missing:
    raise SystemExit(f"error: --peer torch: {', '.join(missing)} not installed; {INSTALL_HINT}")


class PipeProcess:
  """A child process driven over a pipe: JSON commands in, one JSON answer per command out
  (``torch_peer.serve``'s protocol); its first line says it is ready."""
  label = "child process"

  def __init__(self, cmd, env_updates=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env.update(env_updates or {})
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=REPO_ROOT, env=env)  # its stderr goes to ours
    self.ready_msg = None

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait()
      raise RuntimeError(f"the {self.label} exited (code {code}); its error is above")
    msg = json.loads(line)
    if "error" in msg:
      raise RuntimeError(f"{self.label}: {msg['error']}")
    return msg

  def wait_ready(self):
    if self.ready_msg is None:
      self.ready_msg = self._read()
    return self.ready_msg

  def request(self, **cmd):
    self.wait_ready()
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def run(self, steps: int, pipelined: bool = False) -> list:
    return self.request(cmd="run", steps=steps, pipelined=pipelined)["times"]

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


class TorchPeerProcess(PipeProcess):
  """Starts the torch peer (``benchmarks.torch_peer --serve``)."""
  label = "torch peer"

  def __init__(self, w: Workload, dtype: str, batch_size: int, torch_compile: bool):
    cmd = [sys.executable, "-m", "benchmarks.torch_peer", "--serve", "--workload", w.name,
           "--dtype", dtype, "--batch_size", str(batch_size)]
    if torch_compile:
      cmd.append("--torch_compile")
    super().__init__(cmd)


class JaxWorkerProcess(PipeProcess):
  """One workload's ``JaxStep`` in its own process (``benchmarks.mae_step --serve``), for
  ``--compare``: each workload keeps its own peak memory (host RSS, or the accelerator
  allocator's peak) and compiles alone. The same runner interface as ``JaxStep``."""
  label = "jax worker"

  def __init__(self, w: Workload, dtype: str, batch_size: int, mem_fraction: str = ""):
    cmd = [sys.executable, "-m", "benchmarks.mae_step", "--serve", "--workload", w.name,
           "--dtype", dtype, "--batch_size", str(batch_size)]
    env = {}
    if mem_fraction and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
      env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = mem_fraction   # workers share an accelerator
    super().__init__(cmd, env)
    self.label = f"jax worker ({w.name})"

  def ready(self) -> dict:
    return self.wait_ready()

  def info(self) -> dict:
    return self.request(cmd="info")


def serve_workload(w: Workload, args, inp=None, out=None):
  """The worker side of ``JaxWorkerProcess``: builds and compiles the step, then answers
  ``torch_peer.serve``'s commands on ``out`` (default: the real stdout, with library prints
  moved to stderr)."""
  inp = inp or sys.stdin
  if out is None:
    out, sys.stdout = sys.stdout, sys.stderr   # keep library prints off the protocol stream
  try:
    jx = JaxStep(w, args.dtype, args.batch_size)
  except Exception as e:
    out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
    out.flush()
    raise SystemExit(1)
  serve(jx, inp, out, ready=jx.ready())


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


def jax_row(desc: dict, info: dict, times, args, peak, peak_source, load_1m) -> dict:
  """The mim_jax line of a workload from its runner's ``ready()`` and ``info()`` and its
  timed steps. mfu is per device: its share of the FLOPs over its peak."""
  row = {"workload": desc["workload"], "method": desc["method"], "dtype": args.dtype,
         "batch_size": desc["batch_size"], "steps": args.steps, "warmup": args.warmup,
         "timing": timing_mode(args),
         "load_avg_1m_at_start": load_1m, "impl": "mim_jax",
         **summarize(times, desc["batch_size"], desc["flops_per_step"], peak)}
  row.update(
      mfu=desc["flops_per_device"] / row["step_s"] / peak if peak else None,
      flops_per_step=desc["flops_per_step"], flops_source=desc["flops_source"],
      xla_flops_per_step=desc["xla_flops_per_step"],
      peak_flops=peak, peak_source=peak_source, peak_bytes=info["peak_bytes"],
      peak_bytes_source=info["peak_bytes_source"], devices=desc["devices"],
      device_kind=desc["device_kind"], compile_s=desc["compile_s"], params=desc["params"],
      loss=info["loss"], jax=desc["jax"])
  return row


def timing_mode(args) -> str:
  return "pipelined" if getattr(args, "pipelined", False) else "per_step"


def load_average():
  return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def real_data_row(jx: "JaxStep", args, synthetic: dict) -> dict:
  """The same compiled step fed by the input pipeline (``--data``, ``--pipeline``) through
  ``device_prefetch``, as training is: ``args.steps`` steps dispatched back to back after one
  untimed batch; ``data_over_synthetic`` = its images/s over the synthetic batch's, below 1
  when the step waits for input."""
  c = jx.config.data
  c.pipeline = args.pipeline
  c.num_workers = args.num_workers or len(os.sched_getaffinity(0))
  c.in_memory = args.in_memory
  c.mean, c.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  it = data.train_iterator(c, args.data, "train", global_batch_size=jx.batch_size,
                           image_size=jx.workload.image_size, seed=0)
  batches = data.device_prefetch(it, sharding.batch_sharding(jx.mesh), size=c.prefetch)
  keys = list(jx.batch)

  def step():
    batch = next(batches)
    jx.state, jx.metrics = jx.compiled(jx.state, {k: batch[k] for k in keys})

  try:
    step()
    jax.block_until_ready(jx.state)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      step()
    jax.block_until_ready((jx.state, jx.metrics))
    seconds = time.perf_counter() - t0
  finally:
    batches.close()
  rate = args.steps * jx.batch_size / seconds
  return {"workload": jx.workload.name, "data": args.data, "pipeline": args.pipeline,
          "num_workers": c.num_workers, "in_memory": c.in_memory, "steps": args.steps,
          "batch_size": jx.batch_size,
          "data_images_per_sec": rate,
          "synthetic_images_per_sec": synthetic["images_per_sec"],
          "data_over_synthetic": rate / synthetic["images_per_sec"],
          "skipped_images": int(getattr(it, "skipped_images", 0))}


def bench_workload(w: Workload, args):
  """The JSON rows of one workload: mim_jax, and with --peer torch, torch and the ratio."""
  load_1m = load_average()
  peer = None
  if args.peer:
    if w.method != "mae":
      raise SystemExit(peer_method_error([w.name]))
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
      jax_times += jx.run(n, args.pipelined)
      if peer:
        torch_times += peer.run(n, args.pipelined)

    jax_line = jax_row(jx.ready(), jx.info(), jax_times, args, peak, peak_source, load_1m)
    rows = [jax_line]
    if args.data:
      rows.append(real_data_row(jx, args, jax_line))
    if peer:
      common = {"workload": w.name, "method": w.method, "dtype": args.dtype,
                "batch_size": jx.batch_size, "steps": args.steps, "warmup": args.warmup,
                "timing": timing_mode(args),
                "load_avg_1m_at_start": load_1m}
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
                       flops_source=f"the mim_jax step's (same model): {jx.flops_source}",
                       peak_flops=peak, peak_source=peak_source)
      info["params"] = dict(info["params"], mim_jax=jx.params, same_model=match)
      torch_row.update(info)
      rows.append(torch_row)
      rows.append({"workload": w.name, "dtype": args.dtype,
                   "jax_over_torch": torch_row["step_s"] / jax_line["step_s"]})
    return rows
  finally:
    if peer:
      peer.close()


def bench_amt(w: Workload, args):
  """MAE and MAE + AMT on the same workload and batch, in alternating rounds."""
  load_1m = load_average()
  steps = {m: JaxStep(w, args.dtype, args.batch_size, masking=m) for m in ("random", "amt")}
  dev = steps["random"].mesh.devices.flat[0]
  peak, _ = peak_flops(dev.device_kind, dev.platform, args.dtype, args.peak_flops)
  times = {m: [] for m in steps}
  for m in steps:
    steps[m].run(args.warmup)
  for n in split_steps(args.steps, max(args.rounds, 3)):
    for m in steps:
      times[m] += steps[m].run(n, args.pipelined)
  rows = []
  for m, jx in steps.items():
    row = {"workload": w.name, "method": w.method, "impl": "mim_jax", "masking": m,
           "dtype": args.dtype, "batch_size": jx.batch_size, "steps": args.steps,
           "timing": timing_mode(args),
           "load_avg_1m_at_start": load_1m,
           "device_kind": dev.device_kind, "devices": jx.devices,
           **summarize(times[m], jx.batch_size, jx.flops, peak)}
    row.update(mfu=jx.flops_per_device / row["step_s"] / peak if peak else None,
               flops_per_step=jx.flops, loss=jx.loss())
    rows.append(row)
  mae, amt_row = rows
  rows.append({"workload": w.name, "dtype": args.dtype,
               "amt_speedup": mae["step_s"] / amt_row["step_s"],
               # XLA's counts on both sides (the MAE row's may be the analytic one on a GPU)
               "amt_flops_ratio": steps["amt"].xla_flops / steps["random"].xla_flops})
  return rows


def compare_ratios(rows) -> list:
  """One line per workload B other than the reference A (the first MAE workload, else the
  first): B's images/s, step time (median and fastest), FLOPs per image, mfu, parameters and
  peak memory over A's,
  keyed ``<b>_over_<a>_...`` with b / a the methods (``mixmim_over_mae_...``), or the workload
  names when both run one method."""
  ref = next((r for r in rows if r["method"] == "mae"), rows[0])
  out = []
  for row in rows:
    if row is ref:
      continue
    same = row["method"] == ref["method"]
    key = (f"{row['workload']}_over_{ref['workload']}" if same
           else f"{row['method']}_over_{ref['method']}")
    per_image = lambda r: r["flops_per_step"] / r["batch_size"]
    ratio = lambda a, b: a / b if a is not None and b else None
    out.append({
        "workload": row["workload"], "reference": ref["workload"], "dtype": row["dtype"],
        f"{key}_images_per_sec": row["images_per_sec"] / ref["images_per_sec"],
        f"{key}_step_s": row["step_s"] / ref["step_s"],
        f"{key}_step_s_min": row["step_s_min"] / ref["step_s_min"],
        f"{key}_flops": per_image(row) / per_image(ref),
        f"{key}_mfu": ratio(row["mfu"], ref["mfu"]),
        f"{key}_params": row["params"] / ref["params"],
        f"{key}_peak_bytes": ratio(row["peak_bytes"], ref["peak_bytes"])})
  return out


def bench_compare(ws, args, runner=None):
  """Several workloads (e.g. MAE ViT-B/16 and MixMIM-B) in alternating rounds on one machine:
  one mim_jax line each, then ``compare_ratios``. Each workload runs in its own worker process
  (``runner``, default ``JaxWorkerProcess``), started and compiled one at a time; the rounds
  alternate their order (A B, B A, A B, ...) so that a drifting load falls on all alike."""
  runner = runner or JaxWorkerProcess
  load_1m = load_average()
  fraction = f"{0.9 / len(ws):.3f}"   # of accelerator memory per worker (unless set)
  runners = []
  try:
    descs = []
    for w in ws:
      runners.append(runner(w, args.dtype, args.batch_size, fraction))
      descs.append(runners[-1].ready())   # compiled before the next one starts
    kinds = {(d["platform"], d["device_kind"]) for d in descs}
    if len(kinds) > 1:
      raise SystemExit(f"error: the workers run on different devices: {sorted(kinds)}")
    platform, kind = kinds.pop()
    peak, peak_source = peak_flops(kind, platform, args.dtype, args.peak_flops)
    for r in runners:
      r.run(args.warmup)
    times = [[] for _ in runners]
    for i, n in enumerate(split_steps(args.steps, args.rounds)):
      order = range(len(runners)) if i % 2 == 0 else reversed(range(len(runners)))
      for j in order:
        times[j] += runners[j].run(n, args.pipelined)
    rows = [jax_row(d, r.info(), t, args, peak, peak_source, load_1m)
            for d, r, t in zip(descs, runners, times)]
    return rows + compare_ratios(rows)
  finally:
    for r in runners:
      r.close()


def peer_method_error(names) -> str:
  return (f"error: --peer torch times MAE only (Hugging Face ViTMAE); {', '.join(names)} "
          f"{'is' if len(names) == 1 else 'are'} not MAE. Time MixMIM without --peer, or next "
          f"to MAE ViT-B/16 with --compare")


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workload", action="append",
                  help=f"one of {sorted(WORKLOADS)} or 'all'; repeatable (default tiny32; "
                       f"with --compare {' and '.join(COMPARE_DEFAULT)})")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                  help="mim_jax's config.compute_dtype (parameters stay float32)")
  ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  ap.add_argument("--batch_size", type=int, default=0, help="0: the workload's batch")
  ap.add_argument("--peak_flops", type=float, default=0.0,
                  help="peak FLOP/s of one device for mfu; default: table or CPU estimate")
  ap.add_argument("--peer", choices=["torch"], default=None,
                  help="also time the PyTorch peer (HF ViTMAEForPreTraining; MAE workloads)")
  ap.add_argument("--rounds", type=int, default=0,
                  help="with --peer or --compare: alternating rounds (default min(steps, 3))")
  ap.add_argument("--torch_compile", action="store_true", help="with --peer: torch.compile")
  ap.add_argument("--pipelined", action="store_true",
                  help="dispatch each round's steps back to back and wait once (as training "
                       "does; hides the launch gaps), step_s = the rounds' mean; default: "
                       "every step waited for")
  ap.add_argument("--masking", choices=["random", "amt", "both"], default="random",
                  help="MAE's random masking, AMT (amt.md), or both with their ratio")
  ap.add_argument("--compare", action="store_true",
                  help="time the workloads in alternating rounds, each in its own process, "
                       "and add a line of ratios (default workloads: "
                       f"{' and '.join(COMPARE_DEFAULT)}, MAE ViT-B/16 and MixMIM-B)")
  ap.add_argument("--data", default="",
                  help="also train the step from real batches of this dataset (e.g. "
                       "folder:PATH) and add a line against the synthetic batch's images/s")
  ap.add_argument("--pipeline", choices=["python", "tf"], default="tf",
                  help="with --data: config.data.pipeline")
  ap.add_argument("--num_workers", type=int, default=0,
                  help="with --data: config.data.num_workers (0: one per core)")
  ap.add_argument("--in_memory", action="store_true",
                  help="with --data folder:PATH: decode it into memory first (data.in_memory)")
  ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # --compare's worker
  args = ap.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    ap.error("--steps must be >= 1 and --warmup >= 0")
  args.rounds = args.rounds or min(args.steps, 3)
  try:
    args.workloads = select(args.workload or (COMPARE_DEFAULT if args.compare else None))
  except ValueError as e:
    ap.error(str(e))
  if args.compare:
    if args.peer or args.masking != "random":
      ap.error("--compare times mim_jax's steps only: leave out --peer and --masking")
    if len(args.workloads) < 2:
      ap.error("--compare needs at least two workloads")
  not_mae = [n for n in args.workloads if WORKLOADS[n].method != "mae"]
  if args.peer and not_mae:
    ap.error(peer_method_error(not_mae)[len("error: "):])
  if args.masking != "random" and not_mae:
    ap.error(f"--masking {args.masking} is MAE's (AMT); not for {', '.join(not_mae)}")
  if args.serve and len(args.workloads) != 1:
    ap.error("--serve runs one workload")
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.serve:
    serve_workload(WORKLOADS[args.workloads[0]], args)
    return
  if args.peer:
    require_peer(args.peer)
    # Both processes share an accelerator: keep JAX from taking 75% of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
  if args.peer and args.masking != "random":
    raise SystemExit("error: --peer compares MAE with random masking only")
  if args.compare:
    rows = bench_compare([WORKLOADS[n] for n in args.workloads], args)
    for row in rows:
      print(json.dumps(row), flush=True)
    return
  for name in args.workloads:
    if args.masking == "both":
      rows = bench_amt(WORKLOADS[name], args)
    else:
      rows = bench_workload(WORKLOADS[name], args)
    for row in rows:
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
