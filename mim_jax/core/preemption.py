"""SIGTERM, handled from the entry point's first line.

Before training begins (``starting_up``: reading data, restoring, the random-init probe) there
is nothing new to save, so SIGTERM stops the run at once with ``errors.Preempted``. Once the loop
runs, it only sets a flag: the loop saves a checkpoint at the next step boundary and exits.
"""

import logging
import signal

from mim_jax.core.errors import Preempted

log = logging.getLogger("mim_jax")

_state = {"installed": False, "requested": False, "starting_up": True}


def _handle(signum, frame):
  del signum, frame
  _state["requested"] = True
  if _state["starting_up"]:
    raise Preempted("SIGTERM before training began: stopped before the first step, with no "
                    "checkpoint due; run the same command again to resume")
  log.warning("SIGTERM received: saving a checkpoint at the next step boundary, then stopping")


def install() -> bool:
  """Routes SIGTERM here; call first thing. Returns False (changing nothing) when already
  installed, so that only the caller that installed it uninstalls it."""
  if _state["installed"]:
    return False
  signal.signal(signal.SIGTERM, _handle)
  _state.update(installed=True, starting_up=True, requested=False)
  return True


def training_started() -> None:
  """From here on SIGTERM asks for a checkpoint at the next step instead of stopping at once."""
  _state["starting_up"] = False


def check() -> None:
  """Raises Preempted if SIGTERM came while the handler could not raise (start-up end)."""
  if _state["requested"] and _state["starting_up"]:
    raise Preempted("SIGTERM before training began: stopped; run again to resume")


def requested() -> bool:
  return _state["requested"]


def uninstall() -> None:
  """Gives SIGTERM back to the default action (end of a run started in-process, e.g. tests)."""
  if _state["installed"]:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  _state.update(installed=False, starting_up=True, requested=False)
