"""RandAugment for uint8 images, with timm's spec strings and op set (PIL based).

MAE fine-tunes with ``rand-m9-mstd0.5-inc1``: per image, ``n`` = 2 ops are
picked uniformly with replacement from the op set; each picked op is applied
with probability ``p`` = 0.5, at a magnitude drawn from N(m, mstd) and clipped
to [0, mmax] (magnitudes are on a 0..10 scale; level = magnitude / 10).

Spec string: ``rand`` followed by dash-separated ``KEYvalue`` sections, in any
order (the defaults are timm's):

* ``n`` int, ops per image (2);
* ``m`` magnitude (10);
* ``mstd`` std of the per-op magnitude noise (0; above 100 means uniform in
  [0, m]);
* ``mmax`` upper clip of the magnitude (10);
* ``p`` probability of applying each picked op (0.5);
* ``inc`` 1 for the "increasing" op set, whose strength grows with the
  magnitude everywhere, 0 for the original set (0).

Ops (``level`` = magnitude / 10, "+-" = sign drawn at random, both equally
likely). Increasing set: AutoContrast, Equalize, Invert, Rotate (+-30 level
degrees), PosterizeIncreasing (keep 4 - int(4 level) bits), SolarizeIncreasing
(invert pixels >= 256 - int(256 level)), SolarizeAdd (add int(110 level) to
pixels < 128, saturating), Color/Contrast/Brightness/SharpnessIncreasing
(PIL enhance factor max(0.1, 1 +- 0.9 level)), ShearX/ShearY (+-0.3 level),
TranslateXRel/TranslateYRel (+-0.45 level of the width/height, in pixels,
not rounded). The original set has Posterize (keep int(4 level) bits),
Solarize (threshold int(256 level)) and enhance factors 0.1 + 1.8 level
(no sign) instead of the increasing variants.

Geometric ops (Rotate, Shear*, Translate*) fill uncovered pixels with ``fill``
(timm passes the dataset mean, ``round(255 * mean)`` per channel) and resample
with bicubic interpolation (``interpolation="bicubic"``, what MAE's
``create_transform(..., interpolation='bicubic')`` gives), or bilinear, or one
of the two at random per op (``"random"``, timm's default when no
interpolation is given).

All randomness comes from the numpy Generator passed in, so results are
reproducible. Works on 1-channel (PIL "L") and 3-channel ("RGB") images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

LEVEL_DENOM = 10.0  # magnitude scale: level = magnitude / LEVEL_DENOM

INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
ORIGINAL_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
INTERPOLATIONS = ("bicubic", "bilinear", "random")


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  """A parsed RandAugment spec (spec keys in brackets)."""

  num_ops: int = 2  # [n]
  magnitude: float = 10.0  # [m]
  magnitude_std: float = 0.0  # [mstd]; math.inf = uniform in [0, magnitude]
  magnitude_max: float = LEVEL_DENOM  # [mmax]
  prob: float = 0.5  # [p]
  increasing: bool = False  # [inc]

  @property
  def ops(self) -> tuple[str, ...]:
    return INCREASING_OPS if self.increasing else ORIGINAL_OPS


_SECTION = re.compile(r"([a-z]+)(.*)")
_KEYS = {  # key -> (field, parser, check, requirement)
    "n": ("num_ops", int, lambda v: v >= 0, "an integer >= 0"),
    "m": ("magnitude", float, lambda v: 0 <= v < math.inf, "a number >= 0"),
    "mstd": ("magnitude_std", float, lambda v: v >= 0, "a number >= 0"),
    "mmax": ("magnitude_max", float, lambda v: 0 < v < math.inf, "a number > 0"),
    "p": ("prob", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "inc": ("increasing", int, lambda v: v in (0, 1), "0 or 1"),
}


@functools.lru_cache(maxsize=64)
def parse_randaugment(spec: str) -> RandAugmentSpec:
  """Parses a timm-style spec such as ``"rand-m9-mstd0.5-inc1"``.

  Raises ValueError naming the offending section.
  """
  if not isinstance(spec, str):
    raise ValueError(f"RandAugment spec must be a string, got {spec!r}")
  sections = spec.split("-")
  if sections[0] != "rand":
    raise ValueError(f"RandAugment spec {spec!r} must start with 'rand', not {sections[0]!r}")
  values = {}
  for section in sections[1:]:
    match = _SECTION.fullmatch(section)
    if not match or match.group(1) not in _KEYS:
      known = ", ".join(_KEYS)
      raise ValueError(
          f"RandAugment spec {spec!r}: unknown section {section!r} (known keys: {known}; "
          "e.g. 'rand-m9-mstd0.5-inc1')")
    key, text = match.groups()
    field, parse, check, requirement = _KEYS[key]
    if field in values:
      raise ValueError(f"RandAugment spec {spec!r}: key {key!r} given twice (section {section!r})")
    try:
      value = parse(text)
    except ValueError:
      value = None
    if value is None or not check(value):
      raise ValueError(
          f"RandAugment spec {spec!r}: in section {section!r}, {key} must be {requirement}")
    if key == "mstd" and value > 100:  # timm: mstd above 100 means uniform sampling
      value = math.inf
    values[field] = bool(value) if key == "inc" else value
  return RandAugmentSpec(**values)


# ---------------------------------------------------------------------- ops


@dataclasses.dataclass(frozen=True)
class _Context:
  fill: int | tuple[int, ...]  # PIL fill color for the image's mode
  interpolation: str  # "bicubic", "bilinear" or "random"


def _sign(rng: np.random.Generator) -> float:
  return -1.0 if rng.random() < 0.5 else 1.0


def _resample(rng: np.random.Generator, ctx: _Context):
  if ctx.interpolation == "random":
    return _RESAMPLE["bilinear"] if rng.random() < 0.5 else _RESAMPLE["bicubic"]
  return _RESAMPLE[ctx.interpolation]


def _affine(img: Image.Image, matrix, rng, ctx) -> Image.Image:
  """PIL affine transform: output pixel (x, y) samples the input at matrix @ (x, y, 1)."""
  return img.transform(img.size, Image.Transform.AFFINE, matrix, _resample(rng, ctx),
                       fillcolor=ctx.fill)


def _rotate(img, level, rng, ctx):
  degrees = _sign(rng) * 30.0 * level
  return img.rotate(degrees, resample=_resample(rng, ctx), fillcolor=ctx.fill)


def _shear_x(img, level, rng, ctx):
  return _affine(img, (1, _sign(rng) * 0.3 * level, 0, 0, 1, 0), rng, ctx)


def _shear_y(img, level, rng, ctx):
  return _affine(img, (1, 0, 0, _sign(rng) * 0.3 * level, 1, 0), rng, ctx)


def _translate_x_rel(img, level, rng, ctx):
  return _affine(img, (1, 0, _sign(rng) * 0.45 * level * img.size[0], 0, 1, 0), rng, ctx)


def _translate_y_rel(img, level, rng, ctx):
  return _affine(img, (1, 0, 0, 0, 1, _sign(rng) * 0.45 * level * img.size[1]), rng, ctx)


def _posterize_bits(bits: int):
  """Keeps the top ``bits`` bits of each value; 0 bits gives black (recent Pillow's
  ImageOps.posterize refuses 0 bits, which PosterizeIncreasing reaches at magnitude 10)."""
  def op(img, level, rng, ctx):
    del level, rng, ctx
    if bits >= 8:
      return img
    mask = (0xFF << (8 - max(bits, 0))) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))
  return op


def _posterize(img, level, rng, ctx):
  return _posterize_bits(int(level * 4))(img, level, rng, ctx)


def _posterize_increasing(img, level, rng, ctx):
  return _posterize_bits(4 - int(level * 4))(img, level, rng, ctx)


def _solarize(img, level, rng, ctx):
  return ImageOps.solarize(img, min(256, int(level * 256)))


def _solarize_increasing(img, level, rng, ctx):
  return ImageOps.solarize(img, 256 - min(256, int(level * 256)))


def _solarize_add(img, level, rng, ctx):
  add = min(128, int(level * 110))
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _enhance(enhancer, increasing: bool):
  def op(img, level, rng, ctx):
    if increasing:
      factor = max(0.1, 1.0 + _sign(rng) * 0.9 * level)
    else:
      factor = 0.1 + 1.8 * level
    return enhancer(img).enhance(factor)
  return op


def _no_level(fn):
  def op(img, level, rng, ctx):
    del level, rng, ctx
    return fn(img)
  return op


# name -> fn(PIL image, level, rng, ctx) -> PIL image. Tests may patch entries.
OPS: dict[str, Callable] = {
    "AutoContrast": _no_level(ImageOps.autocontrast),
    "Equalize": _no_level(ImageOps.equalize),
    "Invert": _no_level(ImageOps.invert),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize_increasing,
    "Solarize": _solarize,
    "SolarizeIncreasing": _solarize_increasing,
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color, False),
    "ColorIncreasing": _enhance(ImageEnhance.Color, True),
    "Contrast": _enhance(ImageEnhance.Contrast, False),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast, True),
    "Brightness": _enhance(ImageEnhance.Brightness, False),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness, True),
    "Sharpness": _enhance(ImageEnhance.Sharpness, False),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness, True),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x_rel,
    "TranslateYRel": _translate_y_rel,
}


# ---------------------------------------------------------------- interface


def _to_pil(image: np.ndarray) -> Image.Image:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(
        f"RandAugment needs a uint8 image [H, W, 1 or 3], got {image.dtype} {image.shape}")
  if image.shape[-1] == 1:
    return Image.fromarray(np.ascontiguousarray(image[..., 0]), mode="L")
  return Image.fromarray(np.ascontiguousarray(image), mode="RGB")


def _from_pil(img: Image.Image) -> np.ndarray:
  out = np.array(img, np.uint8)
  return out[..., None] if out.ndim == 2 else out


def _context(fill, channels: int, interpolation: str) -> _Context:
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
  values = np.asarray(fill, np.int64).reshape(-1)
  if values.size not in (1, channels):
    raise ValueError(f"fill has {values.size} values but the image has {channels} channel(s)")
  values = [int(v) for v in np.broadcast_to(values, (channels,))]
  if not all(0 <= v <= 255 for v in values):
    raise ValueError(f"fill must be in [0, 255], got {fill}")
  return _Context(values[0] if channels == 1 else tuple(values), interpolation)


def fill_from_mean(mean, channels: int) -> tuple[int, ...]:
  """timm's fill color: ``min(255, round(255 * mean))`` per channel (1 mean value broadcasts)."""
  mean = np.broadcast_to(np.asarray(mean, np.float64).reshape(-1), (channels,))
  return tuple(min(255, max(0, round(255 * float(m)))) for m in mean)


def apply_op(image: np.ndarray, name: str, magnitude: float, rng: np.random.Generator,
             fill=128, interpolation: str = "bicubic") -> np.ndarray:
  """Applies one op (always, at exactly ``magnitude``) to a uint8 image [H, W, C]."""
  if name not in OPS:
    raise ValueError(f"unknown RandAugment op {name!r}; known: {sorted(OPS)}")
  img = _to_pil(image)
  ctx = _context(fill, len(img.getbands()), interpolation)
  return _from_pil(OPS[name](img, magnitude / LEVEL_DENOM, rng, ctx))


def randaugment(image: np.ndarray, spec: RandAugmentSpec | str, rng: np.random.Generator,
                fill=128, interpolation: str = "bicubic") -> np.ndarray:
  """RandAugment of one uint8 image [H, W, C] (C = 1 or 3) -> uint8 [H, W, C].

  ``fill``: the geometric ops' fill color, one value per channel or one for
  all. Draw order from ``rng``: the ``num_ops`` op indices, then for each
  picked op: the apply coin, and if applied the magnitude noise (if any),
  the op's own draws (sign, interpolation).
  """
  if isinstance(spec, str):
    spec = parse_randaugment(spec)
  img = _to_pil(image)
  ctx = _context(fill, len(img.getbands()), interpolation)
  names = spec.ops
  for index in rng.integers(len(names), size=spec.num_ops):
    if rng.random() >= spec.prob:
      continue
    magnitude = spec.magnitude
    if spec.magnitude_std == math.inf:
      magnitude = rng.uniform(0.0, magnitude)
    elif spec.magnitude_std > 0:
      magnitude = rng.normal(magnitude, spec.magnitude_std)
    magnitude = min(max(magnitude, 0.0), spec.magnitude_max)
    img = OPS[names[index]](img, magnitude / LEVEL_DENOM, rng, ctx)
  return _from_pil(img)
