"""Weight interop (mim_jax.interop.convert): round trips through timm / HF names, the patch-embedding
layout, error messages, and numerical parity with HF transformers' ViTMAE and ViTModel.

The parity tests need torch and transformers (the `torch` extra); without them they FAIL
with an install hint rather than skip, so CI cannot pass them silently.
"""

import json
import os

import jax
import numpy as np
import pytest

from mim_jax import config as config_lib
from mim_jax.config import base_config
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.evaluation.protocols.finetune import FineTune
from mim_jax.interop import convert, files, names, pretrained
from mim_jax.methods.mae import MAE
from mim_jax.models.patches import patchify
from mim_jax.models.posembed import sincos_2d
from mim_jax.objectives import losses

IMAGE, PATCH, WIDTH, HEADS = 32, 4, 32, 2   # tiny_test/4 at 32 pixels: an 8 x 8 grid
GRID = IMAGE // PATCH


def torch_and_transformers():
  try:
    import torch
    import transformers
  except ImportError as e:
    pytest.fail(f"this test needs torch and transformers: pip install -e "
                f"'.[torch]' -c constraints.txt ({e})")
  torch.manual_seed(0)
  return torch, transformers


def tiny(method="mae"):
  c = base_config(method)
  c.image_size = IMAGE
  c.model.variant = f"tiny_test/{PATCH}"
  if method == "mae":
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    return c, MAE(c, 3)
  return c, FineTune(c, 3, num_classes=5)


def randomized(tree, seed, scale=0.05):
  """``tree`` plus noise on every leaf (LayerNorm scales and biases no longer 1 / 0)."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [np.asarray(x, np.float32) + scale *
                                      rng.standard_normal(np.shape(x)).astype(np.float32)
                                      for x in leaves])


def save_run(workdir, config, params):
  os.makedirs(workdir, exist_ok=True)
  config_lib.save(config, str(workdir))
  ckpt = ckpt_lib.Checkpointer(str(workdir), keep=1, async_save=False)
  ckpt.save(7, {"params": params})
  ckpt.close()


def assert_same_tree(a, b):
  flat_a = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(b)}
  assert sorted(flat_a) == sorted(flat_b)
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=k)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
  """A pre-training run's workdir: a tiny MAE with randomized weights at step 7."""
  config, method = tiny("mae")
  params = randomized(method.init(jax.random.key(0)), seed=1)
  workdir = tmp_path_factory.mktemp("mae_run")
  save_run(workdir, config, params)
  return workdir, method, params


def test_patch_embedding_layout_is_the_convolution():
  rng = np.random.default_rng(0)
  weight = rng.standard_normal((WIDTH, 3, PATCH, PATCH)).astype(np.float32)  # torch [D, C, p, p]
  image = rng.standard_normal((1, IMAGE, IMAGE, 3)).astype(np.float32)
  # A stride-p convolution, written out: out[r, c, d] = sum W[d, ch, i, j] x[r p + i, c p + j, ch]
  tiles = image[0].reshape(GRID, PATCH, GRID, PATCH, 3)
  conv = np.einsum("dcij,risjc->rsd", weight, tiles).reshape(GRID * GRID, WIDTH)
  kernel = names.to_mim("conv", weight)
  np.testing.assert_allclose(np.asarray(patchify(image, PATCH))[0] @ kernel, conv, atol=1e-4)
  np.testing.assert_array_equal(names.from_mim("conv", kernel, weight.shape), weight)


def test_timm_round_trip_of_a_pretrained_encoder(mae_run, tmp_path):
  workdir, _, params = mae_run
  assert convert.main(["export", str(workdir), str(tmp_path / "timm"), "--format", "timm"]) == 0
  tensors, meta = files.read_safetensors(str(tmp_path / "timm" / "model.safetensors"))
  assert tensors["patch_embed.proj.weight"].shape == (WIDTH, 3, PATCH, PATCH)
  assert tensors["blocks.1.attn.qkv.weight"].shape == (3 * WIDTH, WIDTH)
  assert tensors["blocks.0.mlp.fc1.weight"].shape == (4 * WIDTH, WIDTH)
  assert not any(k.startswith("decoder") for k in tensors)
  np.testing.assert_array_equal(tensors["pos_embed"][0], sincos_2d(WIDTH, GRID, GRID, True))
  assert json.loads(meta["mim_jax"])["heads"] == HEADS
  out = tmp_path / "back"
  assert convert.main(["import", str(tmp_path / "timm" / "model.safetensors"), str(out)]) == 0
  step, back = pretrained.read_params(str(out))
  assert step == 0 and list(back) == ["encoder"]
  assert_same_tree(back["encoder"], params["encoder"])  # the fixed table is not a parameter
  summary = json.loads((out / "converted.json").read_text())
  assert f"--config.model.variant=tiny_test/{PATCH}" in summary["overrides"]
  assert summary["position_embedding"].startswith("fixed sin-cos (dropped")


def test_official_mae_pth_with_decoder_imports_into_mae(mae_run, tmp_path):
  """An official pre-training checkpoint: timm names plus the decoder, under "model"."""
  torch, _ = torch_and_transformers()
  _, method, params = mae_run
  s = names.Sizes(WIDTH, 2, PATCH, 3, 4 * WIDTH, grid=(GRID, GRID), decoder_width=32,
                  decoder_depth=1, decoder_hidden=128)
  tensors, _ = names.tree_to_timm(params, s)
  tensors["pos_embed"] = sincos_2d(WIDTH, GRID, GRID, True)[None]
  tensors["decoder_pos_embed"] = sincos_2d(32, GRID, GRID, True)[None]
  torch.save({"model": {k: torch.from_numpy(v) for k, v in tensors.items()}},
             tmp_path / "mae_pretrain.pth")
  assert convert.main(["import", str(tmp_path / "mae_pretrain.pth"), str(tmp_path / "out"),
                       "--heads", "2", "--decoder-heads", "2"]) == 0
  _, back = pretrained.read_params(str(tmp_path / "out"))
  assert_same_tree(back, params)  # exactly MAE's tree: init_from can resume pre-training


def test_timm_round_trip_of_a_finetuned_classifier(tmp_path):
  config, method = tiny("finetune")
  params = randomized(method.init(jax.random.key(0)), seed=2)
  assert "pos_embed" in params["encoder"] and "norm" not in params["encoder"]["transformer"]
  save_run(tmp_path / "ft", config, params)
  assert convert.main(["export", str(tmp_path / "ft"), str(tmp_path / "timm"), "--format",
                       "timm", "--head"]) == 0
  tensors, _ = files.read_safetensors(str(tmp_path / "timm" / "model.safetensors"))
  assert {"fc_norm.weight", "head.weight", "head.bias"} <= set(tensors)
  assert "norm.weight" not in tensors and tensors["head.weight"].shape == (5, WIDTH)
  assert convert.main(["import", str(tmp_path / "timm" / "model.safetensors"),
                       str(tmp_path / "back")]) == 0
  _, back = pretrained.read_params(str(tmp_path / "back"))
  assert_same_tree(back, params)
  # --config.init_from=back restores the whole classifier.
  _, restored, what = pretrained.restore_into(method.init(jax.random.key(1)), method.encoder,
                                              str(tmp_path / "back"))
  assert what == "classifier"
  assert_same_tree(restored, params)


def test_hf_round_trip_of_a_pretrained_encoder(mae_run, tmp_path):
  workdir, _, params = mae_run
  assert convert.main(["export", str(workdir), str(tmp_path / "hf"), "--format", "hf"]) == 0
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (config["model_type"], config["hidden_size"], config["num_attention_heads"],
          config["layer_norm_eps"], config["image_size"], config["patch_size"]) == (
              "vit", WIDTH, HEADS, 1e-6, IMAGE, PATCH)
  tensors, _ = files.read_safetensors(str(tmp_path / "hf" / "model.safetensors"))
  assert tensors["encoder.layer.1.attention.attention.key.weight"].shape == (WIDTH, WIDTH)
  assert convert.main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
  _, back = pretrained.read_params(str(tmp_path / "back"))
  assert_same_tree(back["encoder"], params["encoder"])


def write_timm(path, tensors):
  files.write_safetensors(str(path), tensors)
  return str(path)


def test_errors_name_the_tensor(mae_run, tmp_path, capsys):
  workdir, _, _ = mae_run
  convert.main(["export", str(workdir), str(tmp_path / "timm"), "--format", "timm"])
  good, _ = files.read_safetensors(str(tmp_path / "timm" / "model.safetensors"))
  cases = {
      "missing tensor 'blocks.1.mlp.fc2.bias'":
          {k: v for k, v in good.items() if k != "blocks.1.mlp.fc2.bias"},
      "tensor 'blocks.0.attn.proj.weight' has (32, 16)":
          dict(good, **{"blocks.0.attn.proj.weight": np.zeros((32, 16), np.float32)}),
      "no mim_jax equivalent: blocks.0.ls1.gamma":
          dict(good, **{"blocks.0.ls1.gamma": np.ones(32, np.float32)}),
      "unknown layout": {"conv1.weight": np.zeros((2, 2), np.float32)},
  }
  for i, (message, tensors) in enumerate(cases.items()):
    src = write_timm(tmp_path / f"bad{i}.safetensors", tensors)
    assert convert.main(["import", src, str(tmp_path / f"out{i}")]) == 2
    assert message in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:  # argparse: bad usage
    convert.main(["export", str(workdir), str(tmp_path / "x")])
  assert e.value.code == 2


def tiny_vitmae(transformers, eps=1e-6):
  config = transformers.ViTMAEConfig(
      hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=128,
      image_size=IMAGE, patch_size=PATCH, decoder_hidden_size=32, decoder_num_hidden_layers=1,
      decoder_num_attention_heads=2, decoder_intermediate_size=128, norm_pix_loss=True,
      layer_norm_eps=eps, qkv_bias=True, hidden_act="gelu", hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, mask_ratio=0.75)
  return transformers.ViTMAEForPreTraining(config).eval()


def test_hf_vitmae_matches_mim_jax_mae(tmp_path):
  torch, transformers = torch_and_transformers()
  model = tiny_vitmae(transformers)
  # transformers' random init leaves both position tables at zero; fill in the sin-cos tables
  # its from-scratch init computes, and check they are mim_jax's.
  model.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
  model.vit.embeddings.initialize_weights()
  model.decoder.initialize_weights(GRID * GRID)
  sd = model.state_dict()
  for key, width in (("vit.embeddings.position_embeddings", WIDTH),
                     ("decoder.decoder_pos_embed", 32)):
    np.testing.assert_allclose(sd[key][0].numpy(), sincos_2d(width, GRID, GRID, True), atol=1e-6)
  with torch.no_grad():  # no LayerNorm left at 1 / 0, no bias at 0
    for name, p in model.named_parameters():
      if "pos" not in name:
        p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(tmp_path / "hf")  # Hub-style names (transformers 5 renames on save)
  assert convert.main(["import", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
  summary = json.loads((tmp_path / "out" / "converted.json").read_text())
  assert summary["warnings"] == []
  config, method = tiny("mae")
  _, params = pretrained.read_params(str(tmp_path / "out"))
  ckpt_lib.check_compatible(params, method.init(jax.random.key(0)), "converted")

  rng = np.random.default_rng(3)
  images = rng.standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32)
  noise = rng.random((2, GRID * GRID)).astype(np.float32)
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    hf = model(pixel_values=pixels, noise=torch.from_numpy(noise))
    hf_latent = model.vit(pixel_values=pixels, noise=torch.from_numpy(noise)).last_hidden_state
  ids_shuffle = np.argsort(noise, axis=1)  # HF keeps the patches with the smallest noise
  ids_restore = np.argsort(ids_shuffle, axis=1).astype(np.int32)
  kept = method.num_kept
  mask = (ids_restore >= kept).astype(np.float32)
  patches = patchify(images, PATCH)
  pred, latent = method.model.apply({"params": params}, patches,
                                    ids_shuffle[:, :kept].astype(np.int32), ids_restore,
                                    return_latent=True)
  loss = losses.masked_mse(pred, losses.patch_targets(patches, True), mask)
  np.testing.assert_array_equal(hf.mask.numpy(), mask)
  np.testing.assert_allclose(np.asarray(latent), hf_latent.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(pred), hf.logits.numpy(), atol=1e-5)
  np.testing.assert_allclose(float(loss), float(hf.loss), atol=1e-5)

  # The same weights as a torch state dict with transformers 5's in-memory names (q_proj, ...).
  os.makedirs(tmp_path / "bin")
  torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  assert convert.main(["import", str(tmp_path / "bin" / "pytorch_model.bin"),
                       str(tmp_path / "out2"), "--heads", "2", "--decoder-heads", "2"]) == 0
  assert_same_tree(pretrained.read_params(str(tmp_path / "out2"))[1], params)

  # HF's default eps (1e-12) is not MAE's: the importer says so.
  hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
  (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(hf_config, layer_norm_eps=1e-12)))
  summary = convert.import_weights(str(tmp_path / "hf"), str(tmp_path / "out3"))
  assert any("layer_norm_eps=1e-12" in w for w in summary["warnings"])


def test_exported_encoder_matches_hf_vitmodel(tmp_path):
  torch, transformers = torch_and_transformers()
  config, method = tiny("mae")
  params = method.init(jax.random.key(4))  # MAE's init plus noise: values of a sane scale
  params = dict(params, encoder=randomized(params["encoder"], seed=5))
  save_run(tmp_path / "run", config, params)
  assert convert.main(["export", str(tmp_path / "run"), str(tmp_path / "hf"),
                       "--format", "hf"]) == 0
  model = transformers.ViTModel.from_pretrained(str(tmp_path / "hf"), add_pooling_layer=False,
                                                layer_norm_eps=1e-6).eval()
  images = np.random.default_rng(6).standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32)
  with torch.no_grad():
    hf = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  ours = method.encoder.apply(params["encoder"], images)
  assert ours.shape == (2, 1 + GRID * GRID, WIDTH)
  np.testing.assert_allclose(np.asarray(ours), hf.last_hidden_state.numpy(), atol=1e-5)
