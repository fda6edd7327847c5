"""Named RNG streams: one key per (stream, step), so a resumed run draws what it would have."""

import zlib

import jax


def stream_key(base_key, name: str, step):
  """The RNG key of stream ``name`` (mask, dropout, ...) at ``step``: a resumed run redraws it."""
  return jax.random.fold_in(jax.random.fold_in(base_key, zlib.crc32(name.encode())), step)
