"""Parameter names: a leaf's path in a pytree as 'a/b/c', the one spelling that checkpoints,
sharding rules, optimizer masks and weight conversion all use."""

import jax


def path_name(path) -> str:
  """'a/b/c' of a JAX key path (from ``tree_flatten_with_path``) or of a tuple of key strings."""
  if all(isinstance(k, str) for k in path):
    return "/".join(path)
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def named_leaves(tree) -> dict:
  """{'a/b/c': leaf} of a pytree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(path): leaf for path, leaf in flat}


def path_names(tree):
  """The same pytree with each leaf replaced by its 'a/b/c' name."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path), tree)


def map_named(fn, tree):
  """``fn(name, leaf)`` over the leaves of a pytree, keeping its structure."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(path_name(path), leaf), tree)
