"""Several training streams read side by side, and disjoint held-out parts of a split.

A method that trains on more than one stream (MLO-MAE: pre-training images, a labelled training
part for its classification head, a held-out part for its masking network) names them in
``method.data_streams``; the trainer opens one ``train_iterator`` per stream and ``Zip`` turns
them into one iterator of ``{name: batch}``.
"""

from __future__ import annotations

from mim_jax.core.errors import DatasetError
from mim_jax.data import subsets
from mim_jax.data import sources as sources_lib


def holdout_splits(data_config, dataset: str, split: str, fraction: float,
                   seed: int = 0) -> tuple[subsets.Subset, subsets.Subset]:
  """(kept, held out): ``split`` cut in two by a seeded draw, ``fraction`` of it held out.

  The held-out part is a class-stratified draw of ``fraction`` of ``split`` (``subsets``;
  uniform for a TFDS split too large to read its labels), the kept part its complement: both
  ``subsets.Subset``s, disjoint, together ``split``, the same on every host and every resume
  (a pure function of the split, ``fraction`` and ``seed``), read by every iterator like any
  other split. Raises if either part would be empty.
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
  heldout = subsets.Subset(split, fraction=float(fraction), seed=int(seed))
  kept = subsets.Subset(split, fraction=float(fraction), seed=int(seed), complement=True)
  source = sources_lib.open_source(dataset, data_config)
  _, start, stop = sources_lib.resolve_split(split, source)
  n = stop - start
  if not 0 < heldout.size(n) < n:
    raise DatasetError(f"dataset {dataset!r}: split {split!r} ({n} examples) is too small to "
                       f"hold out {fraction:.0%} of it; use a larger split")
  return kept, heldout


class Zip:
  """Iterator of ``{name: next(iterator)}`` over named iterators (all infinite)."""

  def __init__(self, iterators: dict):
    self._iterators = dict(iterators)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return {name: next(it) for name, it in self._iterators.items()}

  @property
  def skipped_images(self) -> int:
    return sum(getattr(it, "skipped_images", 0) for it in self._iterators.values())

  @property
  def image_normalization(self) -> dict:
    """Each member's (``device_prefetch`` applies it to that member's batch)."""
    return {name: getattr(it, "image_normalization", None)
            for name, it in self._iterators.items()}

  def close(self) -> None:
    for it in self._iterators.values():
      if hasattr(it, "close"):
        it.close()
