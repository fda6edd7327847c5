"""Times the matmuls of an MAE training step one shape at a time, in JAX and (``--peer torch``)
PyTorch; prints the speed of each and the seconds all of them take per step.

  python -m benchmarks.matmuls --workload tiny32 [--peer torch] [--dtype bfloat16]
      [--batch_size B] [--rounds R] [--compiler_option KEY=VALUE ...]

The shapes are ``benchmarks.mae_matmuls``: every matmul of the step's forward pass (q, k and v
as one product, the attention logits and weighted values per image and head, ...). Each runs
three ways, as the step runs it: the forward product, the weight gradient (x^T dy) and the
input gradient (dy w^T; not for the patch embedding, whose input is the image). Their FLOPs add
up to ``analytic_flops``. Every product is timed alone, operands resident, in ``--rounds``
rounds alternating between the two sides; the fastest round counts (the least disturbed by
other load). ``--compiler_option`` passes XLA options to the JAX side's compilation, e.g.
``xla_cpu_experimental_ynn_fusion_type=`` (XLA:CPU's own dots instead of YNNPACK's).

Output: one JSON line per matmul (GFLOP/s of each way, each side), then a summary line with
``jax_matmul_s`` / ``torch_matmul_s`` (the step's matmuls at those speeds, i.e. what the step
would take if everything else were free) and ``jax_over_torch`` (torch seconds / JAX seconds:
above 1, JAX's matmuls are faster). Next to ``benchmarks.mae_step``'s step times this says how
much of a gap between the two steps the matmul kernels alone explain.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import WORKLOADS, analytic_flops, cpu_count, mae_matmuls, peak_flops
from benchmarks.mae_step import require_peer

WAYS = ("forward", "weight_grad", "input_grad")
MIN_ROUND_S = 0.02     # each timed round repeats a product until it has run this long


def operand_shapes(mm, way: str):
  """(lhs, rhs) shapes of one way of ``mm``: x [b, m, k], w [b, k, n] (a linear layer's weight
  is shared: [k, n]), dy [b, m, n]."""
  b, m, k, n = mm.batch, mm.m, mm.k, mm.n
  lead = (b,) if b > 1 else ()
  x, wt, dy = lead + (m, k), lead + (k, n), lead + (m, n)
  return {"forward": (x, wt), "weight_grad": (x, dy), "input_grad": (dy, wt)}[way]


def dimension_numbers(mm, way: str):
  """``lax.dot_general`` dimensions of one way, on ``operand_shapes``: forward x . w,
  weight_grad x^T dy (contracting m), input_grad dy w^T (contracting n)."""
  rank = 3 if mm.batch > 1 else 2
  contract = {"forward": (-1, -2), "weight_grad": (-2, -2), "input_grad": (-1, -1)}[way]
  batch = ((0,), (0,)) if rank == 3 else ((), ())
  return (tuple((c % rank,) for c in contract), batch)


def ways(mm):
  return WAYS if mm.input_grad else WAYS[:2]


def time_call(fn, sync, min_s: float = MIN_ROUND_S) -> float:
  """Seconds of one call of ``fn``: the mean over as many back-to-back calls as fill
  ``min_s`` (at least one), waited for with ``sync`` at the end."""
  sync(fn())
  calls, start = 0, time.perf_counter()
  while True:
    out = fn()
    calls += 1
    if time.perf_counter() - start >= min_s:
      break
  sync(out)
  return (time.perf_counter() - start) / calls


class JaxProducts:
  """Every way of every matmul, compiled on JAX's default device, operands resident:
  ``calls[name, way]()`` runs one, on ``operands[name, way]`` (lhs, rhs as ``operand_shapes``)."""
  side = "jax"

  def __init__(self, matmuls, dtype, compiler_options=None):
    rng = np.random.default_rng(0)
    self.calls, self.operands = {}, {}
    for mm in matmuls:
      for way in ways(mm):
        lhs, rhs = (jnp.asarray(rng.standard_normal(s, dtype=np.float32), dtype)
                    for s in operand_shapes(mm, way))
        self.operands[mm.name, way] = (lhs, rhs)
        fn = jax.jit(lambda a, b, d=dimension_numbers(mm, way): jax.lax.dot_general(a, b, d))
        compiled = fn.lower(lhs, rhs).compile(compiler_options or None)
        self.calls[mm.name, way] = (lambda c=compiled, a=lhs, b=rhs: c(a, b))

  @staticmethod
  def sync(out):
    jax.block_until_ready(out)


class TorchProducts:
  """The same products in PyTorch (``torch.matmul`` on transposed views, as autograd runs them),
  on the GPU where JAX runs on one and torch sees it, else the CPU with all its threads."""
  side = "torch"

  def __init__(self, matmuls, dtype):
    import torch
    self.torch = torch
    torch.set_num_threads(cpu_count())
    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    self.device = torch.device("cuda" if gpu else "cpu")
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    gen = torch.Generator().manual_seed(0)
    self.calls, self.operands = {}, {}
    for mm in matmuls:
      for way in ways(mm):
        lhs, rhs = (torch.randn(s, generator=gen).to(self.device, tdtype)
                    for s in operand_shapes(mm, way))
        self.operands[mm.name, way] = (lhs, rhs)
        if way == "weight_grad":
          lhs = lhs.transpose(-1, -2)
        elif way == "input_grad":
          rhs = rhs.transpose(-1, -2)
        self.calls[mm.name, way] = (lambda a=lhs, b=rhs: torch.matmul(a, b))

  def sync(self, out):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()


def time_products(sides, matmuls, rounds: int) -> dict:
  """{side: {(name, way): fastest seconds over the rounds}}; the sides alternate within each
  product (a, b, a, b ...) and the order of the sides flips every round."""
  best = {s.side: {} for s in sides}
  for r in range(rounds):
    order = sides if r % 2 == 0 else sides[::-1]
    for mm in matmuls:
      for way in ways(mm):
        for s in order:
          t = time_call(s.calls[mm.name, way], s.sync)
          key = (mm.name, way)
          best[s.side][key] = min(t, best[s.side].get(key, float("inf")))
  return best


def report(w, matmuls, best, dtype, batch_size, peak, peak_source) -> list:
  """The per-matmul lines and the summary line."""
  rows, totals = [], {side: 0.0 for side in best}
  for mm in matmuls:
    row = {"matmul": mm.name, "count": mm.count, "batch": mm.batch, "m": mm.m, "k": mm.k,
           "n": mm.n}
    for side, times in best.items():
      row[f"{side}_gflops"] = {way: mm.flops / times[mm.name, way] / 1e9 for way in ways(mm)}
      totals[side] += mm.count * sum(times[mm.name, way] for way in ways(mm))
    rows.append(row)
  flops = sum(mm.step_flops for mm in matmuls)
  summary = {"workload": w.name, "dtype": dtype, "batch_size": batch_size,
             "matmul_flops": flops, "analytic_flops": analytic_flops(w, batch_size),
             "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
             "peak_flops": peak, "peak_source": peak_source}
  for side, seconds in totals.items():
    summary[f"{side}_matmul_s"] = seconds
    summary[f"{side}_matmul_flops_per_s"] = flops / seconds
    summary[f"{side}_fraction_of_peak"] = flops / seconds / peak if peak else None
  if "torch" in totals:
    summary["jax_over_torch"] = totals["torch"] / totals["jax"]
  rows.append(summary)
  return rows


def parse_option(text: str):
  """KEY=VALUE -> (key, value): 'true' / 'false' as booleans, integers as ints, else text."""
  key, sep, value = text.partition("=")
  if not sep or not key:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  if value.lower() in ("true", "false"):
    return key, value.lower() == "true"
  try:
    return key, int(value)
  except ValueError:
    return key, value


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  mae = sorted(n for n, w in WORKLOADS.items() if w.method == "mae")
  ap.add_argument("--workload", default="tiny32", choices=mae)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--batch_size", type=int, default=0, help="0: the workload's batch")
  ap.add_argument("--rounds", type=int, default=5, help="timed rounds; the fastest counts")
  ap.add_argument("--peer", choices=["torch"], default=None, help="also time PyTorch's")
  ap.add_argument("--compiler_option", type=parse_option, action="append", default=[],
                  metavar="KEY=VALUE", help="an XLA option for the JAX side; repeatable")
  ap.add_argument("--peak_flops", type=float, default=0.0)
  args = ap.parse_args(argv)
  if args.rounds < 1:
    ap.error("--rounds must be >= 1")
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.peer:
    require_peer(args.peer)
  w = WORKLOADS[args.workload]
  batch_size = args.batch_size or w.batch_size
  matmuls = mae_matmuls(w, batch_size)
  sides = [JaxProducts(matmuls, args.dtype, dict(args.compiler_option))]
  if args.peer:
    sides.append(TorchProducts(matmuls, args.dtype))
  best = time_products(sides, matmuls, args.rounds)
  dev = jax.devices()[0]
  peak, source = peak_flops(dev.device_kind, dev.platform, args.dtype, args.peak_flops)
  for row in report(w, matmuls, best, args.dtype, batch_size, peak, source):
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
