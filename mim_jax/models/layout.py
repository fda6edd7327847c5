"""The two parameter layouts of a transformer stack, and conversion between them.

Unrolled (the default): ``.../transformer/block_0/...``, ``block_1``, ... one subtree per block.
Scanned (``model.scan_blocks``): ``.../transformer/blocks/...``, the same subtree once with every
leaf stacked along a leading [depth] axis. Checkpoints of either layout restore into a model of
the other (``to_layout_of``), so a run can switch ``scan_blocks`` when it starts from another
run's weights (``init_from``, fine-tuning, evaluation).
"""

import re

import numpy as np

BLOCK = re.compile(r"^block_(\d+)$")
SCANNED_PATH = re.compile(r"(^|/)transformer/blocks/")


def _is_unrolled(node) -> bool:
  return isinstance(node, dict) and any(BLOCK.match(k) for k in node)


def _is_scanned(node) -> bool:
  return isinstance(node, dict) and "blocks" in node and not _is_unrolled(node)


def _map_stacks(tree, fn):
  """``fn`` applied to every dict that holds a stack of blocks (either layout)."""
  if not isinstance(tree, dict):
    return tree
  if _is_unrolled(tree) or _is_scanned(tree):
    tree = fn(tree)
  return {k: _map_stacks(v, fn) for k, v in tree.items()}


def _stack(node):
  if not _is_unrolled(node):
    return node
  ids = sorted(int(BLOCK.match(k).group(1)) for k in node if BLOCK.match(k))
  if ids != list(range(len(ids))):
    raise ValueError(f"blocks {ids} are not numbered 0..{len(ids) - 1}")
  out = {k: v for k, v in node.items() if not BLOCK.match(k)}
  out["blocks"] = _tree_stack([node[f"block_{i}"] for i in ids])
  return out


def _unstack(node):
  if not _is_scanned(node):
    return node
  out = {k: v for k, v in node.items() if k != "blocks"}
  depth = _depth(node["blocks"])
  for i in range(depth):
    out[f"block_{i}"] = _tree_index(node["blocks"], i)
  return out


def _tree_stack(trees):
  first = trees[0]
  if isinstance(first, dict):
    return {k: _tree_stack([t[k] for t in trees]) for k in first}
  return np.stack([np.asarray(t) for t in trees])


def _tree_index(tree, i):
  if isinstance(tree, dict):
    return {k: _tree_index(v, i) for k, v in tree.items()}
  return np.asarray(tree)[i]


def _depth(tree):
  while isinstance(tree, dict):
    tree = next(iter(tree.values()))
  return np.shape(tree)[0]


def stack_blocks(params):
  """Unrolled -> scanned layout (host numpy arrays)."""
  return _map_stacks(_as_dicts(params), _stack)


def unstack_blocks(params):
  """Scanned -> unrolled layout (host numpy arrays)."""
  return _map_stacks(_as_dicts(params), _unstack)


def is_scanned(params) -> bool:
  """Whether any transformer stack in ``params`` has the scanned layout."""
  found = []
  _map_stacks(_as_dicts(params), lambda node: found.append(_is_scanned(node)) or node)
  return any(found)


def block_ndim(name: str, ndim: int) -> int:
  """The dimensions of one block's parameter at path ``name`` ('a/b/c') with ``ndim``
  dimensions: one fewer under a scanned stack (``.../transformer/blocks/...``)."""
  return ndim - 1 if SCANNED_PATH.search(name) else ndim


def to_layout_of(saved, target):
  """``saved`` in the layout of ``target`` (unchanged when they already agree)."""
  if is_scanned(target) == is_scanned(saved):
    return saved
  return stack_blocks(saved) if is_scanned(target) else unstack_blocks(saved)


def _as_dicts(tree):
  if hasattr(tree, "items"):
    return {k: _as_dicts(v) for k, v in tree.items()}
  return tree
