"""Reading PyTorch-world weight files and writing safetensors / HF ``config.json``.

safetensors files are read with ``safetensors.numpy`` (no torch needed). ``.pth`` / ``.pt`` /
``.bin`` files are pickles that only torch can read; torch is imported when one is opened, with
an install hint when it is missing. Tensors come back as float32 numpy arrays.
"""

import json
import os
import pickle

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mim_jax.interop.names import ConversionError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
TORCH_HINT = 'pip install -e ".[torch]" -c constraints.txt'
# Where a training checkpoint keeps its state dict, tried in this order.
NESTED_KEYS = ("model", "state_dict", "model_state", "module")


def _import_torch(path):
  try:
    import torch
  except ImportError:
    raise ConversionError(f"reading {path} needs PyTorch, which is not installed "
                          f"({TORCH_HINT}); safetensors files load without it") from None
  return torch


def _to_numpy(value):
  """A torch tensor or array as float32 numpy (bfloat16 / float16 widened)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _unwrap(obj, path):
  """The flat name -> tensor dict inside a loaded checkpoint (MAE keeps it under "model")."""
  for _ in range(3):
    if not isinstance(obj, dict):
      break
    if obj and all(hasattr(v, "shape") for v in obj.values()):
      break
    key = next((k for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
    if key is None:
      break
    obj = obj[key]
  if not isinstance(obj, dict) or not obj:
    raise ConversionError(f"{path} holds no state dict (expected a dict of tensors, possibly "
                          f"under one of {NESTED_KEYS})")
  tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
  skipped = sorted(set(obj) - set(tensors))
  if skipped:
    raise ConversionError(f"{path}: entries that are not tensors: {', '.join(skipped[:6])}")
  if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
  return tensors


def read_torch(path, trust_pickle=False):
  """State dict of a torch pickle. Without ``trust_pickle`` only tensors and plain containers
  are unpickled (``weights_only``), which is all a released checkpoint needs."""
  torch = _import_torch(path)
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except pickle.UnpicklingError as e:
    raise ConversionError(f"{path} holds more than tensors (e.g. training arguments), which "
                          f"torch refuses to unpickle by default; pass --trust-pickle if you "
                          f"trust the file ({str(e).splitlines()[0]})") from None
  return {k: _to_numpy(v) for k, v in _unwrap(obj, path).items()}


def read_safetensors(path):
  """(tensors, metadata) of a safetensors file."""
  with safe_open(path, "np") as f:
    metadata = f.metadata() or {}
    names = list(f.keys())
    try:
      return {n: _to_numpy(f.get_tensor(n)) for n in names}, metadata
    except TypeError:  # numpy has no bfloat16: read it through torch
      pass
  _import_torch(f"{path} (bfloat16 tensors)")  # safe_open(..., "pt") needs torch
  with safe_open(path, "pt") as f:
    return {n: _to_numpy(f.get_tensor(n)) for n in names}, metadata


def _weights_in(directory):
  for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  found = ", ".join(sorted(os.listdir(directory))[:10]) or "nothing"
  raise ConversionError(f"{directory} has no model.safetensors, model.safetensors.index.json "
                        f"or pytorch_model.bin (it has {found})")


def read_source(src, trust_pickle=False):
  """(tensors, metadata, HF config or None, files read) of a weight file or an HF model
  directory. An HF ``config.json`` next to the weights is returned for the caller to use."""
  if not os.path.exists(src):
    raise ConversionError(f"{src} does not exist")
  path = _weights_in(src) if os.path.isdir(src) else src
  files, metadata = [path], {}
  if path.endswith(".index.json"):  # sharded safetensors
    with open(path) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
      shard_path = os.path.join(os.path.dirname(path), shard)
      state.update(read_safetensors(shard_path)[0])
      files.append(shard_path)
  elif path.endswith(".safetensors"):
    state, metadata = read_safetensors(path)
  elif path.endswith(TORCH_SUFFIXES):
    state = read_torch(path, trust_pickle)
  else:
    raise ConversionError(f"{path}: unknown file type (expected .safetensors or a torch "
                          f"checkpoint: {', '.join(TORCH_SUFFIXES)})")
  config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
  config = None
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return state, metadata, config, files


def write_safetensors(path, tensors, metadata=None):
  """``tensors`` (numpy) as a safetensors file with PyTorch's format tag (HF requires it)."""
  meta = {"format": "pt", **(metadata or {})}
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, path,
            metadata=meta)


def write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def hf_vit_config(width, depth, heads, mlp_hidden, image_size, patch, channels):
  """The ``config.json`` of an HF ``ViTModel`` that computes what a mim_jax ViT encoder does:
  exact GELU, LayerNorm eps 1e-6, qkv bias, no dropout."""
  return {"architectures": ["ViTModel"], "model_type": "vit", "hidden_size": width,
          "num_hidden_layers": depth, "num_attention_heads": heads,
          "intermediate_size": mlp_hidden, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
          "initializer_range": 0.02, "image_size": image_size, "patch_size": patch,
          "num_channels": channels, "qkv_bias": True, "encoder_stride": patch}
