"""AMT (amt.md): token counts, weighted sampling, the attention maps, and resuming across a
refresh. The crop alignment of the maps is tested in test_amt_align.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import data, methods, train
from mim_jax import config as config_lib
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.interop import pretrained
from mim_jax.masking import amt, sampling
from mim_jax.models.vit import RelativePositionBias
from test_train import final_params, read_metrics, sigterm_at, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_INFO = data.DatasetInfo(num_classes=1000, channels=3, num_examples=1_281_167,
                                 base_split_size=1_281_167)


def imagenet_method(name, **model):
  """A 224 px ViT/16 method (1 thin block) with AMT, for shapes only (never initialized)."""
  c = config_lib.base_config(name)
  c.image_size = 224
  c.batch_size = 4096
  c.model.update(variant="B/16", width=32, depth=1, heads=2, masking="amt", **model)
  if name == "mae":
    c.model.update(decoder_width=32, decoder_depth=1, decoder_heads=2)
  else:
    c.amt.mask_ratio, c.amt.throw_ratio = 0.44, 0.26
  return methods.get(name)(c, 3, data_info=IMAGENET_INFO)


def test_token_counts_at_224():
  assert sampling.amt_counts(196, 0.45, 0.40, "floor") == (88, 78, 30)
  assert sampling.amt_counts(49, 0.44, 0.26, "ceil") == (22, 13, 14)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  batch = {"image": images, "id": jax.ShapeDtypeStruct((2,), jnp.int32)}
  key = jax.random.key(0)

  mae = imagenet_method("mae")
  params = jax.eval_shape(mae.init, key)
  extra = jax.eval_shape(mae.init_extra, key)
  assert extra["amt_cache"].shape == (1_281_167, 14, 14)
  patches, pred, ids, mask = jax.eval_shape(
      lambda p, e, b: mae._predict_amt(p, e, b, key), params, extra, batch)
  assert pred.shape == (2, 88 + 30, 16 * 16 * 3)            # decoder: [CLS] + 118 tokens
  masked, thrown, visible = jax.eval_shape(
      lambda e, b: mae.amt.split(key, mae.amt.cached_weights(e, b)), extra, batch)
  assert (masked.shape[1], thrown.shape[1], visible.shape[1]) == (88, 78, 30)
  latent = jax.eval_shape(lambda p, v: mae.model.apply(
      {"params": p}, jnp.zeros((2, 196, 768)), v, method=lambda m, x, i: m.encoder(x, i)),
      params, visible)
  assert latent.shape == (2, 31, 32)                        # encoder: [CLS] + 30 tokens

  simmim = imagenet_method("simmim")
  params = jax.eval_shape(simmim.init, key)
  extra = jax.eval_shape(simmim.init_extra, key)
  mask, ids_keep = jax.eval_shape(
      lambda e, b: simmim._plan(e, b, key, "amt"), extra, batch)
  assert ids_keep.shape == (2, (22 + 14) * 4)                # encoder: [CLS] + 144 tokens
  loss, _ = jax.eval_shape(lambda p, e, b: simmim.loss(p, e, b, {"mask": key, "drop_path": key},
                                                        stage="amt"), params, extra, batch)
  assert loss.shape == ()


def test_split_covers_every_unit_once():
  weights = jax.random.uniform(jax.random.key(0), (16, 49))
  for throw_lowest in (False, True):
    order = sampling.weighted_order(jax.random.key(1), weights)
    masked, thrown, visible = sampling.amt_split(order, (22, 13, 14), throw_lowest)
    units = np.sort(np.concatenate([masked, thrown, visible], 1), 1)
    np.testing.assert_array_equal(units, np.tile(np.arange(49), (16, 1)))
    # masked are the first of the order; thrown the next ones or the last ones
    np.testing.assert_array_equal(masked, order[:, :22])
    np.testing.assert_array_equal(thrown, order[:, -13:] if throw_lowest else order[:, 22:35])


def test_weighted_sampling_draws_first_with_probability_proportional_to_weight():
  n, draws = 6, 40_000
  w = jnp.asarray([0.05, 0.1, 0.2, 0.3, 0.9, 1.0])
  order = jax.jit(sampling.weighted_order)(jax.random.key(3), jnp.broadcast_to(w, (draws, n)))
  freq = np.bincount(np.asarray(order[:, 0]), minlength=n) / draws
  expected = np.asarray(w / w.sum())
  chi2 = draws * np.sum((freq - expected) ** 2 / expected)
  assert chi2 < 20.5, (freq, expected)      # chi-square, 5 dof, p = 0.001
  # The second draw is without replacement: P(i second) = sum_j p_j * w_i / (1 - w_j).
  second = np.bincount(np.asarray(order[:, 1]), minlength=n) / draws
  p = expected
  expected_second = np.asarray([sum(p[j] * p[i] / (1 - p[j]) for j in range(n) if j != i)
                                for i in range(n)])
  np.testing.assert_allclose(second, expected_second, atol=0.01)
  # Uniform weights: every patch equally likely to be masked (88 of 196 at r 0.45).
  order = sampling.weighted_order(jax.random.key(4), jnp.ones((2000, 196)))
  masked = np.zeros(196)
  np.add.at(masked, np.asarray(order[:, :88]).reshape(-1), 1)
  np.testing.assert_allclose(masked / 2000, 88 / 196, atol=0.05)


def test_cls_attention_equals_a_direct_softmax():
  c = tiny_config(**{"model.rel_pos": "shared", "model.depth": 2})
  method = methods.get("mae")(c, 1)
  params = jax.jit(method.init)(jax.random.key(0))["encoder"]
  # a non-zero shared bias, so that the bias is part of what is checked
  table = params["rel_pos_bias"]["table"]
  params["rel_pos_bias"]["table"] = jax.random.normal(jax.random.key(1), table.shape)
  images = jax.random.normal(jax.random.key(2), (3, 16, 16, 1))
  got = method.encoder.cls_attention(params, images)            # [B, heads, 1 + L]

  spec = method.encoder
  x = spec.inputs(images)
  _, state = spec.module.apply({"params": params}, x, capture_intermediates=True,
                               mutable=["intermediates"])
  y = state["intermediates"]["transformer"]["block_1"]["norm1"]["__call__"][0]
  qkv_p = params["transformer"]["block_1"]["attn"]["qkv"]
  qkv = np.asarray(y) @ np.asarray(qkv_p["kernel"]) + np.asarray(qkv_p["bias"])
  b, t, _ = qkv.shape
  heads, d = 2, 16
  q, k = qkv[..., :32].reshape(b, t, heads, d), qkv[..., 32:64].reshape(b, t, heads, d)
  logits = np.einsum("bhd,bkhd->bhk", q[:, 0], k) / np.sqrt(d)
  idx = RelativePositionBias.index((4, 4))  # [CLS]'s row of the bias, from the table
  logits = logits + np.asarray(params["rel_pos_bias"]["table"])[idx[0]].T[None]
  want = np.exp(logits - logits.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)

  maps, entropy = amt.attention_maps(got)
  a = want[:, :, 1:]
  norm = (a - a.min(-1, keepdims=True)) / (a.max(-1, keepdims=True) - a.min(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(maps), norm.mean(1), rtol=1e-5, atol=1e-6)
  p = a / a.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(entropy), (-(p * np.log(p)).sum(-1)).mean(1), rtol=1e-5)
  assert float(maps.min()) >= 0 and float(maps.max()) <= 1


def amt_config(**overrides):
  """Tiny MAE + AMT on 160 digits (10 steps per epoch at 16): AMT from step 2, refresh every 3."""
  settings = {"model.masking": "amt", "train_split": "train[:160]", "amt.start_epoch": 0.2,
              "amt.interval_epochs": 0.3, "amt.batch_size": 80, "amt.images": 8,
              "checkpoint.every_steps": 1, "checkpoint.keep": 10}
  settings.update(overrides)
  return tiny_config(**settings)


def test_resume_across_a_refresh_keeps_cache_and_parameters(tmp_path, monkeypatch):
  c = amt_config()
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  train.train_and_evaluate(c, straight)
  with monkeypatch.context() as m:
    # after the refresh at step 2, before the one at 5; the refresh's batches have no crop box
    sigterm_at(m, at_batch=4, counts=lambda batch: "crop_box" in batch)
    train.train_and_evaluate(c, interrupted)
  assert ckpt_lib.Checkpointer(interrupted, read_only=True).latest_step() == 4
  train.train_and_evaluate(c, interrupted)

  plain = amt_config(**{"model.masking": "random"})  # the same parameters, no data_info needed
  (s1, a), (s2, b) = final_params(straight, plain), final_params(interrupted, plain)
  assert s1 == s2 == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  cache_a = pretrained.read_item(straight, 8, "extra")["amt_cache"]
  cache_b = pretrained.read_item(interrupted, 8, "extra")["amt_cache"]
  np.testing.assert_array_equal(cache_a, cache_b)
  # the 160 training images got maps in [0, 1]; the other ids of the split kept the initial 1
  assert cache_a.shape == (1437, 4, 4) and cache_a.dtype == np.float16
  assert np.all(cache_a[160:] == 1) and not np.all(cache_a[:160] == 1)
  assert 0 <= cache_a.min() and cache_a.max() <= 1
  # the cache of step 4 (saved before the refresh at 5) differs from the final one
  assert not np.array_equal(pretrained.read_item(interrupted, 4, "extra")["amt_cache"], cache_a)

  rows = read_metrics(straight)
  refreshes = [r["step"] for r in rows if "amt/attention_entropy" in r]
  assert refreshes == [2, 5]             # hooks run before a step; none after the last
  entropy = [r["amt/attention_entropy"] for r in rows if "amt/attention_entropy" in r]
  assert all(0 < e <= np.log(16) + 1e-6 for e in entropy)
  assert os.path.exists(os.path.join(straight, "images", "amt_00000005.png"))
  losses = {r["step"]: r["loss"] for r in read_metrics(interrupted) if "loss" in r}
  assert losses[8] == {r["step"]: r["loss"] for r in rows if "loss" in r}[8]


def test_amt_needs_the_training_split_size():
  c = amt_config()
  with pytest.raises(ValueError, match="data_info"):
    methods.get("mae")(c, 1)
  c.model.masking = "attention"
  with pytest.raises(ValueError, match="model.masking must be 'random' or 'amt'"):
    methods.get("mae")(c, 1, data_info=IMAGENET_INFO)


def test_configs_of_the_amt_recipes():
  for name, counts in (("mae_amt_imagenet", (88, 78, 30)), ("simmim_amt_imagenet", (22, 13, 14))):
    c = config_lib.load(os.path.join(ROOT, "configs", name + ".py"))
    method = methods.get(c.method)(c, 3, data_info=IMAGENET_INFO)
    assert method.amt.counts == counts
    steps_per_epoch = 1_281_167 // c.batch_size
    assert method.amt.start_step == 40 * steps_per_epoch
    assert method.amt.interval == 40 * steps_per_epoch
    assert method.stage(method.amt.start_step - 1) == "random"
    assert method.stage(method.amt.start_step) == "amt"


def test_released_variants_of_the_amt_recipes_build_and_trace():
  """``:released`` (issue #20): MAE-AMT at the script's 0.75 / 0 masks 147, throws none, keeps 49
  (encoder [CLS] + 49, decoder [CLS] + 196); SimMIM-AMT keeps 22 / 13 / 14. Both sample with the
  released crop slice."""
  key = jax.random.key(0)
  batch = {"image": jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32),
           "id": jax.ShapeDtypeStruct((2,), jnp.int32)}
  for name, counts in (("mae_amt_imagenet", (147, 0, 49)), ("simmim_amt_imagenet", (22, 13, 14))):
    c = config_lib.load(os.path.join(ROOT, "configs", name + ".py:released"))
    c.model.update(width=32, depth=1, heads=2)   # thin, for shapes only
    if c.method == "mae":
      c.model.update(decoder_width=32, decoder_depth=1, decoder_heads=2)
    method = methods.get(c.method)(c, 3, data_info=IMAGENET_INFO)
    assert method.amt.counts == counts, name
    assert method.amt.faithful_crop_bug, name
    params = jax.eval_shape(method.init, key)
    extra = jax.eval_shape(method.init_extra, key)
    if c.method == "mae":
      _, pred, _, mask = jax.eval_shape(
          lambda p, e, b: method._predict_amt(p, e, b, key), params, extra, batch)
      assert pred.shape == (2, 147 + 49, 16 * 16 * 3) and mask.shape == (2, 196), name
    loss, _ = jax.eval_shape(lambda p, e, b: method.loss(
        p, e, b, {"mask": key, "drop_path": key}, stage="amt"), params, extra, batch)
    assert loss.shape == (), name
