"""Memory options of the transformer stack: rematerialized blocks (model.remat) and one nn.scan
over the blocks (model.scan_blocks) compute exactly what the plain unrolled stack computes, and
checkpoints move between the two parameter layouts."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import methods
from mim_jax import config as config_lib
from mim_jax.core import optim
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.models import layout
from mim_jax.models.vit import BlockOptions, Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.variant": "tiny_test/4", "model.width": "32", "model.depth": "3",
        "model.heads": "2"}
DECODER = {"model.decoder_width": "32", "model.decoder_depth": "2", "model.decoder_heads": "2"}


def load(name, **overrides):
  c = config_lib.load(os.path.join(ROOT, "configs", name))
  tiny = {**TINY, **DECODER} if name.startswith("mae") else TINY
  for key, value in {**tiny, **{k: str(v) for k, v in overrides.items()}}.items():
    config_lib.override(c, key, value)
  return c


def close(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=tol, rtol=tol), a, b)


MAE_BLOCK, BEIT_BLOCK = BlockOptions(), BlockOptions("qv", 0.1, "beit", rel_pos_grid=(2, 2))


@pytest.mark.parametrize("options,variants", [
    (MAE_BLOCK, [("block", True), ("dots", True), ("block", False)]),
    (BEIT_BLOCK, [("none", True), ("dots", False)])])
def test_stack_outputs_and_gradients_match_unrolled(options, variants):
  x = jax.random.normal(jax.random.key(1), (2, 5, 32))
  plain = Transformer(3, 2, options=options)
  params = plain.init(jax.random.key(0), x)["params"]
  stacked = layout.stack_blocks(jax.device_get(params))
  assert stacked["blocks"]["attn"]["qkv"]["kernel"].shape == (3, 32, 96)

  def value_and_grad(module, p):
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(module.apply({"params": p}, x) ** 2)))(p)
  loss, grads = value_and_grad(plain, params)
  for remat, scan in variants:
    module = Transformer(3, 2, options=options, remat=remat, scan=scan)
    p = stacked if scan else params
    assert jax.tree.structure(jax.eval_shape(module.init, jax.random.key(0), x)["params"]) == \
        jax.tree.structure(p)
    loss_v, grads_v = value_and_grad(module, p)
    close(loss_v, loss)
    close(layout.unstack_blocks(jax.device_get(grads_v)) if scan else grads_v,
          jax.device_get(grads))


def test_scanned_init_keeps_per_block_rules():
  """BEiT's init divides block i's output projections by sqrt(2 i) inside the scan too, and drop
  path (a per-block rate) still drops whole examples."""
  x = jnp.zeros((4, 9, 256))
  m = Transformer(3, 4, options=BlockOptions(init="beit"), drop_path_rate=0.5, scan=True)
  params = jax.jit(m.init)(jax.random.key(0), x)["params"]
  stds = np.std(np.asarray(params["blocks"]["attn"]["proj"]["kernel"]), axis=(1, 2))
  np.testing.assert_allclose(stds, 0.02 / np.sqrt(2 * np.arange(1, 4)), rtol=0.05)
  np.testing.assert_allclose(np.std(np.asarray(params["blocks"]["attn"]["qkv"]["kernel"]),
                                    axis=(1, 2)), 0.02, rtol=0.05)
  x = jax.random.normal(jax.random.key(1), (8, 9, 256))
  rngs = {"drop_path": jax.random.key(2)}
  same = m.apply({"params": params}, x)
  assert not np.allclose(m.apply({"params": params}, x, deterministic=False, rngs=rngs), same)
  no_drop = Transformer(3, 4, options=BlockOptions(init="beit"), scan=True)   # rates all 0
  np.testing.assert_array_equal(
      no_drop.apply({"params": params}, x, deterministic=False, rngs=rngs), same)


def test_layout_round_trip_and_choice():
  tree = {"encoder": {"transformer": {f"block_{i}": {"w": np.full((2,), i)} for i in range(3)}
                      | {"norm": {"scale": np.ones(2)}}}, "head": {"b": np.zeros(1)}}
  stacked = layout.stack_blocks(tree)
  np.testing.assert_array_equal(stacked["encoder"]["transformer"]["blocks"]["w"][:, 0], [0, 1, 2])
  assert layout.is_scanned(stacked) and not layout.is_scanned(tree)
  back = layout.unstack_blocks(stacked)
  jax.tree.map(np.testing.assert_array_equal, back, tree)
  assert layout.to_layout_of(tree, stacked)["encoder"]["transformer"].keys() == {"blocks", "norm"}
  assert layout.to_layout_of(stacked, tree) is not stacked
  assert layout.to_layout_of(tree, tree) is tree


def test_mae_loss_is_the_same_with_scan_and_remat():
  plain = methods.get("mae")(load("mae_digits.py"), 1)
  fast = methods.get("mae")(load("mae_digits.py", **{"model.scan_blocks": True,
                                                     "model.remat": "block"}), 1)
  params = jax.device_get(plain.init(jax.random.key(0)))
  stacked = layout.stack_blocks(params)
  assert "blocks" in stacked["decoder"]["transformer"]
  batch = {"image": jax.random.normal(jax.random.key(1), (4, 16, 16, 1))}
  rngs = {"mask": jax.random.key(2)}

  def value_and_grad(method, p):
    f = lambda p: method.loss(p, {}, batch, rngs)[0]   # noqa: E731
    return jax.jit(jax.value_and_grad(f))(p)
  loss, grads = value_and_grad(plain, params)
  loss_s, grads_s = value_and_grad(fast, stacked)
  close(loss_s, loss)
  close(layout.unstack_blocks(jax.device_get(grads_s)), jax.device_get(grads))


def test_unrolled_checkpoint_into_scanned_finetune_with_layer_decay(tmp_path):
  """A pre-training checkpoint (unrolled) restores into a scanned fine-tune model, and layer-wise
  lr decay gives each slice of the stacked blocks its own block's scale."""
  mae = methods.get("mae")(load("mae_digits.py"), 1)
  saved = jax.device_get(mae.init(jax.random.key(3)))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(7, {"params": saved, "opt_state": {"count": np.zeros((), np.int32)}})
  ckpt.close()
  c = load("finetune_digits.py:runlocal", **{"model.scan_blocks": True,
                                             "optimizer.layer_decay": 0.5})
  ft = methods.get("finetune")(c, 1, num_classes=10)
  step, params, _, what = ft.load_pretrained(jax.device_get(ft.init(jax.random.key(0))), {},
                                             str(tmp_path))
  assert (step, what) == (7, "encoder")
  jax.tree.map(np.testing.assert_array_equal, params["encoder"]["transformer"]["blocks"],
               layout.stack_blocks(saved["encoder"]["transformer"])["blocks"])
  ids, num_layers = ft.layer_ids(jax.eval_shape(ft.init, jax.random.key(0)))
  scales = optim.layer_decay_scales(ids, num_layers, 0.5)
  qkv = scales["encoder"]["transformer"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv.shape == (3, 1, 1)
  np.testing.assert_allclose(qkv[:, 0, 0], 0.5 ** (4 - np.arange(1, 4)))
  assert scales["encoder"]["cls_token"] == 0.5 ** 4 and scales["head"]["kernel"] == 1.0
  # Weight decay counts a stacked parameter's dimensions per block: biases and norms stay out.
  mask = optim.decay_mask(params, c.optimizer.wd_exclude)
  unrolled = optim.decay_mask(layout.unstack_blocks(params), c.optimizer.wd_exclude)
  blocks = mask["encoder"]["transformer"]["blocks"]
  assert not blocks["norm1"]["scale"] and not blocks["attn"]["qkv"]["bias"]
  assert blocks["attn"]["qkv"]["kernel"] and blocks["mlp"]["fc2"]["kernel"]
  jax.tree.map(lambda a, b: np.testing.assert_equal(a, b), blocks,
               unrolled["encoder"]["transformer"]["block_1"])


def test_attention_maps_of_a_scanned_encoder():
  """AMT reads the last block's [CLS] attention; a scanned encoder gives the same maps."""
  plain = methods.get("mae")(load("mae_digits.py"), 1).encoder
  scanned = methods.get("mae")(load("mae_digits.py", **{"model.scan_blocks": True}), 1).encoder
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  params = jax.device_get(plain.init(jax.random.key(0), images))
  close(scanned.cls_attention(layout.stack_blocks(params), images),
        plain.cls_attention(params, images))
