"""Entry point: python -m mim_jax.main --config configs/X.py[:args] --workdir DIR [--config.k=v ...]

Config errors (unknown key, wrong type, bad argument) are reported before anything runs,
with exit status 2.
"""

import argparse
import logging
import os
import sys

# TensorFlow only reads data and writes TensorBoard files here: silence its start-up banner.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from mim_jax import config as config_lib

USAGE = ("python -m mim_jax.main --config configs/X.py[:arg=value,...] --workdir DIR "
         "[--config.key=value ...]")


def parse(argv):
  """Returns (config with overrides applied, workdir)."""
  parser = argparse.ArgumentParser(prog="mim_jax.main", usage=USAGE, description=__doc__)
  parser.add_argument("--config", required=True, help="config file, optionally :arg string")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and images go here")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config.") or "=" not in item:
      raise config_lib.ConfigError(f"unrecognized argument {item!r}; overrides are written "
                                   f"--config.key=value")
    key, _, value = item[len("--config."):].partition("=")
    overrides.append((key, value))
  config = config_lib.load(args.config)
  for key, value in overrides:
    config_lib.override(config, key, value)
  config_lib.validate(config)
  return config, args.workdir


def setup_logging():
  """One timestamped line per message on stdout (replacing handlers that imports installed).
  In a multi-host run only process 0 logs progress; the others log warnings and errors."""
  import jax
  level = logging.INFO if jax.process_index() == 0 else logging.WARNING
  logging.basicConfig(level=level, format="%(asctime)s %(levelname).1s %(message)s",
                      datefmt="%H:%M:%S", stream=sys.stdout, force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def distributed_args(dist, environ=None) -> dict:
  """The arguments of ``jax.distributed.initialize`` for ``config.distributed``: each field set
  in the config, else from the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``), else None, which lets JAX detect the cluster (SLURM, Cloud TPU, Open
  MPI)."""
  environ = os.environ if environ is None else environ

  def number(name, value, unset):
    if value != unset:
      return value
    text = environ.get(name, "")
    try:
      return int(text) if text else None
    except ValueError:
      raise config_lib.ConfigError(f"environment variable {name}={text!r} is not an integer")
  return dict(
      coordinator_address=dist.coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")
      or None,
      num_processes=number("JAX_NUM_PROCESSES", dist.num_processes, 0),
      process_id=number("JAX_PROCESS_ID", dist.process_id, -1))


def init_distributed(dist):
  """Joins the other processes of a multi-host run (``distributed.enabled``)."""
  if dist.enabled:
    import jax
    jax.distributed.initialize(**distributed_args(dist))


def main(argv=None):
  try:
    config, workdir = parse(sys.argv[1:] if argv is None else argv)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  try:
    init_distributed(config.distributed)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  from mim_jax import train  # after jax.distributed: imports that touch devices come later
  setup_logging()
  train.train_and_evaluate(config, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
