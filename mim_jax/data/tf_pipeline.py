"""Batches built by tf.data (``data.pipeline = "tf"``): reading, decoding, crop, resize and flip
run in TensorFlow's C++ threads, outside the Python interpreter lock, so they scale with cores.
Training (``IndexedStream`` for folder and in-memory sources, ``TfdsStream``) and evaluation
(``eval_dataset``). JPEGs are decoded with ``decode_and_crop_jpeg`` (only the crop's blocks);
other formats are decoded whole, then cropped. The resize is TensorFlow's antialiased bicubic, which
is PIL's (the Python pipeline's, torchvision's) to ~0.005 of a grey level; ``data.antialias =
False`` resizes with the plain bicubic kernel when downscaling (as TensorFlow's default resize
and JAX codebases built on it: faster, aliased).

Batches are what ``pipeline.train_iterator`` yields (``label``, ``id``, ``crop_box`` as (y0, x0,
y1, x1) fractions of the source image, ``flipped``), except that ``image`` is uint8 [b, S, S, C]:
the resized pixels rounded, as PIL's resize gives them to torchvision. The iterators carry
``image_normalization`` (scale, shift), which ``device_prefetch`` applies on the device; on the
host the normalization would cost as much as the JPEG decode (measured: 1 core, 224 px).

Determinism: the stream is a pure function of (seed, step).

* Index-addressable sources (folder, in-memory): global step s holds the stream positions
  [s B, (s + 1) B) of the global batch B. Position p is example ``ids[perm_e(p mod n)]`` of the
  split's n ids, e = p div n, where ``perm_e`` is ``tf.random.experimental.index_shuffle``
  keyed by (seed, e): each epoch visits every example once, without materializing a
  permutation. Host h of H takes the h-th contiguous b = B / H positions of each global batch,
  so the global batch is the same on any number of hosts.
* TFDS (streamed, no random access): as the Python pipeline, each host reads its own part of
  the split in order and shuffles each epoch with a buffer keyed by (seed, host, epoch); exact
  on resume, but the order depends on the number of hosts.
* Each example's draws (crop attempts and position, flip) come from stateless ops keyed by
  (seed, epoch, example id): the same image in the same epoch is cropped alike wherever it
  lands.

The crop box is torchvision's RandomResizedCrop (10 attempts of area fraction and log aspect
ratio, the first that fits, else the centred fallback), the same arithmetic as
``transforms.random_resized_crop_boxes`` on these draws.

An unreadable image (missing file, corrupted bytes) leaves its slot to the next readable image
of the same batch (its crop and flip too); it is counted in ``skipped_images`` and logged once
(training: see ``IndexedStream`` and ``TfdsStream``, whose common path has no per-image error
handling; evaluation: each image is decoded inside a one-element dataset whose errors are
ignored, with a flagged blank as the fallback).
RandAugment (timm's, on the uint8 crop) runs the project's PIL implementation per image from
tf.data (``numpy_function``; PIL works outside the interpreter lock), seeded from the example's
key. Random erasing acts on normalized images, so the host draws each example's box and fill
seed and the device erases (``prefetch.normalize_on_device``).
"""

from __future__ import annotations

import math

import numpy as np

from mim_jax.data import transforms
from mim_jax.data import sources as sources_lib

PERMUTATION_STREAM, AUGMENT_STREAM = 0, 1
# libjpeg's accurate integer IDCT, as PIL decodes: the pixels of a crop equal PIL's but for the
# crop's edge columns, where the cropped decode upsamples chroma without the neighbours.
JPEG_DCT = "INTEGER_ACCURATE"


def seed_pair(seed: int):
  """A stateless-op seed [2] int64 from a config seed (any int up to 2**64)."""
  seed = int(seed) % 2**64
  return np.array([seed % 2**31, seed // 2**31 % 2**31], np.int64)


def _fold(tf, key, *values):
  for value in values:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
  return key


def crop_window(tf, height, width, key, opts: transforms.AugmentOptions):
  """(top, left, crop_h, crop_w) int32 and the flip draw (float) of one example.

  Draws [A] area fractions, [A] log aspect ratios, [2] positions and [1] flip, uniform in
  [0, 1) from ``key``; then RandomResizedCrop as ``transforms.random_resized_crop_boxes``."""
  attempts = transforms.NUM_CROP_ATTEMPTS
  u = tf.random.stateless_uniform([2 * attempts + 3], seed=key, dtype=tf.float64)
  area_u, ratio_u = u[:attempts], u[attempts:2 * attempts]
  pos_u, flip_u = u[2 * attempts:2 * attempts + 2], u[2 * attempts + 2]
  h = tf.cast(height, tf.float64)
  w = tf.cast(width, tf.float64)
  lo, hi = opts.crop_scale
  target = h * w * (lo + (hi - lo) * area_u)
  log_lo, log_hi = math.log(opts.crop_ratio[0]), math.log(opts.crop_ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * ratio_u)
  cw = tf.round(tf.sqrt(target * aspect))
  ch = tf.round(tf.sqrt(target / aspect))
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.reduce_any(fits)
  in_ratio = w / h
  fb_w = tf.where(in_ratio > opts.crop_ratio[1], tf.round(h * opts.crop_ratio[1]), w)
  fb_h = tf.where(in_ratio < opts.crop_ratio[0], tf.round(w / opts.crop_ratio[0]), h)
  crop_h = tf.where(found, ch[first], tf.maximum(fb_h, 1.0))
  crop_w = tf.where(found, cw[first], tf.maximum(fb_w, 1.0))
  top = tf.where(found, tf.floor(pos_u[0] * (h - crop_h + 1)), tf.floor((h - crop_h) / 2))
  left = tf.where(found, tf.floor(pos_u[1] * (w - crop_w + 1)), tf.floor((w - crop_w) / 2))
  window = [tf.cast(v, tf.int32) for v in (top, left, crop_h, crop_w)]
  return window, flip_u


def augment_encoded(tf, data, key, image_size: int, channels: int,
                    opts: transforms.AugmentOptions):
  """Decodes ``data`` (encoded bytes) with the crop drawn from ``key``; see ``_finish``."""

  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    window, flip_u = crop_window(tf, shape[0], shape[1], key, opts)
    image = tf.image.decode_and_crop_jpeg(data, tf.stack(window), channels=channels,
                                          dct_method=JPEG_DCT)
    return image, tf.stack(window), shape[:2], flip_u

  def other():
    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    shape = tf.shape(image)
    window, flip_u = crop_window(tf, shape[0], shape[1], key, opts)
    top, left, crop_h, crop_w = window
    return (image[top:top + crop_h, left:left + crop_w], tf.stack(window), shape[:2],
            flip_u)

  image, window, shape, flip_u = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  return _finish(tf, image, window, shape, flip_u, image_size, opts, key)


def augment_array(tf, image, key, image_size: int, opts: transforms.AugmentOptions):
  """``augment_encoded`` for a decoded uint8 image [H, W, C] (in-memory sources)."""
  shape = tf.shape(image)
  window, flip_u = crop_window(tf, shape[0], shape[1], key, opts)
  top, left, crop_h, crop_w = window
  return _finish(tf, image[top:top + crop_h, left:left + crop_w], tf.stack(window),
                 shape[:2], flip_u, image_size, opts, key)


def to_uint8(tf, image):
  """Rounds resampled pixels to uint8, as PIL's resize does (torchvision's pipeline)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def _finish(tf, crop, window, shape, flip_u, image_size, opts, key):
  """Resize (bicubic; antialiased unless ``opts.antialias`` is off), round to uint8, flip,
  RandAugment (when on); returns {image, crop_box, flipped} and, with random erasing on, the
  erasing's box and seed (``erase_draws``), which the device applies after normalizing.
  Normalization is left to the device (``prefetch.device_prefetch``): on the host it would
  cost as much as the decode."""
  out = tf.image.resize(crop, [image_size, image_size], method="bicubic",
                        antialias=opts.antialias)
  out = to_uint8(tf, out)
  flipped = tf.logical_and(tf.constant(bool(opts.flip)), flip_u < 0.5)
  out = tf.cond(flipped, lambda: tf.reverse(out, axis=[1]), lambda: out)
  if opts.randaugment:
    out = randaugment(tf, out, example_seed(tf, key, transforms.RANDAUGMENT_STREAM), opts)
  size = tf.cast(tf.concat([shape, shape], 0), tf.float64)
  window = tf.cast(window, tf.float64)
  box = tf.stack([window[0], window[1], window[0] + window[2], window[1] + window[3]]) / size
  aug = {"image": out, "crop_box": tf.cast(box, tf.float32), "flipped": flipped}
  if opts.random_erase > 0:
    aug.update(erase_draws(tf, key, image_size, opts.random_erase))
  return aug


def blank(tf, image_size: int, channels: int, opts):
  """What ``_finish`` returns, for a slot without an image (unreadable, padding)."""
  aug = {"image": tf.zeros([image_size, image_size, channels], tf.uint8),
         "crop_box": tf.zeros([4], tf.float32), "flipped": tf.constant(False)}
  if opts.random_erase > 0:
    aug.update(erase_box=tf.zeros([4], tf.int32), erase_seed=tf.constant(0, tf.int32))
  return aug


def example_seed(tf, key, stream: int):
  """A uint64 seed (as int64) of one example's ``stream`` (``transforms.example_rng``)."""
  return tf.random.stateless_uniform([], seed=_fold(tf, key, 100 + stream), minval=None,
                                     maxval=None, dtype=tf.int64)


def randaugment(tf, image, seed, opts):
  """timm's RandAugment of one uint8 image by the project's PIL implementation
  (``data/randaugment.py``), called from tf.data (``numpy_function``): the same op set,
  magnitudes and PIL resampling as the Python pipeline, its Generator seeded from the
  example's stateless key. PIL does the pixel work outside the interpreter lock."""
  from mim_jax.data import randaugment as ra  # pylint: disable=g-import-not-at-top
  channels = image.shape[-1]
  fill = ra.fill_from_mean(opts.mean, channels)
  spec = ra.parse_randaugment(opts.randaugment)

  def apply(pixels, seed_value):
    rng = transforms.example_rng(int(seed_value) % 2**64, transforms.RANDAUGMENT_STREAM)
    return ra.randaugment(pixels, spec, rng, fill)

  out = tf.numpy_function(apply, [image, seed], tf.uint8, stateful=False)
  return tf.ensure_shape(out, image.shape)


def erase_draws(tf, key, size: int, prob: float, min_area: float = 0.02,
                max_area: float = 1 / 3, min_aspect: float = 0.3, attempts: int = 10):
  """timm's RandomErasing box for an S x S image (``random_erasing.erase_box``: with
  probability ``prob``, the first of ``attempts`` (area fraction, log aspect) draws whose box
  fits strictly inside, at a uniform position): ``erase_box`` (top, left, h, w) int32, h = 0
  for none, and ``erase_seed`` of its N(0, 1) fill, which the device draws
  (``prefetch.normalize_on_device``)."""
  u = tf.random.stateless_uniform([2 * attempts + 3], seed=_fold(tf, key, 100 +
                                                                  transforms.ERASE_STREAM),
                                  dtype=tf.float64)
  coin, area_u, aspect_u, pos_u = u[0], u[1:attempts + 1], u[attempts + 1:2 * attempts + 1], u[
      2 * attempts + 1:]
  target = (min_area + (max_area - min_area) * area_u) * size * size
  log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
  aspect = tf.exp(log_lo + (log_hi - log_lo) * aspect_u)
  h = tf.round(tf.sqrt(target * aspect))
  w = tf.round(tf.sqrt(target / aspect))
  fits = (h < size) & (w < size)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  erase = tf.logical_and(coin < prob, tf.reduce_any(fits))
  bh, bw = h[first], w[first]
  top = tf.floor(pos_u[0] * (size - bh + 1))
  left = tf.floor(pos_u[1] * (size - bw + 1))
  box = tf.cast(tf.stack([top, left, bh, bw]), tf.int32)
  box = tf.where(erase, box, tf.zeros([4], tf.int32))
  seed = tf.random.stateless_uniform([], seed=_fold(tf, key, 200), minval=None, maxval=None,
                                     dtype=tf.int32)
  return {"erase_box": box, "erase_seed": seed}


def _slot(tf, load, fallback):
  """A dataset of one element: ``load()`` (with ok=True), or ``fallback`` (ok=False) if
  ``load`` raises (unreadable image)."""
  good = tf.data.Dataset.from_tensors(0).map(lambda _: load()).ignore_errors()
  return good.concatenate(tf.data.Dataset.from_tensors(fallback)).take(1)


class IndexedStream:
  """This host's training batches from a folder or in-memory source, and how to recover from
  an unreadable image.

  The fast path maps each stream position straight to its augmented image (no per-example
  error handling, which costs ~20 % in tf.data). When an image cannot be read, the batch
  raises; ``unreadable(step)`` then decodes that step's images one by one and names the bad
  ones, and ``dataset(step, bad)`` rebuilds the stream from that step with them marked: a
  marked example's slot comes out with ``ok`` False (``pipeline`` fills it from the batch).
  Either way a bad image's slot is the same, so the stream stays a pure function of (seed,
  step)."""

  def __init__(self, source, base: str, ids: np.ndarray, *, global_batch: int, host: int,
               hosts: int, image_size: int, opts, seed: int, num_workers: int):
    tf = self._tf = sources_lib.import_tensorflow()
    self._source, self._opts, self._image_size = source, opts, image_size
    self._n, self._global, self._host = len(ids), global_batch, host
    self.batch = global_batch // hosts
    self._num_workers = num_workers
    self._key = seed_pair(seed)
    self._ids = tf.constant(np.asarray(ids, np.int64))
    self._labels = tf.constant(np.asarray(source.labels(base), np.int32))
    if source.in_memory:
      self._images = tf.constant(source.images(base))
      self._channels = source.images(base).shape[-1]
    else:
      self._files = tf.constant(np.asarray([source.file(base, i) for i in range(
          source.split_size(base))], dtype=object))
      self._channels = source.channels

  def _example(self, k):
    """(epoch, example id) of this host's k-th stream element."""
    tf = self._tf
    step, j = k // self.batch, k % self.batch
    position = step * self._global + self._host * self.batch + j
    epoch, offset = position // self._n, position % self._n
    index = tf.random.experimental.index_shuffle(
        offset, seed=_fold(tf, self._key, PERMUTATION_STREAM, epoch), max_index=self._n - 1)
    return epoch, self._ids[index]

  def _augment(self, epoch, example):
    tf = self._tf
    key = _fold(tf, self._key, AUGMENT_STREAM, epoch, example)
    if self._source.in_memory:
      return augment_array(tf, self._images[example], key, self._image_size, self._opts)
    return augment_encoded(tf, tf.io.read_file(self._files[example]), key,
                           self._image_size, self._channels, self._opts)

  def dataset(self, start_step: int, bad=()):
    tf = self._tf
    bad_t = tf.constant(sorted(bad) or [-1], tf.int64)
    empty = blank(tf, self._image_size, self._channels, self._opts)

    def element(k):
      epoch, example = self._example(k)
      label = self._labels[example]
      return tf.cond(tf.reduce_any(tf.equal(bad_t, example)),
                     lambda: _record(tf, empty, label, example, False),
                     lambda: _record(tf, self._augment(epoch, example), label, example,
                                     True))

    threads = self._num_workers if self._num_workers > 0 else tf.data.AUTOTUNE
    ds = tf.data.Dataset.range(start_step * self.batch, 2**62).map(
        element, num_parallel_calls=threads, deterministic=True)
    return _finish_dataset(tf, ds, self.batch, self._num_workers)

  def unreadable(self, step: int) -> set:
    """Ids of the images of this host's batch ``step`` that cannot be read (one by one)."""
    tf, out = self._tf, set()
    for k in range(step * self.batch, (step + 1) * self.batch):
      epoch, example = self._example(tf.constant(k, tf.int64))
      try:
        self._augment(epoch, example)
      except (tf.errors.OpError, ValueError):
        out.add(int(example))
    return out


class TfdsStream:
  """This host's training batches from a TFDS source (``ids``: this host's part), in the
  Python pipeline's order. ``dataset(step)`` maps each record straight to its image (no
  per-image error handling); when a batch fails on an unreadable image, ``dataset(step,
  safe=True)`` gives that one batch with each image decoded in a one-element dataset whose
  errors are ignored (the bad one flagged, ``ok`` False), and the stream goes on from the
  next step. Records are the same either way: the stream stays a pure function of (seed,
  step)."""

  def __init__(self, source, base: str, ids: np.ndarray, *, batch: int, host: int,
               image_size: int, opts, seed: int, num_workers: int, shuffle_buffer: int):
    tf = self._tf = sources_lib.import_tensorflow()
    self.batch, self._n = batch, len(ids)
    self._image_size, self._opts, self._channels = image_size, opts, source.channels
    self._num_workers, self._shuffle_buffer = num_workers, shuffle_buffer
    self._stream_seed = int(np.random.SeedSequence([seed, 2, host]).generate_state(1)[0])
    self._key = seed_pair(seed)
    self._examples = source.read(base, int(ids[0]), int(ids[-1]) + 1, ids)
    self._empty = blank(tf, image_size, source.channels, opts)
    del tf

  def _one_epoch(self, epoch):
    shuffled = self._examples.shuffle(
        self._shuffle_buffer, seed=self._stream_seed * 1_000_003 + epoch,
        reshuffle_each_iteration=False)
    return shuffled.map(lambda data, label, i: (epoch, data, label, i))

  def _load(self, epoch, data, label, example):
    tf = self._tf
    key = _fold(tf, self._key, AUGMENT_STREAM, epoch, example)
    return _record(tf, augment_encoded(tf, data, key, self._image_size, self._channels,
                                       self._opts), label, example, True)

  def dataset(self, start_step: int, safe: bool = False):
    tf = self._tf
    first_epoch, offset = divmod(start_step * self.batch, self._n)
    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(self._one_epoch).skip(offset)
    if safe:
      def element(epoch, data, label, example):
        return _slot(tf, lambda: self._load(epoch, data, label, example),
                     _record(tf, self._empty, label, example, False))
      ds = ds.take(self.batch).interleave(element, **_parallel(tf, self._num_workers))
    else:
      threads = self._num_workers if self._num_workers > 0 else tf.data.AUTOTUNE
      ds = ds.map(self._load, num_parallel_calls=threads, deterministic=True)
    return _finish_dataset(tf, ds, self.batch, self._num_workers)


def _record(tf, aug, label, example, ok):
  return dict(aug, label=tf.cast(label, tf.int32), id=tf.cast(example, tf.int32),
              ok=tf.constant(ok))


def _parallel(tf, num_workers: int) -> dict:
  threads = num_workers if num_workers > 0 else tf.data.AUTOTUNE
  return dict(cycle_length=threads, block_length=1, num_parallel_calls=threads,
              deterministic=True)


def _finish_dataset(tf, ds, batch: int, num_workers: int):
  ds = ds.batch(batch, drop_remainder=True).prefetch(2)
  options = tf.data.Options()
  options.deterministic = True
  if num_workers > 0:
    options.threading.private_threadpool_size = num_workers
  return ds.with_options(options)


# ----------------------------------------------------------------------------- evaluation
def eval_transform(tf, image, image_size: int, opts, whole_image: bool):
  """Resize so that the shorter side is round(S / eval_crop_pct) (the longer one keeps the
  aspect ratio, truncated as torchvision's Resize), then the centre S x S crop, offsets
  rounded as torchvision's CenterCrop (``transforms.eval_geometry``); or, with
  ``whole_image``, the whole image resized to S x S. Bicubic (antialiased unless
  ``opts.antialias`` is off); uint8 (normalized on the device)."""
  if whole_image:
    out = tf.image.resize(image, [image_size, image_size], method="bicubic",
                          antialias=opts.antialias)
  else:
    short = round(image_size / opts.eval_crop_pct)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short_t = tf.constant(short, tf.float64)
    long_h = tf.maximum(tf.floor(short_t * h / w), short_t)
    long_w = tf.maximum(tf.floor(short_t * w / h), short_t)
    new_h = tf.cast(tf.where(h <= w, short_t, long_h), tf.int32)
    new_w = tf.cast(tf.where(h <= w, long_w, short_t), tf.int32)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
    out = tf.image.resize(image, tf.stack([new_h, new_w]), method="bicubic",
                          antialias=opts.antialias)
    out = out[top:top + image_size, left:left + image_size]
  return tf.ensure_shape(to_uint8(tf, out), [image_size, image_size, image.shape[-1]])


def eval_dataset(source, base: str, ids: np.ndarray, *, batch: int, num_batches: int,
                 image_size: int, opts, whole_image: bool, num_workers: int):
  """One ordered pass over ``ids`` (this host's), padded to ``num_batches`` batches. Elements:
  ``image``, ``label``, ``id`` (-1 for padding and unreadable images), ``mask`` (False for
  them), ``bad`` (True for an unreadable image) and ``tried`` (the id meant)."""
  tf = sources_lib.import_tensorflow()
  count = len(ids)
  channels = source.images(base).shape[-1] if source.in_memory else source.channels
  blank = tf.zeros([image_size, image_size, channels], tf.uint8)

  def record(image, label, example, ok, bad):
    """``bad``: an unreadable image (its id in ``tried``; ``id`` -1 as for padding)."""
    example = tf.cast(example, tf.int32)
    return {"image": image, "label": tf.cast(label, tf.int32),
            "id": example if ok else tf.constant(-1), "mask": tf.constant(ok),
            "bad": tf.constant(bad), "tried": example}

  def decode_and_transform(data):
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=channels, dct_method=JPEG_DCT),
        lambda: tf.io.decode_image(data, channels=channels, expand_animations=False))
    return eval_transform(tf, image, image_size, opts, whole_image)

  if isinstance(source, sources_lib.TfdsSource):
    examples = (source.read(base, int(ids[0]), int(ids[-1]) + 1, ids) if count
                else tf.data.Dataset.from_tensors((b"", 0, -1)).take(0))

    def element(data, label, example):
      return _slot(tf, lambda: record(decode_and_transform(data), label, example, True,
                                      False),
                   record(blank, 0, example, False, True))
    ds = examples.interleave(element, **_parallel(tf, num_workers))
  else:
    ids_t = tf.constant(np.asarray(ids, np.int64))
    labels_t = tf.constant(np.asarray(source.labels(base), np.int32))
    if source.in_memory:
      images_t = tf.constant(source.images(base))
    else:
      files_t = tf.constant(np.asarray([source.file(base, int(i)) for i in ids],
                                       dtype=object))

    def element(position):
      example = ids_t[position]

      def load():
        if source.in_memory:
          image = eval_transform(tf, images_t[example], image_size, opts, whole_image)
        else:
          image = decode_and_transform(tf.io.read_file(files_t[position]))
        return record(image, labels_t[example], example, True, False)
      return _slot(tf, load, record(blank, 0, example, False, True))
    ds = tf.data.Dataset.range(count).interleave(element, **_parallel(tf, num_workers))
  padding = tf.data.Dataset.from_tensors(record(blank, 0, -1, False, False)).repeat(
      num_batches * batch - count)
  options = tf.data.Options()
  options.deterministic = True
  if num_workers > 0:
    options.threading.private_threadpool_size = num_workers
  return ds.concatenate(padding).batch(batch).prefetch(2).with_options(options)


def normalization(opts, channels: int):
  """(scale, shift) float32 [C] with normalized = uint8 * scale + shift."""
  mean = np.broadcast_to(np.asarray(opts.mean, np.float32).reshape(-1), (channels,))
  std = np.broadcast_to(np.asarray(opts.std, np.float32).reshape(-1), (channels,))
  return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)
