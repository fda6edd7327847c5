"""Vision Transformer pieces shared by the encoders and decoders (Flax Linen).

Pre-norm blocks as in MAE's encoder: LN -> multi-head self-attention -> residual,
LN -> MLP (GELU, ratio 4) -> residual; qkv bias on; LayerNorm eps 1e-6. Linear layers use
xavier-uniform weights and zero biases (MAE's init). ``dtype`` is the compute dtype; parameters
stay float32. Stochastic depth (drop path, for fine-tuning) draws from the ``drop_path`` RNG
stream when ``deterministic`` is False.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

xavier_uniform = nn.initializers.xavier_uniform()
LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ViTSize:
  dim: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0


# Encoder sizes (dim / depth / heads). "tiny_test" is for unit tests only.
VIT_SIZES = {
    "tiny_test": ViTSize(32, 2, 2),
    "Ti": ViTSize(192, 12, 3),
    "S": ViTSize(384, 12, 6),
    "B": ViTSize(768, 12, 12),
    "L": ViTSize(1024, 24, 16),
    "H": ViTSize(1280, 32, 16),
}


def parse_variant(variant: str):
  """'B/16' -> (ViTSize B, 16)."""
  try:
    name, patch = variant.split("/")
    return VIT_SIZES[name], int(patch)
  except (ValueError, KeyError):
    raise ValueError(f"unknown ViT variant {variant!r}; expected NAME/PATCH with NAME in "
                     f"{sorted(VIT_SIZES)}, e.g. 'B/16'") from None


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    qkv = nn.Dense(3 * d, kernel_init=xavier_uniform, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = jax.nn.dot_product_attention(q, k, v)
    out = out.reshape(b, t, d)
    return nn.Dense(d, kernel_init=xavier_uniform, dtype=self.dtype, name="proj")(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(self.hidden, kernel_init=xavier_uniform, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(d, kernel_init=xavier_uniform, dtype=self.dtype, name="fc2")(x)


class DropPath(nn.Module):
  """Stochastic depth: zeroes a residual branch per example with probability ``rate`` and
  scales the kept ones by 1 / (1 - rate)."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if deterministic or self.rate == 0.0:
      return x
    keep = jax.random.bernoulli(self.make_rng("drop_path"), 1.0 - self.rate,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    d = x.shape[-1]
    drop = DropPath(self.drop_path)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    x = x + drop(Attention(self.num_heads, dtype=self.dtype, name="attn")(y), deterministic)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    return x + drop(Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")(y), deterministic)


def drop_path_rates(rate: float, depth: int):
  """Per-block drop-path rates rising linearly from 0 to ``rate`` (the usual rule)."""
  return [float(r) for r in np.linspace(0.0, rate, depth)] if depth else []


def torch_default_init(fan_in: int):
  """PyTorch's default bias init for conv / linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class PatchEmbed(nn.Module):
  """Linear map of each flattened patch ([B, L, p*p*C] -> [B, L, dim]).

  The same map as a p x p stride-p convolution; its kernel [p*p*C, dim] is the convolution
  kernel viewed as a matrix, initialized xavier-uniform as MAE does.
  """
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches):
    fan_in = patches.shape[-1]
    return nn.Dense(self.dim, kernel_init=xavier_uniform,
                    bias_init=torch_default_init(fan_in), dtype=self.dtype,
                    name="proj")(patches)


class Transformer(nn.Module):
  """A stack of ``depth`` blocks followed by a final LayerNorm (left out with
  ``final_norm=False``, as fine-tuning with average pooling does)."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  final_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    for i, rate in enumerate(drop_path_rates(self.drop_path_rate, self.depth)):
      x = Block(self.num_heads, self.mlp_ratio, rate, dtype=self.dtype, name=f"block_{i}")(
          x, deterministic)
    if self.final_norm:
      x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
    return x
