"""Tests of the data pipeline (mim_jax.data): sources, splits, determinism, transforms, prefetch."""

import logging
import os
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from data_helpers import (assert_batches_equal, constant_png, make_config, take,
                          tfds_mock_reader, write_image_folder)
from mim_jax import data
from mim_jax.core.errors import DatasetError
from mim_jax.data import sources, transforms


# ------------------------------------------------------------------- digits


def test_digits_info_and_content():
  cfg = make_config()
  assert data.dataset_info(cfg, "digits", "train") == data.DatasetInfo(10, 1, 1437, 1437)
  assert data.dataset_info(cfg, "digits", "test") == data.DatasetInfo(10, 1, 360, 360)
  assert data.dataset_info(cfg, "digits", "train[80%:]").num_examples == 1437 - 1150
  images, labels = sources._load_digits()  # read from sklearn's bundled file directly
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
  assert images.max() == 255 and images.min() == 0
  from sklearn.datasets import load_digits

  reference = load_digits()
  np.testing.assert_array_equal(labels, reference.target)
  np.testing.assert_array_equal(images[..., 0], np.round(reference.images * 255 / 16))


def test_digits_batches_shapes_and_ids():
  cfg = make_config()
  batch = next(data.train_iterator(cfg, "digits", "train", global_batch_size=32, image_size=16, seed=0))
  assert batch["image"].shape == (32, 16, 16, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and batch["id"].dtype == np.int32
  assert np.all((batch["id"] >= 0) & (batch["id"] < 1437))
  assert np.all((batch["label"] >= 0) & (batch["label"] < 10))
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  sub = next(data.train_iterator(cfg, "digits", "train[80%:]", global_batch_size=32, image_size=16, seed=0))
  assert np.all((sub["id"] >= 1150) & (sub["id"] < 1437))


def eval_ids(cfg, dataset, split, batch=64, **kwargs):
  ids = []
  for b in data.eval_iterator(cfg, dataset, split, global_batch_size=batch, image_size=8, **kwargs):
    ids.extend(b["id"][b["mask"]].tolist())
  return ids


def test_subsplits_match_tfds_boundaries():
  cfg = make_config()
  head, tail = eval_ids(cfg, "digits", "train[:80%]"), eval_ids(cfg, "digits", "train[80%:]")
  assert head == list(range(1150)) and tail == list(range(1150, 1437))
  assert not set(head) & set(tail) and sorted(head + tail) == list(range(1437))
  assert eval_ids(cfg, "digits", "train[10:200]") == list(range(10, 200))
  assert eval_ids(cfg, "digits", "train[:-100]") == list(range(1337))
  assert eval_ids(cfg, "digits", "test[-10:]") == list(range(350, 360))


@pytest.mark.parametrize("split,hosts", [("train", 2), ("train[10:200]", 3), ("train[80%:]", 7)])
def test_host_parts_match_tfds_even_splits(split, hosts):
  import tensorflow_datasets as tfds

  infos = {"train": types.SimpleNamespace(num_examples=1437, shard_lengths=[1437])}
  _, start, stop = sources.resolve_split(split, sources.DigitsSource())
  for host, part in enumerate(tfds.even_splits(split, hosts)):
    (absolute,) = part.to_absolute(infos)
    expected = (absolute.from_ or 0, absolute.to or 1437)
    assert sources.host_range(start, stop, host, hosts) == expected


@pytest.mark.parametrize("k", [3, 25])  # 25 crosses the first epoch boundary (1437 / 64)
def test_digits_resume_is_exact(k):
  cfg = make_config()
  kw = dict(global_batch_size=64, image_size=16, seed=7)
  full = take(data.train_iterator(cfg, "digits", "train", **kw), k + 2)
  resumed = take(data.train_iterator(cfg, "digits", "train", start_step=k, **kw), 2)
  assert_batches_equal(full[k], resumed[0])
  assert_batches_equal(full[k + 1], resumed[1])
  other_seed = next(data.train_iterator(cfg, "digits", "train", **{**kw, "seed": 8}))
  assert not np.array_equal(full[0]["id"], other_seed["id"])


def test_epoch_visits_each_example_once_and_hosts_are_disjoint():
  cfg = make_config()
  it = data.train_iterator(cfg, "digits", "train", global_batch_size=100, image_size=8, seed=1)
  ids = np.concatenate([b["id"] for b in take(it, 1437 // 100)])
  assert len(np.unique(ids)) == len(ids) == 1400
  per_host = []
  for host in range(2):
    it = data.train_iterator(cfg, "digits", "train", global_batch_size=100, image_size=8, seed=1,
                             process_index=host, process_count=2)
    batches = take(it, 718 // 50 + 1)  # a bit more than one epoch of the host's 718-719
    assert all(b["image"].shape[0] == 50 for b in batches)
    per_host.append(set(np.concatenate([b["id"] for b in batches]).tolist()))
  assert not per_host[0] & per_host[1]
  assert per_host[0] | per_host[1] == set(range(1437))


def test_eval_iterator_covers_split_in_order_with_padding():
  cfg = make_config()
  it = data.eval_iterator(cfg, "digits", "test", global_batch_size=64, image_size=8)
  batches = list(it)
  assert it.num_batches == len(batches) == 6
  ids = np.concatenate([b["id"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(ids, np.arange(360))
  last = batches[-1]
  assert last["mask"].sum() == 360 - 5 * 64 and not last["mask"][-1]
  assert np.all(last["id"][~last["mask"]] == -1) and np.all(last["image"][~last["mask"]] == 0)
  assert last["image"].shape == (64, 8, 8, 1) and last["mask"].dtype == bool

  # Two hosts, uneven counts (51 + 50): same number of batches, together the split once.
  per_host = []
  for host in range(2):
    it = data.eval_iterator(cfg, "digits", "test[:101]", global_batch_size=20, image_size=8,
                            process_index=host, process_count=2)
    batches = list(it)
    assert it.num_batches == len(batches) == 6
    assert all(b["image"].shape == (10, 8, 8, 1) for b in batches)
    per_host.append(np.concatenate([b["id"][b["mask"]] for b in batches]))
  np.testing.assert_array_equal(np.concatenate(per_host), np.arange(101))
  # max_examples: a seeded, class-stratified draw (subsets), read in id order, not a prefix.
  drawn = eval_ids(cfg, "digits", "test", max_examples=50)
  labels = sources.open_source("digits", cfg).labels("test")
  assert drawn == sorted(drawn) and len(set(drawn)) == 50 and drawn != list(range(50))
  assert set(labels[drawn].tolist()) == set(range(10))
  assert drawn == eval_ids(cfg, "digits", "test", max_examples=50, seed=0, batch=16)
  assert drawn != eval_ids(cfg, "digits", "test", max_examples=50, seed=1)
  assert eval_ids(cfg, "digits", "test", max_examples=500) == list(range(360))


# ------------------------------------------------------------------- folder

BAD_FILE = os.path.join("train", "b", "broken.jpg")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """train: 3 classes, 10 images + 1 corrupted file; val: 3 classes, 5 images."""
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  counts = {"train": {"a": 4, "b": 3, "c": 3}, "val": {"a": 2, "b": 2, "c": 1}}
  for split, classes in counts.items():
    for name, count in classes.items():
      os.makedirs(root / split / name)
      for i in range(count):
        h, w = rng.integers(12, 30, size=2)
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i == 1:
          image.convert("L").save(root / split / name / f"img{i}.png")  # grayscale
        else:
          image.save(root / split / name / f"img{i}.{'jpg' if i % 2 else 'jpeg'}")
  (root / BAD_FILE).write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
  (root / "train" / "a" / "notes.txt").write_text("not an image")
  return str(root)


def test_folder_info_and_eval(image_folder):
  cfg = make_config(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  spec = f"folder:{image_folder}"
  assert data.dataset_info(cfg, spec, "train") == data.DatasetInfo(3, 3, 11, 11)
  assert data.dataset_info(cfg, spec, "val") == data.DatasetInfo(3, 3, 5, 5)
  it = data.eval_iterator(cfg, spec, "val", global_batch_size=4, image_size=8)
  batches = list(it)
  assert len(batches) == it.num_batches == 2
  assert batches[0]["image"].shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), [0, 0, 1, 1, 2])


def test_folder_skips_corrupted_image(image_folder, caplog):
  cfg = make_config(mean=(0.5, 0.5, 0.5), std=(0.5,))
  spec = f"folder:{image_folder}"
  bad_id = sources.open_source(spec, cfg)._split("train")[0].index(os.path.join(image_folder, BAD_FILE))
  with caplog.at_level(logging.WARNING, logger="mim_jax.data"):
    it = data.train_iterator(cfg, spec, "train", global_batch_size=4, image_size=8, seed=0)
    batches = take(it, 8)  # 32 examples: about three epochs of 11
  for b in batches:
    assert b["image"].shape == (4, 8, 8, 3) and np.isfinite(b["image"]).all()
  ids = np.concatenate([b["id"] for b in batches])
  assert bad_id not in ids
  assert set(ids.tolist()) == set(range(11)) - {bad_id}
  assert isinstance(it.skipped_images, int) and it.skipped_images >= 1
  assert any("broken.jpg" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
  # In evaluation the corrupted file becomes a masked slot.
  it = data.eval_iterator(cfg, spec, "train", global_batch_size=4, image_size=8)
  batches = list(it)
  assert all(np.all(b["id"][~b["mask"]] == -1) for b in batches)
  ids = np.concatenate([b["id"][b["mask"]] for b in batches])
  assert sorted(ids.tolist()) == sorted(set(range(11)) - {bad_id}) and it.skipped_images == 1


def test_folder_resume_is_exact(image_folder):
  cfg = make_config(mean=(0.5,), std=(0.5,))
  kw = dict(global_batch_size=4, image_size=8, seed=3)
  spec = f"folder:{image_folder}"
  full = take(data.train_iterator(cfg, spec, "train", **kw), 5)
  resumed = data.train_iterator(cfg, spec, "train", start_step=3, **kw)
  assert_batches_equal(full[3], next(resumed))
  assert_batches_equal(full[4], next(resumed))


def test_in_memory_folder_gives_the_lazy_folders_batches(tmp_path):
  """``data.in_memory`` decodes a split once and augments whole batches with resampling
  matrices; the lazy folder resizes image by image with PIL. The same examples, crops, flips
  and labels come out, and the same pixels up to float rounding, in training (from any step)
  and in both evaluation transforms."""
  root = write_image_folder(tmp_path / "same_size", {"train": {"a": 7, "b": 6, "c": 5},
                                                     "val": {"a": 3, "b": 4, "c": 2}}, size=20)
  spec = f"folder:{root}"
  lazy, memory = make_config(crop_scale=(0.35, 1.0)), make_config(crop_scale=(0.35, 1.0),
                                                                  in_memory=True)
  assert sources.open_source(spec, memory).in_memory
  assert not sources.open_source(spec, lazy).in_memory
  kw = dict(global_batch_size=8, image_size=14, seed=5)
  for start in (0, 4):
    a = take(data.train_iterator(lazy, spec, "train", start_step=start, **kw), 3)
    b = take(data.train_iterator(memory, spec, "train", start_step=start, **kw), 3)
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for key in ("id", "label", "crop_box", "flipped"):
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
      np.testing.assert_allclose(x["image"], y["image"], atol=1e-4)
  assert len({int(i) for x in a for i in x["id"]}) > 8  # the draws cover more than one batch
  for whole in (False, True):
    ev = [list(data.eval_iterator(cfg, spec, "evaluation", global_batch_size=4, image_size=14,
                                  whole_image=whole)) for cfg in (lazy, memory)]
    assert len(ev[0]) == len(ev[1]) == 3
    for x, y in zip(*ev):
      for key in ("id", "label", "mask"):
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
      np.testing.assert_allclose(x["image"], y["image"], atol=1e-4)


def test_in_memory_folder_names_the_images_it_cannot_hold(image_folder):
  """Images of several sizes or an unreadable file: a DatasetError naming them and the way
  out, before any batch; and ``data.in_memory`` on a dataset that is not a folder."""
  cfg = make_config(in_memory=True)
  with pytest.raises(DatasetError) as err:
    next(data.train_iterator(cfg, f"folder:{image_folder}", "train", global_batch_size=4,
                             image_size=8, seed=0))
  message = str(err.value)
  assert "broken.jpg" in message and "not (" in message and "data.in_memory=False" in message
  with pytest.raises(DatasetError, match="applies to folder datasets"):
    sources.open_source("digits", cfg)


# --------------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def mnist_metadata(tmp_path_factory):
  """A data_dir with mnist's metadata only (train 100, test 40), for tfds.testing.mock_data."""
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = tfds.builder("mnist", data_dir=data_dir)
  os.makedirs(builder.data_dir)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name="mnist", filetype_suffix="tfrecord")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=template)
      for name, n in (("train", 100), ("test", 40))]))
  builder.info.write_to_directory(builder.data_dir)
  return data_dir


def test_tfds_with_mock_data(mnist_metadata):
  import tensorflow_datasets as tfds

  cfg = make_config(data_dir=mnist_metadata, shuffle_buffer=32)
  with tfds.testing.mock_data(num_examples=100, data_dir=mnist_metadata):
    assert data.dataset_info(cfg, "tfds:mnist", "train[20%:]") == data.DatasetInfo(10, 3, 80, 100)
    kw = dict(global_batch_size=16, image_size=12, seed=0)
    it = data.train_iterator(cfg, "tfds:mnist", "train[20%:]", **kw)
    batches = take(it, 7)  # 112 examples: more than the 80 of the subsplit
    assert batches[0]["image"].shape == (16, 12, 12, 3) and batches[0]["image"].dtype == np.float32
    ids = np.concatenate([b["id"] for b in batches])
    assert np.all((ids >= 20) & (ids < 100)) and len(np.unique(ids[:80])) == 80
    labels = np.concatenate([b["label"] for b in batches])
    assert labels.dtype == np.int32 and np.all((labels >= 0) & (labels < 10))
    resumed = take(data.train_iterator(cfg, "tfds:mnist", "train[20%:]", start_step=5, **kw), 2)
    assert_batches_equal(batches[5], resumed[0])
    assert_batches_equal(batches[6], resumed[1])
    # Per-host shares of a subsplit, with ids offset by the subsplit and host starts.
    per_host = []
    for host in range(2):
      it = data.eval_iterator(cfg, "tfds:mnist", "train[60:100]", global_batch_size=16,
                              image_size=12, process_index=host, process_count=2)
      batches = list(it)
      assert it.num_batches == len(batches) == 3
      per_host.append(np.concatenate([b["id"][b["mask"]] for b in batches]))
    np.testing.assert_array_equal(per_host[0], np.arange(60, 80))
    np.testing.assert_array_equal(per_host[1], np.arange(80, 100))


def test_tfds_ids_match_content_and_corrupted_examples_are_skipped(mnist_metadata, caplog):
  """Fake mnist whose example i is a constant PNG of value i (example 33 is garbage bytes)."""
  import tensorflow_datasets as tfds

  encoded = [constant_png(i) if i != 33 else b"not a png" for i in range(100)]
  as_dataset = tfds_mock_reader(encoded)

  cfg = make_config(data_dir=mnist_metadata, shuffle_buffer=8, mean=(0,), std=(1 / 255,))
  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=mnist_metadata):
    with caplog.at_level(logging.WARNING, logger="mim_jax.data"):
      it = data.train_iterator(cfg, "tfds:mnist", "train[30:70]", global_batch_size=8,
                               image_size=4, seed=0, process_index=1, process_count=2)
      batches = take(it, 6)  # the host's 20 examples, more than twice
    ids = np.concatenate([b["id"] for b in batches])
    assert set(ids.tolist()) == set(range(50, 70))
    for b in batches:
      np.testing.assert_allclose(b["image"], np.broadcast_to(
          b["id"][:, None, None, None].astype(np.float32), b["image"].shape), atol=1e-3)
      np.testing.assert_array_equal(b["label"], b["id"] % 10)
    it = data.train_iterator(cfg, "tfds:mnist", "train[30:40]", global_batch_size=4,
                             image_size=4, seed=0)
    batches = take(it, 5)
    ids = np.concatenate([b["id"] for b in batches])
    assert 33 not in ids and it.skipped_images >= 1 and all(len(b["id"]) == 4 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), ids % 10)
    assert any("example 33" in r.getMessage() for r in caplog.records)
    it = data.eval_iterator(cfg, "tfds:mnist", "train[30:40]", global_batch_size=4, image_size=4)
    batches = list(it)
    ids = np.concatenate([b["id"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(ids, [30, 31, 32, 34, 35, 36, 37, 38, 39])
    assert it.skipped_images == 1 and batches[0]["id"][3] == -1


# ------------------------------------------------------------------- errors


def test_missing_datasets_raise_clear_errors(tmp_path, image_folder):
  cfg = make_config(data_dir=str(tmp_path))
  with pytest.raises(DatasetError, match="'/nonexistent' does not exist.*folder:PATH") as e:
    data.dataset_info(cfg, "folder:/nonexistent", "train")
  assert e.value.__cause__ is None
  with pytest.raises(DatasetError, match=r"no split 'test'.*\['train', 'val'\].*'evaluation'"):
    data.train_iterator(cfg, f"folder:{image_folder}", "test", global_batch_size=2, image_size=8, seed=0)
  with pytest.raises(DatasetError, match=f"'mnist'.*{tmp_path}.*prepared.*tfds build mnist"):
    data.train_iterator(cfg, "tfds:mnist", "train", global_batch_size=2, image_size=8, seed=0)
  with pytest.raises(DatasetError, match="not a known TFDS dataset") as e:
    data.dataset_info(cfg, "tfds:no_such_dataset_xyz", "train")
  # TFDS' own message lists every dataset it knows: not in ours, and not chained.
  assert len(str(e.value)) < 400 and "mnist" not in str(e.value) and e.value.__suppress_context__
  with pytest.raises(DatasetError, match="did you mean 'mnist'"):
    data.dataset_info(cfg, "tfds:mnistt", "train")
  with pytest.raises(DatasetError, match="'digits', 'tfds:NAME' or 'folder:PATH'"):
    data.dataset_info(cfg, "imagenet", "train")
  with pytest.raises(DatasetError, match=r"'digits'.*no split 'validation'.*\['train', 'test'\]"):
    data.dataset_info(cfg, "digits", "validation")
  with pytest.raises(DatasetError, match=r"split 'train\[abc\]' does not parse"):
    data.dataset_info(cfg, "digits", "train[abc]")
  with pytest.raises(DatasetError, match="one base split"):
    data.dataset_info(cfg, "digits", "train+test")
  with pytest.raises(DatasetError, match="does not fit the 360 examples of its base split 'test'"):
    data.dataset_info(cfg, "digits", "evaluation[:400]")
  with pytest.raises(ValueError, match="data.mean has 3 values but the dataset has 1 channel"):
    data.train_iterator(make_config(mean=(0.485, 0.456, 0.406)), "digits", "train",
                        global_batch_size=2, image_size=8, seed=0)
  with pytest.raises(ValueError, match="multiple of process_count"):
    data.eval_iterator(cfg, "digits", "test", global_batch_size=3, image_size=8,
                       process_index=0, process_count=2)


def test_folder_errors_name_the_folder_and_the_fix(tmp_path):
  cfg = make_config()
  (tmp_path / "file.txt").write_text("x")
  with pytest.raises(DatasetError, match="is a file, not a directory"):
    data.dataset_info(cfg, f"folder:{tmp_path / 'file.txt'}", "train")
  empty = tmp_path / "empty"
  os.makedirs(empty / "train" / "a")
  with pytest.raises(DatasetError, match=r"train' has class directories \['a'\] but no image"):
    data.dataset_info(cfg, f"folder:{empty}", "train")
  os.makedirs(empty / "val")
  with pytest.raises(DatasetError, match="val' has no class directories"):
    data.dataset_info(cfg, f"folder:{empty}", "evaluation")
  odd = tmp_path / "odd"
  for split, name in (("train", "a"), ("val", "a"), ("val", "zebra")):
    os.makedirs(odd / split / name)
    Image.new("RGB", (4, 4)).save(odd / split / name / "x.png")
  with pytest.raises(DatasetError, match=r"classes that .*train' lacks: \['zebra'\]"):
    data.dataset_info(cfg, f"folder:{odd}", "val")
  with pytest.raises(DatasetError, match="no examples for host 1"):
    data.train_iterator(cfg, f"folder:{odd}", "train", global_batch_size=2, image_size=8,
                        seed=0, process_index=1, process_count=2)


# --------------------------------------------------------------- transforms


def test_random_resized_crop_boxes_follow_scale_and_ratio():
  draws = transforms.draw_train_randomness(np.random.default_rng(0), 2000)
  top, left, h, w = transforms.random_resized_crop_boxes(draws, 60, 80, (0.2, 1.0), (3 / 4, 4 / 3))
  assert np.all((top >= 0) & (left >= 0) & (top + h <= 60) & (left + w <= 80))
  area, aspect = h * w / (60 * 80), w / h
  assert area.min() > 0.18 and area.max() <= 1.0 and aspect.min() > 0.7 and aspect.max() < 1.4
  assert len(np.unique(area)) > 100
  # Every position of a fixed-size crop is reachable (8x8 crops of 16x16: offsets 0..8).
  top, left, h, w = transforms.random_resized_crop_boxes(draws, 16, 16, (0.25, 0.25), (1, 1))
  assert np.all(h == 8) and set(top.tolist()) == set(left.tolist()) == set(range(9))
  # No attempt can fit (area >= whole image, extreme ratio): center crop fallback.
  top, left, h, w = transforms.random_resized_crop_boxes(draws, 10, 40, (1.0, 1.0), (1.0, 1.0))
  assert np.all(h == 10) and np.all(w == 10) and np.all(top == 0) and np.all(left == 15)


def test_crop_then_identity_resize_gives_exact_pixels():
  opts = transforms.AugmentOptions(crop_scale=(0.25, 0.25), crop_ratio=(1, 1), flip=True,
                                   mean=(0,), std=(1 / 255,))  # normalization = identity
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 2), dtype=np.uint8)
  draws = transforms.draw_train_randomness(np.random.default_rng(1), 20)
  out = transforms.train_transform(np.repeat(image[None], 20, 0), draws, 8, opts)
  assert out.shape == (20, 8, 8, 2)
  top, left, _, _ = transforms.random_resized_crop_boxes(draws, 16, 16, (0.25, 0.25), (1, 1))
  for i in range(20):
    window = image[top[i]:top[i] + 8, left[i]:left[i] + 8].astype(np.float32)
    expected = window[:, ::-1] if draws["flip"][i] < 0.5 else window
    np.testing.assert_allclose(out[i], expected, atol=1e-3)
    one = transforms.train_transform_one(image, {k: v[i] for k, v in draws.items()}, 8, opts)
    np.testing.assert_allclose(one, out[i], atol=1e-3)  # single-image path agrees


def test_small_images_look_their_windows_up_with_the_same_weights():
  """Up to ~40 px every window's resampling matrix is computed once and looked up: each equals
  the direct computation, bit for bit, and the direct one still serves large images."""
  rng = np.random.default_rng(0)
  for in_size, out_size in ((28, 28), (8, 12), (32, 16)):
    assert in_size * (in_size + 1) * out_size * in_size <= transforms._TABLE_ELEMENTS
    length = rng.integers(1, in_size + 1, 64)
    start = (rng.random(64) * (in_size - length + 1)).astype(int)
    looked_up = transforms.window_weights(start, length, in_size, out_size)
    direct = transforms.compute_window_weights(start, length, in_size, out_size)
    assert looked_up.shape == (64, out_size, in_size)
    np.testing.assert_array_equal(looked_up, direct)
    np.testing.assert_allclose(looked_up.sum(axis=2), 1.0, atol=1e-6)
  assert 300 * 301 * 224 * 300 > transforms._TABLE_ELEMENTS
  np.testing.assert_array_equal(transforms.window_weights([10], [250], 300, 224),
                                transforms.compute_window_weights([10], [250], 300, 224))


def test_full_crop_train_transform_equals_eval_transform():
  opts = transforms.AugmentOptions(crop_scale=(1, 1), crop_ratio=(1, 1), flip=False, eval_crop_pct=1.0)
  image = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
  draws = transforms.draw_train_randomness(np.random.default_rng(1), 4)
  train = transforms.train_transform(image, draws, 12, opts)
  np.testing.assert_array_equal(train, transforms.eval_transform(image, 12, opts))
  # eval_crop_pct 0.5 on 8x8 -> 8: resize to 16, keep the central 8x8.
  wy, wx = transforms.eval_weights(8, 8, 8, 0.5)
  np.testing.assert_array_equal(wy, transforms.bicubic_weights(8, 16)[4:12])
  # 12 / 0.875 = 13.7 -> shorter side 14, offset 1; longer side 30 * 14 / 20 = 21, offset 4 or 5.
  wy, wx = transforms.eval_weights(20, 30, 12, 0.875)
  np.testing.assert_array_equal(wy, transforms.bicubic_weights(20, 14)[1:13])
  np.testing.assert_array_equal(wx, transforms.bicubic_weights(30, 21)[4:16])
  assert transforms.eval_transform(image[0, :10], 8, opts).shape == (8, 8, 3)  # non-square
  # The single-image path (folder, tfds) agrees with the batched one.
  opts = transforms.AugmentOptions(eval_crop_pct=0.875)
  for shape in [(20, 20), (13, 20), (20, 7)]:
    one = image[0, :shape[0], :shape[1]]
    np.testing.assert_allclose(transforms.eval_transform_one(one, 12, opts),
                               transforms.eval_transform(one[None], 12, opts)[0], atol=1e-4)


def test_bicubic_resize_matches_pil():
  y, x = np.mgrid[0:37, 0:23]
  noise = np.random.default_rng(0).normal(0, 20, (37, 23))
  image = np.clip(127 + 60 * np.sin(y / 3) * np.cos(x / 4) + noise, 0, 255).astype(np.uint8)
  for out_h, out_w in [(16, 16), (50, 60), (20, 40)]:  # down, up, mixed
    ours = transforms.apply_weights(image[..., None], transforms.bicubic_weights(37, out_h),
                                    transforms.bicubic_weights(23, out_w))[..., 0]
    pil = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BICUBIC), np.float32)
    assert np.abs(ours - pil).max() < 1.5  # PIL rounds to uint8 in fixed point
    one = transforms.resize_one(image[..., None], out_h, out_w)[..., 0]  # single-image path
    np.testing.assert_allclose(one, ours, atol=1e-3)
  np.testing.assert_allclose(transforms.bicubic_weights(9, 9), np.eye(9), atol=1e-6)


def test_normalization():
  images = np.array([[[[0, 255, 51]]]], np.float32)
  out = transforms.normalize(images, (0.5, 0.25, 0.2), (0.5, 0.25, 0.1))
  np.testing.assert_allclose(out[0, 0, 0], [-1.0, 3.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(transforms.normalize(images, (0.5,), (0.5,))[0, 0, 0],
                             [-1.0, 1.0, -0.6], atol=1e-6)
  assert out.dtype == np.float32
  with pytest.raises(ValueError, match="channel"):
    transforms.normalize(images[..., :2], (0.5, 0.5, 0.5), (1.0,))


# ----------------------------------------------------------------- prefetch


def test_device_prefetch_shards_over_data_axis():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py should set 8 host devices"
  sharding = NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
  cfg = make_config()
  it = data.eval_iterator(cfg, "digits", "test[:40]", global_batch_size=16, image_size=8)
  expected = list(data.eval_iterator(cfg, "digits", "test[:40]", global_batch_size=16, image_size=8))
  got = list(data.device_prefetch(it, sharding, size=2))
  assert len(got) == len(expected) == 3
  for g, e in zip(got, expected):
    for key in e:
      assert isinstance(g[key], jax.Array) and g[key].sharding == sharding
      assert len(g[key].addressable_shards) == 8
      assert g[key].addressable_shards[0].data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(g[key]), e[key])
  prefetcher = data.device_prefetch(data.train_iterator(
      cfg, "digits", "train", global_batch_size=16, image_size=8, seed=0), sharding)
  next(prefetcher)
  assert prefetcher.skipped_images == 0

  def failing():
    yield {"x": np.zeros(8, np.float32)}
    raise RuntimeError("boom in the data thread")

  failing_prefetcher = data.device_prefetch(failing(), sharding)
  next(failing_prefetcher)
  with pytest.raises(RuntimeError, match="boom"):
    next(failing_prefetcher)


# ------------------------------------------------- crop boxes, whole-image eval


def recrop(image, box, flipped, size, opts):
  """Crops a uint8 image [H, W, C] to a fractional box, resizes it (PIL), flips, normalizes."""
  height, width = image.shape[:2]
  top, left, bottom, right = np.round(box.astype(np.float64) * [height, width, height, width]).astype(int)
  out = transforms.resize_one(image[top:bottom, left:right], size, size)
  return transforms.normalize(out[:, ::-1] if flipped else out, opts.mean, opts.std)


def check_boxes(batch):
  """Shapes, dtypes and sanity of a training batch's ``crop_box`` and ``flipped``."""
  b = len(batch["id"])
  assert batch["crop_box"].shape == (b, 4) and batch["crop_box"].dtype == np.float32
  assert batch["flipped"].shape == (b,) and batch["flipped"].dtype == bool
  y0, x0, y1, x1 = batch["crop_box"].T
  assert np.all((0 <= y0) & (y0 < y1) & (y1 <= 1) & (0 <= x0) & (x0 < x1) & (x1 <= 1))


def test_digits_crop_box_and_flip_reproduce_the_batch():
  cfg = make_config()
  kw = dict(global_batch_size=64, image_size=12, seed=5)
  images = sources.open_source("digits", cfg).images("train")
  opts = transforms.AugmentOptions.from_config(cfg)
  batches = take(data.train_iterator(cfg, "digits", "train", **kw), 3)
  for b in batches:
    check_boxes(b)
    box = np.round(b["crop_box"].astype(np.float64) * 8).astype(np.int64)  # 8x8 digits
    wy = transforms.window_weights(box[:, 0], box[:, 2] - box[:, 0], 8, 12)
    wx = transforms.window_weights(box[:, 1], box[:, 3] - box[:, 1], 8, 12)
    wx[b["flipped"]] = wx[b["flipped"], ::-1]
    resized = transforms.apply_weights(images[b["id"]], wy, wx)
    expected = transforms.normalize(resized, opts.mean, opts.std)
    np.testing.assert_allclose(b["image"], expected, atol=1e-5)
  boxes = np.concatenate([b["crop_box"] for b in batches])
  assert len(np.unique(boxes, axis=0)) > 20 and np.any(boxes[:, 3] == 1.0)  # varied, some at the edge
  assert 0.35 < np.concatenate([b["flipped"] for b in batches]).mean() < 0.65
  no_flip = next(data.train_iterator(make_config(flip=False), "digits", "train", **kw))
  assert not no_flip["flipped"].any()
  np.testing.assert_array_equal(no_flip["crop_box"], batches[0]["crop_box"])  # same draws


def test_folder_crop_box_and_flip_reproduce_the_batch(image_folder):
  cfg = make_config(mean=(0.5,), std=(0.5,))
  opts = transforms.AugmentOptions.from_config(cfg)
  spec = f"folder:{image_folder}"
  source = sources.open_source(spec, cfg)
  kw = dict(global_batch_size=4, image_size=8, seed=3)
  it = data.train_iterator(cfg, spec, "train", **kw)
  full = take(it, 6)  # 24 examples, over two epochs of 11: the corrupted file's slots are refilled
  assert it.skipped_images >= 1
  for b in full:
    check_boxes(b)
    for j, index in enumerate(b["id"]):
      expected = recrop(source.load("train", int(index)), b["crop_box"][j], b["flipped"][j], 8, opts)
      np.testing.assert_allclose(b["image"][j], expected, atol=1e-5)
  resumed = take(data.train_iterator(cfg, spec, "train", start_step=4, **kw), 2)
  for a, r in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["crop_box"], r["crop_box"])
    np.testing.assert_array_equal(a["flipped"], r["flipped"])


def test_tfds_crop_box_and_flip(mnist_metadata):
  """Fake mnist of random images of different sizes (example 33 is garbage bytes)."""
  import io

  import tensorflow_datasets as tfds

  rng = np.random.default_rng(0)

  def png(i):
    buffer = io.BytesIO()
    pixels = rng.integers(0, 256, rng.integers(10, 20, size=2), np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()

  encoded = [png(i) if i != 33 else b"not a png" for i in range(100)]
  as_dataset = tfds_mock_reader(encoded)

  cfg = make_config(data_dir=mnist_metadata, shuffle_buffer=8)
  opts = transforms.AugmentOptions.from_config(cfg)
  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=mnist_metadata):
    it = data.train_iterator(cfg, "tfds:mnist", "train[30:40]", global_batch_size=4, image_size=6, seed=0)
    batches = take(it, 5)  # the 10 examples twice: example 33's slots are refilled
    assert it.skipped_images >= 1
    flipped = []
    for b in batches:
      check_boxes(b)
      for j, index in enumerate(b["id"]):
        image = sources.decode_image(encoded[index])
        expected = recrop(image, b["crop_box"][j], b["flipped"][j], 6, opts)
        np.testing.assert_allclose(b["image"][j], expected, atol=1e-5)
      flipped.extend(b["flipped"])
    assert 0 < np.mean(flipped) < 1


def test_eval_whole_image_resizes_the_whole_image(image_folder):
  cfg = make_config()
  kw = dict(global_batch_size=16, image_size=12, max_examples=40)
  whole = list(data.eval_iterator(cfg, "digits", "test", whole_image=True, **kw))
  default = list(data.eval_iterator(cfg, "digits", "test", **kw))
  images = sources.open_source("digits", cfg).images("test")
  weights = transforms.bicubic_weights(8, 12)
  for w, d in zip(whole, default):
    for key in ("id", "label", "mask"):
      np.testing.assert_array_equal(w[key], d[key])
    ids = w["id"][w["mask"]]
    resized = transforms.apply_weights(images[ids], weights, weights)
    expected = transforms.normalize(resized, (0.5,), (0.5,))
    np.testing.assert_allclose(w["image"][w["mask"]], expected, atol=1e-5)
    assert np.all(w["image"][~w["mask"]] == 0)
  assert len(whole) == 3 and not np.allclose(whole[0]["image"], default[0]["image"], atol=0.01)

  # Folder images of different, non-square sizes (and a corrupted file, which stays masked).
  cfg = make_config(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  opts = transforms.AugmentOptions.from_config(cfg)
  spec = f"folder:{image_folder}"
  source = sources.open_source(spec, cfg)
  it = data.eval_iterator(cfg, spec, "train", global_batch_size=4, image_size=10, whole_image=True)
  whole = list(it)
  default = list(data.eval_iterator(cfg, spec, "train", global_batch_size=4, image_size=10))
  shapes = set()
  for w, d in zip(whole, default):
    assert w["image"].shape == (4, 10, 10, 3)
    for key in ("id", "label", "mask"):
      np.testing.assert_array_equal(w[key], d[key])
    for j in np.flatnonzero(w["mask"]):
      image = source.load("train", int(w["id"][j]))
      shapes.add(image.shape[:2])
      expected = transforms.normalize(transforms.resize_one(image, 10, 10), opts.mean, opts.std)
      np.testing.assert_allclose(w["image"][j], expected, atol=1e-5)
  assert len(whole) == len(default) == 3 and it.skipped_images == 1
  assert any(h != w for h, w in shapes)
  # The batched and the single-image paths agree on a non-square image.
  image = np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)
  np.testing.assert_allclose(transforms.whole_transform(image[None], 10, opts)[0],
                             transforms.whole_transform_one(image, 10, opts), atol=1e-4)
