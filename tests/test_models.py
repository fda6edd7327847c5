"""ViT / MAE model: parameter counts, sin-cos layout, patchify, init, token counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.config import base_config
from mim_jax.methods.mae import MAE
from mim_jax.models.patches import patchify, unpatchify
from mim_jax.models.posembed import sincos_2d


def mae_method(variant="tiny_test/16", image_size=224, channels=3, **model):
  c = base_config("mae")
  c.image_size = image_size
  c.model.variant = variant
  for k, v in model.items():
    c.model[k] = v
  return MAE(c, channels)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_vit_b16_mae_parameter_count_matches_mae_md():
  method = mae_method("B/16")
  params = jax.eval_shape(method.init, jax.random.key(0))
  assert count(params) == 111_655_680            # trainable, sin-cos tables are not parameters
  assert count(params["encoder"]) == 85_647_360


@pytest.mark.parametrize("variant,dims", [("L/16", (1024, 24)), ("H/14", (1280, 32))])
def test_large_variants_have_their_widths_and_depths(variant, dims):
  params = jax.eval_shape(mae_method(variant).init, jax.random.key(0))
  enc = params["encoder"]["transformer"]
  assert enc["norm"]["scale"].shape == (dims[0],)
  assert sum(k.startswith("block_") for k in enc) == dims[1]


def direct_sincos(dim, gh, gw):
  """Entry by entry from the layout rule in mae.md (first half: column, second half: row)."""
  quarter = dim // 4
  table = np.zeros((gh * gw, dim))
  for h in range(gh):
    for w in range(gw):
      for c in range(dim):
        coord, j = (w, c) if c < dim // 2 else (h, c - dim // 2)
        fn, i = (math.sin, j) if j < quarter else (math.cos, j - quarter)
        table[h * gw + w, c] = fn(coord / 10000 ** (i / quarter))
  return table


@pytest.mark.parametrize("dim,gh,gw", [(16, 3, 5), (32, 4, 4)])
def test_sincos_matches_direct_formula(dim, gh, gw):
  table = sincos_2d(dim, gh, gw, cls_token=True)
  assert table.shape == (1 + gh * gw, dim)
  np.testing.assert_array_equal(table[0], 0)
  np.testing.assert_allclose(table[1:], direct_sincos(dim, gh, gw), atol=1e-6)


def test_patchify_layout_and_round_trip():
  images = np.random.default_rng(0).normal(size=(2, 12, 8, 3)).astype(np.float32)
  p = jax.jit(patchify, static_argnums=1)(images, 4)
  assert p.shape == (2, 6, 48)
  # token 1 is row 0, column 1; its vector is (row within patch, column, channel)
  np.testing.assert_array_equal(p[0, 1], np.asarray(images[0, 0:4, 4:8, :]).reshape(-1))
  np.testing.assert_array_equal(p[1, 5], np.asarray(images[1, 8:12, 4:8, :]).reshape(-1))
  np.testing.assert_array_equal(
      jax.jit(unpatchify, static_argnums=(1, 2, 3, 4))(p, 4, 3, 2, 3), images)


def test_token_counts_at_mask_075():
  method = mae_method("tiny_test/16")  # 224 / 16 -> 196 patches
  params = jax.eval_shape(method.init, jax.random.key(0))
  patches = jax.ShapeDtypeStruct((2, 196, 16 * 16 * 3), jnp.float32)
  ids_keep = jax.ShapeDtypeStruct((2, 49), jnp.int32)
  ids_restore = jax.ShapeDtypeStruct((2, 196), jnp.int32)
  latent = jax.eval_shape(lambda p, x, k: method.model.apply(
      {"params": p}, x, k, method=lambda m, x, k: m.encoder(x, k)), params, patches, ids_keep)
  assert latent.shape == (2, 1 + 49, 32)         # [CLS] + 49 visible
  pred = jax.eval_shape(lambda p, x, k, r: method.model.apply({"params": p}, x, k, r),
                        params, patches, ids_keep, ids_restore)
  assert pred.shape == (2, 196, 16 * 16 * 3)     # 197 decoder tokens minus [CLS]


def test_mae_initialization():
  method = mae_method("tiny_test/16", decoder_width=64)
  params = jax.jit(method.init)(jax.random.key(0))
  enc, dec = params["encoder"], params["decoder"]
  for token in (enc["cls_token"], dec["mask_token"]):
    assert token.shape[:2] == (1, 1)
  assert abs(float(jnp.std(dec["mask_token"])) - 0.02) < 0.01
  qkv = enc["transformer"]["block_0"]["attn"]["qkv"]
  bound = math.sqrt(6 / (32 + 96))                # xavier-uniform on the (in, 3*in) matrix
  assert float(jnp.max(jnp.abs(qkv["kernel"]))) <= bound
  assert float(jnp.max(jnp.abs(qkv["kernel"]))) > 0.9 * bound
  np.testing.assert_array_equal(qkv["bias"], 0)
  ln = enc["transformer"]["block_0"]["norm1"]
  np.testing.assert_array_equal(ln["scale"], 1)
  np.testing.assert_array_equal(ln["bias"], 0)
  pe = enc["patch_embed"]["proj"]
  fan_in, fan_out = 16 * 16 * 3, 32
  assert float(jnp.max(jnp.abs(pe["kernel"]))) <= math.sqrt(6 / (fan_in + fan_out))
  assert 0 < float(jnp.max(jnp.abs(pe["bias"]))) <= 1 / math.sqrt(fan_in)


def test_prediction_ignores_masked_pixels():
  """The encoder sees only the kept patches: changing masked patches leaves the output as is."""
  method = mae_method("tiny_test/4", image_size=16, channels=1)
  params = jax.jit(method.init)(jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  key = jax.random.key(2)
  predict = jax.jit(method._predict)
  _, pred, mask = predict(params, images, key)
  m = np.asarray(mask)[:, :, None]
  noise = jax.random.normal(jax.random.key(3), patchify(images, 4).shape) * m
  changed = unpatchify(patchify(images, 4) + noise, 4, 4, 4, 1)
  _, pred2, _ = predict(params, changed, key)
  np.testing.assert_allclose(pred, pred2, atol=1e-5)
  assert not np.allclose(images, changed)


def test_gelu_is_the_exact_gelu_with_cheap_derivatives():
  """vit.gelu (PyTorch's erf form, own derivative rule) equals jax's exact GELU, with the same
  first and second derivatives in reverse and forward mode, and reverse mode keeps one tensor
  (the slopes) where jax's erfc form keeps three."""
  from mim_jax.models import vit
  x = jnp.linspace(-8.0, 8.0, 4001)
  exact = lambda x: jax.nn.gelu(x, approximate=False)
  # The erf form rounds the far negative tail (|value| < 1e-6) to 0, as PyTorch's does.
  np.testing.assert_allclose(vit.gelu(x), exact(x), rtol=1e-6, atol=1e-6)
  d1 = jax.vmap(jax.grad(vit.gelu))(x)
  np.testing.assert_allclose(d1, jax.vmap(jax.grad(exact))(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jvp(vit.gelu, (x,), (jnp.ones_like(x),))[1], d1, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(jax.grad(vit.gelu)))(x),
                             jax.vmap(jax.grad(jax.grad(exact)))(x), rtol=1e-5, atol=1e-6)
  half = vit.gelu(x.astype(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(half.astype(jnp.float32), exact(x.astype(jnp.bfloat16).astype(
      jnp.float32)), rtol=1e-2, atol=1e-2)
  kept = lambda f: [r for r in jax.tree.leaves(jax.vjp(f, x)[1]) if np.shape(r) == x.shape]
  assert len(kept(vit.gelu)) == 1 and len(kept(exact)) == 3
