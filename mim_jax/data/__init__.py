"""Data pipeline: dataset sources, augmentation, host-sharded iterators, device prefetch.

``config.dataset`` is ``digits``, ``tfds:NAME`` or ``folder:PATH``; splits are
TFDS-style strings (``train``, ``train[:80%]``...) whose name is a base split
of the dataset or a role: ``train``, or ``evaluation`` = the first of
``validation``, ``val``, ``test`` the dataset has (digits: ``test``; a folder:
its ``val/`` or ``test/``; ImageNet: ``validation``), so that one config runs
on every dataset. Parts of a split are seeded, class-stratified draws
(``Subset``), never its first examples. See ``sources``, ``subsets`` and
``pipeline`` for the exact semantics (ids, draws, determinism, resume). With
``data.on_device`` a small dataset lives on the accelerators instead
(``on_device``); ``feed`` is what the trainer and evaluators read either from.
"""

from mim_jax.data.feed import eval_batches, train_feeder
from mim_jax.data.pipeline import DatasetInfo, dataset_info, eval_iterator, train_iterator
from mim_jax.data.prefetch import device_prefetch
from mim_jax.data.streams import Zip, holdout_splits
from mim_jax.data.subsets import Subset

__all__ = ["DatasetInfo", "Subset", "Zip", "dataset_info", "device_prefetch", "eval_batches",
           "eval_iterator", "holdout_splits", "train_feeder", "train_iterator"]
