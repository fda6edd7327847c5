"""Errors a user can fix, and the exit statuses of ``python -m mim_jax.main``.

A ``UserError`` is a problem with the input (config, dataset, workdir, checkpoint to start from):
the entry point prints its message alone, with no traceback, and exits with ``EXIT_USER_ERROR``.
``--debug`` (or ``MIM_JAX_DEBUG=1``) shows the traceback too. Anything else is a bug and keeps
its traceback.
"""

import errno

EXIT_OK = 0             # done, or stopped by SIGTERM after saving a checkpoint (run again)
EXIT_BUG = 1            # an unexpected error: the traceback is printed
EXIT_USER_ERROR = 2     # a UserError: one message on stderr
EXIT_NON_FINITE = 3     # the loss or the gradients became NaN / inf
EXIT_WRITE = 4          # a checkpoint or another file could not be written (disk full, ...)


class UserError(Exception):
  """An error in what the user gave: the message says which input and what to do."""


class DatasetError(UserError):
  """A dataset or split that does not exist or cannot be read."""


class WorkdirError(UserError):
  """A workdir that cannot be used: locked by another run, unwritable, or holding checkpoints
  of a different config."""


class WriteError(RuntimeError):
  """A write in the workdir failed (disk full, quota, read-only); the run stops with
  ``EXIT_WRITE``, naming the last good checkpoint."""


class CheckpointWriteError(WriteError):
  """Writing a checkpoint failed."""


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN / inf; the run stops with ``EXIT_NON_FINITE``."""


class Preempted(BaseException):
  """SIGTERM arrived before training began: nothing new to save; the run stops (status 0).
  A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""


_WRITE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                 errno.EROFS: "Read-only file system", errno.EFBIG: "File too large"}


def write_failure(error):
  """'No space left on device' (or another reason a file system refuses a write) when ``error``,
  or an error it was raised from, is such a refusal; None otherwise. Libraries that write
  through their own layers (tensorstore, TensorFlow) keep only the text, so that is read too."""
  seen, todo = [], [error]
  while todo:
    e = todo.pop()
    if e is None or any(e is s for s in seen):
      continue
    seen.append(e)
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
      return _WRITE_ERRNOS[e.errno]
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  for reason in _WRITE_ERRNOS.values():
    if any(reason in str(e) for e in seen):
      return reason
  return None
