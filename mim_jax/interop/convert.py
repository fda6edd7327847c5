"""Weight interop with PyTorch checkpoints.

  python -m mim_jax.interop.convert import SRC OUT_DIR [--layout auto|timm|hf] [--heads N]
      [--decoder-heads N] [--image-size N] [--trust-pickle]
  python -m mim_jax.interop.convert export WORKDIR OUT_DIR --format timm|hf [--step N] [--heads N]
      [--image-size N] [--patch-size N] [--head]

import: SRC is an official MAE checkpoint (.pth, timm names, the state dict possibly under
"model": pre-trained encoder [+ decoder], or fine-tuned encoder + fc_norm + head), a timm ViT
state dict (.pth / .safetensors), or HF transformers ViTMAE / ViT weights (a model directory
with config.json, or a model.safetensors / pytorch_model.bin). OUT_DIR becomes a checkpoint
directory (checkpoints/0/params and converted.json) that ``--config.init_from=OUT_DIR``
accepts; the config overrides that match the weights are printed.

export: the encoder of a mim_jax run's checkpoint as OUT_DIR/model.safetensors with timm names
(``--head`` adds a fine-tuned fc_norm / head) or HF ViTModel names plus OUT_DIR/config.json.

Bad input (unknown layout, missing tensor, wrong shape) is reported with exit status 2.
"""

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from mim_jax.interop import files, names
from mim_jax.interop.names import ConversionError
from mim_jax.models.posembed import sincos_2d

# Heads of the standard ViT sizes (Ti, S, B, L, H) by width; MAE's decoders all use 16.
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
MAE_DECODER = {"decoder_width": 512, "decoder_depth": 8, "decoder_heads": 16}
SINCOS_TOLERANCE = 1e-5


def _warn(message):
  print(f"warning: {message}", file=sys.stderr)


def _sincos_difference(table, width, grid):
  """Largest difference between ``table`` [1, 1 + L, width] and mim_jax's fixed sin-cos table
  (inf when the shapes differ)."""
  ref = sincos_2d(width, *grid, cls_token=True)[None]
  if np.shape(table) != ref.shape:
    return float("inf")
  return float(np.max(np.abs(np.asarray(table) - ref)))


def _check_hf_config(config, warnings):
  eps = config.get("layer_norm_eps")
  if eps is not None and abs(eps - 1e-6) > 1e-9:
    warnings.append(f"config.json has layer_norm_eps={eps:g}; mim_jax's LayerNorms use 1e-6 "
                    f"(MAE's value, which the official weights were trained with), so outputs "
                    f"differ slightly from this HF model's")
  act = config.get("hidden_act")
  if act not in (None, "gelu"):
    warnings.append(f"config.json has hidden_act={act!r}; mim_jax uses exact GELU")


def _heads(given, found, width, what):
  heads = given or found or (STANDARD_HEADS.get(width) if what == "encoder" else
                             MAE_DECODER["decoder_heads"] if width == 512 else 0)
  if not heads:
    flag = "--heads" if what == "encoder" else "--decoder-heads"
    raise ConversionError(f"cannot tell the {what}'s number of heads from its weights (width "
                          f"{width} is not a standard size): pass {flag}")
  if width % heads:
    raise ConversionError(f"{what} width {width} is not divisible by {heads} heads")
  return int(heads)


def _overrides(s, heads, decoder_heads, image_size):
  """The ``--config.`` flags that build a mim_jax model of sizes ``s``."""
  from mim_jax.models.vit import VIT_SIZES
  size = next((n for n, v in VIT_SIZES.items()
               if (v.dim, v.depth, v.heads) == (s.width, s.depth, heads)), None)
  flags = [f"--config.model.variant={size or 'B'}/{s.patch}"]
  if size is None:
    flags += [f"--config.model.width={s.width}", f"--config.model.depth={s.depth}",
              f"--config.model.heads={heads}"]
  if s.mlp_hidden != 4 * s.width:
    flags.append(f"--config.model.mlp_ratio={s.mlp_hidden / s.width:g}")
  if image_size:
    flags.append(f"--config.image_size={image_size}")
  if s.num_classes:
    flags.append(f"--config.model.pool={'avg' if s.fc_norm else 'cls'}")
  if s.decoder_width:
    values = {"decoder_width": s.decoder_width, "decoder_depth": s.decoder_depth,
              "decoder_heads": decoder_heads}
    flags += [f"--config.model.{k}={v}" for k, v in values.items() if v != MAE_DECODER[k]]
  return flags


def import_weights(src, out, layout="auto", heads=0, decoder_heads=0, image_size=0,
                   trust_pickle=False):
  """Converts ``src`` into the checkpoint directory ``out``; returns what converted.json says."""
  from mim_jax.core import checkpoint as ckpt_lib
  if os.path.exists(os.path.join(out, "checkpoints")):
    raise ConversionError(f"{out} already holds checkpoints; choose a new directory")
  state, metadata, hf_config, read = files.read_source(src, trust_pickle)
  layout = names.detect_layout(state) if layout == "auto" else layout
  warnings, notes, config = [], [], {}
  if layout == "hf":
    config = hf_config or {}
    state, notes = names.hf_to_timm(state)
    _check_hf_config(config, warnings)
  exported = json.loads(metadata.get("mim_jax", "{}"))  # what our own export recorded
  s = names.infer_sizes(state)
  if s.grid and image_size and image_size != s.grid[0] * s.patch:
    raise ConversionError(f"the position table is for {s.grid[0] * s.patch}-pixel images, "
                          f"not --image-size {image_size}")
  image_size = s.grid[0] * s.patch if s.grid else image_size or config.get("image_size", 0)

  if "decoder_pos_embed" in state:  # fixed in MAE: must be the table mim_jax computes
    diff = _sincos_difference(state.pop("decoder_pos_embed"), s.decoder_width or -1, s.grid)
    if diff > SINCOS_TOLERANCE:
      raise ConversionError(f"tensor 'decoder_pos_embed' is not the fixed 2-D sin-cos table "
                            f"mim_jax's decoder computes (largest difference {diff:.3g})")
    notes.append("decoder_pos_embed is the fixed sin-cos table: dropped (mim_jax computes it)")
  position = "none"
  if "pos_embed" in state:
    fixed = _sincos_difference(state["pos_embed"], s.width, s.grid) <= SINCOS_TOLERANCE
    if fixed and not s.num_classes:
      del state["pos_embed"]
      position = "fixed sin-cos (dropped: mim_jax computes it)"
    else:
      position = ("fixed sin-cos, kept as encoder/pos_embed (a classifier's is a parameter)"
                  if fixed else "learned, kept as encoder/pos_embed")
      if not fixed and not s.num_classes:
        warnings.append("pos_embed is not the fixed sin-cos table: it is kept as "
                        "encoder/pos_embed, which fine-tuning, linear probing and kNN use; "
                        "pre-training configs (fixed table) will refuse it")
  s = dataclasses.replace(s, pos_embed="pos_embed" in state)
  if s.decoder_width and s.decoder_hidden * s.width != s.mlp_hidden * s.decoder_width:
    raise ConversionError(f"the decoder's MLP ({s.decoder_hidden} for width "
                          f"{s.decoder_width}) does not have the encoder's ratio "
                          f"({s.mlp_hidden} for {s.width}); mim_jax uses one mlp_ratio")
  tree = names.timm_to_tree(state, s)
  heads = _heads(heads, config.get("num_attention_heads") or exported.get("heads"), s.width,
                 "encoder")
  if s.decoder_width:
    decoder_heads = _heads(decoder_heads, config.get("decoder_num_attention_heads"),
                           s.decoder_width, "decoder")
  what = ("classifier (encoder + fc_norm + head)" if s.fc_norm and s.num_classes else
          "classifier (encoder + head)" if s.num_classes else
          "encoder + decoder (MAE pre-training)" if s.decoder_width else "encoder")
  overrides = _overrides(s, heads, decoder_heads, image_size)
  summary = {
      "source": os.path.abspath(src), "files": [os.path.abspath(f) for f in read],
      "layout": layout, "contents": what, "position_embedding": position,
      "sizes": dict(dataclasses.asdict(s), heads=heads, image_size=image_size,
                    mlp_ratio=s.mlp_hidden / s.width,
                    decoder_heads=decoder_heads if s.decoder_width else 0),
      "hf_config": {k: config[k] for k in sorted(config) if not isinstance(config[k], dict)},
      "overrides": overrides, "notes": notes, "warnings": warnings,
  }
  os.makedirs(out, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(out, keep=1, async_save=False)
  try:
    ckpt.save(0, {"params": tree})
  finally:
    ckpt.close()
  files.write_json(os.path.join(out, "converted.json"), summary)
  for w in warnings:
    _warn(w)
  print(f"converted {src} ({layout} names): {what}, {s.depth} blocks of width {s.width}, "
        f"patch {s.patch}, {heads} heads; position table: {position}")
  print(f"wrote {out}/checkpoints/0 and {out}/converted.json; use it with")
  print(f"  --config.init_from={out} {' '.join(overrides)}")
  return summary


def _count_blocks(transformer):
  return sum(1 for k in transformer if k.startswith("block_"))


def _flat_paths(tree, prefix=()):
  if not isinstance(tree, dict):
    return ["/".join(prefix)]
  return [p for k, v in tree.items() for p in _flat_paths(v, prefix + (k,))]


def export_weights(workdir, out, fmt, step=-1, heads=0, image_size=0, patch_size=0,
                   head=False):
  """Writes the encoder of ``workdir``'s checkpoint to ``out`` in timm or HF ViTModel names."""
  from mim_jax.interop import pretrained
  from mim_jax.models import layout
  from mim_jax.models.vit import parse_variant
  if fmt not in ("timm", "hf"):
    raise ConversionError(f"--format must be 'timm' or 'hf', got {fmt!r}")
  if head and fmt != "timm":
    raise ConversionError("--head exports a fine-tuned classifier in timm names only (HF's "
                          "ViTForImageClassification pools differently)")
  run = {}
  if os.path.exists(os.path.join(workdir, "config.json")):
    with open(os.path.join(workdir, "config.json")) as f:
      run = json.load(f)
  model = run.get("model", {})
  size, variant_patch = parse_variant(model["variant"]) if model.get("variant") else (None, 0)
  step, params = pretrained.read_params(workdir, step)
  params = layout.unstack_blocks(params)
  enc = dict(params.get("encoder") or {})
  if "cls_token" not in enc or "patch_embed" not in enc:
    raise ConversionError(f"{workdir} step {step} has no ViT encoder (top level: "
                          f"{sorted(params)}, encoder: {sorted(enc)})")
  width = enc["cls_token"].shape[-1]
  patch_dim = enc["patch_embed"]["proj"]["kernel"].shape[0]
  p = patch_size or variant_patch or int(round(np.sqrt(patch_dim / 3)))  # 3 channels if unsaid
  if p * p * (patch_dim // (p * p)) != patch_dim:
    raise ConversionError(f"patch embedding input {patch_dim} is not p*p*C for patch size {p}; "
                          f"pass --patch-size")
  heads = _heads(heads, model.get("heads") or (size.heads if size else 0), width, "encoder")
  if "pos_embed" not in enc:
    if model.get("pos_embed", "sincos") != "sincos":
      raise ConversionError(f"the encoder has no absolute position table (model.pos_embed="
                            f"{model['pos_embed']!r}); timm / HF ViTs need one")
    image_size = image_size or run.get("image_size", 0)
    if not image_size:
      raise ConversionError(f"no config.json in {workdir} tells the image size: pass "
                            f"--image-size")
    enc["pos_embed"] = sincos_2d(width, image_size // p, image_size // p, cls_token=True)[None]
  side = int(round(np.sqrt(enc["pos_embed"].shape[1] - 1)))
  transformer = enc["transformer"]
  s = names.Sizes(width=width, depth=_count_blocks(transformer), patch=p,
                  channels=patch_dim // (p * p),
                  mlp_hidden=transformer["block_0"]["mlp"]["fc1"]["kernel"].shape[1],
                  grid=(side, side), pos_embed=True, final_norm="norm" in transformer)
  tree = {"encoder": enc}
  if head:
    if "head" not in params or run.get("method") == "linear_probe":
      raise ConversionError(f"{workdir} holds no fine-tuned classifier to export with --head")
    tree.update({k: params[k] for k in ("fc_norm", "head") if k in params})
    s = dataclasses.replace(s, fc_norm="fc_norm" in params,
                            num_classes=params["head"]["bias"].shape[0])
  tensors, used = names.tree_to_timm(tree, s)
  unused = [n for n in _flat_paths({"encoder": enc}) if n not in used
            and n != "encoder/mask_token"]  # SimMIM's [MASK] token: pre-training only
  if unused:
    raise ConversionError(f"encoder parameters with no timm / HF ViT equivalent: "
                          f"{', '.join(unused[:6])} (relative position biases, layer scale "
                          f"and q/v-only biases are not part of the standard ViT)")
  os.makedirs(out, exist_ok=True)
  record = {"heads": heads, "image_size": side * p, "source": os.path.abspath(workdir),
            "step": step}
  if fmt == "hf":
    if not s.final_norm:
      raise ConversionError("the encoder has no final LayerNorm (fine-tuned with average "
                            "pooling + fc_norm); HF's ViTModel always applies one: export it "
                            "with --format timm")
    tensors = names.timm_to_hf(tensors)
    files.write_json(os.path.join(out, "config.json"), files.hf_vit_config(
        width, s.depth, heads, s.mlp_hidden, side * p, p, s.channels))
  path = os.path.join(out, "model.safetensors")
  files.write_safetensors(path, tensors, {"mim_jax": json.dumps(record)})
  print(f"exported {workdir} step {step}: {len(tensors)} tensors ({s.depth} blocks of width "
        f"{width}, patch {p}, {heads} heads, {side * p}-pixel images) to {path} "
        f"in {fmt} names")
  if fmt == "hf":
    print(f"  load with transformers.ViTModel.from_pretrained({out!r}, add_pooling_layer=False)")
  return dict(record, format=fmt, path=path, tensors=sorted(tensors))


USAGE = "\n" + __doc__.split("\n\n")[1]


def parse(argv):
  parser = argparse.ArgumentParser(prog="python -m mim_jax.interop.convert", usage=USAGE,
                                   description="Convert ViT / MAE weights between mim_jax and "
                                   "PyTorch formats (timm, official MAE, HF transformers).")
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="a PyTorch checkpoint -> a mim_jax checkpoint directory")
  imp.add_argument("src", help=".pth / .bin / .safetensors file or an HF model directory")
  imp.add_argument("out", help="new directory for the checkpoint (use as --config.init_from)")
  imp.add_argument("--layout", choices=("auto", "timm", "hf"), default="auto",
                   help="tensor names: timm / official MAE, or HF (default: detected)")
  imp.add_argument("--heads", type=int, default=0, help="encoder heads (default: config.json "
                   "or the standard ViT size of that width)")
  imp.add_argument("--decoder-heads", type=int, default=0, help="MAE decoder heads (default: "
                   "config.json, or 16 for a 512-wide decoder)")
  imp.add_argument("--image-size", type=int, default=0,
                   help="image size, when the file has no position table to tell it")
  imp.add_argument("--trust-pickle", action="store_true",
                   help="unpickle more than tensors (training checkpoints with arguments)")
  exp = sub.add_parser("export", help="a mim_jax run's encoder -> timm / HF safetensors")
  exp.add_argument("workdir", help="a mim_jax workdir with checkpoints")
  exp.add_argument("out", help="directory for model.safetensors (and HF's config.json)")
  exp.add_argument("--format", choices=("timm", "hf"), required=True)
  exp.add_argument("--step", type=int, default=-1, help="checkpoint step (default: latest)")
  exp.add_argument("--heads", type=int, default=0, help="default: the run's config.json")
  exp.add_argument("--image-size", type=int, default=0, help="default: the run's config.json")
  exp.add_argument("--patch-size", type=int, default=0, help="default: the run's config.json")
  exp.add_argument("--head", action="store_true",
                   help="timm: also the fine-tuned fc_norm / head")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  from mim_jax.core.checkpoint import CheckpointMismatchError
  try:
    if args.command == "import":
      import_weights(args.src, args.out, args.layout, args.heads, args.decoder_heads,
                     args.image_size, args.trust_pickle)
    else:
      export_weights(args.workdir, args.out, args.format, args.step, args.heads,
                     args.image_size, args.patch_size, args.head)
  except (ConversionError, CheckpointMismatchError, FileNotFoundError) as e:
    print(f"convert error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
