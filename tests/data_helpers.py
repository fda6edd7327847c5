"""Helpers shared by the data-pipeline tests (test_data.py, test_augment.py)."""

import ml_collections
import numpy as np


def make_config(**overrides):
  """A ``config.data`` group with the defaults the data tests start from (augmentations off;
  the Python pipeline, which test_tf_pipeline overrides)."""
  cfg = ml_collections.ConfigDict(dict(
      data_dir=None, crop_scale=(0.2, 1.0), crop_ratio=(0.75, 1.3333333), flip=True,
      eval_crop_pct=0.875, mean=(0.5,), std=(0.5,), shuffle_buffer=10000, num_workers=2,
      randaugment="", random_erase=0.0, pipeline="python"))
  cfg.update(overrides)
  return cfg


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# A colour per class, far apart, so that a probe can tell the classes apart from any crop.
CLASS_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200),
                 (40, 200, 200))


def write_image_folder(root, splits, size=12, seed=0):
  """Writes a folder dataset ``root/SPLIT/CLASS/NNN.png`` and returns ``str(root)``.

  ``splits``: {split: {class name: count}}. Class i's images are its colour
  (``CLASS_COLOURS[i % 6]``, classes in sorted order) plus noise, with a dark
  stripe whose position varies; files are named in order, so the split is
  listed class by class.
  """
  import os

  from PIL import Image

  rng = np.random.default_rng(seed)
  for split, classes in splits.items():
    for i, name in enumerate(sorted(classes)):
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for j in range(classes[name]):
        pixels = np.asarray(CLASS_COLOURS[i % len(CLASS_COLOURS)], np.float32)
        pixels = np.broadcast_to(pixels, (size, size, 3)) + rng.normal(0, 20, (size, size, 3))
        row = rng.integers(0, size)
        pixels[row] *= 0.3
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(os.path.join(root, split, name, f"{j:03d}.png"))
  return str(root)


def write_tfds_metadata(data_dir, splits, name="mnist"):
  """A TFDS data_dir holding only ``name``'s metadata with ``splits`` ({split: examples}),
  for ``tfds.testing.mock_data``; returns ``str(data_dir)``."""
  import os

  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=str(data_dir))
  os.makedirs(builder.data_dir)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name=name, filetype_suffix="tfrecord")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=template)
      for split, n in splits.items()]))
  builder.info.write_to_directory(builder.data_dir)
  return str(data_dir)


def tfds_mock_reader(encoded, size=100):
  """An ``as_dataset_fn`` for ``tfds.testing.mock_data``: records ``{"image": encoded[i],
  "label": i % 10}`` of a ``size``-example split, sliced as the split string asks."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def as_dataset(builder, split, decoders=None, read_config=None, shuffle_files=False):
    del decoders, read_config, shuffle_files  # the pipeline asks for raw bytes, in order
    (absolute,) = tfds.core.ReadInstruction.from_spec(str(split)).to_absolute(
        builder.info.splits)
    lo, hi = absolute.from_ or 0, absolute.to or size
    return tf.data.Dataset.from_tensor_slices(
        {"image": encoded[lo:hi], "label": np.arange(lo, hi, dtype=np.int64) % 10})
  return as_dataset


def constant_png(value, size=28):
  """PNG bytes of a grey ``size`` x ``size`` image whose every pixel is ``value``."""
  import io
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()
