"""A workdir belongs to one run: its lock, and the config its checkpoints were written with.

* **The lock** (``WORKDIR/lock``): process 0 holds an exclusive ``flock`` on it for the whole run
  and writes who holds it (host, pid, run id, start time). A second process finds the lock taken
  and stops with a ``WorkdirError`` before touching anything. The kernel drops the lock when its
  process dies, however it dies; a lock file that still names an owner when it is taken again
  was left by a run that did not end cleanly, and is taken over with a warning. Where the file
  system has no ``flock``, the owner's pid is checked instead (same host only). In a multi-host
  run only process 0 locks, and every process learns whether it could.
* **The resume check**: a run that resumes from checkpoints compares its config with
  ``config.json``, the config they were written with. A change that alters the run (method,
  model, data, batch, schedule, optimizer, ...) is refused, naming each key; the harmless ones
  (``HARMLESS``: logging, image, evaluation and checkpoint settings) are allowed and logged.
  ``config.json`` is written only once the checks have passed, and a config it replaces is kept
  in ``config_history/``.
"""

import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import uuid

from mim_jax import config as config_lib
from mim_jax.core.errors import WorkdirError

log = logging.getLogger("mim_jax")

LOCK_NAME = "lock"
CONFIG_NAME = "config.json"
HISTORY_DIR = "config_history"
RUN_STATUS_NAME = "run_status.json"

# Config keys (or groups, ending in '.') that a resumed run may change: they decide what is
# logged, evaluated and saved, and how fast, not what is trained (model.attention picks the
# kernel that computes the same attention).
HARMLESS = (
    "log_every", "image_every", "checkpoint.", "probe.", "knn.", "eval.", "amt.images",
    "data.num_workers", "data.prefetch", "data.data_dir", "distributed.", "mesh.",
    "model.attention", "steps_per_call")

# Keys added after runs had been written without them, whose default is not what those runs
# did: the value that reproduces such a run. A saved config that lacks one of these ran with
# this value, not with today's default.
BEFORE_THE_KEY = {"data.pipeline": "python"}


def make(workdir: str) -> str:
  """Creates ``workdir`` (and parents); a WorkdirError if it cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create workdir {workdir!r}: {e.strerror or e}; choose another "
                       f"--workdir") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f"workdir {workdir!r} is not writable; choose another --workdir")
  return workdir


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _describe(owner: dict) -> str:
  return (f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, run "
          f"{owner.get('run_id', '?')}, started {owner.get('started', '?')}")


class Lock:
  """The workdir's lock (see the module docstring). ``acquire`` raises WorkdirError when another
  live process holds it; ``release`` (also on exceptions) frees it."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.run_id = uuid.uuid4().hex[:12]
    self._fd = None

  def _read_owner(self) -> dict:
    try:
      with open(self.path) as f:
        text = f.read().strip()
      return json.loads(text) if text else {}
    except (OSError, ValueError):
      return {"host": "?", "pid": "?", "run_id": "unreadable lock file"}

  def _refuse(self, owner):
    raise WorkdirError(
        f"workdir {os.path.dirname(self.path)!r} is in use by another run ({_describe(owner)}). "
        f"Wait for it to end or stop it, or use another --workdir. If that run is certainly "
        f"gone (e.g. on another host), delete {self.path}.")

  def acquire(self) -> "Lock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      self._refuse(self._read_owner())
    except OSError as e:  # no flock on this file system: fall back on the owner's pid
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      owner = self._read_owner()
      if owner and owner.get("host") == socket.gethostname() and isinstance(
          owner.get("pid"), int) and owner["pid"] != os.getpid() and _pid_alive(owner["pid"]):
        os.close(fd)
        self._refuse(owner)
      log.warning("file locking is not supported in %s: the lock only checks the owner's pid "
                  "on this host", os.path.dirname(self.path))
    previous = self._read_owner()
    if previous:
      log.warning("taking over the lock of a run that did not end cleanly (%s)",
                  _describe(previous))
    me = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id,
          "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)  # an empty lock file: the last run ended cleanly
      finally:
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def acquire_for_run(workdir: str):
  """Process 0 takes the workdir's lock; in a multi-host run every process learns whether it
  could, and all stop with a WorkdirError if not. Returns the Lock (None on other processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = Lock(workdir).acquire()
    except WorkdirError as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not ok and error is None:
      raise WorkdirError(f"process 0 could not lock workdir {workdir!r} (another run holds it: "
                         f"see process 0's message)")
  if error is not None:
    raise error
  return lock


# ---------------------------------------------------------------------------------------------
# The resume check.
# ---------------------------------------------------------------------------------------------
def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, prefix + key + "."))
    else:
      out[prefix + key] = value
  return out


def _plain(config) -> dict:
  """The config as JSON would give it back (tuples as lists)."""
  return json.loads(json.dumps(config.to_dict()))


def harmless(key: str) -> bool:
  return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS)


def config_changes(saved: dict, config) -> list:
  """[(key, saved value, new value)] of every key whose value differs (missing keys: None)."""
  old, new = _flat(saved), _flat(_plain(config))
  return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def saved_config(workdir: str):
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"cannot read {path} ({e}), the config of the checkpoints in this "
                       f"workdir; restore it, or use another --workdir") from None


def _cli_value(value) -> str:
  """``value`` as a ``--config.key=...`` override writes it."""
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def check_resume(config, workdir: str, step: int) -> list:
  """Compares ``config`` with the config of the checkpoints being resumed (from ``step``).
  Raises WorkdirError naming every change that alters the run; returns the harmless changes,
  which are logged."""
  saved = saved_config(workdir)
  if saved is None:
    log.warning("resuming %s from step %d: no %s to compare the config with", workdir, step,
                CONFIG_NAME)
    return []
  changes = config_changes(saved, config)
  # Keys the saved config lacks (written by an older version) at the value such a run had (the
  # default, or BEFORE_THE_KEY's) are no change; keys it has that no longer exist are ignored.
  old_keys, new_keys = set(_flat(saved)), set(_flat(_plain(config)))
  defaults = {**_flat(_plain(config_lib.base_config(config.method))), **BEFORE_THE_KEY}
  changes = [(k, defaults.get(k) if k not in old_keys else old, new) for k, old, new in changes]
  changes = [(k, old, new) for k, old, new in changes if old != new and k in new_keys]
  refused = [c for c in changes if not harmless(c[0])]
  if refused:
    lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, old, new in refused)
    as_it_was = " ".join(f"--config.{k}={_cli_value(old)}" for k, old, _ in refused
                         if old is not None)
    raise WorkdirError(
        f"workdir {workdir!r} holds checkpoints (up to step {step}) of a run with another "
        f"config; these changes would alter that run:\n{lines}\n"
        f"To resume it, drop those overrides, or, where a default changed since the run began, "
        f"give its old value ({as_it_was}). To train with them, start a new run in another "
        f"--workdir (and --config.init_from={workdir} to start from its weights).")
  for key, old, new in changes:
    log.info("resuming with a changed %s: %r -> %r", key, old, new)
  return changes


def write_config(config, workdir: str, step: int) -> None:
  """Writes ``config.json`` (atomically); a different earlier one is kept as
  ``config_history/config_before_step_<step>.json``."""
  saved = saved_config(workdir)
  if saved is not None and config_changes(saved, config):
    os.makedirs(os.path.join(workdir, HISTORY_DIR), exist_ok=True)
    path = os.path.join(workdir, HISTORY_DIR, f"config_before_step_{step:08d}.json")
    shutil.copyfile(os.path.join(workdir, CONFIG_NAME), path)
    log.info("the earlier config of this workdir is kept in %s", path)
  config_lib.save(config, workdir, CONFIG_NAME)


def write_run_status(workdir: str, status: str, step: int) -> None:
  """``WORKDIR/run_status.json`` (atomically; process 0 writes it): how the last attempt ended,
  "done" (every step run, the final evaluations written) or "preempted" (stopped by SIGTERM at
  ``step``, a checkpoint saved). Both exit 0; a script that runs workdirs (``mim_jax.league``)
  tells them apart here."""
  path = os.path.join(workdir, RUN_STATUS_NAME)
  with open(path + ".tmp", "w") as f:
    json.dump({"status": status, "step": int(step),
               "time": datetime.datetime.now().isoformat(timespec="seconds")}, f)
  os.replace(path + ".tmp", path)


def read_run_status(workdir: str) -> dict:
  """What ``write_run_status`` last wrote in ``workdir`` ({} when nothing readable)."""
  try:
    with open(os.path.join(workdir, RUN_STATUS_NAME)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}
