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
  """One timestamped line per message on stdout (replacing handlers that imports installed)."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s",
                      datefmt="%H:%M:%S", stream=sys.stdout, force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def init_distributed(dist):
  import jax
  if dist.enabled:
    jax.distributed.initialize(coordinator_address=dist.coordinator_address or None,
                               num_processes=dist.num_processes or None,
                               process_id=None if dist.process_id < 0 else dist.process_id)


def main(argv=None):
  try:
    config, workdir = parse(sys.argv[1:] if argv is None else argv)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  init_distributed(config.distributed)
  from mim_jax import train  # after jax.distributed: imports that touch devices come later
  setup_logging()
  train.train_and_evaluate(config, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
