"""Encoder weights from another run's checkpoint (``config.init_from``, ``config.init_step``).

Every method keeps its encoder under ``params["encoder"]``, so an evaluation protocol can take it
from a pre-training checkpoint of any method. The checkpoint's encoder must match the encoder the
config describes, up to two known, named differences between pre-training and fine-tuning
(``EncoderSpec.pretrain_only``: e.g. the final LayerNorm that average pooling replaces, a [MASK]
token; ``EncoderSpec.finetune_new``: e.g. a learnable position embedding, which starts from its
initial sin-cos value; ``EncoderSpec.copied_from``: SimMIM's per-block relative position biases,
each starting as a copy of the pre-training's shared one). Relative position bias tables learnt on
another window (hierarchical encoder) or patch grid (ViT) are resampled to the model's
(``resize_tables``: bicubic over the 2-D offsets of each head, a ViT table's [CLS] entries kept;
logged). Anything else that differs is a ``CheckpointMismatchError`` that names the first
mismatching parameter.

A checkpoint that already holds a classifier (a ``head``) is restored whole: that is how a
fine-tuned run is evaluated.
"""

import logging
import re

import jax
import numpy as np

from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.core.tree_paths import map_named, named_leaves
from mim_jax.models import layout
from mim_jax.models.encoders import matches
from mim_jax.models.vit import resize_offset_table

log = logging.getLogger("mim_jax")


def read_item(workdir: str, step: int = -1, item: str = "params"):
  """An item (params, extra) of ``workdir``'s checkpoint as host numpy arrays, restored as saved
  (no target needed); ``step`` -1 means the latest. Returns the item; see ``read_params``."""
  return _read(workdir, step, item)[1]


def read_params(workdir: str, step: int = -1):
  """(step, params as host numpy arrays) of ``workdir``'s checkpoint (``step`` -1: latest)."""
  return _read(workdir, step, "params")


def _read(workdir, step, item):
  ckpt, step = ckpt_lib.open_run(workdir, step)
  try:
    metadata = ckpt.manager.item_metadata(step)[item]
    if metadata is None:
      raise ckpt_lib.CheckpointMismatchError(
          f"checkpoint {workdir} step {step} has no {item!r}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    restored = ckpt.manager.restore(step, args=ckpt_lib.ocp.args.Composite(
        **{item: ckpt_lib.ocp.args.StandardRestore(target)}))
    return step, jax.tree.map(np.asarray, restored[item])
  finally:
    ckpt.close()


# Relative position tables that follow the model's window or grid: (name pattern, number of
# entries after the (2a - 1) x (2b - 1) offsets). Hierarchical: a window attention's table;
# ViT: RelativePositionBias (shared or per block), whose last three entries are the [CLS] terms.
RESIZABLE_TABLES = (
    (r"(^|/)relative_position_bias_table$", 0),
    (r"(^|/)rel_pos_bias/table$", 3),
)


def _odd_side(entries: int):
  """s when ``entries`` = s * s with s odd (the offsets of a square grid), else None."""
  side = int(round(np.sqrt(max(entries, 0))))
  return side if side * side == entries and side % 2 else None


def resize_table(name: str, value, shape):
  """The checkpoint's parameter ``name`` resampled to ``shape``, or None when it is not a
  relative position table (``RESIZABLE_TABLES``) that can be: same leading axes and heads,
  square grids of offsets on both sides (all grids mim_jax builds are square)."""
  extra = next((e for pattern, e in RESIZABLE_TABLES if re.search(pattern, name)), None)
  have, shape = tuple(np.shape(value)), tuple(shape)
  if (extra is None or have == shape or len(have) != len(shape) or len(shape) < 2
      or have[:-2] != shape[:-2] or have[-1] != shape[-1]):
    return None
  src, dst = _odd_side(have[-2] - extra), _odd_side(shape[-2] - extra)
  if src is None or dst is None:
    return None
  return resize_offset_table(value, (src, src), (dst, dst), extra)


def resize_tables(have: dict, want: dict, source: str) -> dict:
  """``have`` (flat name -> array) with every relative position table whose shape differs from
  its namesake in ``want`` (flat name -> array or shape struct) resampled to that shape
  (``resize_table``); each change is logged. Tables that cannot be resampled stay as they are,
  for ``check_compatible`` to report."""
  out, done = dict(have), {}
  for name, value in have.items():
    if name not in want:
      continue
    resized = resize_table(name, value, np.shape(want[name]))
    if resized is not None:
      out[name] = resized
      done.setdefault((tuple(np.shape(value)), resized.shape), []).append(name)
  for (old, new), names in sorted(done.items()):
    log.info("%s: %d relative position bias table(s) resampled bicubically from %s to %s: %s",
             source, len(names), old, new, ", ".join(sorted(names)))
  return out


def _resize_tree(saved, target, source):
  """``resize_tables`` on nested trees (``saved`` and ``target`` in the same layout)."""
  resized = resize_tables(named_leaves(saved), named_leaves(target), source)
  return map_named(lambda name, _: resized[name], saved)


def adapt_encoder(saved, target, spec, source: str):
  """``saved`` encoder params reshaped to the structure of ``target`` (arrays or shapes).

  Parameters only in ``saved`` are dropped when ``spec.pretrain_only`` names them; parameters
  only in ``target`` are taken from ``target`` when ``spec.finetune_new`` names them; relative
  position tables of another window / grid are resampled (``resize_tables``, copies included);
  all others must match in name and shape.
  """
  have, want = named_leaves(saved), named_leaves(target)
  copies = {}  # parameters new here that start as a copy of a saved one: name -> saved name
  for name in sorted(set(want) - set(have)):
    origin = next((src for pattern, src in spec.copied_from
                   if re.search(pattern, name) and src in have), None)
    if origin is not None:
      copies[name] = origin
  dropped = sorted(n for n in set(have) - set(want)
                   if n in copies.values() or matches(n, spec.pretrain_only))
  added = sorted(n for n in set(want) - set(have)
                 if n not in copies and matches(n, spec.finetune_new))
  kept = {n: v for n, v in have.items() if n not in dropped}
  kept.update({name: have[origin] for name, origin in copies.items()})
  kept = resize_tables(kept, want, source)
  for name, origin in copies.items():
    ckpt_lib.check_compatible({name: kept[name]}, {name: want[name]},
                              f"{source} ({origin}, copied into {name})")
  ckpt_lib.check_compatible(kept, {n: v for n, v in want.items() if n not in added}, source)
  if dropped:
    log.info("encoder parameters of the checkpoint not used here: %s", ", ".join(dropped))
  if added:
    log.info("encoder parameters new here (kept at their initial value): %s", ", ".join(added))
  if copies:
    log.info("encoder parameters copied from the checkpoint's shared ones: %s",
             ", ".join(sorted(copies)))
  return map_named(lambda name, value: value if name in added else kept[name], target)


def restore_into(params, spec, workdir: str, step: int = -1):
  """``params`` (a fresh init with an ``encoder`` entry) with the checkpoint's weights put in.

  Returns (step, params, what) where ``what`` is 'classifier' (the whole tree was restored) or
  'encoder' (only the encoder; the rest keeps its initial value).
  """
  step, saved = read_params(workdir, step)
  source = f"{workdir} step {step}"
  if "head" in saved and "head" in params:
    saved = _resize_tree(layout.to_layout_of(saved, params), params, source)
    ckpt_lib.check_compatible(saved, params, source)
    return step, jax.tree.map(lambda s, p: np.asarray(s, p.dtype), saved, params), "classifier"
  if "encoder" not in saved:
    raise ckpt_lib.CheckpointMismatchError(
        f"checkpoint {source} has no 'encoder' parameters (top level: {sorted(saved)})")
  params = dict(params)
  # Adapted in the unrolled layout (the rules name block_i), then put in the model's.
  encoder = adapt_encoder(layout.unstack_blocks(saved["encoder"]),
                          layout.unstack_blocks(params["encoder"]), spec, f"{source} (encoder)")
  params["encoder"] = layout.to_layout_of(encoder, params["encoder"])
  return step, params, "encoder"
