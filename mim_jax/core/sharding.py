"""The device mesh and where each array of the training state lives.

The mesh has two axes over every device of every host: ``data`` x ``fsdp`` (``config.mesh.fsdp``
devices per group; ``data`` takes the rest). Batches are split over both axes together, so each
device gets ``batch_size / devices`` examples whatever the split. With ``fsdp`` = 1 (the
default) parameters and optimizer state are replicated: plain data parallelism. With ``fsdp`` >
1, arrays picked by ``config.mesh.rules`` are sharded over the ``fsdp`` axis (FSDP / ZeRO-3: XLA
gathers a parameter where it is used and reduce-scatters its gradient), so each device holds
1 / fsdp of them; the arithmetic is the same as data parallelism.

Rules are ``(regex, strategy)`` pairs, the first whose regex ``re.search``-es a leaf's path in the
state wins (no match: replicated). Paths read ``params/encoder/transformer/block_0/attn/qkv/
kernel``, ``opt_state/1/0/mu/encoder/...`` (an optimizer moment carries its parameter's path),
``extra/ema_params/...``, so a rule written for a parameter name catches its moments and its EMA
too. Strategies:

- ``fsdp``: shard the largest dimension that the ``fsdp`` axis divides (the last such on ties);
  arrays with fewer than ``mesh.min_shard_size`` elements, or no divisible dimension, stay
  replicated;
- ``replicate``: a full copy on every device.

Only ``params``, ``opt_state`` and ``extra/ema_params`` follow the rules; the rest of ``extra``
(per-image caches that hooks rewrite) and the step counter are replicated.
"""

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mim_jax.core.tree_paths import path_name

AXES = ("data", "fsdp")
STRATEGIES = ("fsdp", "replicate")
RULED = re.compile(r"^(params|opt_state|extra/ema_params)(/|$)")


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """A ``data`` x ``fsdp`` mesh over ``devices`` (default: all devices of all hosts)."""
  devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
  if fsdp < 1 or devices.size % fsdp:
    raise ValueError(f"mesh.fsdp = {fsdp} must be a positive divisor of the {devices.size} "
                     f"devices")
  return Mesh(devices.reshape(-1, fsdp), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_rules(rules) -> tuple:
  """``rules`` as a tuple of (compiled regex, strategy); a ValueError naming a bad one."""
  out = []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
      raise ValueError(f"mesh.rules: each rule is (regex, strategy), got {rule!r}")
    pattern, strategy = rule
    if strategy not in STRATEGIES:
      raise ValueError(f"mesh.rules: strategy of {pattern!r} must be one of {STRATEGIES}, "
                       f"got {strategy!r}")
    try:
      out.append((re.compile(pattern), strategy))
    except re.error as e:
      raise ValueError(f"mesh.rules: bad regex {pattern!r}: {e}") from None
  return tuple(out)


def fsdp_spec(shape, fsdp: int, min_size: int) -> P:
  """The spec of the ``fsdp`` strategy for an array of ``shape``."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  best = None
  for axis, size in enumerate(shape):
    if size % fsdp == 0 and (best is None or size >= shape[best]):
      best = axis
  if best is None:
    return P()
  return P(*([None] * best + ["fsdp"]))


def spec_for(name: str, shape, rules, fsdp: int, min_size: int) -> P:
  """The PartitionSpec of the state leaf at path ``name``."""
  if not RULED.match(name):
    return P()
  for pattern, strategy in rules:
    if pattern.search(name):
      return fsdp_spec(shape, fsdp, min_size) if strategy == "fsdp" else P()
  return P()


def state_shardings(abstract_state, mesh: Mesh, mesh_config):
  """A NamedSharding for every leaf of ``abstract_state`` (arrays or ShapeDtypeStructs)."""
  rules = check_rules(mesh_config.rules)
  fsdp = mesh.shape["fsdp"]

  def leaf(path, x):
    return NamedSharding(mesh, spec_for(path_name(path), np.shape(x), rules, fsdp,
                                        mesh_config.min_shard_size))
  return jax.tree_util.tree_map_with_path(leaf, abstract_state)


def sharded_fraction(shardings, abstract_state) -> float:
  """The share of the state's elements that are sharded over ``fsdp`` (for the log)."""
  total = sharded = 0
  for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(abstract_state)):
    n = int(np.prod(np.shape(x), dtype=np.int64))
    total += n
    sharded += n if "fsdp" in jax.tree.leaves(tuple(s.spec)) else 0
  return sharded / max(total, 1)
