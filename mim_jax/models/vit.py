"""Vision Transformer pieces shared by the encoders and decoders (Flax Linen).

Pre-norm blocks as in MAE's encoder: LN -> multi-head self-attention -> residual,
LN -> MLP (GELU, ratio 4) -> residual; qkv bias on; LayerNorm eps 1e-6. Linear layers use
xavier-uniform weights and zero biases (MAE's init). ``dtype`` is the compute dtype; parameters
stay float32. Stochastic depth (drop path) draws from the ``drop_path`` RNG stream when
``deterministic`` is False.

SimMIM's ViT (simmim.md) is the same block with options: ``qkv_bias="qv"`` (q and v biases, no k
bias), ``layer_scale`` (per-channel gains ``gamma_1`` / ``gamma_2`` on both branches, starting at
the given value), a BEiT-style relative position bias (``RelativePositionBias``, shared by all
blocks or one per block) and ``init="beit"`` (trunc-normal 0.02 weights, the attention
projection and fc2 of block i divided by sqrt(2 i)).

With the ``intermediates`` collection mutable, every attention layer records the softmax
attention of the first token ([CLS]) over all tokens as ``cls_attention`` [B, heads, T] (AMT's
attention maps).

Attention kernels (``BlockOptions.attention``, config ``model.attention``): 'xla' computes the
logits and softmax in float32 and keeps the [B, heads, T, T] probabilities for the backward
pass; 'cudnn' is cuDNN's fused (flash) kernel, which never writes them out; 'auto' (default)
takes 'cudnn' where it applies (a GPU, bfloat16 / float16 inputs, no additive bias, head width a
multiple of 8 up to 128) and 'xla' elsewhere. On the fused path q, k and v come from three
products with slices of the one ``qkv`` kernel (no copies out of a [B, T, 3d] output), the value
bias reaches the output through the projection (``QKV``), and a ``Transformer`` pads an odd
token count once for all its blocks (``padded_tokens``) rather than once per layer.

GELU is the exact one, x Phi(x), with a derivative rule of its own (``gelu``): reverse mode keeps
one tensor of slopes per activation instead of the intermediates of erfc.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

xavier_uniform = nn.initializers.xavier_uniform()
LN_EPS = 1e-6
MASK_LOGIT = -1e30  # added to the logits between tokens of two different mixed images
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# cuDNN's kernel gets the token axis padded to a multiple of this: in training it rejects odd
# token counts (JAX 0.11.2, H100), e.g. MAE's 197 decoder tokens. On ViT-B/16 MAE (batch 256,
# bf16, H100, padding per layer) multiples of 2 / 8 / 64 gave 61.0 / 61.6 / 63.3 ms per step;
# 2 leaves MAE's 50 encoder tokens as they are.
FUSED_TOKEN_MULTIPLE = 2
SQRT_HALF = float(np.sqrt(0.5))
INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def fused_attention_applies(q, bias=None) -> str:
  """'' when cuDNN's fused kernel can run ``q`` [B, T, heads, d] (with this ``bias``) on the
  default backend, else why not."""
  if jax.default_backend() != "gpu":
    return f"the backend is {jax.default_backend()}, not gpu"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"inputs are {q.dtype}; the fused kernel takes bfloat16 or float16"
  if bias is not None:
    return "an additive bias (relative positions, MixMIM's isolation) needs the xla kernel"
  if q.shape[-1] % 8 or q.shape[-1] > 128:
    return f"head width {q.shape[-1]} is not a multiple of 8 up to 128"
  return ""


def attention_impl(choice: str, q, bias=None) -> str:
  """The kernel ``choice`` ('auto' | 'xla' | 'cudnn') resolves to for these inputs; an explicit
  'cudnn' that cannot run is an error rather than a silent fallback."""
  if choice not in ATTENTION_IMPLS:
    raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {choice!r}")
  if choice == "xla":
    return "xla"
  why_not = fused_attention_applies(q, bias)
  if choice == "cudnn" and why_not:
    raise ValueError(f"attention='cudnn' cannot run here: {why_not}")
  return "xla" if why_not else "cudnn"


def padded_length(tokens: int) -> int:
  """``tokens`` rounded up to a multiple of ``FUSED_TOKEN_MULTIPLE``."""
  return -(-tokens // FUSED_TOKEN_MULTIPLE) * FUSED_TOKEN_MULTIPLE


def fused_attention(q, k, v, valid_tokens=None):
  """cuDNN's flash attention over [B, T, heads, d].

  With ``valid_tokens`` (T already padded, e.g. by ``Transformer``) the keys from that index on
  are masked out; every query, padded ones too, attends to the valid keys. Without it an odd T is
  zero-padded to a multiple of ``FUSED_TOKEN_MULTIPLE`` here, the padded keys masked and the
  padded queries cut off again. Either way the rows of the real tokens are those of plain softmax
  attention over the real tokens.
  """
  b, t = q.shape[:2]
  if valid_tokens is not None:
    lengths = jnp.full((b,), valid_tokens, jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                        implementation="cudnn")
  padded = padded_length(t)
  if padded == t:
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
  return fused_attention(q, k, v, valid_tokens=t)[:, :t]


def isolation_bias(groups):
  """MixMIM's masked attention as an additive bias: [B, T] group of each token (which of the
  mixed images it belongs to) -> float32 [B, 1, T, T], MASK_LOGIT where the groups differ."""
  groups = jnp.asarray(groups)
  differ = groups[:, :, None] != groups[:, None, :]
  return jnp.where(differ, MASK_LOGIT, 0.0).astype(jnp.float32)[:, None]


def trunc_normal(std: float, bound: float = 2.0):
  """N(0, std^2) cut at +-``bound`` in absolute units (PyTorch's trunc_normal_ default cuts at
  +-2, in effect no cut for small std)."""
  return nn.initializers.truncated_normal(std, lower=-bound / std, upper=bound / std)


def scaled(init, factor: float):
  """``init`` with its values multiplied by ``factor``."""
  def scaled_init(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype) * factor
  return scaled_init


def dense_init(style: str, out_scale=1.0):
  """Kernel initializer of the linear layers: 'mae' (xavier uniform) or 'beit' (trunc-normal
  0.02); ``out_scale`` multiplies it (BEiT's 1 / sqrt(2 i) on the branch outputs; a traced value
  inside a scan over the blocks)."""
  if style == "mae":
    return xavier_uniform
  if style == "beit":
    plain = isinstance(out_scale, (int, float)) and out_scale == 1.0
    return trunc_normal(0.02) if plain else scaled(trunc_normal(0.02), out_scale)
  raise ValueError(f"init must be 'mae' or 'beit', got {style!r}")


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


# Relative position tables learnt on one grid of offsets and loaded into a model with another
# (a new window size or image size at fine-tuning; mim_jax.interop.pretrained) are resampled with
# PyTorch's bicubic rule, F.interpolate(mode='bicubic', align_corners=False), the rule of
# MixMIM's fine-tuning loader (Sense-X/MixMIM, util/pos_embed.py). SimMIM's own loader instead
# samples a geometrically stretched grid with SciPy cubic splines (BEiT's method); not offered.
CUBIC_A = -0.75  # the free parameter of Keys' cubic convolution kernel in PyTorch's bicubic


def cubic_weight(x, a: float = CUBIC_A):
  """Keys' cubic convolution kernel at offsets ``x`` (float64; zero where |x| >= 2)."""
  x = np.abs(np.asarray(x, np.float64))
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float64 weights of a 1-D bicubic resize of n_in samples to n_out.

  Output sample i reads the input at x = (i + 0.5) * n_in / n_out - 0.5 (half-pixel centres, x
  not clamped) from the four samples floor(x) - 1 .. floor(x) + 2, sample j weighted by
  ``cubic_weight(x - j)``; an index beyond either end reads the end sample. No antialiasing
  when shrinking. Equal sizes give the identity.
  """
  if n_in < 1 or n_out < 1:
    raise ValueError(f"cannot resize {n_in} samples to {n_out}")
  x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  first = np.floor(x).astype(np.int64) - 1
  rows = np.arange(n_out)
  out = np.zeros((n_out, n_in))
  for k in range(4):
    j = first + k
    np.add.at(out, (rows, np.clip(j, 0, n_in - 1)), cubic_weight(x - j))
  return out


def resize_offset_table(table, grid_in, grid_out, extra: int = 0) -> np.ndarray:
  """Per-head values on a grid of 2-D offsets, resampled to another grid (``bicubic_matrix``
  along rows, then columns; each head on its own).

  table: [..., r * c + extra, heads] with the first r * c entries the row-major ``grid_in``
  (r, c) of offsets and the last ``extra`` entries outside that grid (the [CLS] terms of
  ``RelativePositionBias``), which are kept as they are. Leading axes (stacked blocks) are
  carried along. Returns [..., r' * c' + extra, heads] for ``grid_out`` (r', c'), in the
  table's dtype; the arithmetic is float64.
  """
  table = np.asarray(table)
  (ri, ci), (ro, co) = grid_in, grid_out
  n = ri * ci
  if table.ndim < 2 or table.shape[-2] != n + extra:
    raise ValueError(f"a table of {ri}x{ci} offsets and {extra} other entries has {n + extra} "
                     f"rows, got shape {table.shape}")
  lead, heads = table.shape[:-2], table.shape[-1]
  grid = table[..., :n, :].astype(np.float64).reshape(*lead, ri, ci, heads)
  out = np.einsum("ai,bj,...ijh->...abh", bicubic_matrix(ri, ro), bicubic_matrix(ci, co), grid)
  out = np.concatenate([out.reshape(*lead, ro * co, heads), table[..., n:, :]], axis=-2)
  return out.astype(table.dtype)


class RelativePositionBias(nn.Module):
  """BEiT's relative position bias on a ``grid`` of patches plus a [CLS] token.

  A zero-initialized table [(2h - 1)(2w - 1) + 3, heads]: one entry per 2-D offset between
  patches, and three for [CLS] -> patch, patch -> [CLS] and [CLS] -> [CLS]. Called with token ids
  ``ids`` [B, T'] (0 = [CLS], 1 + i = patch i), returns the bias among those tokens
  [B, heads, T', T']; with ``ids`` None, [1, heads, T, T] over all 1 + h*w tokens.

  A checkpoint's table for another grid (another image or patch size) is resampled on load by
  ``mim_jax.interop.pretrained``: the (2h - 1) x (2w - 1) offsets bicubically (``resize_offset_table``),
  the three [CLS] entries copied.
  """
  grid: tuple
  num_heads: int

  @staticmethod
  def index(grid):
    h, w = grid
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([rows.reshape(-1), cols.reshape(-1)])             # [2, L]
    rel = coords[:, :, None] - coords[:, None, :]                       # [2, L, L]
    patch = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
    n = (2 * h - 1) * (2 * w - 1)
    index = np.zeros((h * w + 1,) * 2, np.int32)
    index[1:, 1:] = patch
    index[0, :] = n          # [CLS] -> patch
    index[:, 0] = n + 1      # patch -> [CLS]
    index[0, 0] = n + 2      # [CLS] -> [CLS]
    return index

  @nn.compact
  def __call__(self, ids=None):
    h, w = self.grid
    table = self.param("table", nn.initializers.zeros,
                       ((2 * h - 1) * (2 * w - 1) + 3, self.num_heads))
    bias = jnp.transpose(table[self.index(self.grid)], (2, 0, 1))      # [heads, T, T]
    if ids is None:
      return bias[None]
    return jax.vmap(lambda i: bias[:, i[:, None], i[None, :]])(ids)


@jax.custom_jvp
def gelu(x):
  """Exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (PyTorch's nn.GELU), computed in float32
  and returned in x's dtype."""
  xf = x.astype(jnp.float32)
  return (0.5 * xf * (1.0 + jax.lax.erf(xf * SQRT_HALF))).astype(x.dtype)


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  """d/dx x Phi(x) = Phi(x) + x phi(x), as one slope per element (in x's dtype). Reverse mode then
  keeps only the slopes (one tensor) for the backward pass; the rule is itself differentiable
  (forward mode and second order, as MLO-MAE needs)."""
  (x,), (t,) = primals, tangents
  xf = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(xf * SQRT_HALF))
  slope = cdf + xf * jnp.exp(-0.5 * xf * xf) * INV_SQRT_2PI
  return (xf * cdf).astype(x.dtype), slope.astype(x.dtype) * t


class QKV(nn.Module):
  """The query / key / value projection: one [d, 3 d] ``kernel`` (and a [3 d] ``bias`` with
  ``use_bias``), the parameters of a Dense(3 d). Returns q, k, v [B, T, d] and the value bias
  ([d] or None): with ``split`` as three products with slices of the kernel (what cuDNN's kernel
  takes, no copies out of a fused output) and v without its bias, which the caller adds after
  the attention (each row of softmax weights sums to one, so the value bias passes through
  unchanged); else as one product cut in three, v with its bias."""
  features: int
  use_bias: bool = True
  kernel_init: Any = xavier_uniform
  split: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    f = self.features
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], 3 * f))
    bias = self.param("bias", nn.initializers.zeros, (3 * f,)) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    product = lambda w: jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))
    if self.split:
      out = [product(kernel[:, i * f:(i + 1) * f]) for i in range(3)]
    else:
      qkv = product(kernel)
      out = [qkv[..., i * f:(i + 1) * f] for i in range(3)]
    if bias is None:
      return (*out, None)
    q, k, v = (y + bias[i * f:(i + 1) * f] for i, y in enumerate(out))
    return (q, k, out[2], bias[2 * f:]) if self.split else (q, k, v, None)


class Attention(nn.Module):
  """Multi-head self-attention. ``qkv_bias``: 'qkv' (one Dense with bias), 'qv' (SimMIM / BEiT:
  separate q and v biases, none on k) or 'none'. ``rel_pos_grid`` gives the layer its own
  relative position bias; ``bias`` (added to the logits) comes from outside (a shared one)."""
  num_heads: int
  qkv_bias: str = "qkv"
  init: str = "mae"
  out_scale: float = 1.0
  rel_pos_grid: tuple = ()
  attention: str = "auto"         # kernel: auto | xla | cudnn (module docstring)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias=None, token_ids=None, valid_tokens=None):
    """``valid_tokens``: x's tokens from this index on are padding (``Transformer`` pads for the
    fused kernel); no token attends to them."""
    b, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    if self.qkv_bias not in ("qkv", "qv", "none"):
      raise ValueError(f"qkv_bias must be 'qkv', 'qv' or 'none', got {self.qkv_bias!r}")
    heads, hd = self.num_heads, d // self.num_heads
    if self.rel_pos_grid:
      own = RelativePositionBias(self.rel_pos_grid, self.num_heads, name="rel_pos_bias")(token_ids)
      bias = own if bias is None else bias + own
    if bias is not None:  # relative positions, MixMIM's isolation: added to float32 logits
      bias = bias.astype(jnp.float32)
    impl = attention_impl(self.attention, jax.ShapeDtypeStruct((b, t, heads, hd), self.dtype),
                          bias)
    q, k, v, v_bias = QKV(d, self.qkv_bias == "qkv", dense_init(self.init),
                          split=impl == "cudnn", dtype=self.dtype, name="qkv")(x)
    if self.qkv_bias == "qv":
      q = q + self.param("q_bias", nn.initializers.zeros, (d,)).astype(q.dtype)
      v_bias = self.param("v_bias", nn.initializers.zeros, (d,))
      if impl != "cudnn":
        v, v_bias = v + v_bias.astype(v.dtype), None
    q, k, v = (y.reshape(b, t, heads, hd) for y in (q, k, v))
    if self.is_mutable_collection("intermediates"):
      keys = k if valid_tokens is None else k[:, :valid_tokens]
      logits = jnp.einsum("bhd,bkhd->bhk", q[:, 0].astype(jnp.float32), keys.astype(jnp.float32))
      logits = logits / np.sqrt(hd)
      if bias is not None:
        logits = logits + bias[:, :, 0].astype(jnp.float32)
      self.sow("intermediates", "cls_attention", jax.nn.softmax(logits, axis=-1))
    if impl == "cudnn":
      out = fused_attention(q, k, v, valid_tokens)
    else:  # logits and softmax in float32 whatever the compute dtype
      lengths = None if valid_tokens is None else jnp.full((b,), valid_tokens, jnp.int32)
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, key_value_seq_lengths=lengths,
                                         implementation="xla")
    proj = nn.Dense(d, kernel_init=dense_init(self.init, self.out_scale), dtype=self.dtype,
                    name="proj")
    out = proj(out.reshape(b, t, d))
    if v_bias is not None:  # softmax(..) (v + b) W = softmax(..) v W + b W: one [d] vector
      kernel = proj.variables["params"]["kernel"]
      out = out + jnp.dot(v_bias.astype(jnp.float32), kernel.astype(jnp.float32)).astype(out.dtype)
    return out


class Mlp(nn.Module):
  hidden: int
  init: str = "mae"
  out_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(self.hidden, kernel_init=dense_init(self.init), dtype=self.dtype, name="fc1")(x)
    x = gelu(x)
    return nn.Dense(d, kernel_init=dense_init(self.init, self.out_scale), dtype=self.dtype,
                    name="fc2")(x)


class DropPath(nn.Module):
  """Stochastic depth: zeroes a residual branch per example with probability ``rate`` (a float,
  or a traced value inside a scan over the blocks) and scales the kept ones by 1 / (1 - rate)."""
  rate: Any

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = jax.random.bernoulli(self.make_rng("drop_path"), 1.0 - self.rate,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class BlockOptions:
  """SimMIM / BEiT options of the transformer blocks (the defaults are MAE's plain block)."""
  qkv_bias: str = "qkv"           # qkv | qv | none
  layer_scale: float = 0.0        # > 0: gamma_1 / gamma_2 gains starting at this value
  init: str = "mae"               # mae (xavier) | beit (trunc-normal 0.02, 1/sqrt(2 i) rescale)
  rel_pos_grid: tuple = ()        # a relative position bias per block on this patch grid
  attention: str = "auto"         # attention kernel: auto | xla | cudnn (module docstring)


class Block(nn.Module):
  """One pre-norm block. ``layer`` = (drop-path rate, 1-based layer index), when given, replaces
  the attributes ``drop_path`` / ``layer_index`` (traced per-block values of a scan)."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  options: BlockOptions = BlockOptions()
  layer_index: int = 1            # 1-based, for the 'beit' init's rescaling
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True, bias=None, token_ids=None, layer=None,
               valid_tokens=None):
    d = x.shape[-1]
    o = self.options
    rate, index = (self.drop_path, self.layer_index) if layer is None else layer
    out_scale = 1.0
    if o.init == "beit":
      out_scale = 1.0 / (np.sqrt(2.0 * index) if layer is None else jnp.sqrt(2.0 * index))
    drop = DropPath(rate)

    def gain(name, y):
      if o.layer_scale <= 0:
        return y
      g = self.param(name, nn.initializers.constant(o.layer_scale), (d,))
      return y * g.astype(y.dtype)

    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    y = Attention(self.num_heads, o.qkv_bias, o.init, out_scale, o.rel_pos_grid, o.attention,
                  dtype=self.dtype, name="attn")(y, bias, token_ids, valid_tokens)
    x = x + drop(gain("gamma_1", y), deterministic)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(d * self.mlp_ratio), o.init, out_scale, dtype=self.dtype, name="mlp")(y)
    return x + drop(gain("gamma_2", y), deterministic)


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
  kernel viewed as a matrix, initialized xavier-uniform with PyTorch's default bias as MAE does
  (``init="mae"``), or trunc-normal 0.02 with a zero bias as SimMIM's ViT does (``"beit"``).
  """
  dim: int
  init: str = "mae"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches):
    fan_in = patches.shape[-1]
    bias_init = torch_default_init(fan_in) if self.init == "mae" else nn.initializers.zeros
    return nn.Dense(self.dim, kernel_init=dense_init(self.init), bias_init=bias_init,
                    dtype=self.dtype, name="proj")(patches)


REMAT_POLICIES = ("none", "block", "dots")


def remat_policy(name: str):
  """What a rematerialized block keeps for the backward pass: 'block' nothing (the whole block is
  recomputed), 'dots' its matmul outputs (the rest recomputed)."""
  if name == "block":
    return jax.checkpoint_policies.nothing_saveable
  if name == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {name!r}")


class _ScanStep(Block):
  """A block as one step of ``nn.scan``: (x, layer) -> (x, None)."""

  def __call__(self, x, layer, deterministic=True, bias=None, token_ids=None, valid_tokens=None):
    return super().__call__(x, deterministic, bias, token_ids, layer, valid_tokens), None


class Transformer(nn.Module):
  """A stack of ``depth`` blocks followed by a final LayerNorm (left out with
  ``final_norm=False``, as fine-tuning with average pooling does). ``bias`` / ``token_ids`` reach
  every block's attention (a shared relative position bias; the ids of the tokens present).

  Memory options: ``remat`` ('none', 'block', 'dots': ``remat_policy``) recomputes each block in
  the backward pass instead of keeping its activations; ``scan`` runs the blocks as one
  ``nn.scan`` (one block compiled once: faster compiles for deep models), their parameters
  stacked under ``blocks`` with a leading [depth] axis instead of ``block_0`` ...
  (``mim_jax.models.layout`` converts between the two).

  Where the blocks' attention takes cuDNN's fused kernel and the token count is odd, the tokens
  are zero-padded once here (``padded_length``), the blocks mask the padded keys and the padding
  is cut off before the final norm.
  """
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  final_norm: bool = True
  options: BlockOptions = BlockOptions()
  dtype: Any = jnp.float32
  remat: str = "none"
  scan: bool = False

  def padded_tokens(self, x, bias=None) -> int:
    """The token count the blocks run on: x's, or that padded for the fused attention kernel."""
    b, t, d = x.shape
    if self.options.rel_pos_grid or d % self.num_heads:
      return t
    q = jax.ShapeDtypeStruct((b, t, self.num_heads, d // self.num_heads), self.dtype)
    return padded_length(t) if attention_impl(self.options.attention, q, bias) == "cudnn" else t

  @nn.compact
  def __call__(self, x, deterministic: bool = True, bias=None, token_ids=None):
    rates = drop_path_rates(self.drop_path_rate, self.depth)
    t = x.shape[1]
    padded = self.padded_tokens(x, bias)
    valid = None
    if padded != t:
      x, valid = jnp.pad(x, ((0, 0), (0, padded - t), (0, 0))), t
    if self.scan:
      step = _ScanStep
      if self.remat != "none":
        step = nn.remat(step, policy=remat_policy(self.remat), static_argnums=(3, 6))
      stack = nn.scan(step, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs={"params": True, "drop_path": True},
                      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                      length=self.depth)
      layers = (jnp.asarray(rates, jnp.float32),
                jnp.arange(1, self.depth + 1, dtype=jnp.float32))
      x, _ = stack(self.num_heads, self.mlp_ratio, 0.0, self.options, dtype=self.dtype,
                   name="blocks")(x, layers, deterministic, bias, token_ids, valid)
    else:
      block = Block
      if self.remat != "none":
        block = nn.remat(Block, policy=remat_policy(self.remat), static_argnums=(2, 6))
      for i, rate in enumerate(rates):
        x = block(self.num_heads, self.mlp_ratio, rate, self.options, layer_index=i + 1,
                  dtype=self.dtype, name=f"block_{i}")(x, deterministic, bias, token_ids,
                                                       None, valid)
    x = x[:, :t]
    if self.final_norm:
      x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
    return x
