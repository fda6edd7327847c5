"""Encoder weights from another run's checkpoint (``config.init_from``, ``config.init_step``).

Every method keeps its encoder under ``params["encoder"]``, so an evaluation protocol can take it
from a pre-training checkpoint of any method. The checkpoint's encoder must match the encoder the
config describes, up to two known, named differences between pre-training and fine-tuning
(``EncoderSpec.pretrain_only``: e.g. the final LayerNorm that average pooling replaces, a [MASK]
token; ``EncoderSpec.finetune_new``: e.g. a learnable position embedding, which starts from its
initial sin-cos value; ``EncoderSpec.copied_from``: SimMIM's per-block relative position biases,
each starting as a copy of the pre-training's shared one). Anything else that differs is a ``CheckpointMismatchError`` that names
the first mismatching parameter.

A checkpoint that already holds a classifier (a ``head``) is restored whole: that is how a
fine-tuned run is evaluated.
"""

import logging
import re

import jax
import numpy as np

from mim_jax import checkpoint as ckpt_lib
from mim_jax.models import layout
from mim_jax.models.encoders import matches

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


def _flat(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in flat}


def adapt_encoder(saved, target, spec, source: str):
  """``saved`` encoder params reshaped to the structure of ``target`` (arrays or shapes).

  Parameters only in ``saved`` are dropped when ``spec.pretrain_only`` names them; parameters
  only in ``target`` are taken from ``target`` when ``spec.finetune_new`` names them; all others
  must match in name and shape.
  """
  have, want = _flat(saved), _flat(target)
  copies, sources = {}, set()  # parameters new here that start as a copy of a saved one
  for name in set(want) - set(have):
    source = next((src for pattern, src in spec.copied_from
                   if re.search(pattern, name) and src in have), None)
    if source is not None:
      ckpt_lib.check_compatible({name: have[source]}, {name: want[name]}, source)
      copies[name] = have[source]
      sources.add(source)
  dropped = sorted(n for n in set(have) - set(want)
                   if n in sources or matches(n, spec.pretrain_only))
  added = sorted(n for n in set(want) - set(have)
                 if n not in copies and matches(n, spec.finetune_new))
  kept = {n: v for n, v in have.items() if n not in dropped}
  kept.update(copies)
  ckpt_lib.check_compatible(kept, {n: v for n, v in want.items() if n not in added}, source)
  if dropped:
    log.info("encoder parameters of the checkpoint not used here: %s", ", ".join(dropped))
  if added:
    log.info("encoder parameters new here (kept at their initial value): %s", ", ".join(added))
  if copies:
    log.info("encoder parameters copied from the checkpoint's shared ones: %s",
             ", ".join(sorted(copies)))
  flat, treedef = jax.tree_util.tree_flatten_with_path(target)
  leaves = []
  for path, value in flat:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    leaves.append(value if name in added else kept[name])
  return jax.tree_util.tree_unflatten(treedef, leaves)


def restore_into(params, spec, workdir: str, step: int = -1):
  """``params`` (a fresh init with an ``encoder`` entry) with the checkpoint's weights put in.

  Returns (step, params, what) where ``what`` is 'classifier' (the whole tree was restored) or
  'encoder' (only the encoder; the rest keeps its initial value).
  """
  step, saved = read_params(workdir, step)
  source = f"{workdir} step {step}"
  if "head" in saved and "head" in params:
    saved = layout.to_layout_of(saved, params)
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
