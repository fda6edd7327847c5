"""Vision Transformer pieces shared by the encoders and decoders (Flax Linen).

Pre-norm blocks as in MAE's encoder: LN -> multi-head self-attention -> residual,
LN -> MLP (GELU, ratio 4) -> residual; qkv bias on; LayerNorm eps 1e-6. Linear layers use
xavier-uniform weights and zero biases (MAE's init). ``dtype`` is the compute dtype; parameters
stay float32.
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


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    x = x + Attention(self.num_heads, dtype=self.dtype, name="attn")(y)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    return x + Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)


def _torch_default_bias_init(fan_in: int):
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
                    bias_init=_torch_default_bias_init(fan_in), dtype=self.dtype,
                    name="proj")(patches)


class Transformer(nn.Module):
  """A stack of ``depth`` blocks followed by a final LayerNorm."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"block_{i}")(x)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
