"""Entry point: python -m mim_jax.main --config configs/X.py[:args] --workdir DIR [--config.k=v ...]

Exit statuses (``mim_jax.core.errors``): 0 done, or stopped by SIGTERM (a checkpoint saved: run the
same command again to resume); 2 a user error (config, dataset, workdir, checkpoint to start
from), reported in one message on stderr; 3 a non-finite loss; 4 a checkpoint or another file
could not be written (disk full); 1 anything else (a bug: its traceback is printed).
``--debug`` or ``MIM_JAX_DEBUG=1`` prints the traceback of every error.
"""

import argparse
import logging
import os
import sys
import traceback

# TensorFlow only reads data and writes TensorBoard files here: silence its start-up banner.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from mim_jax import config as config_lib
from mim_jax.core import errors, library_noise, preemption

USAGE = ("python -m mim_jax.main --config configs/X.py[:arg=value,...] --workdir DIR "
         "[--config.key=value ...]")


def parse(argv):
  """Returns (config with overrides applied, workdir)."""
  parser = argparse.ArgumentParser(prog="mim_jax.main", usage=USAGE, description=__doc__)
  parser.add_argument("--config", required=True, help="config file, optionally :arg string")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and images go here")
  parser.add_argument("--debug", action="store_true",
                      help="print the traceback of every error (also: MIM_JAX_DEBUG=1)")
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
  for handler in logging.getLogger().handlers:
    handler.addFilter(library_noise.short_library_errors)
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


def _run(argv):
  config, workdir = parse(argv)
  init_distributed(config.distributed)
  from mim_jax import train  # after jax.distributed: imports that touch devices come later
  setup_logging()
  train.train_and_evaluate(config, workdir)
  return errors.EXIT_OK


def _fail(status, kind, error, debug):
  if debug:
    traceback.print_exception(error)
  print(f"{kind}: {error}", file=sys.stderr)
  return status


def main(argv=None):
  """Runs the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
  owns_signal = preemption.install()  # SIGTERM is handled from the first line
  argv = sys.argv[1:] if argv is None else list(argv)
  debug = "--debug" in argv or os.environ.get("MIM_JAX_DEBUG", "") not in ("", "0")
  stderr = sys.stderr
  if not isinstance(stderr, library_noise.DropClosedLoopTracebacks):
    sys.stderr = library_noise.DropClosedLoopTracebacks(stderr)
  try:
    return _run(argv)
  except config_lib.ConfigError as e:
    return _fail(errors.EXIT_USER_ERROR, "config error", e, debug)
  except errors.UserError as e:
    return _fail(errors.EXIT_USER_ERROR, "error", e, debug)
  except errors.NonFiniteLossError as e:
    return _fail(errors.EXIT_NON_FINITE, "stopped", e, debug)
  except errors.WriteError as e:
    return _fail(errors.EXIT_WRITE, "stopped", e, debug)
  except errors.Preempted as e:
    print(str(e), file=sys.stderr)
    return errors.EXIT_OK
  finally:
    if sys.stderr is not stderr:
      sys.stderr.release()
      sys.stderr = stderr
    if owns_signal:
      preemption.uninstall()


if __name__ == "__main__":
  sys.stderr = library_noise.DropClosedLoopTracebacks(sys.stderr)  # until the process exits
  sys.exit(main())
