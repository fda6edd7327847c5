"""Training-step benchmarks of mim_jax (``python -m benchmarks.mae_step``), see README.md.

This module holds what both sides of a comparison share and that needs neither JAX nor torch:
the named workloads, their analytic parameter and FLOP counts, and the install hint.
"""

import dataclasses

INSTALL_HINT = ("the PyTorch peer needs torch and transformers: "
                "pip install -r requirements-bench.txt")


@dataclasses.dataclass(frozen=True)
class Workload:
  """One MAE training step: image and patch size, encoder and decoder sizes, batch, mask."""
  name: str
  image_size: int
  patch_size: int
  variant: str          # mim_jax's config.model.variant ("NAME/PATCH")
  width: int            # encoder
  depth: int
  heads: int
  decoder_width: int
  decoder_depth: int
  decoder_heads: int
  batch_size: int       # the default; --batch_size overrides it
  mask_ratio: float = 0.75
  channels: int = 3
  mlp_ratio: float = 4.0

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.channels

  @property
  def num_kept(self) -> int:
    """Patches the encoder sees: int(L * (1 - ratio)), as MAE, mim_jax and HF compute it."""
    return int(self.num_patches * (1 - self.mask_ratio))


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
}


def select(names):
  """Workload names from --workload (repeatable; 'all' = every one), in table order."""
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
  """Trainable parameters of the MAE (mim_jax's count; the sin-cos tables are not parameters)."""
  d, dd, p = w.width, w.decoder_width, w.patch_dim
  encoder = (p * d + d) + d + w.depth * _block_params(d, w.mlp_ratio) + 2 * d
  decoder = ((d * dd + dd) + dd + w.decoder_depth * _block_params(dd, w.mlp_ratio) + 2 * dd
             + (dd * p + p))
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
  d, dd, P, r = w.width, w.decoder_width, w.patch_dim, w.mlp_ratio
  L, te, td = w.num_patches, 1 + w.num_kept, 1 + w.num_patches
  patch_embed = 2 * L * P * d
  encoder = w.depth * (2 * (4 + 2 * r) * d * d * te + 4 * te * te * d)
  decoder = (2 * te * d * dd
             + w.decoder_depth * (2 * (4 + 2 * r) * dd * dd * td + 4 * td * td * dd)
             + 2 * td * dd * P)
  forward = patch_embed + encoder + decoder
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
