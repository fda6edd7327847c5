"""What the memory options of issue "Scale" buy: MAE's training step (benchmarks.mae_step's
``JaxStep``) compiled with each setting, XLA's per-device memory analysis and the step time.

  python -m benchmarks.memory_options [--workload base224] [--batch_size B]
      [--dtype float32|bfloat16] [--steps N] [--settings plain,remat_block,...] [--fsdp N]

Settings (config overrides on the workload's config):
  plain          the default step
  remat_block    model.remat=block   (each block recomputed in the backward pass)
  remat_dots     model.remat=dots    (matmul outputs kept, the rest recomputed)
  scan           model.scan_blocks=True
  scan_remat     both
  fsdp           mesh.fsdp=N over the devices (default: all of them), parameters and optimizer
                 state sharded; on a CPU give it devices with
                 XLA_FLAGS=--xla_force_host_platform_device_count=8
One JSON line per setting: ``temp_bytes`` (activations and other working buffers of one device),
``argument_bytes`` (its share of state and batch), ``total_bytes``, ``compile_s``, ``step_s``
(median of ``--steps`` steps; 0 steps: not timed) and the ratios to ``plain``.
"""

import argparse
import json
import statistics

import jax

from benchmarks import WORKLOADS, xla_memory
from benchmarks.mae_step import JaxStep

SETTINGS = {
    "plain": {},
    "remat_block": {"model.remat": "block"},
    "remat_dots": {"model.remat": "dots"},
    "scan": {"model.scan_blocks": True},
    "scan_remat": {"model.scan_blocks": True, "model.remat": "block"},
    "fsdp": None,   # mesh.fsdp = --fsdp
}


def measure(name, overrides, args):
  step = JaxStep(WORKLOADS[args.workload], args.dtype, args.batch_size, overrides=overrides)
  row = {"setting": name, "workload": args.workload, "dtype": args.dtype,
         "batch_size": step.batch_size, "devices": step.devices,
         "mesh": dict(step.mesh.shape), "compile_s": round(step.compile_s, 2),
         **xla_memory(step.compiled)}
  if args.steps:
    step.run(1)
    row["step_s"] = statistics.median(step.run(args.steps))
  return row


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workload", default="base224", choices=sorted(WORKLOADS))
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--batch_size", type=int, default=0, help="0: the workload's batch")
  ap.add_argument("--steps", type=int, default=3, help="timed steps per setting (0: none)")
  ap.add_argument("--settings", default=",".join(SETTINGS),
                  help=f"comma-separated, from {list(SETTINGS)}")
  ap.add_argument("--fsdp", type=int, default=0, help="the fsdp setting's group (0: all devices)")
  args = ap.parse_args(argv)
  names = [s for s in args.settings.split(",") if s]
  unknown = sorted(set(names) - set(SETTINGS))
  if unknown:
    raise SystemExit(f"error: unknown settings {unknown}; known: {list(SETTINGS)}")
  plain = None
  for name in names:
    overrides = SETTINGS[name]
    if overrides is None:
      overrides = {"mesh.fsdp": args.fsdp or jax.device_count()}
    row = measure(name, overrides, args)
    if name == "plain":
      plain = row
    elif plain:
      for key in ("temp_bytes", "argument_bytes", "total_bytes", "step_s"):
        if row.get(key) and plain.get(key):
          row[f"{key}_over_plain"] = round(row[key] / plain[key], 3)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
