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

from mim_jax.core.errors import CheckpointWriteError, UserError, write_failure
from mim_jax.core.tree_paths import named_leaves


class CheckpointMismatchError(UserError, ValueError):
  """The checkpoint's parameters do not fit the model being built."""


class NoCheckpointError(UserError, FileNotFoundError):
  """A workdir to start from (``init_from``) holds no usable checkpoint."""


def _paths_and_shapes(tree):
  return {name: tuple(getattr(v, "shape", ())) for name, v in named_leaves(tree).items()}


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
        f"({len(problems)} differences):\n  {shown}{more}\n"
        f"Set the model config (model.*) to the checkpoint's (its workdir's config.json has it), "
        f"or start from a checkpoint of this architecture.")


ITEMS = ("params", "opt_state", "extra")


def _items(state):
  """The items of ``state`` that are saved: those it has, ``extra`` only when it holds something
  (a converted checkpoint, ``mim_jax.interop.convert``, has ``params`` alone)."""
  return [n for n in ITEMS
          if n in state and (n != "extra" or jax.tree.leaves(state["extra"]))]


def finished_steps(workdir: str) -> list:
  """Steps of the workdir's complete checkpoints on disk (orbax renames a step's directory to
  its number only when it is complete)."""
  try:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  except OSError:
    return []


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
    self._saving = None   # the step of the latest save started
    self._checked = None  # the latest save known to have ended well
    self.failed = False

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    """Starts saving ``state`` (a dict with params, opt_state and maybe extra) at ``step``;
    returns at once when asynchronous. The step directory appears only when complete (atomic
    rename). A failed write (this one or an earlier asynchronous one) raises
    CheckpointWriteError."""
    self.wait()  # orbax would wait for the previous save too: its failure is its own
    try:
      self.manager.save(step, args=ocp.args.Composite(**{
          name: ocp.args.StandardSave(state[name]) for name in _items(state)}), force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(step, e)
    self._saving = step

  def raise_if_failed(self) -> None:
    """Raises CheckpointWriteError if the latest asynchronous save has ended in failure. Cheap
    enough for every step: it looks once the save is no longer in progress, once per save."""
    if self._saving is None or self.failed or self._checked == self._saving:
      return
    if self.manager.is_saving_in_progress():
      return
    self._checked = self._saving
    self.wait()  # the save has ended: returns at once, or raises its failure

  def _fail(self, step, error):
    self.failed = True
    good = [s for s in finished_steps(os.path.dirname(self.directory)) if s != step]
    last = f"step {max(good)} in {self.directory}" if good else "none"
    raise CheckpointWriteError(f"writing the checkpoint of step {step} failed: "
                               f"{write_failure(error) or _first_line(error)}; last good checkpoint: {last}") from error

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

  def wait(self):
    """Waits for the asynchronous save; CheckpointWriteError if it failed."""
    if self.failed or self._saving is None:
      return
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(self._saving, e)

  def close(self):
    """Waits for the last save (CheckpointWriteError if it failed) and closes. After a failure
    it still waits for what orbax has in flight (which fails too, quietly), so that nothing
    writes once closed."""
    try:
      self.wait()
    finally:
      try:
        if self.failed:
          try:
            self.manager.wait_until_finished()
          except Exception:  # pylint: disable=broad-except
            pass
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self.failed:
          raise


def open_run(workdir: str, step: int = -1):
  """(read-only Checkpointer, step) of another run's checkpoints; ``step`` -1 means the latest.
  The caller closes the Checkpointer."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise NoCheckpointError(f"init_from: no checkpoints in {ckpt_dir!r}")
  ckpt = Checkpointer(workdir, read_only=True, async_save=False)
  steps = ckpt.manager.all_steps()
  if not steps:
    ckpt.close()
    raise NoCheckpointError(f"init_from: {ckpt_dir!r} holds no finished checkpoint")
  step = max(steps) if step < 0 else step
  if step not in steps:
    ckpt.close()
    raise NoCheckpointError(f"init_from: step {step} not in {ckpt_dir!r} (have {sorted(steps)})")
  return ckpt, step


def abstract(tree, sharding):
  """ShapeDtypeStructs of ``tree`` (arrays or structs) placed with ``sharding``."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                      tree)


def abstract_sharded(tree, shardings):
  """ShapeDtypeStructs of ``tree`` placed with the matching leaf of ``shardings``."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)


def _first_line(error) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"
