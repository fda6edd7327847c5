"""The generic trainer: sharding, bit-exact resume after SIGTERM, guards, restore, the demo."""

import glob
import json
import logging
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mim_jax import data, methods, train
from mim_jax import config as config_lib
from mim_jax import main as main_lib
from mim_jax.core import optim
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.core import workdir as workdir_lib
from mim_jax.core.errors import WorkdirError
from mim_jax.interop import pretrained as pretrained_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "mae_digits.py")
# The tests' XLA flags (conftest.py) without the device count: for a trainer in a subprocess,
# which is quicker on one CPU device than on eight on 2 cores.
ONE_DEVICE_XLA_FLAGS = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))


def tiny_config(**overrides):
  """A 1-block MAE on 16x16 digits with 4x4 patches: compiles and runs in seconds."""
  c = config_lib.load(DIGITS + ":runlocal")
  settings = {
      "model.variant": "tiny_test/4", "model.width": "32", "model.depth": "1",
      "model.heads": "2", "model.decoder_width": "32", "model.decoder_depth": "1",
      "model.decoder_heads": "2", "batch_size": "16", "total_steps": "8",
      "warmup_epochs": "0.05", "log_every": "2", "checkpoint.every_steps": "4",
      "image_every": "8", "probe.enabled": "False", "probe.random_init": "False",
      "probe.train_examples": "160", "probe.test_examples": "64", "probe.batch_size": "32"}
  settings.update({k: str(v) for k, v in overrides.items()})
  for key, value in settings.items():
    config_lib.override(c, key, value)
  return c


def final_params(workdir, config):
  """(step, params) of the workdir's latest checkpoint (a run of ``config``)."""
  del config
  return pretrained_lib.read_params(workdir)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# --------------------------------------------------------------------------------------------
def test_eight_devices_match_one_device():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  c = tiny_config()
  method = methods.get("mae")(c, 1)
  tx = optim.make_optimizer(c.optimizer, optim.warmup_cosine(1e-3, 2, 10))
  key = jax.random.key(0)
  images = jax.random.normal(jax.random.key(1), (16, 16, 16, 1))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = train.make_mesh(devices)
    rep, bat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    init = jax.jit(train.state_initializer(method, tx, key), out_shardings=rep)
    state = init()
    batch = {"image": jax.device_put(images, bat)}
    grad_fn = jax.jit(jax.value_and_grad(method.loss, has_aux=True),
                      in_shardings=(rep, rep, bat, rep), out_shardings=rep)
    (loss, _), grads = grad_fn(state["params"], {}, batch, {"mask": key})
    step = train.jit_train_step(train.make_train_step(method, tx, optax_sched(), key), mesh)
    new_state, _ = step(state, batch)
    results.append(jax.device_get((loss, grads, new_state["params"])))
    batches = [batch] + [{"image": jax.device_put(images + i + 1, bat)} for i in range(2)]
    for other in batches[1:]:  # new data, same shapes: no recompilation (static shapes under jit)
      new_state, _ = step(new_state, other)
    assert step._cache_size() == 1
    if len(devices) == 1:  # steps_per_call: the same three steps in one call (lax.scan)
      fused = train.jit_train_step(train.make_train_step(method, tx, optax_sched(), key), mesh,
                                   steps=3)
      stacked = jax.device_put(jax.tree.map(lambda *x: jnp.stack(x), *batches),
                               data.on_device.stacked_sharding(mesh))
      fused_state, metrics = fused(init(), stacked)
      assert metrics["loss"].shape == (3,) and int(fused_state["step"]) == 3
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                   jax.device_get(fused_state), jax.device_get(new_state))
    assert len(batch["image"].sharding.device_set) == len(devices)
  (l1, g1, p1), (l8, g8, p8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


def optax_sched():
  return optim.warmup_cosine(1e-3, 2, 10)


# --------------------------------------------------------------------------------------------
def sigterm_at(monkeypatch, at_batch, counts=lambda batch: True):
  """Sends a real SIGTERM to this process when the trainer takes batch number ``at_batch``
  (counting only the batches ``counts`` accepts)."""
  real = data.device_prefetch

  def wrapped(iterator, sharding, size=2):
    taken = 0
    for batch in real(iterator, sharding, size):
      if counts(batch):
        taken += 1
        if taken == at_batch:
          signal.raise_signal(signal.SIGTERM)
      yield batch
  monkeypatch.setattr(train.data.prefetch, "device_prefetch", wrapped)


def run_straight_and_interrupted(c, tmp_path, monkeypatch, at_batch):
  """Workdirs 'straight' (``c`` run to its end) and 'interrupted' (stopped by SIGTERM at batch
  ``at_batch``, its checkpoint at that step; not resumed yet)."""
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  train.train_and_evaluate(c, straight)
  with monkeypatch.context() as m:
    sigterm_at(m, at_batch=at_batch)
    train.train_and_evaluate(c, interrupted)
  assert ckpt_lib.Checkpointer(interrupted, read_only=True).latest_step() == at_batch
  return straight, interrupted


def test_interrupted_run_resumes_bit_exact(tmp_path, monkeypatch):
  c = tiny_config()
  straight, interrupted = run_straight_and_interrupted(c, tmp_path, monkeypatch, at_batch=3)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # handler restored
  # how each attempt ended, for scripts that run workdirs (both exit 0)
  assert workdir_lib.read_run_status(straight)["status"] == "done"
  assert {k: workdir_lib.read_run_status(interrupted)[k] for k in ("status", "step")} == {
      "status": "preempted", "step": 3}
  train.train_and_evaluate(c, interrupted)                     # resumes at 3, runs to 8
  assert {k: workdir_lib.read_run_status(interrupted)[k] for k in ("status", "step")} == {
      "status": "done", "step": 8}

  (s1, a), (s2, b) = final_params(straight, c), final_params(interrupted, c)
  assert s1 == s2 == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = [r["step"] for r in read_metrics(interrupted) if "loss" in r]
  assert steps == [2, 3, 4, 6, 8]
  losses_a = {r["step"]: r["loss"] for r in read_metrics(straight) if "loss" in r}
  losses_b = {r["step"]: r["loss"] for r in read_metrics(interrupted) if "loss" in r}
  assert losses_a[8] == losses_b[8] and losses_a[6] == losses_b[6]
  row = read_metrics(straight)[-1]
  assert {"step", "loss", "lr", "images_per_sec", "grad_norm"} <= set(row)
  assert glob.glob(os.path.join(straight, "images", "reconstruction_00000008.png"))
  assert glob.glob(os.path.join(straight, "tensorboard", "events.out.tfevents.*"))
  assert json.load(open(os.path.join(straight, "config.json")))["total_steps"] == 8

  # Resuming with another architecture is refused by the config check, naming the key;
  # starting from the checkpoint in another workdir is a clear error naming the parameters.
  other = tiny_config(**{"model.width": 64})
  with pytest.raises(WorkdirError, match=r"model.width: 32 -> 64"):
    train.train_and_evaluate(other, straight)              # resume into the same workdir
  other.init_from = straight
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"encoder/patch_embed/proj/kernel checkpoint \(16, 32\) vs model "
                           r"\(16, 64\)"):
    train.train_and_evaluate(other, str(tmp_path / "other"))

  # A pre-training checkpoint evaluated later with init_from + eval_only.
  ev = tiny_config(**{"init_from": straight, "eval_only": True, "probe.enabled": True})
  results = train.train_and_evaluate(ev, str(tmp_path / "eval"))
  assert workdir_lib.read_run_status(str(tmp_path / "eval"))["status"] == "done"
  assert 0.0 <= results["probe/accuracy"] <= 1.0
  assert read_metrics(str(tmp_path / "eval"))[-1]["probe/accuracy"] == results["probe/accuracy"]


def test_interrupted_run_resumes_bit_exact_with_the_tf_pipeline(tmp_path, monkeypatch):
  """The same with data.pipeline=tf (the default outside the digits configs): its stream
  restarts at the checkpoint's step, so the resumed run ends on the same parameters."""
  c = tiny_config(**{"data.pipeline": "tf", "data.flip": "True"})
  straight, interrupted = run_straight_and_interrupted(c, tmp_path, monkeypatch, at_batch=5)
  train.train_and_evaluate(c, interrupted)
  (s1, a), (s2, b) = final_params(straight, c), final_params(interrupted, c)
  assert s1 == s2 == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  python = tiny_config(**{"data.flip": "True"})   # another stream: other parameters
  train.train_and_evaluate(python, str(tmp_path / "python"))
  _, p = final_params(str(tmp_path / "python"), python)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(p)))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  real = data.train_iterator

  def poisoned(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs), start=1):
      if i == 6:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch
  monkeypatch.setattr(train.data.pipeline, "train_iterator", poisoned)
  c = tiny_config()
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteLossError, match=r"at step 6.*last checkpoint: step 4"):
    train.train_and_evaluate(c, workdir)
  step, params = final_params(workdir, c)
  assert step == 4
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_demo_runlocal_end_to_end(tmp_path, capsys):
  workdir = str(tmp_path / "demo")
  assert main_lib.main(["--config", DIGITS + ":runlocal", "--workdir", workdir]) == 0
  rows = read_metrics(workdir)
  final = [r for r in rows if "probe/accuracy" in r][-1]
  init = [r for r in rows if "probe/random_init_accuracy" in r][0]
  assert 0.0 <= final["probe/accuracy"] <= 1.0 and 0.0 <= init["probe/random_init_accuracy"] <= 1
  assert init["step"] == 0
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0]                      # it learns
  assert all(r["images_per_sec"] > 0 for r in rows if "loss" in r and r["step"] > 10)
  out = capsys.readouterr().out
  assert "probe accuracy: pre-trained" in out and "ETA" in out


def test_metrics_go_to_metrics_jsonl_alone_without_clu(tmp_path, monkeypatch, caplog):
  """Where clu (TensorBoard through TensorFlow) is not installed, as on a GPU image with JAX
  alone, the logger says so once and writes metrics.jsonl as before."""
  from mim_jax.core import metrics  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "clu", None)                   # its import now fails
  with caplog.at_level(logging.WARNING, logger="mim_jax"):
    writer = metrics.MetricLogger(str(tmp_path))
  assert caplog.text.count("no TensorBoard output") == 1
  writer.write(3, {"loss": 0.5})
  writer.write_image(3, "reconstruction", np.zeros((4, 4, 3), np.uint8))
  writer.close()
  assert read_metrics(str(tmp_path)) == [{"step": 3, "loss": 0.5}]
  assert not os.path.exists(tmp_path / "tensorboard")
