"""Subsets of a split: seeded draws, stratified by class, instead of the first N examples.

Whatever takes part of a split (the fast probe's and kNN's examples, ``eval.max_examples``, the
pictures of a run, MLO-MAE's held-out part) takes a draw, never a prefix: a split can be ordered
by class (a folder dataset is listed class by class), and its first N examples are then one
class.

A draw of ``count`` of a split's n examples is a pure function of (the split's labels, count,
seed), so it is the same on every host, in every process and on every resume:

* the count is shared out between the classes in proportion to their sizes, by largest
  remainders (ties to the lower class), so each class gets within one of its share; when
  ``count`` is at least the number of classes, every class that has examples gets at least one
  (taken from the class furthest above its share);
* within a class, the examples are the first of a permutation of the class's examples (in id
  order) drawn from ``np.random.default_rng([seed, 3, label])``, so with the same seed a larger
  draw of a class contains the smaller one;
* the ids come back sorted, so an iterator reads them in the split's canonical order.

Without labels (a TFDS split with more than ``sources.MAX_LABEL_PASS`` examples, whose labels
are not read, see ``TfdsSource.labels``) the draw is uniform: the first ``count`` of
``default_rng([seed, 4]).permutation(n)``.

``Subset`` names such a draw (or its complement) of a split string; the iterators and
``dataset_info`` take it wherever they take a split string.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mim_jax.data import sources as sources_lib


def allocate(sizes, count: int) -> np.ndarray:
  """Examples per class (int64 [C]) for a draw of ``count`` from classes of ``sizes``.

  Largest remainders on the exact proportional shares ``count * size / total``; then, when
  ``count`` is at least the number of non-empty classes, every non-empty class is raised to
  one, each unit taken from the class furthest above its share. Never above a class's size;
  ``count`` is capped at the total.
  """
  sizes = np.asarray(sizes, np.int64)
  total = int(sizes.sum())
  count = max(0, min(int(count), total))
  if count == 0:
    return np.zeros_like(sizes)
  scaled = count * sizes  # share of class c = scaled[c] / total, exactly
  alloc, remainder = np.divmod(scaled, total)
  rest = count - int(alloc.sum())
  order = np.lexsort((np.arange(len(sizes)), -remainder))  # largest remainder, lower class first
  alloc[order[:rest]] += 1
  present = sizes > 0
  if count >= int(present.sum()):
    while True:
      empty = np.flatnonzero(present & (alloc == 0))
      if not len(empty):
        break
      receiver = empty[np.argmax(remainder[empty])]
      donors = np.flatnonzero(alloc >= 2)
      donor = donors[np.argmax(alloc[donors] * total - scaled[donors])]
      alloc[donor] -= 1
      alloc[receiver] += 1
  return alloc


def stratified_draw(labels, count: int, seed: int) -> np.ndarray:
  """Sorted positions (int64) of a class-stratified draw of ``count`` of ``labels``' examples.

  ``count`` is capped at ``len(labels)`` (then every position). See the module docstring.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if count >= n:
    return np.arange(n, dtype=np.int64)
  classes, inverse = np.unique(labels, return_inverse=True)
  sizes = np.bincount(inverse, minlength=len(classes))
  alloc = allocate(sizes, count)
  by_class = np.argsort(inverse, kind="stable")  # positions grouped by class, in id order
  ends = np.cumsum(sizes)
  chosen = []
  for c, value in enumerate(classes):
    if alloc[c]:
      members = by_class[ends[c] - sizes[c]:ends[c]]
      perm = np.random.default_rng([_seed(seed), 3, int(value) % 2**32]).permutation(sizes[c])
      chosen.append(members[perm[:alloc[c]]])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def uniform_draw(n: int, count: int, seed: int) -> np.ndarray:
  """Sorted positions (int64) of a uniform draw of ``count`` of ``n`` (capped at ``n``)."""
  if count >= n:
    return np.arange(n, dtype=np.int64)
  perm = np.random.default_rng([_seed(seed), 4]).permutation(n)
  return np.sort(perm[:max(int(count), 0)]).astype(np.int64)


def _seed(seed: int) -> int:
  return int(seed) % (2**63)


@dataclasses.dataclass(frozen=True)
class Subset:
  """A seeded draw from a split string, or its complement.

  ``split``: the split string drawn from (a base split or role, sliced or not). Exactly one
  of ``count`` (examples, capped at the split's size) and ``fraction`` (in (0, 1]; the count
  is ``fraction * n`` rounded half up) gives the draw's size. ``complement``: the split's
  examples that the draw does not take, so that a draw and its complement are disjoint and
  together the split.
  """

  split: str
  count: int = 0
  fraction: float = 0.0
  seed: int = 0
  complement: bool = False

  def __post_init__(self):
    if not isinstance(self.split, str):
      raise ValueError(f"Subset.split must be a split string, got {self.split!r}")
    if (self.count > 0) == (self.fraction > 0):
      raise ValueError(f"a Subset needs exactly one of count > 0 and fraction > 0, got "
                       f"count={self.count}, fraction={self.fraction}")
    if self.count < 0 or not 0.0 <= self.fraction <= 1.0:
      raise ValueError(f"Subset count must be >= 0 and fraction in (0, 1], got "
                       f"count={self.count}, fraction={self.fraction}")

  def size(self, n: int) -> int:
    """Examples the draw takes from a split of ``n`` (before any complement)."""
    k = self.count if self.count else int(np.floor(self.fraction * n + 0.5))
    return min(int(k), n)

  def __str__(self):
    size = f"{self.count}" if self.count else f"{self.fraction:.4g} of it"
    what = "all but a draw of" if self.complement else "a draw of"
    return f"{self.split} ({what} {size}, seed {self.seed})"


def resolve(split, source) -> tuple[str, np.ndarray]:
  """(base split, sorted ids int64) of a split string or ``Subset`` on an open source."""
  if isinstance(split, Subset):
    base, start, stop = sources_lib.resolve_split(split.split, source)
    n = stop - start
    k = split.size(n)
    if k >= n:
      positions = np.arange(n, dtype=np.int64)
    else:
      labels = source.labels(base, start, stop)
      positions = (stratified_draw(labels, k, split.seed) if labels is not None
                   else uniform_draw(n, k, split.seed))
    if split.complement:
      positions = np.setdiff1d(np.arange(n, dtype=np.int64), positions, assume_unique=True)
    return base, start + positions
  base, start, stop = sources_lib.resolve_split(split, source)
  return base, np.arange(start, stop, dtype=np.int64)
