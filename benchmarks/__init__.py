"""Training-step benchmarks of mim_jax (``python -m benchmarks.mae_step``), see README.md.

This module holds what both sides of a comparison share and that needs neither JAX nor torch:
the named workloads (MAE on a plain ViT, MixMIM on the hierarchical encoder), their analytic
parameter and FLOP counts, and the install hint.
"""

import dataclasses

INSTALL_HINT = ("the PyTorch peer needs torch and transformers: "
                "pip install -e \".[torch]\" -c constraints.txt")


@dataclasses.dataclass(frozen=True)
class Workload:
  """One training step of a method: image and patch size, encoder and decoder sizes, batch, mask.

  ``method`` "mae": a plain ViT encoder (``variant`` "NAME/PATCH"; width / depth / heads).
  ``method`` "mixmim": the hierarchical encoder (``variant`` a size of
  ``mim_jax.models.hierarchical.HIER_SIZES``): ``width`` is the first stage's width (doubled at
  every stage), ``stage_depths`` / ``stage_heads`` / ``window_sizes`` one entry per stage,
  ``depth`` / ``heads`` their sum / first entry (for the table only).
  """
  name: str
  image_size: int
  patch_size: int
  variant: str          # mim_jax's config.model.variant (mae: "NAME/PATCH"; mixmim: "NAME")
  width: int            # encoder (mixmim: the first stage's)
  depth: int
  heads: int
  decoder_width: int
  decoder_depth: int
  decoder_heads: int
  batch_size: int       # the default; --batch_size overrides it
  mask_ratio: float = 0.75
  channels: int = 3
  mlp_ratio: float = 4.0
  method: str = "mae"   # mim_jax's methods.get name: mae | mixmim
  stage_depths: tuple = ()   # mixmim (hierarchical encoder) only
  stage_heads: tuple = ()
  window_sizes: tuple = ()

  def __post_init__(self):
    if self.method not in ("mae", "mixmim"):
      raise ValueError(f"workload {self.name}: method must be 'mae' or 'mixmim'")
    if self.method == "mixmim":
      if not len(self.stage_depths) == len(self.stage_heads) == len(self.window_sizes) > 0:
        raise ValueError(f"workload {self.name}: stage_depths, stage_heads and window_sizes "
                         f"need one entry per stage")
      if (self.depth, self.heads) != (sum(self.stage_depths), self.stage_heads[0]):
        raise ValueError(f"workload {self.name}: depth / heads must be sum(stage_depths) / "
                         f"stage_heads[0]")

  @property
  def num_patches(self) -> int:
    """Tokens of the (first) patch grid."""
    return (self.image_size // self.patch_size) ** 2

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.channels

  @property
  def num_kept(self) -> int:
    """Patches the encoder sees: int(L * (1 - ratio)), as MAE, mim_jax and HF compute it;
    MixMIM's encoder sees all of them (mixed)."""
    if self.method == "mixmim":
      return self.num_patches
    return int(self.num_patches * (1 - self.mask_ratio))

  # MixMIM's geometry (hierarchical encoder): stages, mask cells, pixels per cell.
  @property
  def stride(self) -> int:
    """Pixels per side of a last-stage token, i.e. of a mask cell (mae: the patch)."""
    return self.patch_size * 2 ** max(len(self.stage_depths) - 1, 0)

  @property
  def num_cells(self) -> int:
    return (self.image_size // self.stride) ** 2

  def stages(self) -> list:
    """(tokens, width, heads, depth, clamped window) of every stage of a mixmim encoder."""
    out = []
    for i, (depth, heads, window) in enumerate(
        zip(self.stage_depths, self.stage_heads, self.window_sizes)):
      side = self.image_size // self.patch_size // 2 ** i
      out.append((side * side, self.width * 2 ** i, heads, depth, min(window, side)))
    return out


WORKLOADS = {
    # "tiny_test/4" gives the patch size; width/depth/heads override its (tiny) encoder.
    "tiny32": Workload("tiny32", image_size=32, patch_size=4, variant="tiny_test/4",
                       width=192, depth=12, heads=3,
                       decoder_width=128, decoder_depth=4, decoder_heads=4, batch_size=64),
    # ViT-B/16 with MAE's 512-wide, 8-block, 16-head decoder. Batch 8 fits a CPU; use
    # --batch_size for more on an accelerator.
    "base224": Workload("base224", image_size=224, patch_size=16, variant="B/16",
                        width=768, depth=12, heads=12,
                        decoder_width=512, decoder_depth=8, decoder_heads=16, batch_size=8),
    # MixMIM-B (mixmim.md): 4x4 patches, stages 2/2/18/2 blocks, widths 128..1024, heads
    # 4..32, windows 14/14/14/7 (no shift), mask ratio 0.5 on the 7x7 cells, MixMIM's
    # 512-wide, 8-block, 16-head decoder. Batch 8 on a CPU like base224.
    "mixmim_b224": Workload("mixmim_b224", image_size=224, patch_size=4, variant="B",
                            width=128, depth=24, heads=4,
                            decoder_width=512, decoder_depth=8, decoder_heads=16, batch_size=8,
                            mask_ratio=0.5, method="mixmim", stage_depths=(2, 2, 18, 2),
                            stage_heads=(4, 8, 16, 32), window_sizes=(14, 14, 14, 7)),
    # A two-stage hierarchical encoder at 32 px (4 px patches: 8x8 tokens 16 wide in 4x4
    # windows, then 4x4 tokens 32 wide, global; 4x4 cells of 8 px) with a small decoder: for the
    # tests (two stages compile in a fraction of the time of four).
    "mixmim_tiny32": Workload("mixmim_tiny32", image_size=32, patch_size=4, variant="tiny_test",
                              width=16, depth=2, heads=1,
                              decoder_width=32, decoder_depth=1, decoder_heads=2, batch_size=8,
                              mask_ratio=0.5, method="mixmim", stage_depths=(1, 1),
                              stage_heads=(1, 2), window_sizes=(4, 4)),
}


def select(names):
  """Workload names from --workload (repeatable; 'all' = every one in table order), in the
  order given, without repeats."""
  names = list(names or ["tiny32"])
  if "all" in names:
    return list(WORKLOADS)
  unknown = [n for n in names if n not in WORKLOADS]
  if unknown:
    raise ValueError(f"unknown workload(s) {unknown}; known: {sorted(WORKLOADS)} or 'all'")
  return list(dict.fromkeys(names))


def _block_params(d: int, mlp_ratio: float) -> int:
  """One pre-norm block: qkv (3d^2 + 3d), proj (d^2 + d), fc1 (r d^2 + r d), fc2 (r d^2 + d),
  two LayerNorms (4d)."""
  h = int(d * mlp_ratio)
  return (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d) + 4 * d


def param_count(w: Workload) -> int:
  """Trainable parameters of the model (mim_jax's count; the sin-cos tables are not
  parameters)."""
  if w.method == "mixmim":
    return mixmim_param_count(w)
  d, dd, p = w.width, w.decoder_width, w.patch_dim
  encoder = (p * d + d) + d + w.depth * _block_params(d, w.mlp_ratio) + 2 * d
  decoder = ((d * dd + dd) + dd + w.decoder_depth * _block_params(dd, w.mlp_ratio) + 2 * dd
             + (dd * p + p))
  return encoder + decoder


def mixmim_param_count(w: Workload) -> int:
  """MixMIM with the hierarchical encoder, written out:
    patch embedding (P d + d) and its LayerNorm (2d);
    every block at width c: a pre-norm block (``_block_params``) plus its relative position
      bias table, (2 window - 1)^2 x heads;
    patch merging after every stage but the last: LayerNorm(4c) (8c), Dense 4c -> 2c without
      bias (8c^2); the final LayerNorm (2 c_last);
    decoder: embedding c_last -> dd (+ bias), [MASK] (dd), blocks, LayerNorm (2 dd), prediction
      dd -> stride^2 C (+ bias).
  """
  stages = w.stages()
  p, dd = w.patch_dim, w.decoder_width
  encoder = (p * w.width + w.width) + 2 * w.width
  for i, (_, c, heads, depth, window) in enumerate(stages):
    encoder += depth * (_block_params(c, w.mlp_ratio) + (2 * window - 1) ** 2 * heads)
    if i < len(stages) - 1:
      encoder += 8 * c + 8 * c * c
  last = stages[-1][1]
  encoder += 2 * last
  cell = w.stride ** 2 * w.channels
  decoder = ((last * dd + dd) + dd + w.decoder_depth * _block_params(dd, w.mlp_ratio) + 2 * dd
             + (dd * cell + cell))
  return encoder + decoder


def fixed_pos_embed_count(w: Workload) -> int:
  """Entries of the two fixed sin-cos tables that HF's ViTMAE keeps as frozen parameters:
  [1, 1 + L, width] and [1, 1 + L, decoder_width]."""
  return (1 + w.num_patches) * (w.width + w.decoder_width)


def analytic_flops(w: Workload, batch_size: int) -> float:
  """Matmul FLOPs of one training step (2 FLOPs per multiply-add), written out.

  Forward, per image, with Te = 1 + K encoder tokens (K kept patches), Td = 1 + L decoder tokens,
  P = p*p*C, r = mlp ratio:
    patch embedding (of all L patches, before the gather)   2 L P d
    each encoder block: qkv + proj + fc1 + fc2              2 (4 + 2r) d^2 Te
                        q k^T and attention x v             4 Te^2 d
    decoder embedding                                       2 Te d dd
    each decoder block                                      2 (4 + 2r) dd^2 Td + 4 Td^2 dd
    prediction head                                         2 Td dd P
  Backward costs two forwards (gradients of inputs and of weights), except the patch
  embedding, whose input (the image) needs no gradient. The optimizer update, LayerNorms,
  GELU and softmax are elementwise and left out.
  """
  if w.method == "mixmim":
    return mixmim_analytic_flops(w, batch_size)
  d, dd, P, r = w.width, w.decoder_width, w.patch_dim, w.mlp_ratio
  L, te, td = w.num_patches, 1 + w.num_kept, 1 + w.num_patches
  patch_embed = 2 * L * P * d
  encoder = w.depth * (2 * (4 + 2 * r) * d * d * te + 4 * te * te * d)
  decoder = (2 * te * d * dd
             + w.decoder_depth * (2 * (4 + 2 * r) * dd * dd * td + 4 * td * td * dd)
             + 2 * td * dd * P)
  forward = patch_embed + encoder + decoder
  return float(batch_size * (3 * forward - patch_embed))


@dataclasses.dataclass(frozen=True)
class Matmul:
  """One matmul of a training step's forward pass: ``batch`` independent [m, k] x [k, n]
  products (attention: one per image and head; a linear layer: batch 1, the images' tokens
  in m), ``count`` times per step (once per block). Its backward is the weight gradient
  (x^T dy) and, when ``input_grad``, the input gradient (dy w^T), each as many FLOPs as the
  forward."""
  name: str
  batch: int
  m: int
  k: int
  n: int
  count: int = 1
  input_grad: bool = True

  @property
  def flops(self) -> int:
    """FLOPs of one forward product (2 per multiply-add)."""
    return 2 * self.batch * self.m * self.k * self.n

  @property
  def step_flops(self) -> int:
    """FLOPs per step: forward, weight gradient and (if any) input gradient, ``count`` times."""
    return self.count * self.flops * (3 if self.input_grad else 2)


def mae_matmuls(w: Workload, batch_size: int) -> list:
  """The matmuls of one MAE training step (``analytic_flops`` counts their FLOPs), as the
  model computes them: q, k and v as one [d, 3d] product, the logits and the weighted sum of
  the values per image and head."""
  if w.method != "mae":
    raise ValueError(f"workload {w.name}: the matmul list is MAE's, not {w.method}'s")
  te, td = 1 + w.num_kept, 1 + w.num_patches

  def blocks(prefix, tokens, width, heads, depth):
    rows, hidden, head = batch_size * tokens, int(width * w.mlp_ratio), width // heads
    return [Matmul(f"{prefix}.qkv", 1, rows, width, 3 * width, depth),
            Matmul(f"{prefix}.logits", batch_size * heads, tokens, head, tokens, depth),
            Matmul(f"{prefix}.attend", batch_size * heads, tokens, tokens, head, depth),
            Matmul(f"{prefix}.proj", 1, rows, width, width, depth),
            Matmul(f"{prefix}.fc1", 1, rows, width, hidden, depth),
            Matmul(f"{prefix}.fc2", 1, rows, hidden, width, depth)]

  return ([Matmul("patch_embed", 1, batch_size * w.num_patches, w.patch_dim, w.width,
                  input_grad=False)]
          + blocks("encoder", te, w.width, w.heads, w.depth)
          + [Matmul("decoder_embed", 1, batch_size * te, w.width, w.decoder_width)]
          + blocks("decoder", td, w.decoder_width, w.decoder_heads, w.decoder_depth)
          + [Matmul("pred", 1, batch_size * td, w.decoder_width, w.patch_dim)])


def mixmim_encoder_flops(w: Workload) -> float:
  """Matmul FLOPs of MixMIM's hierarchical encoder over one image (forward):
    patch embedding of all N0 patches                       2 N0 P C
    each block of a stage (n tokens, width c, window t = w^2 tokens):
        qkv + proj + fc1 + fc2                              2 (4 + 2r) c^2 n
        q k^T and attention x v, n / t windows of t tokens  4 n t c
    patch merging after the stage (n / 4 tokens, 4c -> 2c)  2 (n / 4) (4c) (2c) = 4 n c^2
  """
  r = w.mlp_ratio
  flops = 2 * w.num_patches * w.patch_dim * w.width
  stages = w.stages()
  for i, (n, c, _, depth, window) in enumerate(stages):
    flops += depth * (2 * (4 + 2 * r) * c * c * n + 4 * n * window * window * c)
    if i < len(stages) - 1:
      flops += 4 * n * c * c
  return float(flops)


def mixmim_analytic_flops(w: Workload, batch_size: int) -> float:
  """Matmul FLOPs of one MixMIM training step (2 FLOPs per multiply-add), written out.

  Forward, per image: the encoder over all tokens (``mixmim_encoder_flops``), then the decoder
  on N cells (c_last = the last stage's width, Pc = stride^2 C pixels per cell):
    decoder embedding (one copy)                            2 N c_last dd
    two copies, each: dd-wide blocks                        depth (2 (4 + 2r) dd^2 N + 4 N^2 dd)
                      prediction head                       2 N dd Pc
  Backward costs two forwards, except the patch embedding (its input, the image, needs no
  gradient). Masked-attention biases, relative-position gathers, mixing, LayerNorms, GELU,
  softmax and the optimizer are elementwise and left out.
  """
  r, dd, n = w.mlp_ratio, w.decoder_width, w.num_cells
  last = w.stages()[-1][1]
  cell = w.stride ** 2 * w.channels
  patch_embed = 2 * w.num_patches * w.patch_dim * w.width
  decoder = (2 * n * last * dd
             + 2 * (w.decoder_depth * (2 * (4 + 2 * r) * dd * dd * n + 4 * n * n * dd)
                    + 2 * n * dd * cell))
  forward = mixmim_encoder_flops(w) + decoder
  return float(batch_size * (3 * forward - patch_embed))


# ---------------------------------------------------------------------------------------------
# Peak FLOP/s of one device, the denominator of MFU.
# ---------------------------------------------------------------------------------------------
# Dense (no sparsity) peaks: (lowercase substring of device_kind, bf16 FLOP/s, fp32 FLOP/s).
# fp32 on NVIDIA GPUs is the TF32 tensor-core peak, which XLA's and torch's default fp32 matmul
# precision may use. TPUs run fp32 matmuls as bf16 passes: one peak for both. First match wins,
# so more specific names come first.
ACCELERATOR_PEAKS = (
    ("h100 pcie", 756e12, 378e12),
    ("h100", 989.4e12, 494.7e12),      # SXM
    ("h200", 989.4e12, 494.7e12),      # same compute as H100 SXM
    ("gh200", 989.4e12, 494.7e12),
    ("a100", 312e12, 156e12),
    ("tpu v4", 275e12, 275e12),
    ("tpu v5 lite", 197e12, 197e12),   # v5e's device_kind
    ("tpu v5e", 197e12, 197e12),
    ("tpu v5p", 459e12, 459e12),
    ("tpu v5", 459e12, 459e12),        # v5p's device_kind
)


def accelerator_peak_flops(device_kind: str, dtype: str):
  """Peak FLOP/s from the table, or None for a device it does not know."""
  kind = device_kind.lower()
  for name, bf16, fp32 in ACCELERATOR_PEAKS:
    if name in kind:
      return bf16 if dtype == "bfloat16" else fp32
  return None


def _cpuinfo_field(text: str, key: str):
  for line in text.splitlines():
    name, sep, value = line.partition(":")
    if sep and name.strip() == key:
      return value.strip()
  return None


def cpu_peak_flops(cpuinfo: str, cores: int):
  """cores x clock x fp32 FLOPs per cycle per core, from /proc/cpuinfo's text.

  FLOPs per cycle: avx512f 64 (2 FMA units x 16 lanes x 2), avx2 + fma 32, avx 16, else 8.
  Clock: the "@ X.XXGHz" of "model name" (the base clock), else "cpu MHz". When hyper-threads
  are listed (siblings > cpu cores) ``cores`` is scaled to physical cores, which hold the units.
  Returns (FLOP/s, how it was found) or (None, why not).
  """
  flags = set((_cpuinfo_field(cpuinfo, "flags") or "").split())
  if "avx512f" in flags:
    per_cycle, isa = 64, "avx512f"
  elif "avx2" in flags and "fma" in flags:
    per_cycle, isa = 32, "avx2+fma"
  elif "avx" in flags:
    per_cycle, isa = 16, "avx"
  else:
    per_cycle, isa = 8, "sse"
  ghz = None
  model = _cpuinfo_field(cpuinfo, "model name") or ""
  at = model.rpartition("@")[2].strip().lower()
  if at.endswith("ghz"):
    try:
      ghz = float(at[:-3])
    except ValueError:
      ghz = None
  if ghz is None:
    mhz = _cpuinfo_field(cpuinfo, "cpu MHz")
    try:
      ghz = float(mhz) / 1000 if mhz else None
    except ValueError:
      ghz = None
  if not ghz:
    return None, "no clock in /proc/cpuinfo"
  try:
    siblings = int(_cpuinfo_field(cpuinfo, "siblings") or 0)
    per_package = int(_cpuinfo_field(cpuinfo, "cpu cores") or 0)
  except ValueError:
    siblings = per_package = 0
  physical = cores
  if siblings > per_package > 0:
    physical = max(1, cores * per_package // siblings)
  return (physical * ghz * 1e9 * per_cycle,
          f"cpu estimate: {physical} cores x {ghz:g} GHz x {per_cycle} FLOP/cycle ({isa})")


def cpu_count() -> int:
  """CPUs this process may run on (its affinity mask where there is one, else os.cpu_count())."""
  import os
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def peak_flops(device_kind: str, platform: str, dtype: str, override: float = 0.0):
  """(peak FLOP/s of one device or None, its source) for MFU."""
  if override:
    return float(override), "--peak_flops"
  if platform == "cpu":
    try:
      with open("/proc/cpuinfo") as f:
        text = f.read()
    except OSError:
      return None, "no /proc/cpuinfo: pass --peak_flops"
    return cpu_peak_flops(text, cpu_count())
  peak = accelerator_peak_flops(device_kind, dtype)
  if peak is None:
    return None, f"unknown device {device_kind!r}: pass --peak_flops"
  return peak, f"table: {device_kind} {dtype}"


# ---------------------------------------------------------------------------------------------
# Peak host memory, for runs on CPU (where the device reports no memory statistics).
# ---------------------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
  """Restarts the kernel's peak-RSS mark of this process (Linux: /proc/self/clear_refs "5"),
  so a later ``peak_rss`` leaves out transient peaks before it (e.g. XLA's compilation); what
  is resident now still counts. False if not possible here."""
  try:  # first hand freed heap back to the OS (glibc), so it is not counted as in use
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss(since_reset: bool = False):
  """(bytes, source): peak resident set size of this process, since ``reset_peak_rss`` if it
  worked, else over the process's life (getrusage's ru_maxrss)."""
  if since_reset:
    try:
      with open("/proc/self/status") as f:
        for line in f:
          if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024, "peak RSS after setup (VmHWM, host memory)"
    except (OSError, ValueError, IndexError):
      pass
  import resource
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "ru_maxrss (process peak RSS, host memory)")


def xla_memory(compiled) -> dict:
  """XLA's memory analysis of a compiled program, per device: ``temp_bytes`` (its working
  buffers), ``argument_bytes`` and ``total_bytes`` (arguments + outputs + temps - aliased, the
  peak the program needs); {} where the backend gives none."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"temp_bytes": int(m.temp_size_in_bytes),
          "argument_bytes": int(m.argument_size_in_bytes), "total_bytes": int(total)}
