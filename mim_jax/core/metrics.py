"""Metric output: TensorBoard (clu), ``metrics.jsonl`` and console progress lines.

Only process 0 writes; other processes get a writer that does nothing. Where clu or TensorFlow
is not installed (an image with JAX alone), the metrics go to ``metrics.jsonl`` only.
"""

import json
import logging
import math
import os

import jax
import numpy as np


class MetricLogger:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      try:
        from clu import metric_writers  # imports TensorFlow: only where needed
      except ImportError as e:
        logging.getLogger("mim_jax").warning(
            "no TensorBoard output (%s): the metrics go to metrics.jsonl only", e)
      else:
        self._tb = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    """One JSON object per call with ``step`` and the given scalars, plus TensorBoard scalars."""
    if not self.active:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    if self._tb is not None:
      self._tb.write_scalars(int(step), scalars)
      self._tb.flush()

  def truncate_after(self, step: int) -> int:
    """Drops the rows of steps after ``step`` (-1: all rows), rewriting the file atomically;
    returns how many were dropped. A resumed run calls it with the step it resumes from, so
    that the steps it runs again are not in the file twice."""
    if not self.active or not os.path.exists(self.jsonl_path):
      return 0
    with open(self.jsonl_path) as f:
      lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError):  # a line cut short by a kill: dropped with the rest
        pass
    if len(kept) < len(lines):
      tmp = self.jsonl_path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.jsonl_path)
    return len(lines) - len(kept)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    if self._tb is not None:
      self._tb.write_images(int(step), {name: image[None]})
      self._tb.flush()

  def last_value(self, key: str):
    """The most recent logged value of ``key`` in metrics.jsonl (e.g. after a resume)."""
    if not os.path.exists(self.jsonl_path):
      return None
    value = None
    with open(self.jsonl_path) as f:
      for line in f:
        value = json.loads(line).get(key, value)
    return value

  def close(self):
    if self._tb is not None:
      self._tb.close()


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def progress_line(step, total, loss, lr, images_per_sec, eta_s, extra=None) -> str:
  """One log line; ``extra`` (name -> value) is shown after the loss (MLO-MAE's other levels)."""
  more = "".join(f" | {k} {v:.4g}" for k, v in (extra or {}).items())
  return (f"step {step}/{total} ({100.0 * step / total:.1f}%) | loss {loss:.4f}{more} | "
          f"lr {lr:.3g} | {images_per_sec:.1f} img/s | ETA {format_duration(eta_s)}")
