"""Helpers shared by the data-pipeline tests (test_data.py, test_augment.py)."""

import ml_collections
import numpy as np


def make_config(**overrides):
    """A ``config.data`` group with the defaults the data tests start from (augmentations off)."""
    cfg = ml_collections.ConfigDict(dict(
        data_dir=None, crop_scale=(0.2, 1.0), crop_ratio=(0.75, 1.3333333), flip=True,
        eval_crop_pct=0.875, mean=(0.5,), std=(0.5,), shuffle_buffer=10000, num_workers=2,
        randaugment="", random_erase=0.0))
    cfg.update(overrides)
    return cfg


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
