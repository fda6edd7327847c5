"""Several training streams read side by side, and disjoint held-out parts of a split.

A method that trains on more than one stream (MLO-MAE: pre-training images, a labelled training
part for its classification head, a held-out part for its masking network) names them in
``method.data_streams``; the trainer opens one ``train_iterator`` per stream and ``Zip`` turns
them into one iterator of ``{name: batch}``.
"""

from __future__ import annotations

from mim_jax.data import sources as sources_lib


def holdout_splits(data_config, dataset: str, split: str, fraction: float) -> tuple[str, str]:
    """(kept, held out): ``split`` cut in two by example id, the last ``fraction`` held out.

    Both are TFDS-style ranges of the base split (``train[0:1149]``, ``train[1149:1437]``), so
    they are disjoint by construction, together cover ``split``, and are read by every iterator
    like any other split. Raises if either part would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    source = sources_lib.open_source(dataset, data_config)
    base, start, stop = sources_lib.resolve_split(split, source)
    cut = start + int(round((stop - start) * (1.0 - fraction)))
    if not start < cut < stop:
        raise ValueError(f"split {split!r} ({stop - start} examples) is too small to hold out "
                         f"{fraction:.0%} of it")
    return f"{base}[{start}:{cut}]", f"{base}[{cut}:{stop}]"


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

    def close(self) -> None:
        for it in self._iterators.values():
            if hasattr(it, "close"):
                it.close()
