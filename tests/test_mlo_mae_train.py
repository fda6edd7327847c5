"""MLO-MAE in the trainer: the levels' data splits, one round of the schedule against the same
updates written out by hand, the unrolled round's real updates, and an exact resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mim_jax import data, methods, train
from mim_jax import config as config_lib
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.core.errors import DatasetError
from mim_jax.core.rng import stream_key
from mim_jax.data import sources, subsets
from mim_jax.methods.mlo_mae import theta_of
from mim_jax.models.posembed import sincos_2d
from mim_jax.objectives import hypergrad
from test_train import run_straight_and_interrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mlo_mae_digits.py")


def tiny_config(**overrides):
  """A 1-block MLO-MAE on 16x16 digits (16 patches of 4x4), batches of 16."""
  c = config_lib.load(CONFIG + ":runlocal")
  settings = {
      "model.width": 32, "model.depth": 1, "model.heads": 2, "model.decoder_width": 32,
      "model.decoder_depth": 1, "model.decoder_heads": 2, "mlo.masker_hidden": 16,
      "batch_size": 16, "total_steps": 4, "warmup_epochs": 0.0, "log_every": 1,
      "checkpoint.every_steps": 2, "image_every": 4, "probe.enabled": False,
      "probe.random_init": False}
  settings.update(overrides)
  for key, value in settings.items():
    config_lib.override(c, key, str(value))
  return c


def build(c):
  return methods.get("mlo_mae")(c, 1, num_classes=10)


# ------------------------------------------------------------------------------------------
# Data: stage III's part never meets what stages I and II train on.
# ------------------------------------------------------------------------------------------
def stream_ids(c, split, batch, batches):
  it = data.train_iterator(c.data, c.dataset, split, global_batch_size=batch,
                           image_size=c.image_size, seed=0)
  ids = np.concatenate([next(it)["id"] for _ in range(batches)])
  it.close()
  return set(ids.tolist())


@pytest.mark.parametrize("all_train", [False, True])
def test_heldout_split_never_overlaps_the_lower_levels(all_train):
  c = tiny_config(**{"mlo.stage1_uses_all_train": all_train})
  streams = build(c).data_streams(c.train_split, 16)
  assert list(streams) == ["pretrain", "train", "heldout"]
  assert streams["pretrain"][1] == 2 * 16        # K = 2 batches per round
  n = data.dataset_info(c.data, c.dataset, "train").num_examples
  source = sources.open_source(c.dataset, c.data)
  heldout = set(subsets.resolve(streams["heldout"][0], source)[1].tolist())
  assert len(heldout) == round(0.2 * n)
  # A draw stratified by class, not the last ids (digits' labels are not class-ordered, but a
  # folder's are: its last 20 % would be its last classes only).
  assert heldout != set(range(n - len(heldout), n))
  labels = source.labels("train")
  share = 0.2 * np.bincount(labels, minlength=10)
  assert np.all(np.abs(np.bincount(labels[sorted(heldout)], minlength=10) - share) < 1)
  # Two epochs of the whole split for each stream: every id of its part shows up.
  seen = {name: stream_ids(c, split, 32, 2 * -(-n // 32))
          for name, (split, _) in streams.items()}
  assert seen["heldout"] == heldout
  assert seen["train"] == set(range(n)) - heldout
  assert not seen["heldout"] & seen["train"]
  if all_train:   # the official CIFAR code's stage I: all of the split, stage III's part too
    assert seen["pretrain"] == set(range(n))
  else:
    assert seen["pretrain"] == seen["train"] and not seen["heldout"] & seen["pretrain"]
  # Never the test split: every stream is (a part of) the training split.
  assert all((split.split if isinstance(split, data.Subset) else split) == "train"
             for split, _ in streams.values())
  # The draw follows config.seed, and is the same for the same seed.
  again = build(c).data_streams(c.train_split, 16)["heldout"][0]
  assert set(subsets.resolve(again, source)[1].tolist()) == heldout
  other = build(tiny_config(seed=1)).data_streams(c.train_split, 16)["heldout"][0]
  assert set(subsets.resolve(other, source)[1].tolist()) != heldout


def test_holdout_splits_check_their_input():
  c = tiny_config()
  kept, heldout = data.holdout_splits(c.data, "digits", "train[100:200]", 0.25)
  source = sources.open_source("digits", c.data)
  kept_ids, heldout_ids = (subsets.resolve(s, source)[1] for s in (kept, heldout))
  assert len(heldout_ids) == 25 and len(kept_ids) == 75
  assert sorted(kept_ids.tolist() + heldout_ids.tolist()) == list(range(100, 200))
  assert data.dataset_info(c.data, "digits", heldout).num_examples == 25
  with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
    data.holdout_splits(c.data, "digits", "train", 0.0)
  with pytest.raises(DatasetError, match="too small"):
    data.holdout_splits(c.data, "digits", "train[:2]", 0.1)


# ------------------------------------------------------------------------------------------
# The decoder's position table: a theta parameter when mlo.learnable_decoder_pos is on.
# ------------------------------------------------------------------------------------------
def test_learnable_decoder_table_is_a_trained_theta_parameter():
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, size=(8, 16, 16, 1)), jnp.float32)}
  table = sincos_2d(32, 4, 4, cls_token=True)[None]
  methods_ = {on: build(tiny_config(**{"mlo.learnable_decoder_pos": bool(on)})) for on in (0, 1)}
  p_on = jax.jit(methods_[1].init)(jax.random.key(0))
  np.testing.assert_array_equal(p_on["decoder"]["pos_embed"], table)   # starts as sin-cos
  # Off, the table is no parameter; the rest is the same, and so is the loss from the same start.
  p_off = dict(p_on, decoder={k: v for k, v in p_on["decoder"].items() if k != "pos_embed"})
  shapes = jax.eval_shape(methods_[0].init, jax.random.key(0))
  assert jax.tree.structure(shapes) == jax.tree.structure(p_off)
  loss_off = jax.jit(methods_[0].loss_p)(theta_of(p_off), p_off["masker"], batch)
  loss_on, grads = jax.jit(jax.value_and_grad(methods_[1].loss_p))(
      theta_of(p_on), p_on["masker"], batch)
  assert float(loss_on) == pytest.approx(float(loss_off), rel=1e-6)
  # The reconstruction gives it a gradient (every patch row) and the MAE's AdamW (the theta
  # level, lr > 0 without warmup) moves it.
  g = np.asarray(grads["decoder"]["pos_embed"])
  assert np.all(np.abs(g[0, 1:]).max(-1) > 0)
  c = tiny_config()
  tx = methods_[1].optimizer(*train.schedule_for(c, 1150, 32)).levels["theta"]
  updates, _ = jax.jit(lambda g, t: tx.update(g, tx.init(t), t))(grads, theta_of(p_on))
  assert np.abs(np.asarray(updates["decoder"]["pos_embed"])).max() > 0


# ------------------------------------------------------------------------------------------
# Mask statistics: how alive the learned mask is.
# ------------------------------------------------------------------------------------------
def test_mask_statistics_on_hand_made_probabilities(monkeypatch):
  method = build(tiny_config())
  # 4 images, 4 patches, 3 masked: images 0 and 1 mask the same patches (kept: 3), image 2
  # keeps patch 0, image 3 keeps patch 1.
  probs = np.array([[0.9, 0.8, 0.7, 0.1], [0.6, 0.7, 0.8, 1e-5],
                    [0.2, 0.5, 0.6, 0.7], [0.99999, 0.3, 0.6, 0.7]], np.float32)
  monkeypatch.setattr(method, "mask_probs", lambda theta, phi, patches: jnp.asarray(probs))
  stats = jax.device_get(method.prob_stats(None, None, jnp.zeros((4, 16, 16, 1))))
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]], np.float32)
  assert stats["mask_pairs_differ"] == pytest.approx(10 / 12)   # 12 ordered pairs, 2 alike
  assert stats["mask_prob_image_std"] == pytest.approx(probs.std(0).mean(), rel=1e-5)
  assert stats["mask_prob_saturated"] == pytest.approx(2 / 16)
  assert stats["mask_prob_mean"] == pytest.approx(probs.mean(), rel=1e-6)
  gap = probs[mask == 1].mean() - probs[mask == 0].mean()
  assert stats["mask_prob_gap"] == pytest.approx(gap, rel=1e-5)
  same = np.tile(probs[:1], (4, 1))                          # one mask for every image
  monkeypatch.setattr(method, "mask_probs", lambda theta, phi, patches: jnp.asarray(same))
  stats = jax.device_get(method.prob_stats(None, None, jnp.zeros((4, 16, 16, 1))))
  assert stats["mask_pairs_differ"] == 0 and stats["mask_prob_image_std"] == 0


# ------------------------------------------------------------------------------------------
# One round: K theta steps, a psi step, a phi step.
# ------------------------------------------------------------------------------------------
def round_inputs(c):
  """The first batch of each of the run's streams, as the trainer reads them."""
  streams = build(c).data_streams(c.train_split, c.batch_size)
  its = {name: data.train_iterator(c.data, c.dataset, split, global_batch_size=size,
                                   image_size=c.image_size, seed=train._stream_seed(c.seed, name))
         for name, (split, size) in streams.items()}
  batch = next(data.Zip(its))
  data.Zip(its).close()
  return batch


def run_round(c, batch):
  """One round on the 8-device mesh as the trainer runs it (same key, schedule and batch
  structure: the jvp round's program is the one test_interrupted_mlo_run_resumes_exactly's
  trainer compiles, and comes from the compilation cache there)."""
  method = build(c)
  key = jax.random.key(c.seed)
  schedule, total = train.schedule_for(c, 1150, 2 * c.batch_size)
  tx = method.optimizer(schedule, total)
  mesh = train.make_mesh()
  state = jax.jit(train.state_initializer(method, tx, key),
                  out_shardings=NamedSharding(mesh, P()))()
  step = train.jit_train_step(train.make_train_step(method, tx, schedule, key), mesh)
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  before = jax.device_get(state)
  after, metrics = step(state, sharded)
  return method, tx, before, jax.device_get(after), jax.device_get(metrics)


def without_key_bias(params):
  """``params`` with the key third of every qkv bias zeroed: softmax ignores a key bias, so its
  gradient is rounding noise, which AdamW's normalization blows up to lr-sized steps."""
  def drop(path, x):
    if jax.tree_util.keystr(path, simple=True, separator="/").endswith("qkv/bias"):
      w = x.shape[0] // 3
      return np.concatenate([x[:w], np.zeros_like(x[w:2 * w]), x[2 * w:]])
    return x
  return jax.tree_util.tree_map_with_path(drop, jax.device_get(params))


@pytest.fixture(scope="module")
def rounds():
  """One round in each hypergradient mode, from the same state on the same batch."""
  batch = round_inputs(tiny_config())
  return batch, {mode: run_round(tiny_config(**{"mlo.hypergrad": mode}), batch)
                 for mode in ("jvp", "finite_difference", "unroll")}


def test_first_order_round_is_the_schedule_written_out_by_hand(rounds):
  batch, results = rounds
  key = jax.random.key(0)     # run_round's: the config's seed
  method, tx, before, after, metrics = results["jvp"]
  p, opt = before["params"], before["opt_state"]
  theta, psi, phi = theta_of(p), p["cls_head"], p["masker"]

  @jax.jit
  def by_hand(theta, psi, phi):
    images = batch["pretrain"]["image"].reshape(16, 2, 16, 16, 1)
    o_theta = opt["theta"]
    for k in range(2):   # the K = 2 theta steps, each on its own half of the pre-training batch
      g = jax.grad(method.loss_p)(theta, phi, {"image": images[:, k]})
      u, o_theta = tx.levels["theta"].update(g, o_theta, theta)
      theta = jax.tree.map(jnp.add, theta, u)
    batch_f = dict(batch["train"], dropout=stream_key(key, "dropout_head", 0))
    g = jax.grad(method.loss_cls, argnums=1)(theta, psi, batch_f)   # at the updated theta
    u, _ = tx.levels["psi"].update(g, opt["psi"], psi)
    psi = jax.tree.map(jnp.add, psi, u)
    batch_m = dict(batch["heldout"], dropout=stream_key(key, "dropout_masker", 0))
    batch_p = method.with_mask(theta, phi, {"image": images[:, 1]})
    g, _ = hypergrad.jvp(method.loss_p, method.loss_cls, method.loss_cls, theta, psi, phi,
                         batch_p, batch_f, batch_m)
    u, _ = tx.levels["phi"].update(g, opt["phi"], phi)
    return theta, psi, jax.tree.map(jnp.add, phi, u), g

  theta_ref, psi_ref, phi_ref, grad_phi = by_hand(theta, psi, phi)
  close = lambda a, b: jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6), a, b)
  close(without_key_bias(theta_of(after["params"])), without_key_bias(theta_ref))
  close(after["params"]["cls_head"], psi_ref)
  close(after["params"]["masker"], phi_ref)
  assert int(after["step"]) == 1
  assert int(after["opt_state"]["theta"][0].count) == 2   # K theta updates, one of each other
  assert int(after["opt_state"]["phi"][0].count) == 1
  assert metrics["hypergrad_norm"] == pytest.approx(float(hypergrad.tree_norm(grad_phi)),
                                                    rel=1e-4)
  assert 0 < metrics["mask_prob_mean"] < 1 and metrics["loss_m"] > 0
  assert not np.allclose(after["params"]["masker"]["out"]["bias"], phi["out"]["bias"])


def test_unrolled_round_keeps_its_inner_steps_and_agrees_with_finite_differences(rounds):
  _, results = rounds
  (_, jvp, m_jvp), (_, fd, m_fd), (before, unroll, m_unroll) = (
      results[mode][2:] for mode in ("jvp", "finite_difference", "unroll"))
  # The unroll's inner steps are the round's real theta and psi updates: the same AdamW steps
  # as the first-order modes take. (eps_root 1e-16 changes the steps of parameters whose
  # gradient is ~1e-8, rounding noise: up to 1e-4 here, where a real step is ~1e-3.)
  for level in ("encoder", "decoder", "cls_head"):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4),
                 without_key_bias(unroll["params"][level]),
                 without_key_bias(jvp["params"][level]))
  assert m_unroll["loss"] == pytest.approx(float(m_jvp["loss"]), rel=1e-4)
  # The masking network's first AdamW step is about -lr * sign(grad_phi): finite differences
  # move it as the exact jvp does (up to the signs of its smallest entries).
  delta = lambda r: np.concatenate([np.ravel(x - y) for x, y in zip(
      jax.tree.leaves(r["params"]["masker"]), jax.tree.leaves(before["params"]["masker"]))])
  cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  assert cos(delta(fd), delta(jvp)) > 0.9
  assert m_fd["hypergrad_norm"] == pytest.approx(float(m_jvp["hypergrad_norm"]), rel=0.05)
  # Through a fresh AdamW the unroll's hypergradient is almost nil: the first step is
  # -lr * sign(g) per coordinate, whose derivative in g is 0 (eps aside). The direction test of
  # the unrolled mode is test_mlo_mae.py's (SGD inner steps, where the expressions agree).
  assert np.isfinite(m_unroll["hypergrad_norm"])
  assert 0 < m_unroll["hypergrad_norm"] < 0.01 * m_jvp["hypergrad_norm"]


# ------------------------------------------------------------------------------------------
# The trainer: three parameter sets and optimizer states in the checkpoint, exact resume.
# ------------------------------------------------------------------------------------------
def test_interrupted_mlo_run_resumes_exactly(tmp_path, monkeypatch):
  c = tiny_config(**{"mlo.hypergrad": "jvp"})
  straight, interrupted = run_straight_and_interrupted(c, tmp_path, monkeypatch, at_batch=2)
  train.train_and_evaluate(c, interrupted)   # resumes at round 2, runs to 4

  method = build(c)
  tx = method.optimizer(*train.schedule_for(c, 1150, 32))
  abstract = ckpt_lib.abstract(jax.eval_shape(train.state_initializer(method, tx,
                                                                      jax.random.key(0))),
                               NamedSharding(train.make_mesh(), P()))
  states = []
  for workdir in (straight, interrupted):
    ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
    states.append(jax.device_get(ckpt.restore(4, abstract)))
    ckpt.close()
  a, b = states
  assert set(a["params"]) == {"encoder", "decoder", "cls_head", "masker"}
  assert set(a["opt_state"]) == {"theta", "psi", "phi"}
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert os.path.exists(os.path.join(straight, "images", "reconstruction_00000004.png"))
  # config.json is what ran: the jvp hypergradient resolved 'auto' attention to 'xla' (and the
  # resumed run, given 'auto' again, was not refused for it)
  assert c.model.attention == "auto"
  for workdir in (straight, interrupted):
    with open(os.path.join(workdir, "config.json")) as f:
      assert json.load(f)["model"]["attention"] == "xla"
  # Every evaluation protocol takes the encoder, learned position table included.
  saved = a["params"]["encoder"]
  for name in ("finetune_digits", "linear_probe_digits", "knn_digits"):
    e = config_lib.load(os.path.join(ROOT, "configs", name + ".py"))
    for key, value in {"model.width": 32, "model.depth": 1, "model.heads": 2}.items():
      config_lib.override(e, key, str(value))
    protocol = methods.get(e.method)(e, 1, num_classes=10)
    params = jax.device_get(jax.jit(protocol.init)(jax.random.key(1)))
    extra = jax.device_get(jax.jit(protocol.init_extra)(jax.random.key(1)))
    step, params, _, what = protocol.load_pretrained(params, extra, straight)
    assert (step, what) == (4, "encoder"), name
    np.testing.assert_array_equal(params["encoder"]["pos_embed"], saved["pos_embed"])
    np.testing.assert_array_equal(params["encoder"]["patch_embed"]["proj"]["kernel"],
                                  saved["patch_embed"]["proj"]["kernel"])
  table = sincos_2d(32, 4, 4, cls_token=True)[None]
  assert not np.allclose(saved["pos_embed"], table)   # trained: it moved from the sin-cos start
