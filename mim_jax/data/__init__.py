"""Data pipeline: dataset sources, augmentation, host-sharded iterators, device prefetch.

``config.dataset`` is ``digits``, ``tfds:NAME`` or ``folder:PATH``; splits are
TFDS-style strings (``train``, ``train[:80%]``...). See ``sources`` and
``pipeline`` for the exact semantics (ids, determinism, resume).
"""

from mim_jax.data.pipeline import DatasetInfo, dataset_info, eval_iterator, train_iterator
from mim_jax.data.prefetch import device_prefetch

__all__ = ["DatasetInfo", "dataset_info", "device_prefetch", "eval_iterator", "train_iterator"]
