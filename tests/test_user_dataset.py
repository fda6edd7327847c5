"""A user's own image folder under the digits recipes, with only ``--config.dataset`` changed
(issue #21): the evaluation split is found by its role (the folder's ``val/``, digits' ``test``),
and the probe's subsets of a folder listed class by class hold every class."""

import glob
import json
import os

import numpy as np
import pytest

from data_helpers import write_image_folder, write_tfds_metadata
from mim_jax import data
from mim_jax import config as config_lib
from mim_jax import main as main_lib
from mim_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = "abcd"


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
  """train: 4 classes x 100 images, val: 4 x 12, written class by class: the first 300 training
  images (the probe's count) would miss class d entirely."""
  return write_image_folder(tmp_path_factory.mktemp("user"),
                            {"train": {c: 100 for c in CLASSES}, "val": {c: 12 for c in CLASSES}},
                            size=12)


def run(config, workdir, dataset, *extra):
  argv = ["--config", os.path.join(ROOT, "configs", config), "--workdir", str(workdir),
          f"--config.dataset={dataset}", *extra]
  return main_lib.main(argv)


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_mae_digits_runs_on_a_class_ordered_folder(tmp_path, user_folder):
  spec = f"folder:{user_folder}"
  assert run("mae_digits.py:runlocal", tmp_path / "mae", spec) == 0
  rows = metrics(tmp_path / "mae")
  final = [r for r in rows if "probe/accuracy" in r][-1]
  init = [r for r in rows if "probe/random_init_accuracy" in r][0]
  # Four colours: any encoder separates them once the probe sees every class (chance: 0.25).
  assert final["probe/accuracy"] > 0.5 and init["probe/random_init_accuracy"] > 0.5

  # The probe's subsets, as the probe takes them (evaluation/features.py): every class, in
  # proportion, in the 300 of 400 training images; all 48 of val/ for evaluation.
  c = config_lib.load(os.path.join(ROOT, "configs", "mae_digits.py") + ":runlocal")
  config_lib.override(c, "dataset", spec)
  for split, count, expected in ((c.probe.train_split, c.probe.train_examples, [75] * 4),
                                 (c.probe.test_split, c.probe.test_examples, [12] * 4)):
    it = data.eval_iterator(c.data, c.dataset, split, global_batch_size=c.probe.batch_size,
                            image_size=c.image_size, max_examples=count)
    labels = np.concatenate([b["label"][b["mask"]] for b in it])
    assert np.bincount(labels, minlength=4).tolist() == expected


@pytest.mark.parametrize("config", ["knn_digits.py", "linear_probe_digits.py:runlocal"])
def test_evaluation_protocols_run_on_a_folder(tmp_path, user_folder, config):
  """From random init (no init_from): the wiring, with the evaluation split found by its role.
  (finetune_digits.py:runlocal runs the same way, in ~25 s more: its evaluator is
  linear_probe's.)"""
  assert run(config, tmp_path / "w", f"folder:{user_folder}") == 0
  last = metrics(tmp_path / "w")[-1]
  key = "knn/top1" if config.startswith("knn") else "eval/top1"
  assert 0.0 <= last[key] <= 1.0
  if not config.startswith("knn"):
    assert last["eval/examples"] == 4 * 12   # all of val/


SPLIT_KEYS = ("train_split", "probe.train_split", "probe.test_split", "knn.train_split",
              "knn.test_split", "eval.split")


def test_every_config_finds_its_splits_on_a_folder_and_on_tfds(tmp_path, user_folder):
  """Every config of configs/ names its splits by role: each resolves on a folder (train/ +
  val/) and on TFDS datasets with validation or test, with only the dataset changed."""
  pytest.importorskip("tensorflow_datasets")
  datasets = [  # (spec, data_dir, size of train, the split 'evaluation' is, its size)
      (f"folder:{user_folder}", "", 400, "val", 48),
      ("tfds:mnist", write_tfds_metadata(tmp_path / "a", {"train": 400, "validation": 20}),
       400, "validation", 20),
      ("tfds:mnist", write_tfds_metadata(tmp_path / "b", {"train": 400, "test": 40}),
       400, "test", 40),
  ]
  configs = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
  assert len(configs) > 20
  for path in configs:
    c = config_lib.load(path)
    for spec, data_dir, n_train, evaluation, n in datasets:
      config_lib.override(c, "dataset", spec)
      config_lib.override(c, "data.data_dir", data_dir)
      for key in SPLIT_KEYS:
        group, _, name = key.rpartition(".")
        split = (c[group] if group else c)[name]
        role, sliced = split.partition("[")[::2]
        assert role in ("train", "evaluation"), (path, key, split)  # roles, not base names
        source = sources.open_source(c.dataset, c.data)
        base, start, stop = sources.resolve_split(split, source)
        assert base == (evaluation if role == "evaluation" else "train"), (path, spec, key)
        size = n if role == "evaluation" else n_train
        expected = size if not sliced else len(range(size)[slice(*[
            int(round(size * int(x[:-1]) / 100)) if x.endswith("%") else (int(x) if x else None)
            for x in sliced.rstrip("]").split(":")])])
        assert stop - start == expected, (path, key, split)
      if c.method == "mlo_mae":
        kept, heldout = data.holdout_splits(c.data, c.dataset, c.train_split,
                                            c.mlo.heldout_fraction)
        assert heldout.split == kept.split == c.train_split


def test_train_fraction_trains_on_a_stratified_draw(tmp_path, user_folder, monkeypatch):
  """``train_fraction`` 0.1 of a class-ordered folder: the training stream holds 10% of each
  class (not the first 10% of the files, which would be one class), the same in every run."""
  from mim_jax import data as data_lib
  from mim_jax import train
  seen = []
  real = data_lib.train_iterator

  def recording(*args, **kwargs):
    for batch in real(*args, **kwargs):
      seen.append(batch)
      yield batch
  monkeypatch.setattr(train.data.pipeline, "train_iterator", recording)
  c = config_lib.load(os.path.join(ROOT, "configs", "mae_digits.py") + ":runlocal")
  for key, value in {"dataset": f"folder:{user_folder}", "train_fraction": "0.1",
                     "total_steps": "2", "batch_size": "40", "probe.enabled": "False",
                     "probe.random_init": "False", "model.depth": "1", "model.width": "32",
                     "model.heads": "2", "model.decoder_width": "32", "model.decoder_depth": "1",
                     "model.decoder_heads": "2", "image_every": "100"}.items():
    config_lib.override(c, key, value)
  train.train_and_evaluate(c, str(tmp_path / "run"))
  ids = np.unique(np.concatenate([b["id"] for b in seen]))
  labels = sources.open_source(c.dataset, c.data).labels("train")
  assert len(ids) == 40 and np.bincount(labels[ids]).tolist() == [10, 10, 10, 10]
