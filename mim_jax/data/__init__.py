"""Data pipeline: dataset sources, augmentation, host-sharded iterators, device prefetch.

``config.dataset`` is ``digits``, ``tfds:NAME`` or ``folder:PATH``; splits are
TFDS-style strings (``train``, ``train[:80%]``...). See ``sources`` and
``pipeline`` for the exact semantics (ids, determinism, resume).
"""

from mim_jax.data.pipeline import DatasetInfo, dataset_info, eval_iterator, train_iterator
from mim_jax.data.prefetch import device_prefetch
from mim_jax.data.streams import Zip, holdout_splits

__all__ = ["DatasetInfo", "Zip", "dataset_info", "device_prefetch", "eval_iterator",
           "holdout_splits", "train_iterator"]
