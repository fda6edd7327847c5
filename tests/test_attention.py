"""The attention kernel choice (``model.attention``): which kernel 'auto' / 'xla' / 'cudnn'
resolve to, and the padding around cuDNN's fused kernel.

cuDNN itself needs a GPU. Here its call is stood in for by JAX's XLA attention given the same
arguments (padded inputs and sequence lengths), so the padding, masking and cutting around it
are checked against plain attention over the unpadded tokens, and ``model.attention`` is
followed through a whole MAE (encoder and decoder). The GPU numbers are in benchmarks/README.md.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import data, methods
from mim_jax import config as config_lib
from mim_jax.config import base_config
from mim_jax.models import encoders, vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_gpu(monkeypatch):
  """A 'gpu' backend whose cuDNN attention is XLA's over the same arguments; records the
  shapes and lengths of every call."""
  calls = []
  real = jax.nn.dot_product_attention

  def attention(q, k, v, bias=None, mask=None, *, implementation=None, **kw):
    if implementation == "cudnn":
      calls.append({"shape": q.shape, "lengths": kw.get("key_value_seq_lengths")})
      implementation = "xla"
    return real(q, k, v, bias, mask, implementation=implementation, **kw)

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax.nn, "dot_product_attention", attention)
  return calls


def qkv(shape, dtype=jnp.bfloat16, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, shape, jnp.float32).astype(dtype) for k in keys]


def test_kernel_choice_on_cpu():
  q = jnp.zeros((2, 5, 2, 8), jnp.bfloat16)
  assert vit.attention_impl("auto", q) == "xla"
  assert vit.attention_impl("xla", q) == "xla"
  with pytest.raises(ValueError, match="cannot run here: the backend is cpu"):
    vit.attention_impl("cudnn", q)
  with pytest.raises(ValueError, match="one of"):
    vit.attention_impl("flash", q)


def test_kernel_choice_on_a_gpu(fake_gpu):
  q = jnp.zeros((2, 5, 2, 32), jnp.bfloat16)
  assert vit.attention_impl("auto", q) == "cudnn"
  assert vit.attention_impl("xla", q) == "xla"
  # Where the fused kernel does not apply, 'auto' falls back and 'cudnn' says why.
  cases = [(q.astype(jnp.float32), None, "float32"),
           (q, jnp.zeros((2, 2, 5, 5)), "bias"),
           (jnp.zeros((2, 5, 2, 12), jnp.bfloat16), None, "head width 12")]
  for x, bias, why in cases:
    assert vit.attention_impl("auto", x, bias) == "xla"
    with pytest.raises(ValueError, match=why):
      vit.attention_impl("cudnn", x, bias)


@pytest.mark.parametrize("tokens", [197, 51, 8])
def test_padded_fused_attention_is_attention_over_the_real_tokens(fake_gpu, tokens):
  """An odd token count (MAE's decoder: 197) is padded to a multiple of FUSED_TOKEN_MULTIPLE with
  the padded keys masked out; 8 tokens need no padding. Output and gradients equal plain
  attention."""
  q, k, v = qkv((3, tokens, 2, 16), jnp.float32)
  g = jax.random.normal(jax.random.key(1), q.shape)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v) * g)
  plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
  out = jax.jit(vit.fused_attention)(q, k, v)
  assert out.shape == q.shape
  np.testing.assert_allclose(out, plain(q, k, v), rtol=1e-5, atol=1e-5)
  grads = jax.jit(jax.grad(lambda *a: loss(vit.fused_attention, *a), argnums=(0, 1, 2)))(q, k, v)
  ref = jax.jit(jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(grads, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

  padded = -(-tokens // vit.FUSED_TOKEN_MULTIPLE) * vit.FUSED_TOKEN_MULTIPLE
  assert {c["shape"][1] for c in fake_gpu} == {padded}
  if padded != tokens:
    assert all(c["lengths"] is not None for c in fake_gpu)
    # The masking matters: attending to the zero-padded keys gives another result.
    pad = ((0, 0), (0, padded - tokens), (0, 0), (0, 0))
    unmasked = plain(*(jnp.pad(x, pad) for x in (q, k, v)))[:, :tokens]
    assert not np.allclose(unmasked, out, atol=1e-3)


def count_primitive(jaxpr, name):
  """How often primitive ``name`` occurs in ``jaxpr`` and the jaxprs inside it."""
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == name
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        if hasattr(sub, "jaxpr"):
          n += count_primitive(getattr(sub.jaxpr, "jaxpr", sub.jaxpr), name)
        elif hasattr(sub, "eqns"):
          n += count_primitive(sub, name)
  return n


@pytest.mark.parametrize("scan,remat,qkv_bias", [(False, "none", "qkv"), (True, "block", "qkv"),
                                                  (False, "dots", "qv")])
def test_transformer_pads_odd_tokens_once(fake_gpu, scan, remat, qkv_bias):
  """On the fused path a Transformer over 17 tokens pads them to 18 once for all its blocks:
  every kernel call sees 18 tokens and the valid length 17, the forward pass has one pad, and the
  output, the [CLS] attention (AMT's maps) and the gradients equal the XLA path's over 17 tokens:
  the padding reaches no real token, and the value bias added after the attention (through the
  projection) is the one added to v."""
  x = jax.random.normal(jax.random.key(0), (2, 17, 32)).astype(jnp.bfloat16)
  g = jax.random.normal(jax.random.key(1), (2, 17, 32))
  make = lambda attention: vit.Transformer(
      2, 2, options=vit.BlockOptions(attention=attention, qkv_bias=qkv_bias), dtype=jnp.bfloat16,
      remat=remat, scan=scan)
  params = make("xla").init(jax.random.key(2), x)
  leaves, tree = jax.tree.flatten(params)       # non-zero biases
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])

  def run(attention):
    model = make(attention)

    def loss(p):
      out, inter = model.apply(p, x, mutable=["intermediates"])
      return jnp.sum(out.astype(jnp.float32) * g), (out, inter)
    (_, (out, inter)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    pads = count_primitive(jax.make_jaxpr(lambda p: model.apply(p, x))(params).jaxpr, "pad")
    return out, inter, grads, pads

  out_x, inter_x, grads_x, pads_x = run("xla")
  assert fake_gpu == [] and pads_x == 0
  out_f, inter_f, grads_f, pads_f = run("auto")
  assert pads_f == 1
  assert fake_gpu and {c["shape"][1] for c in fake_gpu} == {18}
  assert all(c["lengths"] is not None and c["lengths"].shape == (2,) for c in fake_gpu)
  assert out_f.shape == (2, 17, 32)
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert rel(out_f.astype(jnp.float32), out_x.astype(jnp.float32)) < 1e-2
  for a, b in zip(jax.tree.leaves(inter_f), jax.tree.leaves(inter_x)):
    assert a.shape == b.shape and a.shape[-1] == 17
    np.testing.assert_allclose(a, b, atol=1e-2)
  a = np.concatenate([np.ravel(v) for v in jax.tree.leaves(grads_f)])
  b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(grads_x)])
  assert rel(a, b) < 3e-2       # bf16 rounding (1% here); without the value bias: 28% on the output


def test_split_qkv_is_the_fused_projection():
  """q, k, v from three products with slices of the kernel (the fused path, the value bias
  handed back to be added after the attention) equal one product cut in three, with the
  parameters of a Dense(3 d) under the same names."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  params = vit.QKV(16).init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)    # a non-zero bias
  ref = nn.Dense(48).apply(params, x)
  q, k, v, v_bias = vit.QKV(16).apply(params, x)
  assert v_bias is None
  np.testing.assert_allclose(jnp.concatenate([q, k, v], -1), ref, rtol=1e-6, atol=1e-6)
  q, k, v, v_bias = vit.QKV(16, split=True).apply(params, x)
  np.testing.assert_allclose(v_bias, params["params"]["bias"][32:])
  np.testing.assert_allclose(jnp.concatenate([q, k, v + v_bias], -1), ref, rtol=1e-6, atol=1e-6)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, nn.Dense(48).init(jax.random.key(1), x))


def mae_loss(attention, calls):
  c = base_config("mae")
  c.image_size, c.batch_size, c.compute_dtype = 32, 4, "bfloat16"
  m = c.model
  m.variant, m.width, m.depth, m.heads = "tiny_test/4", 32, 1, 2
  m.decoder_width, m.decoder_depth, m.decoder_heads = 32, 1, 2
  m.attention = attention
  method = methods.get("mae")(c, channels=3, data_info=data.DatasetInfo(10, 3, 100, base_split_size=100))
  params = jax.jit(method.init)(jax.random.key(0))
  calls.clear()   # count the loss's attention calls only
  batch = {"image": jax.random.normal(jax.random.key(1), (4, 32, 32, 3))}
  rngs = {name: jax.random.key(2) for name in method.rng_streams}
  loss, grads = jax.jit(jax.value_and_grad(lambda p: method.loss(p, {}, batch, rngs)[0]))(params)
  return float(loss), grads


def test_model_attention_reaches_encoder_and_decoder(fake_gpu):
  """A bf16 MAE (32 px, patch 4: encoder 1 + 16 tokens, decoder 1 + 64) on the 'gpu': 'auto'
  puts both attention layers on the fused kernel and trains as 'xla' does."""
  loss_xla, grads_xla = mae_loss("xla", fake_gpu)
  assert fake_gpu == []
  loss_auto, grads_auto = mae_loss("auto", fake_gpu)
  # One encoder block (17 tokens -> 18) and one decoder block (65 -> 66).
  assert sorted(c["shape"][1] for c in fake_gpu) == [18, 66]
  assert all(c["lengths"] is not None for c in fake_gpu)
  assert loss_auto == pytest.approx(loss_xla, rel=2e-2)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  a, b = flat(grads_auto), flat(grads_xla)
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 5e-2


def test_attention_config_errors():
  c = base_config("mae")
  c.model.attention = "flash"
  with pytest.raises(ValueError, match="model.attention must be one of"):
    encoders.build(c.model, 32)
  h = base_config("mixmim").model
  h.attention = "cudnn"
  with pytest.raises(ValueError, match="hierarchical encoder"):
    encoders.build(h, 224)


@pytest.mark.parametrize("hypergrad,expected", [("finite_difference", "auto"), ("jvp", "xla"),
                                                ("unroll", "xla")])
def test_mlo_mae_second_order_hypergradients_keep_xla_attention(hypergrad, expected):
  """jvp / unroll differentiate through attention twice, which the fused kernel (a custom VJP)
  cannot: MLO-MAE builds its encoder and decoder with XLA's kernel for them."""
  c = config_lib.load(os.path.join(ROOT, "configs", "mlo_mae_digits.py"))
  c.mlo.hypergrad = hypergrad
  method = methods.get("mlo_mae")(c, 1, num_classes=10)
  assert method.model.encoder.options.attention == expected
  assert method.model.decoder.attention == expected
  assert c.model.attention == "auto"        # the run's own config is left as it was
  c.model.attention = "cudnn"
  if expected == "xla":
    with pytest.raises(ValueError, match="differentiates through attention twice"):
      methods.get("mlo_mae")(c, 1, num_classes=10)
