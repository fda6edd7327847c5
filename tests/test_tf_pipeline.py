"""The tf.data pipeline (``data.pipeline = "tf"``, mim_jax/data/tf_pipeline.py): the same
training batches on 1 and 2 hosts and after a restart, crop boxes that reproduce the crops
(against PIL), torchvision's crop sampling (against the numpy implementation), unreadable images
skipped and counted (folder and TFDS), evaluation passes equal to the Python pipeline's."""

import logging

import numpy as np
import pytest

from data_helpers import (assert_batches_equal, constant_png, make_config, take,
                          tfds_mock_reader)
from mim_jax import data
from mim_jax.config import ConfigError
from mim_jax.data import sources, tf_pipeline, transforms
from test_data import (BAD_FILE, check_boxes, image_folder,  # pylint: disable=unused-import
                       mnist_metadata)

TF = dict(pipeline="tf")
# The pipeline's images are uint8 (rounded after the resize); TensorFlow's antialiased bicubic
# is PIL's to ~0.005 of a level, so a pixel is within half a level (+ that) of PIL's float one.
ROUNDING = 0.5 + 0.02


def recrop(image, box, flipped, size):
  """The training crop of ``image`` redone from its reported box with PIL: float levels."""
  height, width = image.shape[:2]
  top, left, bottom, right = np.round(box.astype(np.float64) * [height, width, height, width]
                                      ).astype(int)
  out = transforms.resize_one(image[top:bottom, left:right], size, size)
  return out[:, ::-1] if flipped else out


def levels(normalized, opts):
  """The Python pipeline's normalized images back in grey levels."""
  std = np.asarray(opts.std, np.float64) * 255
  return normalized * std + np.asarray(opts.mean, np.float64) * 255


def hosts_concat(cfg, spec, split, steps, hosts, **kw):
  """``steps`` global batches as ``hosts`` hosts see them, concatenated per step."""
  its = [data.train_iterator(cfg, spec, split, process_index=h, process_count=hosts, **kw)
         for h in range(hosts)]
  out = []
  for _ in range(steps):
    parts = [next(it) for it in its]
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out


@pytest.mark.parametrize("spec", ["digits", "folder"])
def test_same_batches_on_1_and_2_hosts_and_after_a_restart(spec, image_folder):
  spec = f"folder:{image_folder}" if spec == "folder" else spec
  cfg = make_config(**TF)
  kw = dict(global_batch_size=8, image_size=8, seed=11)
  one = hosts_concat(cfg, spec, "train", 5, 1, **kw)
  two = hosts_concat(cfg, spec, "train", 5, 2, **kw)
  for a, b in zip(one, two):
    assert_batches_equal(a, b)
  resumed = take(data.train_iterator(cfg, spec, "train", start_step=3, **kw), 2)  # mid-epoch
  for a, b in zip(one[3:], resumed):
    assert_batches_equal(a, b)
  other_seed = next(data.train_iterator(cfg, spec, "train", **dict(kw, seed=12)))
  assert not np.array_equal(other_seed["id"], one[0]["id"])


def test_an_epoch_visits_every_example_once():
  cfg = make_config(**TF)
  n = 1437   # digits' train split
  batches = take(data.train_iterator(cfg, "digits", "train", global_batch_size=479,
                                     image_size=8, seed=0), 6)           # 2 epochs of 3 batches
  first, second = (np.concatenate([b["id"] for b in batches[i:i + 3]]) for i in (0, 3))
  assert sorted(first) == sorted(second) == list(range(n))
  assert not np.array_equal(first, second)                             # reshuffled


def test_crop_boxes_and_flips_reproduce_the_crops(image_folder):
  cfg = make_config(**TF)
  spec = f"folder:{image_folder}"
  source = sources.open_source(spec, cfg)
  batches = take(data.train_iterator(cfg, spec, "train", global_batch_size=4, image_size=8,
                                     seed=3), 6)
  flipped, jpegs = [], 0
  for b in batches:
    check_boxes(b)
    for j, index in enumerate(b["id"]):
      expected = recrop(source.load("train", int(index)), b["crop_box"][j], b["flipped"][j], 8)
      assert b["image"].dtype == np.uint8
      if source.file("train", int(index)).endswith((".jpg", ".jpeg")):
        # a cropped JPEG decode differs from PIL's whole decode at the crop's edge columns only
        # (chroma upsampling); a box off by one pixel of these noise images is ~7 levels off
        diff = np.abs(b["image"][j] - expected)
        assert diff.mean() < 1.0 and diff.max() < 30, (index, diff.mean(), diff.max())
        jpegs += 1
      else:
        np.testing.assert_allclose(b["image"][j], expected, atol=ROUNDING)
    flipped.extend(b["flipped"])
  assert 0 < np.mean(flipped) < 1 and 0 < jpegs < 24
  digits = sources.open_source("digits", cfg).images("train")
  for b in take(data.train_iterator(cfg, "digits", "train", global_batch_size=16, image_size=12,
                                    seed=5), 2):
    check_boxes(b)
    for j, index in enumerate(b["id"]):
      expected = recrop(digits[index], b["crop_box"][j], b["flipped"][j], 12)
      np.testing.assert_allclose(b["image"][j], expected, atol=ROUNDING)


def test_crop_sampling_is_torchvisions_as_the_numpy_implementation():
  """tf_pipeline.crop_window on its draws == transforms.random_resized_crop_boxes on the same
  draws, for sizes and ranges where the attempts fail too (the centred fallback)."""
  import tensorflow as tf
  rng = np.random.default_rng(0)
  attempts = transforms.NUM_CROP_ATTEMPTS
  fallbacks = 0
  for case in range(300):
    scale = (0.08, 1.0) if case % 3 else (0.9, 1.0)
    ratio = (3 / 4, 4 / 3) if case % 2 else (0.2, 5.0)
    opts = transforms.AugmentOptions(crop_scale=scale, crop_ratio=ratio)
    h, w = (int(v) for v in rng.integers(1, 60, 2))
    if case % 5 == 0:
      h, w = 3, 90            # long and thin: attempts rarely fit
    key = tf.constant([case, 7], tf.int64)
    window, flip_u = tf_pipeline.crop_window(tf, h, w, key, opts)
    u = tf.random.stateless_uniform([2 * attempts + 3], seed=key, dtype=tf.float64).numpy()
    draws = {"area": u[None, :attempts], "log_ratio": u[None, attempts:2 * attempts],
             "position": u[None, 2 * attempts:2 * attempts + 2], "flip": u[None, -1]}
    expected = [int(v[0]) for v in transforms.random_resized_crop_boxes(draws, h, w, scale, ratio)]
    assert [int(v) for v in window] == expected, (h, w, scale, ratio)
    assert float(flip_u) == u[-1]
    fallbacks += expected[2:] == [h, min(w, round(h * ratio[1]))] and case % 5 == 0
  assert fallbacks > 10


def test_unreadable_images_are_skipped_counted_and_logged(image_folder, caplog):
  cfg = make_config(**TF)
  spec = f"folder:{image_folder}"
  files = sources.open_source(spec, cfg)._split("train")[0]
  bad_id = files.index(f"{image_folder}/{BAD_FILE}")
  with caplog.at_level(logging.WARNING, logger="mim_jax.data"):
    it = data.train_iterator(cfg, spec, "train", global_batch_size=4, image_size=8, seed=0)
    batches = take(it, 8)                                    # 32 slots: ~3 epochs of 11
  ids = np.concatenate([b["id"] for b in batches])
  assert bad_id not in ids and set(ids.tolist()) == set(range(11)) - {bad_id}
  assert all(b["image"].shape == (4, 8, 8, 3) for b in batches)
  assert it.skipped_images >= 2                               # once per epoch it came up in
  assert sum("broken.jpg" in r.getMessage() for r in caplog.records) == 1


def test_tfds_content_ids_resume_and_a_corrupted_example(mnist_metadata):
  """Fake mnist whose example i is a constant PNG of value i (example 33 is garbage bytes)."""
  import tensorflow_datasets as tfds

  encoded = [constant_png(i) if i != 33 else b"not a png" for i in range(100)]

  as_dataset = tfds_mock_reader(encoded)

  cfg = make_config(data_dir=mnist_metadata, shuffle_buffer=8, mean=(0,), std=(1 / 255,), **TF)
  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=mnist_metadata):
    kw = dict(global_batch_size=4, image_size=4, seed=0)
    it = data.train_iterator(cfg, "tfds:mnist", "train[30:40]", **kw)
    batches = take(it, 6)
    ids = np.concatenate([b["id"] for b in batches])
    assert 33 not in ids and set(ids.tolist()) == set(range(30, 40)) - {33}
    assert it.skipped_images >= 1
    for b in batches:
      np.testing.assert_allclose(b["image"], np.broadcast_to(
          b["id"][:, None, None, None].astype(np.float32), b["image"].shape), atol=1e-3)
      np.testing.assert_array_equal(b["label"], b["id"] % 10)
    resumed = take(data.train_iterator(cfg, "tfds:mnist", "train[30:40]", start_step=4, **kw), 2)
    for a, r in zip(batches[4:], resumed):
      assert_batches_equal(a, r)
    it = data.eval_iterator(cfg, "tfds:mnist", "train[30:40]", global_batch_size=4, image_size=4)
    batches = list(it)
    ids = np.concatenate([b["id"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(ids, [30, 31, 32, 34, 35, 36, 37, 38, 39])
    assert it.skipped_images == 1 and batches[0]["id"][3] == -1 and len(batches) == 3
    for b in batches:
      np.testing.assert_allclose(b["image"][b["mask"]], np.broadcast_to(
          b["id"][b["mask"], None, None, None].astype(np.float32), (b["mask"].sum(), 4, 4, 3)),
          atol=1e-3)


def test_randaugment_is_the_projects_on_each_crop_seeded_by_the_example(image_folder):
  """Batch with RandAugment == the same batch without it, each image then put through
  randaugment.randaugment with the Generator of its example's seed."""
  import tensorflow as tf
  from mim_jax.data import randaugment as ra
  spec = f"folder:{image_folder}"
  kw = dict(global_batch_size=8, image_size=8, seed=1)
  plain = next(data.train_iterator(make_config(**TF), spec, "train", **kw))
  cfg = make_config(randaugment="rand-m9-mstd0.5-inc1", **TF)
  with_ra = next(data.train_iterator(cfg, spec, "train", **kw))
  np.testing.assert_array_equal(with_ra["id"], plain["id"])
  fill = ra.fill_from_mean(cfg.mean, 3)
  changed = 0
  for j, example in enumerate(plain["id"]):
    key = tf_pipeline._fold(tf, tf_pipeline.seed_pair(1), tf_pipeline.AUGMENT_STREAM, 0,
                            int(example))                     # epoch 0: the first 8 of 10
    seed = int(tf_pipeline.example_seed(tf, key, transforms.RANDAUGMENT_STREAM)) % 2**64
    expected = ra.randaugment(plain["image"][j], cfg.randaugment,
                              transforms.example_rng(seed, transforms.RANDAUGMENT_STREAM), fill)
    np.testing.assert_array_equal(with_ra["image"][j], expected)
    changed += not np.array_equal(expected, plain["image"][j])
  assert changed >= 2
  with pytest.raises(ConfigError, match="data.pipeline must be 'python' or 'tf'"):
    data.train_iterator(make_config(pipeline="grain"), "digits", "train", **kw)


def test_random_erasing_boxes_from_the_host_filled_on_the_devices():
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
  kw = dict(global_batch_size=64, image_size=16, seed=2)
  cfg = make_config(random_erase=0.25, **TF)
  host = take(data.train_iterator(cfg, "digits", "train", **kw), 2)
  plain = take(data.device_prefetch(data.train_iterator(make_config(**TF), "digits", "train",
                                                        **kw), sharding), 2)
  erased = take(data.device_prefetch(data.train_iterator(cfg, "digits", "train", **kw),
                                     sharding), 2)
  boxes = np.concatenate([b["erase_box"] for b in host])
  some = boxes[:, 2] > 0
  assert 10 <= some.sum() <= 55                                   # ~25 % of 128
  top, left, h, w = boxes[some].T
  assert np.all((h < 16) & (w < 16) & (top + h <= 16) & (left + w <= 16) & (h > 0) & (w > 0))
  area = h * w / 256
  assert np.all((area > 0.01) & (area < 0.4)) and np.all((h / w > 0.2) & (h / w < 5))
  noise = []
  for b_host, b_plain, b_erased in zip(host, plain, erased):
    assert "erase_box" not in b_erased and "erase_seed" not in b_erased
    base, out = np.asarray(b_plain["image"]), np.asarray(b_erased["image"])
    for j, (t, l, hh, ww) in enumerate(b_host["erase_box"]):
      inside = np.zeros(base.shape[1:3], bool)
      inside[t:t + hh, l:l + ww] = True
      np.testing.assert_array_equal(out[j][~inside], base[j][~inside])
      noise.append(out[j][inside].ravel())
  noise = np.concatenate(noise)
  assert len(noise) > 500 and abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.15


@pytest.mark.parametrize("whole_image", [False, True])
def test_evaluation_equals_the_python_pipelines(image_folder, whole_image):
  """Same examples, order, padding and masks as the Python pipeline; images to ~0.02 of a grey
  level (TensorFlow's and PIL's resamplers); the unreadable file masked and counted."""
  kw = dict(global_batch_size=4, image_size=8, whole_image=whole_image)
  opts = transforms.AugmentOptions.from_config(make_config())
  for spec, split in ((f"folder:{image_folder}", "train"), ("digits", "test")):
    for host in range(2):
      tf_it = data.eval_iterator(make_config(**TF), spec, split, process_index=host,
                                 process_count=2, **kw)
      py_it = data.eval_iterator(make_config(), spec, split, process_index=host,
                                 process_count=2, **kw)
      assert len(tf_it) == len(py_it)
      for a, b in zip(tf_it, py_it):
        for key in ("label", "id", "mask"):
          np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_allclose(a["image"][a["mask"]], levels(b["image"][b["mask"]], opts),
                                   atol=ROUNDING)
      assert tf_it.skipped_images == py_it.skipped_images
  assert data.eval_iterator(make_config(**TF), f"folder:{image_folder}", "train",
                            process_index=0, process_count=1, **kw).__class__.__name__ == (
                                "_TfEvalIterator")


def test_antialias_off_resizes_with_the_plain_kernel(image_folder):
  """antialias=False: the crop resized by TensorFlow's plain bicubic (PIL's antialiased one
  differs when downscaling); the python pipeline refuses it."""
  import tensorflow as tf
  spec = f"folder:{image_folder}"
  cfg = make_config(antialias=False, **TF)
  source = sources.open_source(spec, cfg)
  checked = 0
  for b, j in ((b, j) for b in take(data.train_iterator(cfg, spec, "train", global_batch_size=4,
                                                      image_size=4, seed=3), 6)
               for j in range(4)):
    index = b["id"][j]
    if not source.file("train", int(index)).endswith(".png"):
      continue                        # PNGs: decoded whole, so the crop is exact
    checked += 1
    image = source.load("train", int(index))
    height, width = image.shape[:2]
    top, left, bottom, right = np.round(b["crop_box"][j].astype(np.float64) * [
        height, width, height, width]).astype(int)
    out = tf.image.resize(image[top:bottom, left:right], [4, 4], method="bicubic").numpy()
    out = np.round(np.clip(out, 0, 255))
    np.testing.assert_array_equal(b["image"][j], out[:, ::-1] if b["flipped"][j] else out)
    aa = recrop(image, b["crop_box"][j], b["flipped"][j], 4)
    assert np.abs(aa - b["image"][j]).max() > 2        # a real downscale: the kernels differ
  assert checked >= 3
  with pytest.raises(ConfigError, match="antialias=False needs data.pipeline=tf"):
    data.train_iterator(make_config(antialias=False), spec, "train", global_batch_size=4,
                        image_size=4, seed=3)


def test_images_are_normalized_on_the_devices(image_folder):
  """uint8 batches + image_normalization -> device_prefetch gives (x / 255 - mean) / std, as
  float32, for a plain iterator and for a Zip of streams."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
  cfg = make_config(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), **TF)
  spec = f"folder:{image_folder}"
  kw = dict(global_batch_size=8, image_size=8, seed=3)
  host = next(data.train_iterator(cfg, spec, "train", **kw))
  device = next(data.device_prefetch(data.train_iterator(cfg, spec, "train", **kw), sharding))
  expected = (host["image"] / 255.0 - np.array([0.4, 0.5, 0.6])) / np.array([0.2, 0.25, 0.3])
  assert device["image"].dtype == np.float32 and host["image"].dtype == np.uint8
  np.testing.assert_allclose(np.asarray(device["image"]), expected, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(device["id"]), host["id"])
  zipped = data.Zip({"a": data.train_iterator(cfg, spec, "train", **kw),
                     "b": data.train_iterator(make_config(), "digits", "train", **kw)})
  both = next(data.device_prefetch(zipped, sharding))
  np.testing.assert_allclose(np.asarray(both["a"]["image"]), expected, atol=1e-5)
  python = next(data.train_iterator(make_config(), "digits", "train", **kw))["image"]
  np.testing.assert_array_equal(np.asarray(both["b"]["image"]), python)   # left as it was
