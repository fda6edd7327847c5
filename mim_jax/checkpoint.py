"""Checkpoints with orbax: atomic, optionally asynchronous, last N kept, resumable.

A checkpoint holds the items ``params``, ``opt_state`` and, when the method keeps one, ``extra``
(non-trained state: BatchNorm statistics, an EMA of the weights, per-image caches), plus the step
in orbax's step directory name. ``init_from`` restores only ``params``, so a checkpoint of one method can
initialize another with the same encoder.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The checkpoint's parameters do not fit the model being built."""


def _paths_and_shapes(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(getattr(v, "shape", ()))
          for path, v in flat}


def check_compatible(saved, target, source: str) -> None:
  """Raises CheckpointMismatchError naming the parameters that differ in name or shape."""
  have, want = _paths_and_shapes(saved), _paths_and_shapes(target)
  problems = []
  for name in sorted(want):
    if name not in have:
      problems.append(f"missing in checkpoint: {name} {want[name]}")
    elif have[name] != want[name]:
      problems.append(f"shape mismatch: {name} checkpoint {have[name]} vs model {want[name]}")
  problems += [f"not in model: {name} {have[name]}" for name in sorted(set(have) - set(want))]
  if problems:
    shown = "\n  ".join(problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    raise CheckpointMismatchError(
        f"checkpoint {source} does not match the model's architecture "
        f"({len(problems)} differences):\n  {shown}{more}")


ITEMS = ("params", "opt_state", "extra")


def _items(state):
  """The items of ``state`` that are saved: those it has, ``extra`` only when it holds something
  (a converted checkpoint, ``mim_jax.convert``, has ``params`` alone)."""
  return [n for n in ITEMS
          if n in state and (n != "extra" or jax.tree.leaves(state["extra"]))]


class Checkpointer:
  """Owns the workdir's checkpoint directory."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={name: ocp.StandardCheckpointHandler() for name in ITEMS})

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    """Starts saving ``state`` (a dict with params, opt_state and maybe extra) at ``step``;
    returns at once when asynchronous. The step directory appears only when complete (atomic
    rename)."""
    self.manager.save(step, args=ocp.args.Composite(**{
        name: ocp.args.StandardSave(state[name]) for name in _items(state)}), force=True)

  def _check(self, step, name, target):
    saved = self.manager.item_metadata(step)[name]
    if saved is None:
      raise CheckpointMismatchError(f"checkpoint {self.directory} step {step} has no {name!r}")
    check_compatible(saved, target, f"{self.directory} step {step} ({name})")

  def restore(self, step: int, abstract_state, optimizer: bool = True):
    """Restores params, optimizer state (unless ``optimizer`` is False) and extra into the
    shardings of ``abstract_state``."""
    names = [n for n in _items(abstract_state) if optimizer or n != "opt_state"]
    for name in names:
      self._check(step, name, abstract_state[name])
    restored = self.manager.restore(step, args=ocp.args.Composite(**{
        name: ocp.args.StandardRestore(abstract_state[name]) for name in names}))
    return {name: restored[name] for name in names}

  def restore_params(self, step: int, abstract_params):
    self._check(step, "params", abstract_params)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def open_run(workdir: str, step: int = -1):
  """(read-only Checkpointer, step) of another run's checkpoints; ``step`` -1 means the latest.
  The caller closes the Checkpointer."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"init_from: no checkpoints in {ckpt_dir!r}")
  ckpt = Checkpointer(workdir, read_only=True, async_save=False)
  steps = ckpt.manager.all_steps()
  if not steps:
    ckpt.close()
    raise FileNotFoundError(f"init_from: {ckpt_dir!r} holds no finished checkpoint")
  step = max(steps) if step < 0 else step
  if step not in steps:
    ckpt.close()
    raise FileNotFoundError(f"init_from: step {step} not in {ckpt_dir!r} (have {sorted(steps)})")
  return ckpt, step


def load_params(workdir: str, abstract_params, step: int = -1):
  """Parameters of another run's checkpoint (``config.init_from``), checked against the model."""
  ckpt, step = open_run(workdir, step)
  try:
    return step, ckpt.restore_params(step, abstract_params)
  finally:
    ckpt.close()


def abstract(tree, sharding):
  """ShapeDtypeStructs of ``tree`` (arrays or structs) placed with ``sharding``."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                      tree)


def abstract_sharded(tree, shardings):
  """ShapeDtypeStructs of ``tree`` placed with the matching leaf of ``shardings``."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)
