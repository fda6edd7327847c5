"""Tensor names and layouts: mim_jax parameter trees, timm / official-MAE names, HF names.

timm's flat names, which the official MAE code shares (``blocks.3.attn.qkv.weight``), are the
hub of every conversion: an HF state dict is first renamed to them (its separate query / key /
value joined into one qkv, in that order), and a mim_jax tree is read from or written to them
through one explicit table (``tensor_table``) that lists every tensor with its torch shape.

Layouts: a torch Linear weight is [out, in], a Flax Dense kernel [in, out] (transposed). The
patch embedding is a p x p stride-p convolution in torch, weight [D, C, p, p]; in mim_jax a Dense
on patches flattened as (row in patch, column in patch, channel), so
``kernel[(i * p + j) * C + c, d] = weight[d, c, i, j]``. LayerNorm weight is Flax's ``scale``.
"""

import dataclasses
import re

import numpy as np

from mim_jax.core.tree_paths import path_name


class ConversionError(ValueError):
  """A weight file that cannot be converted: unknown layout, missing tensor, wrong shape."""


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What a ViT state dict holds, read off its tensors (``infer_sizes``)."""
  width: int
  depth: int
  patch: int
  channels: int
  mlp_hidden: int
  grid: tuple = ()              # (rows, cols) of patches, () when no position table is present
  pos_embed: bool = False       # the encoder's position table is a parameter (kept)
  final_norm: bool = True       # the encoder's last LayerNorm (``norm``)
  fc_norm: bool = False         # LayerNorm after average pooling (MAE fine-tuning)
  num_classes: int = 0          # > 0: a classification ``head``
  decoder_width: int = 0        # > 0: an MAE decoder
  decoder_depth: int = 0
  decoder_hidden: int = 0


# ------------------------------------------------------------------------------------------
# mim_jax tree <-> timm names
# ------------------------------------------------------------------------------------------
def _linear(name, path, out, inp):
  return [(f"{name}.weight", path + ("kernel",), "linear", (out, inp)),
          (f"{name}.bias", path + ("bias",), "copy", (out,))]


def _norm(name, path, dim):
  return [(f"{name}.weight", path + ("scale",), "copy", (dim,)),
          (f"{name}.bias", path + ("bias",), "copy", (dim,))]


def _blocks(prefix, path, depth, dim, hidden):
  rows = []
  for i in range(depth):
    t, p = f"{prefix}.{i}", path + (f"block_{i}",)
    rows += _norm(f"{t}.norm1", p + ("norm1",), dim)
    rows += _linear(f"{t}.attn.qkv", p + ("attn", "qkv"), 3 * dim, dim)
    rows += _linear(f"{t}.attn.proj", p + ("attn", "proj"), dim, dim)
    rows += _norm(f"{t}.norm2", p + ("norm2",), dim)
    rows += _linear(f"{t}.mlp.fc1", p + ("mlp", "fc1"), hidden, dim)
    rows += _linear(f"{t}.mlp.fc2", p + ("mlp", "fc2"), dim, hidden)
  return rows


def tensor_table(s: Sizes):
  """Every tensor of a model of sizes ``s``: rows (timm name, mim_jax path, kind, torch shape).
  ``kind`` is 'copy', 'linear' (transposed) or 'conv' (the patch embedding)."""
  d, p, c = s.width, s.patch, s.channels
  enc = ("encoder",)
  rows = [("cls_token", enc + ("cls_token",), "copy", (1, 1, d))]
  if s.pos_embed:
    rows.append(("pos_embed", enc + ("pos_embed",), "copy", (1, 1 + s.grid[0] * s.grid[1], d)))
  rows += [("patch_embed.proj.weight", enc + ("patch_embed", "proj", "kernel"), "conv",
            (d, c, p, p)),
           ("patch_embed.proj.bias", enc + ("patch_embed", "proj", "bias"), "copy", (d,))]
  rows += _blocks("blocks", enc + ("transformer",), s.depth, d, s.mlp_hidden)
  if s.final_norm:
    rows += _norm("norm", enc + ("transformer", "norm"), d)
  if s.fc_norm:
    rows += _norm("fc_norm", ("fc_norm",), d)
  if s.num_classes:
    rows += _linear("head", ("head",), s.num_classes, d)
  if s.decoder_width:
    dd, dec = s.decoder_width, ("decoder",)
    rows.append(("mask_token", dec + ("mask_token",), "copy", (1, 1, dd)))
    rows += _linear("decoder_embed", dec + ("embed",), dd, d)
    rows += _blocks("decoder_blocks", dec + ("transformer",), s.decoder_depth, dd,
                    s.decoder_hidden)
    rows += _norm("decoder_norm", dec + ("transformer", "norm"), dd)
    rows += _linear("decoder_pred", dec + ("pred",), p * p * c, dd)
  return rows


def to_mim(kind, x):
  """A torch-layout tensor as the mim_jax parameter (float32, contiguous)."""
  x = np.asarray(x, np.float32)
  if kind == "linear":
    x = x.T
  elif kind == "conv":  # [D, C, p, p] -> [(i, j, c), D]
    x = x.transpose(2, 3, 1, 0).reshape(-1, x.shape[0])
  return np.ascontiguousarray(x)


def from_mim(kind, x, shape):
  """A mim_jax parameter in torch layout ``shape`` (the inverse of ``to_mim``)."""
  x = np.asarray(x, np.float32)
  if kind == "linear":
    x = x.T
  elif kind == "conv":
    d, c, p, _ = shape
    x = x.reshape(p, p, c, d).transpose(3, 2, 0, 1)
  return np.ascontiguousarray(x)


def timm_to_tree(state, s: Sizes, ignore=()):
  """The mim_jax parameter tree of a timm-named state dict. Every tensor of ``tensor_table(s)``
  must be there with its shape; any other tensor (except those in ``ignore``) is an error."""
  tree = {}
  for name, path, kind, shape in tensor_table(s):
    if name not in state:
      raise ConversionError(f"missing tensor {name!r} (expected shape {shape})")
    have = tuple(np.shape(state[name]))
    if have != shape:
      raise ConversionError(f"shape mismatch: tensor {name!r} has {have}, expected {shape}")
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = to_mim(kind, state[name])
  used = {row[0] for row in tensor_table(s)}
  extra = sorted(set(state) - used - set(ignore))
  if extra:
    raise ConversionError(f"{len(extra)} tensors have no mim_jax equivalent: "
                          f"{', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
  return tree


def tree_to_timm(tree, s: Sizes):
  """(timm-named torch-layout tensors, paths used) of the parts of ``tree`` that ``s`` names."""
  out, used = {}, set()
  for name, path, kind, shape in tensor_table(s):
    node = tree
    for key in path:
      if not isinstance(node, dict) or key not in node:
        raise ConversionError(f"the checkpoint has no parameter {path_name(path)!r} "
                              f"(for {name!r})")
      node = node[key]
    x = from_mim(kind, node, shape)
    if x.shape != shape:
      raise ConversionError(f"shape mismatch: parameter {path_name(path)!r} gives {x.shape} "
                            f"for {name!r}, expected {shape}")
    out[name] = x
    used.add(path_name(path))
  return out, used


def _block_count(names, prefix):
  ids = {int(m.group(1)) for n in names for m in [re.match(rf"{prefix}\.(\d+)\.", n)] if m}
  missing = sorted(set(range(max(ids) + 1)) - ids) if ids else []
  if missing:
    raise ConversionError(f"missing tensors of {prefix}.{missing[0]} (found blocks "
                          f"{sorted(ids)})")
  return len(ids)


def _need(state, name):
  if name not in state:
    raise ConversionError(f"missing tensor {name!r}")
  return np.shape(state[name])


def infer_sizes(state) -> Sizes:
  """The sizes of a timm-named ViT state dict (heads cannot be read off the weights)."""
  width = _need(state, "cls_token")[-1]
  depth = _block_count(state, "blocks")
  if not depth:
    raise ConversionError("no transformer blocks ('blocks.0....') found")
  w = _need(state, "patch_embed.proj.weight")
  if len(w) != 4 or w[2] != w[3] or w[0] != width:
    raise ConversionError(f"tensor 'patch_embed.proj.weight' has shape {w}; expected "
                          f"[{width}, C, p, p] (a square patch)")
  grid = ()
  for name in ("pos_embed", "decoder_pos_embed"):
    if name in state:
      n = np.shape(state[name])[1] - 1
      side = int(round(np.sqrt(n)))
      if side * side != n:
        raise ConversionError(f"tensor {name!r} has {n + 1} rows: not 1 + a square grid")
      grid = (side, side)
      break
  num_classes = _need(state, "head.weight")[0] if "head.weight" in state else 0
  sizes = Sizes(width=width, depth=depth, patch=w[2], channels=w[1],
                mlp_hidden=_need(state, "blocks.0.mlp.fc1.weight")[0], grid=grid,
                pos_embed="pos_embed" in state, final_norm="norm.weight" in state,
                fc_norm="fc_norm.weight" in state, num_classes=num_classes)
  if "decoder_embed.weight" in state:
    sizes = dataclasses.replace(
        sizes, decoder_width=_need(state, "decoder_embed.weight")[0],
        decoder_depth=_block_count(state, "decoder_blocks"),
        decoder_hidden=_need(state, "decoder_blocks.0.mlp.fc1.weight")[0])
  return sizes


# ------------------------------------------------------------------------------------------
# HF transformers names <-> timm names
# ------------------------------------------------------------------------------------------
# Per layer: the names of Hub files (and of save_pretrained) and those of transformers 5 models.
_HF_LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
    "classifier": "head",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_embed": "decoder_embed",
    "decoder.decoder_norm": "decoder_norm",
    "decoder.decoder_pred": "decoder_pred",
}
# Encoder layers: encoder.layer.N (Hub) or layers.N (transformers 5); decoder layers:
# decoder.decoder_layers.N, or decoder.decoder_encoder.layer.N as transformers 5.x saves them.
_HF_LAYERS = ((re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$"), "blocks"),
              (re.compile(r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\."
                          r"(.+)\.(weight|bias)$"), "decoder_blocks"))


def detect_layout(names) -> str:
  """'hf' or 'timm' (which the official MAE checkpoints use), from the tensor names."""
  names = list(names)
  if any(re.search(r"(^|\.)embeddings\.(cls_token|patch_embeddings\.)", n) for n in names):
    return "hf"
  if "cls_token" in names or "patch_embed.proj.weight" in names:
    return "timm"
  shown = ", ".join(sorted(names)[:6]) or "(no tensors)"
  raise ConversionError(f"unknown layout: neither timm/MAE names ('cls_token', "
                        f"'patch_embed.proj.weight') nor HF ViT names "
                        f"('embeddings.cls_token'); the file starts with {shown}")


def hf_to_timm(state):
  """(timm-named state dict, notes) of an HF ViT / ViTMAE state dict (either naming)."""
  out, qkv, unknown, notes = {}, {}, [], []
  for name, x in state.items():
    key = name[len("vit."):] if name.startswith("vit.") else name
    if key.startswith("pooler."):
      notes.append(f"dropped {name} (ViTModel's pooler; nothing in mim_jax uses it)")
      continue
    for pattern, prefix in _HF_LAYERS:
      m = pattern.match(key)
      if m:
        break
    if m:
      sub = _HF_LAYER.get(m.group(2))
      if sub is None:
        unknown.append(name)
      elif sub in ("q", "k", "v"):
        qkv.setdefault((prefix, int(m.group(1)), m.group(3)), {})[sub] = (name, x)
      else:
        out[f"{prefix}.{m.group(1)}.{sub}.{m.group(3)}"] = x
      continue
    module = next((mod for mod in _HF_TOP if key == mod or key.startswith(mod + ".")), None)
    if module is None:
      unknown.append(name)
    else:
      out[_HF_TOP[module] + key[len(module):]] = x
  if unknown:
    raise ConversionError(f"{len(unknown)} HF tensors have no mim_jax equivalent: "
                          f"{', '.join(sorted(unknown)[:8])}")
  for (prefix, i, param), parts in sorted(qkv.items()):
    missing = [p for p in "qkv" if p not in parts]
    if missing:
      have = parts[next(iter(parts))][0]
      raise ConversionError(f"layer {i}: the attention's {'/'.join(missing)} {param} is "
                            f"missing (next to {have!r}); mim_jax's attention needs q, k and v"
                            f"{' biases (qkv_bias=True)' if param == 'bias' else ''}")
    out[f"{prefix}.{i}.attn.qkv.{param}"] = np.concatenate(
        [np.asarray(parts[p][1]) for p in "qkv"], axis=0)
  return out, notes


_TIMM_TO_HF_LAYER = {"norm1": "layernorm_before", "norm2": "layernorm_after",
                     "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
                     "mlp.fc2": "output.dense"}
_TIMM_TO_HF_TOP = {"cls_token": "embeddings.cls_token",
                   "pos_embed": "embeddings.position_embeddings",
                   "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                   "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                   "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}


def timm_to_hf(state):
  """HF ``ViTModel`` names (as Hub files and ``save_pretrained`` write them) of a timm-named
  encoder; qkv is split into query, key and value."""
  out = {}
  for name, x in state.items():
    if name in _TIMM_TO_HF_TOP:
      out[_TIMM_TO_HF_TOP[name]] = x
      continue
    m = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", name)
    if not m:
      raise ConversionError(f"tensor {name!r} has no place in an HF ViTModel")
    layer, sub, param = f"encoder.layer.{m.group(1)}", m.group(2), m.group(3)
    if sub == "attn.qkv":
      for part, x_part in zip(("query", "key", "value"), np.split(np.asarray(x), 3, axis=0)):
        out[f"{layer}.attention.attention.{part}.{param}"] = np.ascontiguousarray(x_part)
    elif sub in _TIMM_TO_HF_LAYER:
      out[f"{layer}.{_TIMM_TO_HF_LAYER[sub]}.{param}"] = x
    else:
      raise ConversionError(f"tensor {name!r} has no place in an HF ViTModel")
  return out
