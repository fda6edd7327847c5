"""The compute dtypes a config may name (``config.compute_dtype``); parameters stay float32."""

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]
