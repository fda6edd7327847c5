"""The dataset on the devices (``data.on_device``) and K steps per call (``steps_per_call``)."""

import logging
import os

import jax
import numpy as np
import pytest
from data_helpers import (constant_png, make_config, tfds_mock_reader, write_image_folder,
                          write_tfds_metadata)
from test_train import final_params, read_metrics, tiny_config

from mim_jax import config as config_lib
from mim_jax import data, train
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.core.errors import DatasetError
from mim_jax.data import on_device, transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
  """RGB images of 20 x 24 px (not square, channels differ: kept with 3 channels)."""
  root = tmp_path_factory.mktemp("colour")
  write_image_folder(root, {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}}, size=20)
  from PIL import Image
  for path in root.rglob("*.png"):  # 24 px wide
    Image.open(path).resize((24, 20)).save(path)
  return str(root)


def mesh_of(n):
  return train.make_mesh(devices=jax.devices()[:n])


def test_training_ids_are_the_python_pipelines_on_one_host_and_global():
  """Step s's ids equal data.pipeline=python's on one host, across an epoch's end and from a
  resumed start; a stacked call gives the same batches as single takes; the global batch is
  the same on a 1-device and an 8-device mesh."""
  cfg = make_config(mean=(0.5,), std=(0.25,))
  stream = on_device.TrainStream(cfg, "digits", "train", global_batch_size=64, image_size=16,
                                 seed=3, mesh=mesh_of(8))
  host = data.train_iterator(cfg, "digits", "train", global_batch_size=64, image_size=16,
                             seed=3, start_step=20, process_index=0, process_count=1)
  steps = np.arange(20, 26)  # 1437 / 64: epoch 0 ends in step 22
  np.testing.assert_array_equal(stream.ids(steps), np.stack([next(host)["id"] for _ in steps]))
  fused = stream.take(20, 4)
  assert fused["image"].shape == (4, 64, 16, 16, 1)
  one = on_device.TrainStream(cfg, "digits", "train", global_batch_size=64, image_size=16,
                              seed=3, mesh=mesh_of(1))
  for i in range(4):
    for ref in (stream.take(20 + i), one.take(20 + i)):
      for key in ("image", "label", "id", "crop_box", "flipped"):
        np.testing.assert_allclose(np.asarray(fused[key][i]), np.asarray(ref[key]), atol=1e-5,
                                   err_msg=key)
  other = on_device.TrainStream(cfg, "digits", "train", global_batch_size=64, image_size=16,
                                seed=4, mesh=mesh_of(8))
  assert not np.array_equal(other.ids([20]), stream.ids([20]))


def test_device_crops_are_their_boxes(colour_folder):
  """Each crop lies in the image, and cropping the raw image with the batch's box, resizing it
  with PIL (the lazy folder's resize) and flipping it where ``flipped`` gives the batch's
  image; a grey split is kept with one channel and broadcast."""
  cfg = make_config(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_scale=(0.1, 1.0))
  opts = transforms.AugmentOptions.from_config(cfg)
  stream = on_device.TrainStream(cfg, f"folder:{colour_folder}", "train", global_batch_size=8,
                                 image_size=16, seed=0, mesh=mesh_of(8))
  raw = on_device.host_images(data.sources.open_source(f"folder:{colour_folder}", cfg), "train")
  assert raw.shape[1:] == (20, 24, 3)
  flips = 0
  for step in range(3):
    batch = jax.device_get(stream.take(step))
    assert batch["image"].shape == (8, 16, 16, 3)
    for j in range(8):
      y0, x0, y1, x1 = batch["crop_box"][j]
      assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
      top, bottom = round(float(y0) * 20), round(float(y1) * 20)
      left, right = round(float(x0) * 24), round(float(x1) * 24)
      ref = transforms.resize_one(raw[batch["id"][j], top:bottom, left:right], 16, 16)
      if batch["flipped"][j]:
        ref, flips = ref[:, ::-1], flips + 1
      ref = transforms.normalize(ref, opts.mean, opts.std)
      np.testing.assert_allclose(batch["image"][j], ref, atol=2e-3)
  assert 0 < flips < 24
  grey = on_device.device_split(make_config(), "digits", "train", mesh_of(8))
  assert grey.images.shape == (1437, 8, 8, 1) and grey.channels == 1


@pytest.mark.parametrize("whole_image", [False, True])
def test_evaluation_batches_are_the_host_pipelines(colour_folder, whole_image):
  cfg = make_config(mean=(0.5,), std=(0.25,))
  kw = dict(global_batch_size=8, image_size=16, max_examples=3, whole_image=whole_image)
  dev = list(on_device.EvalBatches(cfg, f"folder:{colour_folder}", "test", mesh=mesh_of(8),
                                   **kw))
  host = list(data.eval_iterator(cfg, f"folder:{colour_folder}", "test", **kw))
  assert len(dev) == len(host) == 1
  for key in ("label", "id", "mask"):
    np.testing.assert_array_equal(np.asarray(dev[0][key]), host[0][key], err_msg=key)
  np.testing.assert_allclose(np.asarray(dev[0]["image"]), host[0]["image"], atol=2e-4)


def test_a_tfds_split_goes_on_the_devices(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = write_tfds_metadata(tmp_path, {"train": 30, "test": 30})
  encoded = np.array([constant_png(7 * i) for i in range(30)], dtype=object)
  cfg = make_config(data_dir=data_dir)
  with tfds.testing.mock_data(as_dataset_fn=tfds_mock_reader(encoded, 30), data_dir=data_dir):
    split = on_device.device_split(cfg, "tfds:mnist", "test", mesh_of(8))
  assert split.images.shape == (30, 28, 28, 1) and split.channels == 3   # grey kept once
  np.testing.assert_array_equal(np.asarray(split.images)[:, 0, 0, 0], 7 * np.arange(30))
  np.testing.assert_array_equal(np.asarray(split.labels), np.arange(30) % 10)


def test_what_on_device_refuses(monkeypatch, tmp_path):
  with pytest.raises(config_lib.ConfigError, match="data.randaugment.*data.on_device"):
    on_device.check_options(make_config(randaugment="rand-m9-mstd0.5-inc1"))
  with pytest.raises(config_lib.ConfigError, match="data.random_erase"):
    on_device.check_options(make_config(random_erase=0.25))
  monkeypatch.setattr(on_device, "MAX_BYTES", 1000)
  on_device._CACHE.clear()  # pylint: disable=protected-access
  with pytest.raises(DatasetError, match="over the 0.00 GiB data.on_device allows"):
    on_device.device_split(make_config(), "digits", "test", mesh_of(8))
  with pytest.raises(config_lib.ConfigError, match="steps_per_call must be an integer >= 1"):
    train.train_and_evaluate(tiny_config(steps_per_call=0), str(tmp_path))


@pytest.mark.parametrize("config_file", ["simmim_digits.py", "mi_mae_digits.py"])
def test_k_fused_steps_equal_k_single_steps(config_file):
  """K steps in one call (lax.scan) end on the state of K single steps (MAE: in
  test_train.test_eight_devices_match_one_device)."""
  c = config_lib.load(os.path.join(ROOT, "configs", config_file) + ":runlocal")
  for key, value in {"model.width": 32, "model.depth": 1, "model.heads": 2,
                     "model.decoder_width": 32, "model.decoder_depth": 1,
                     "model.decoder_heads": 2, "batch_size": 16, "data.on_device": True,
                     # MI-MAE: one V update per step, CLUB switched on inside the call
                     "mi_mae.v_steps": 1, "mi_mae.v_hidden": 32, "mi_mae.club_start": 2}.items():
    group, _, name = key.rpartition(".")
    if not group or (group in c and name in c[group]):  # the keys this method has
      config_lib.override(c, key, str(value))
  mesh = mesh_of(1)
  run = train.setup_run(c, mesh)
  init = jax.jit(run.init)
  stream = on_device.TrainStream(c.data, c.dataset, c.train_split, global_batch_size=16,
                                 image_size=c.image_size, seed=0, mesh=mesh)
  step = train.make_train_step(run.method, run.tx, run.schedule, run.base_key)
  single, fused = train.jit_train_step(step, mesh), train.jit_train_step(step, mesh, steps=4)
  a, losses = init(), []
  for s in range(4):
    a, m = single(a, stream.take(s))
    losses.append(float(m["loss"]))
  b, m = fused(init(), stream.take(0, 4))
  np.testing.assert_allclose(np.asarray(m["loss"]), losses, rtol=1e-5)
  assert int(b["step"]) == 4
  if "mi/club_on" in m:  # the switch flips inside the call, at its step
    np.testing.assert_array_equal(np.asarray(m["mi/club_on"]), [0, 0, 1, 1])
  for x, y in zip(jax.tree.leaves((a["params"], a["opt_state"], a["extra"])),
                  jax.tree.leaves((b["params"], b["opt_state"], b["extra"]))):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=2e-5,
                               atol=1e-6)


def test_call_length():
  # aligned, inside the run, nothing due inside: K; otherwise single steps
  assert train.call_length(8, 4, 16, lambda t: t % 6 == 0) == 4
  assert train.call_length(4, 4, 16, lambda t: t % 6 == 0) == 1     # 6 is inside [4, 8)
  assert train.call_length(5, 4, 16, lambda t: False) == 1           # not aligned
  assert train.call_length(12, 4, 14, lambda t: False) == 1          # past the end
  assert train.call_length(12, 1, 16, lambda t: False) == 1


def test_a_run_with_steps_per_call_resumes_bit_exact(tmp_path, monkeypatch):
  """The digits demo's model end to end with data.on_device + steps_per_call 8: SIGTERM in the
  call from step 8 saves step 16, and the resumed run ends on the parameters of the
  uninterrupted one; metrics rows keep their steps."""
  c = tiny_config(**{"data.on_device": True, "steps_per_call": 8, "total_steps": 32,
                     "checkpoint.every_steps": 32, "log_every": 8, "image_every": 32})
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  real = on_device.TrainStream.take
  train.train_and_evaluate(c, straight)
  rows = read_metrics(straight)
  assert [r["step"] for r in rows if "loss" in r] == [8, 16, 24, 32]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0]

  def interrupting(self, step, k=1):
    if step == 8:
      os.kill(os.getpid(), 15)
    return real(self, step, k)
  with monkeypatch.context() as m:
    m.setattr(on_device.TrainStream, "take", interrupting)
    train.train_and_evaluate(c, interrupted)
  assert ckpt_lib.Checkpointer(interrupted, read_only=True).latest_step() == 16
  train.train_and_evaluate(c, interrupted)
  (s1, a), (s2, b) = final_params(straight, c), final_params(interrupted, c)
  assert s1 == s2 == 32
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_fashion_mnist_shaped_folder_trains_on_the_devices(tmp_path, monkeypatch, caplog):
  """28 px grey PNGs in class folders (Fashion-MNIST's shape): kept with one channel, trained
  with steps_per_call 8 (single steps from 8 to 16, around the checkpoint at 12), probed on
  the devices."""
  folder = tmp_path / "fashion"
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("test", 10)):
    for label in range(10):
      os.makedirs(folder / split / f"{label}_class")
      for j in range(n // 10):
        pixels = np.clip(rng.normal(25 * label, 30, (28, 28)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / split / f"{label}_class" / f"{j:05d}.png")
  c = tiny_config(**{"dataset": f"folder:{folder}", "image_size": 28, "total_steps": 16,
                     "data.on_device": True, "steps_per_call": 8, "probe.enabled": True,
                     "probe.train_examples": 40, "probe.test_examples": 10,
                     "probe.batch_size": 8, "probe.every_steps": 16, "checkpoint.every_steps": 12,
                     "log_every": 8, "image_every": 16, "data.mean": "(0.3,)",
                     "data.std": "(0.35,)"})
  calls = []
  real = on_device.TrainStream.take

  def recording(self, step, k=1):
    calls.append((step, k))
    return real(self, step, k)
  monkeypatch.setattr(on_device.TrainStream, "take", recording)
  with caplog.at_level(logging.INFO, logger="mim_jax"):
    out = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert calls == [(0, 8)] + [(s, 1) for s in range(8, 16)]
  assert "steps_per_call 8: checkpoint.every_steps 12 not a multiple of it" in caplog.text
  assert 0.0 <= out["probe/accuracy"] <= 1.0
  assert [r["step"] for r in read_metrics(str(tmp_path / "run")) if "loss" in r] == [8, 12, 16]
  assert on_device.device_split(c.data, c.dataset, "train", mesh_of(8)).images.shape == (
      40, 28, 28, 1)
