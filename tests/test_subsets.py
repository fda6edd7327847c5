"""Split roles (``train``, ``evaluation``) and seeded, class-stratified draws (mim_jax.data.subsets):
the mapping of each source, the draws' properties, and the iterators over draws (digits, folder,
tfds)."""

import dataclasses
import io
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from data_helpers import (assert_batches_equal, make_config, take, write_image_folder,
                          write_tfds_metadata)
from mim_jax import data
from mim_jax.core.errors import DatasetError
from mim_jax.data import sources, subsets

RGB = dict(mean=(0.5,), std=(0.5,))


def ids_and_labels(batches):
  batches = list(batches)
  ids = np.concatenate([b["id"][b["mask"]] for b in batches])
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  return ids, labels


# ------------------------------------------------------------------------------------- roles


def test_digits_roles():
  cfg = make_config()
  source = sources.open_source("digits", cfg)
  assert source.base_splits() == ["train", "test"]
  assert sources.resolve_split("evaluation", source) == ("test", 0, 360)
  assert sources.resolve_split("evaluation[:50%]", source) == ("test", 0, 180)
  assert sources.resolve_split("train[10:200]", source) == ("train", 10, 200)
  assert sources.resolve_split("test[-10:]", source) == ("test", 350, 360)  # a literal base split
  assert data.dataset_info(cfg, "digits", "evaluation") == data.DatasetInfo(10, 1, 360, 360)


def test_plain_splits_resolve_without_tfds(monkeypatch):
  """Where tensorflow_datasets is not installed (a GPU image with JAX alone), a split or role
  name resolves as it does with TFDS; a slice is a clear error, as is an unknown name."""
  source = sources.open_source("digits", make_config())
  names = ("train", "test", "evaluation")
  with_tfds = [sources.resolve_split(s, source) for s in names]
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)   # its import now fails
  assert [sources.resolve_split(s, source) for s in names] == with_tfds
  with pytest.raises(DatasetError, match="tensorflow_datasets, which is not installed"):
    sources.resolve_split("train[:50%]", source)
  with pytest.raises(DatasetError, match="validation"):
    sources.resolve_split("validation", source)


@pytest.mark.parametrize("splits,expected", [
    (("train", "val"), "val"),
    (("train", "test"), "test"),
    (("train", "val", "test"), "val"),
    (("train", "test", "val", "validation"), "validation"),
])
def test_folder_evaluation_role_is_the_first_existing_split(tmp_path, splits, expected):
  # Split i has 2 + i images of class a and one of b: the sizes tell the splits apart.
  root = write_image_folder(tmp_path, {s: {"a": 2 + i, "b": 1} for i, s in enumerate(splits)},
                            size=4)
  cfg = make_config(**RGB)
  spec = f"folder:{root}"
  n = 3 + splits.index(expected)
  assert data.dataset_info(cfg, spec, "evaluation").num_examples == n
  base, ids = subsets.resolve("evaluation[1:]", sources.open_source(spec, cfg))
  assert base == expected and ids.tolist() == list(range(1, n))
  for split in splits:  # the literal names keep working
    assert sources.resolve_split(split, sources.open_source(spec, cfg))[0] == split


def test_folder_without_an_evaluation_split_lists_what_exists(tmp_path):
  root = write_image_folder(tmp_path, {"train": {"a": 2}, "extra": {"a": 1}}, size=4)
  (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden: neither a split nor a class
  cfg = make_config(**RGB)
  with pytest.raises(DatasetError) as e:
    data.dataset_info(cfg, f"folder:{root}", "evaluation")
  message = str(e.value)
  assert f"folder:{root}" in message and "'evaluation' maps to none of its splits" in message
  assert "['extra', 'train']" in message and "validation, val, test" in message
  assert e.value.__cause__ is None
  with pytest.raises(DatasetError, match=r"no split 'valid'.*\['extra', 'train'\]"):
    data.eval_iterator(cfg, f"folder:{root}", "valid[:10]", global_batch_size=2, image_size=4)
  no_train = write_image_folder(tmp_path / "other", {"val": {"a": 2}}, size=4)
  with pytest.raises(DatasetError, match=r"role 'train' maps to none.*\['val'\]"):
    data.dataset_info(cfg, f"folder:{no_train}", "train")


@pytest.mark.parametrize("splits,expected", [
    ({"train": 100, "test": 40}, "test"),
    ({"train": 100, "validation": 20, "test": 40}, "validation"),
])
def test_tfds_evaluation_role(tmp_path, splits, expected):
  pytest.importorskip("tensorflow_datasets")
  data_dir = write_tfds_metadata(tmp_path, splits)
  cfg = make_config(data_dir=data_dir)
  source = sources.open_source("tfds:mnist", cfg)
  assert source.base_splits() == list(splits)
  assert sources.resolve_split("evaluation", source) == (expected, 0, splits[expected])
  assert sources.resolve_split("evaluation[:50%]", source) == (expected, 0, splits[expected] // 2)
  assert data.dataset_info(cfg, "tfds:mnist", "evaluation").num_examples == splits[expected]
  with pytest.raises(DatasetError, match=rf"'tfds:mnist'.*no split 'val'.*{list(splits)}"):
    data.dataset_info(cfg, "tfds:mnist", "val")


# ------------------------------------------------------------------------------------- draws


def test_allocation_is_proportional_and_keeps_every_class():
  rng = np.random.default_rng(0)
  for _ in range(500):
    sizes = rng.integers(0, 40, rng.integers(1, 12))
    total = int(sizes.sum())
    count = int(rng.integers(0, total + 5))
    alloc = subsets.allocate(sizes, count)
    assert alloc.sum() == min(count, total) and np.all((0 <= alloc) & (alloc <= sizes))
    present = sizes > 0
    if count >= present.sum():
      assert np.all(alloc[present] >= 1)
    quota = min(count, total) * sizes / max(total, 1)
    if count < present.sum() or np.all(quota[present] >= 1):  # no class raised to one
      assert np.all(np.abs(alloc - quota) < 1)
  assert subsets.allocate([50, 30, 20], 10).tolist() == [5, 3, 2]
  assert subsets.allocate([97, 1, 1, 1], 3).tolist() == [3, 0, 0, 0]   # fewer than the classes
  assert subsets.allocate([97, 1, 1, 1], 4).tolist() == [1, 1, 1, 1]   # every class gets one
  assert subsets.allocate([3, 0, 2], 50).tolist() == [3, 0, 2]         # capped at the sizes


def test_stratified_draw_is_seeded_sorted_and_stratified():
  labels = np.repeat(np.arange(5), [40, 30, 20, 7, 3])  # class-ordered, unbalanced
  draw = subsets.stratified_draw(labels, 25, seed=0)
  assert len(draw) == 25 and draw.tolist() == sorted(set(draw.tolist()))
  np.testing.assert_array_equal(draw, subsets.stratified_draw(labels, 25, seed=0))
  assert not np.array_equal(draw, subsets.stratified_draw(labels, 25, seed=1))
  counts = np.bincount(labels[draw], minlength=5)
  assert np.all(np.abs(counts - 25 * np.bincount(labels) / 100) < 1)
  assert np.all(np.bincount(labels[subsets.stratified_draw(labels, 5, seed=3)]) == 1)
  # Not the first examples of each class: a permutation of them.
  assert not set(draw.tolist()) <= set(range(10)) | set(range(40, 48)) | set(range(70, 75))
  # The same seed: a larger draw holds the smaller one.
  assert set(draw.tolist()) <= set(subsets.stratified_draw(labels, 50, seed=0).tolist())
  np.testing.assert_array_equal(subsets.stratified_draw(labels, 1000, seed=0), np.arange(100))
  uniform = subsets.uniform_draw(100, 25, seed=0)
  assert uniform.tolist() == sorted(set(uniform.tolist())) and len(uniform) == 25
  np.testing.assert_array_equal(uniform, subsets.uniform_draw(100, 25, seed=0))
  assert not np.array_equal(uniform, subsets.uniform_draw(100, 25, seed=1))


def test_subset_and_its_complement_partition_the_split():
  cfg = make_config()
  source = sources.open_source("digits", cfg)
  held = data.Subset("train[100:600]", fraction=0.2, seed=3)
  kept = dataclasses.replace(held, complement=True)
  (base, h), (_, k) = subsets.resolve(held, source), subsets.resolve(kept, source)
  assert base == "train" and len(h) == 100 and len(k) == 400
  assert not set(h.tolist()) & set(k.tolist())
  assert sorted(h.tolist() + k.tolist()) == list(range(100, 600))
  labels = source.labels("train")
  share = 100 * np.bincount(labels[100:600], minlength=10) / 500
  assert np.all(np.abs(np.bincount(labels[h], minlength=10) - share) < 1)
  np.testing.assert_array_equal(h, subsets.resolve(held, source)[1])
  assert not np.array_equal(h, subsets.resolve(dataclasses.replace(held, seed=4), source)[1])
  assert data.dataset_info(cfg, "digits", kept) == data.DatasetInfo(10, 1, 400, 1437)
  # A count above the split's size: the whole split.
  base, ids = subsets.resolve(data.Subset("evaluation", count=10_000), source)
  assert base == "test" and ids.tolist() == list(range(360))
  assert "train[100:600]" in str(kept) and "all but" in str(kept) and "seed 3" in str(kept)
  for bad in (dict(), dict(count=5, fraction=0.5), dict(fraction=1.5)):
    with pytest.raises(ValueError, match="Subset"):
      data.Subset("train", **bad)


@pytest.fixture(scope="module")
def ordered_folder(tmp_path_factory):
  """train: 3 classes x 30 images, listed class by class; val: 3 x 4."""
  return write_image_folder(tmp_path_factory.mktemp("ordered"),
                            {"train": {"a": 30, "b": 30, "c": 30}, "val": {"a": 4, "b": 4, "c": 4}},
                            size=6)


def test_eval_max_examples_of_a_class_ordered_folder_holds_every_class(ordered_folder):
  cfg = make_config(**RGB)
  spec = f"folder:{ordered_folder}"
  it = data.eval_iterator(cfg, spec, "train", global_batch_size=4, image_size=6, max_examples=9)
  ids, labels = ids_and_labels(list(it))
  assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # the first 9 would be class a
  assert ids.tolist() == sorted(ids.tolist())
  np.testing.assert_array_equal(ids, subsets.resolve(data.Subset("train", count=9),
                                                     sources.open_source(spec, cfg))[1])
  # Two hosts: the same number of batches, together the same draw.
  parts = []
  for host in range(2):
    it = data.eval_iterator(cfg, spec, "train", global_batch_size=4, image_size=6,
                            max_examples=9, process_index=host, process_count=2)
    batches = list(it)
    assert len(batches) == it.num_batches == 3
    parts.append(ids_and_labels(batches)[0])
  np.testing.assert_array_equal(np.concatenate(parts), ids)
  ids, labels = ids_and_labels(data.eval_iterator(cfg, spec, "evaluation", global_batch_size=4,
                                                  image_size=6, max_examples=6))
  assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("dataset", ["digits", "folder"])
def test_train_iterator_over_a_subset_yields_its_ids_and_resumes_exactly(dataset, ordered_folder):
  cfg = make_config(**RGB)
  spec = "digits" if dataset == "digits" else f"folder:{ordered_folder}"
  subset = data.Subset("train", count=40, seed=5)
  ids = set(subsets.resolve(subset, sources.open_source(spec, cfg))[1].tolist())
  assert data.dataset_info(cfg, spec, subset).num_examples == 40
  kw = dict(global_batch_size=8, image_size=6, seed=1)
  batches = take(data.train_iterator(cfg, spec, subset, **kw), 10)  # two epochs of the 40
  seen = np.concatenate([b["id"] for b in batches])
  assert set(seen[:40].tolist()) == ids and set(seen.tolist()) == ids
  resumed = take(data.train_iterator(cfg, spec, subset, start_step=6, **kw), 2)
  assert_batches_equal(batches[6], resumed[0])
  assert_batches_equal(batches[7], resumed[1])
  per_host = [set(np.concatenate([b["id"] for b in take(data.train_iterator(
      cfg, spec, subset, process_index=host, process_count=2, **kw), 5)]).tolist())
              for host in range(2)]
  assert not per_host[0] & per_host[1] and per_host[0] | per_host[1] == ids


# ---------------------------------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def ordered_tfds(tmp_path_factory):
  """mnist metadata (train 100, test 40) and an ``as_dataset`` whose example i is a constant
  PNG of value i with label i // 10 (train: listed class by class)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf

  data_dir = write_tfds_metadata(tmp_path_factory.mktemp("tfds"), {"train": 100, "test": 40})

  def png(value):
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

  encoded = [png(i) for i in range(100)]

  def as_dataset(builder, split, decoders=None, read_config=None, shuffle_files=False):
    del decoders, read_config, shuffle_files
    (absolute,) = tfds.core.ReadInstruction.from_spec(str(split)).to_absolute(builder.info.splits)
    base = absolute.splitname
    n = builder.info.splits[base].num_examples
    lo, hi = absolute.from_ or 0, absolute.to or n
    return tf.data.Dataset.from_tensor_slices(
        {"image": encoded[lo:hi], "label": np.arange(lo, hi, dtype=np.int64) // 10})

  return data_dir, as_dataset


def test_tfds_draws_are_stratified_and_read_only_their_ids(ordered_tfds, caplog, monkeypatch):
  import tensorflow_datasets as tfds

  data_dir, as_dataset = ordered_tfds
  cfg = make_config(data_dir=data_dir, shuffle_buffer=16, mean=(0,), std=(1 / 255,))
  sources.clear_label_cache()
  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=data_dir):
    with caplog.at_level(logging.INFO, logger="mim_jax.data"):
      it = data.eval_iterator(cfg, "tfds:mnist", "train", global_batch_size=8, image_size=4,
                              max_examples=20)
      batches = list(it)
    assert any("reading the labels of train[0:100]" in r.getMessage() for r in caplog.records)
    ids, labels = ids_and_labels(batches)
    assert np.bincount(labels).tolist() == [2] * 10 and ids.tolist() == sorted(ids.tolist())
    np.testing.assert_array_equal(labels, ids // 10)
    for b in batches:  # each image is its id's: the filter kept ids and contents together
      m = b["mask"]
      np.testing.assert_allclose(b["image"][m], np.broadcast_to(
          b["id"][m, None, None, None].astype(np.float32), b["image"][m].shape), atol=1e-3)
    source = sources.open_source("tfds:mnist", cfg)
    np.testing.assert_array_equal(ids, subsets.resolve(data.Subset("train", count=20), source)[1])

    # Training over a draw: only its ids, the same content, an exact resume, disjoint hosts.
    subset = data.Subset("train", fraction=0.3, seed=2)
    wanted = set(subsets.resolve(subset, source)[1].tolist())
    assert len(wanted) == 30 and len({i // 10 for i in wanted}) == 10
    kw = dict(global_batch_size=6, image_size=4, seed=0)
    batches = take(data.train_iterator(cfg, "tfds:mnist", subset, **kw), 10)  # 2 epochs
    seen = np.concatenate([b["id"] for b in batches])
    assert set(seen[:30].tolist()) == wanted and set(seen.tolist()) == wanted
    for b in batches:
      np.testing.assert_array_equal(b["label"], b["id"] // 10)
    resumed = take(data.train_iterator(cfg, "tfds:mnist", subset, start_step=7, **kw), 2)
    assert_batches_equal(batches[7], resumed[0])
    assert_batches_equal(batches[8], resumed[1])
    per_host = [set(np.concatenate([b["id"] for b in take(data.train_iterator(
        cfg, "tfds:mnist", subset, process_index=host, process_count=2, **kw), 5)]).tolist())
                for host in range(2)]
    assert not per_host[0] & per_host[1] and per_host[0] | per_host[1] == wanted

    # A split too large for a label pass: a seeded uniform draw, said in the log.
    sources.clear_label_cache()
    monkeypatch.setattr(sources, "MAX_LABEL_PASS", 50)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mim_jax.data"):
      _, ids = subsets.resolve(data.Subset("train", count=20, seed=4), source)
    np.testing.assert_array_equal(ids, subsets.uniform_draw(100, 20, seed=4))
    assert any("uniform draws" in r.getMessage() for r in caplog.records)
    assert not any("reading the labels" in r.getMessage() for r in caplog.records)
    # ... unless the part drawn from is small enough.
    _, ids = subsets.resolve(data.Subset("train[50:]", count=10, seed=4), source)
    assert np.bincount(ids // 10 - 5).tolist() == [2] * 5
  sources.clear_label_cache()
