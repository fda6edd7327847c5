"""Training and evaluation iterators: host sharding, ordering, augmentation, batching.

Batches are dicts of numpy arrays: ``image`` float32 [b, H, W, C], ``label``
int32 [b], ``id`` int32 [b] (index in the base split) and, for evaluation,
``mask`` bool [b] (False for padding). ``b`` is the host-local batch size,
``global_batch_size // process_count``. Training batches also say how each
image was augmented: ``crop_box`` float32 [b, 4], the RandomResizedCrop box
(y0, x0, y1, x1) as fractions of the source image's height and width
(top / H, left / W, (top + crop_h) / H, (left + crop_w) / W), and ``flipped``
bool [b], True when the crop was mirrored horizontally. With them a map of the
whole source image (e.g. an attention map) can be aligned with the crop.

Splits. ``split`` is a split string (a base split or a role, see ``sources``)
or a ``subsets.Subset`` (a seeded draw of a split string, or its complement).
Either resolves to the sorted ids of the examples it holds, a pure function
of (dataset, split), the same on every host and every resume; a split
string's ids are a contiguous range, a draw's are spread over the base split.
Hosts split the id array by position into near-equal contiguous parts
(``host_range``): host h's part is ``ids[lo_h:hi_h]``, its n examples.

Determinism. The training stream is a pure function of (seed, position):

* digits and folder (index-addressable): stream position p (the p-th example
  this host yields) is example ``part[perm_e[p % n]]`` of the host's part of
  n ids, with ``e = p // n`` and ``perm_e = default_rng([seed, 0,
  process_index, e]).permutation(n)``. So every epoch visits each example
  once, and a stream started at ``start_step`` yields exactly the batches a
  stream started at 0 yields from its (start_step + 1)-th batch on.
* tfds (streamed): the host's part is read in canonical order (for a draw,
  the range from its first to its last id is read and the other examples are
  dropped before decoding: a sparse draw costs the read of that range), each
  epoch is shuffled with a shuffle buffer (``data.shuffle_buffer``) seeded by
  (seed, process_index, epoch), and a resumed stream starts at epoch
  ``start_step * b // n`` and skips the rest of ``start_step * b`` examples.
  This is exact only because the tf.data pipeline is deterministic. Files are
  read one after the other, not shuffled: that order is what defines the ids,
  and TFDS already shuffles examples when it prepares a dataset.
* augmentation draws for step s come from ``default_rng([seed, 1,
  process_index, s])``, so they are reproduced on resume too. They include a
  per-example seed (drawn after the crop and flip draws) for the optional
  RandAugment and random erasing (``data.randaugment``,
  ``data.random_erase``), so these are reproduced too, and with both off the
  stream is the same as without them.

With ``data.pipeline = "tf"`` (the default; ``tf_pipeline``) the batches are built by tf.data,
with their own stream (one global order for folder and in-memory sources, the same batch on any
number of hosts; per-example stateless draws), uint8 images normalized on the devices; see
that module. What follows describes the Python pipeline (``data.pipeline = "python"``, the
digits configs' choice).

Unreadable images (folder, tfds) are skipped, logged once per file and counted
in the iterator's ``skipped_images``. In training the slot is filled by the
next readable example (folder: of the same epoch's order; tfds: of the same
batch), so batches stay full and the stream stays a pure function of the
position; the slot's ``crop_box`` and ``flipped`` are those of the image that
fills it. In evaluation the slot becomes padding (``mask`` False).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading

import numpy as np

from mim_jax.config import ConfigError
from mim_jax.core.errors import DatasetError
from mim_jax.data import subsets, transforms
from mim_jax.data import sources as sources_lib

logger = logging.getLogger(__name__)

_LOOKAHEAD = 2  # batches whose decoding is started before they are requested


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and trainer need to know about a dataset split."""

  num_classes: int
  channels: int
  num_examples: int  # of the requested (sub)split, all hosts together
  base_split_size: int  # ids are in [0, base_split_size)


def dataset_info(data_config, dataset: str, split: str | subsets.Subset) -> DatasetInfo:
  """Describes ``split`` (a split string or a ``Subset``) of ``dataset`` (see ``sources``)."""
  source = sources_lib.open_source(dataset, data_config)
  base, ids = subsets.resolve(split, source)
  return DatasetInfo(
      num_classes=source.num_classes(base),
      channels=source.channels,
      num_examples=len(ids),
      base_split_size=source.split_size(base),
  )


def _host_ids(ids: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This host's contiguous part of the id array (``sources.host_range`` over positions)."""
  lo, hi = sources_lib.host_range(0, len(ids), process_index, process_count)
  return ids[lo:hi]


# ------------------------------------------------------------------ helpers


def _hosts(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return int(process_index), int(process_count)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size {global_batch_size} must be a positive multiple of "
        f"process_count {process_count}")
  return global_batch_size // process_count


def _seed(seed: int) -> int:
  return int(seed) % (2**63)


class BatchIterator:
  """Base of the data iterators: iteration, a decode thread pool, skip counting."""

  def __init__(self, num_workers: int = 0):
    self._skipped = 0
    self._lock = threading.Lock()
    self._warned: set[str] = set()
    self._pool = (concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="mim-data")
                  if num_workers > 0 else None)

  @property
  def skipped_images(self) -> int:
    """How many times an unreadable image was skipped so far."""
    return self._skipped

  def _record_skip(self, what: str, error) -> None:
    with self._lock:
      self._skipped += 1
      first = what not in self._warned
      self._warned.add(what)
    if first:
      logger.warning("Skipping unreadable image %s: %s (later skips of it are only counted)",
                     what, error)

  def _map(self, fn, items) -> list:
    """Runs fn over items in the pool; returns futures (or done values without a pool)."""
    if self._pool is None:
      return [_Done(fn(item)) for item in items]
    return [self._pool.submit(fn, item) for item in items]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def close(self) -> None:
    """Stops the worker threads."""
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


class _Done:
  """A finished future."""

  def __init__(self, value):
    self._value = value

  def result(self):
    return self._value


class _EpochOrder:
  """Per-epoch permutations of a host's n examples, keyed by (seed, host, epoch).

  Thread-safe; keeps the few most recent epochs.
  """

  def __init__(self, n: int, seed: int, process_index: int):
    self.n, self._seed, self._host = n, seed, process_index
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def perm(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self._seed, 0, self._host, epoch]).permutation(self.n)
        self._cache[epoch] = perm
        while len(self._cache) > 4:
          self._cache.pop(min(self._cache))
      return perm

  def local_indices(self, positions: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(positions, self.n)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self.perm(int(epoch))[offsets[sel]]
    return out


def _train_draws(seed: int, process_index: int, step: int, n: int):
  return transforms.draw_train_randomness(np.random.default_rng([seed, 1, process_index, step]), n)


def _slot_draws(draws, j: int):
  return {k: v[j] for k, v in draws.items()}


# ----------------------------------------------------------------- training


class _IndexedTrainIterator(BatchIterator):
  """Training stream over an index-addressable source (digits, folder)."""

  def __init__(self, source, base, ids, *, batch, image_size, opts, seed, start_step,
               process_index, num_workers):
    super().__init__(0 if source.in_memory else num_workers)
    self._source, self._base, self._ids = source, base, ids
    self._labels = source.labels(base)
    self._images = source.images(base) if source.in_memory else None
    self._batch, self._image_size, self._opts = batch, image_size, opts
    self._seed, self._host = seed, process_index
    self._order = _EpochOrder(len(ids), seed, process_index)
    self._next_step = start_step  # next step to hand out
    self._pending: collections.deque = collections.deque()  # futures of the next batches
    self._bad: set[int] = set()

  def __next__(self):
    if self._images is not None:  # in memory: vectorized, no threads
      step = self._next_step
      self._next_step += 1
      positions = step * self._batch + np.arange(self._batch)
      ids = self._ids[self._order.local_indices(positions)]
      draws = _train_draws(self._seed, self._host, step, self._batch)
      images = transforms.train_transform(self._images[ids], draws, self._image_size, self._opts)
      boxes, flipped = transforms.train_crop_boxes(draws, *self._images.shape[1:3], self._opts)
      return {"image": images, "label": self._labels[ids], "id": ids.astype(np.int32),
              "crop_box": boxes, "flipped": flipped}
    while len(self._pending) < _LOOKAHEAD:
      step = self._next_step + len(self._pending)
      draws = _train_draws(self._seed, self._host, step, self._batch)
      slots = [(step * self._batch + j, _slot_draws(draws, j)) for j in range(self._batch)]
      self._pending.append(self._map(self._load_slot, slots))
    futures = self._pending.popleft()
    self._next_step += 1
    images, labels, ids, boxes, flipped = zip(*(f.result() for f in futures))
    return {"image": np.stack(images), "label": np.asarray(labels, np.int32),
            "id": np.asarray(ids, np.int32), "crop_box": np.stack(boxes),
            "flipped": np.asarray(flipped, bool)}

  def _load_slot(self, slot):
    """Decodes and augments the example at a stream position (next readable one if bad).

    Returns (image, label, index, crop box, flipped) of the example used.
    """
    position, draws = slot
    epoch, offset = divmod(position, self._order.n)
    perm = self._order.perm(epoch)
    for t in range(self._order.n):
      index = int(self._ids[perm[(offset + t) % self._order.n]])
      path = self._source.file(self._base, index)
      if index in self._bad:
        self._record_skip(path, "known unreadable")
        continue
      try:
        image = self._source.load(self._base, index)
      except Exception as e:  # pylint: disable=broad-except
        self._bad.add(index)
        self._record_skip(path, e)
        continue
      out = transforms.train_transform_one(image, draws, self._image_size, self._opts)
      box, flipped = transforms.train_crop_box_one(draws, *image.shape[:2], self._opts)
      return out, self._labels[index], index, box, flipped
    raise RuntimeError(f"no readable image among the {self._order.n} examples of this host")


class _TfdsTrainIterator(BatchIterator):
  """Training stream over a TFDS dataset: tf.data reads/shuffles, threads decode/augment."""

  def __init__(self, source, base, ids, *, batch, image_size, opts, seed, start_step,
               process_index, num_workers, shuffle_buffer):
    super().__init__(max(num_workers, 1))
    tf = sources_lib.import_tensorflow()
    self._batch, self._image_size, self._opts = batch, image_size, opts
    self._seed, self._host = seed, process_index
    n = len(ids)
    first_epoch, offset = divmod(start_step * batch, n)
    stream_seed = int(np.random.SeedSequence([seed, 2, process_index]).generate_state(1)[0])
    examples = source.read(base, int(ids[0]), int(ids[-1]) + 1, ids)

    def one_epoch(epoch):
      return examples.shuffle(shuffle_buffer, seed=stream_seed * 1_000_003 + epoch,
                              reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch).skip(offset)
    ds = ds.batch(batch, drop_remainder=True).prefetch(_LOOKAHEAD)
    options = tf.data.Options()
    options.deterministic = True
    self._raw = ds.with_options(options).as_numpy_iterator()
    self._next_step = start_step
    self._pending: collections.deque = collections.deque()

  def __next__(self):
    while len(self._pending) < _LOOKAHEAD:
      step = self._next_step + len(self._pending)
      encoded, labels, ids = next(self._raw)
      draws = _train_draws(self._seed, self._host, step, self._batch)
      slots = [(encoded[j], int(ids[j]), _slot_draws(draws, j)) for j in range(self._batch)]
      self._pending.append((labels, ids, self._map(self._load_slot, slots)))
    labels, ids, futures = self._pending.popleft()
    self._next_step += 1
    results = [f.result() for f in futures]
    ok = [j for j, result in enumerate(results) if result is not None]
    if not ok:
      raise RuntimeError(f"no readable image in a batch of {len(results)}")
    take = [j if results[j] is not None else next((k for k in ok if k > j), ok[0])
            for j in range(len(results))]  # bad slot -> next readable one of the batch
    images, boxes, flipped = zip(*(results[k] for k in take))
    return {"image": np.stack(images), "label": labels[take].astype(np.int32),
            "id": ids[take].astype(np.int32), "crop_box": np.stack(boxes),
            "flipped": np.asarray(flipped, bool)}

  def _load_slot(self, slot):
    """(image, crop box, flipped) of one example, or None if it cannot be decoded."""
    encoded, index, draws = slot
    try:
      image = sources_lib.decode_image(encoded)
    except Exception as e:  # pylint: disable=broad-except
      self._record_skip(f"example {index}", e)
      return None
    out = transforms.train_transform_one(image, draws, self._image_size, self._opts)
    box, flipped = transforms.train_crop_box_one(draws, *image.shape[:2], self._opts)
    return out, box, flipped


def _channels(source, base) -> int:
  return source.images(base).shape[-1] if source.in_memory else source.channels


def _describer(source, base):
  """id -> how the log names that example (its file, for a folder)."""
  if isinstance(source, sources_lib.FolderSource):
    return lambda index: source.file(base, index)
  return lambda index: f"example {index}"


def _pipeline_kind(data_config) -> str:
  kind = data_config.get("pipeline", "tf")
  if kind not in ("python", "tf"):
    raise ConfigError(f"data.pipeline must be 'python' or 'tf', got {kind!r}")
  if kind == "python" and not data_config.get("antialias", True):
    raise ConfigError("data.antialias=False needs data.pipeline=tf (the python pipeline "
                      "resizes with PIL, always antialiased)")
  return kind


class _TfTrainIterator(BatchIterator):
  """Training stream built by tf.data (``tf_pipeline``): fills the slots of unreadable images
  with the next readable image of the batch. Images are uint8: ``image_normalization``
  (scale, shift) is applied on the device by ``device_prefetch``. A batch that fails on an
  unreadable image is recovered from the stream: an ``IndexedStream`` names the bad images
  and is rebuilt with them marked; a ``TfdsStream`` gives that batch again with per-image
  error handling and goes on from the next step."""

  def __init__(self, stream, start_step, describe, normalization):
    super().__init__(0)
    self._stream, self._step, self._bad = stream, start_step, set()
    self._raw = stream.dataset(start_step).as_numpy_iterator()
    self._describe = describe  # id -> what to name in the log
    self.image_normalization = normalization

  def _recover(self):
    """The batch of ``self._step`` despite an unreadable image in it (else re-raises)."""
    if hasattr(self._stream, "unreadable"):
      found = self._stream.unreadable(self._step) - self._bad
      if not found:
        raise
      self._bad |= found
      self._raw = self._stream.dataset(self._step, self._bad).as_numpy_iterator()
      return next(self._raw)
    batch = next(self._stream.dataset(self._step, safe=True).as_numpy_iterator())
    if batch["ok"].all():
      raise
    self._raw = self._stream.dataset(self._step + 1).as_numpy_iterator()
    return batch

  def __next__(self):
    try:
      batch = next(self._raw)
    except StopIteration:
      raise
    except Exception:  # pylint: disable=broad-except
      batch = self._recover()
    self._step += 1
    ok = batch.pop("ok")
    if not ok.all():
      good = np.flatnonzero(ok)
      if not len(good):
        raise RuntimeError(f"no readable image in a batch of {len(ok)}")
      for j in np.flatnonzero(~ok):
        self._record_skip(self._describe(int(batch["id"][j])), "unreadable")
      take = np.array([j if ok[j] else next((k for k in good if k > j), good[0])
                       for j in range(len(ok))])
      batch = {k: v[take] for k, v in batch.items()}
    return batch


def train_iterator(data_config, dataset: str, split: str | subsets.Subset, *,
                   global_batch_size: int, image_size: int, seed: int, start_step: int = 0,
                   process_index: int | None = None,
                   process_count: int | None = None) -> BatchIterator:
  """Infinite, shuffled, augmented stream of this host's training batches.

  ``split`` is a split string or a ``subsets.Subset``. The first batch
  yielded with ``start_step=s`` equals the (s+1)-th batch of the stream
  started at 0. The returned iterator has ``skipped_images``.
  """
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  process_index, process_count = _hosts(process_index, process_count)
  batch = _local_batch_size(global_batch_size, process_count)
  opts = transforms.AugmentOptions.from_config(data_config)
  source = sources_lib.open_source(dataset, data_config)
  opts.check_channels(source.channels)
  base, ids = subsets.resolve(split, source)
  ids = _host_ids(ids, process_index, process_count)
  if not len(ids):
    raise DatasetError(f"dataset {dataset!r}: split {str(split)!r} has no examples for host "
                       f"{process_index} of {process_count} (train on a larger split)")
  num_workers = int(data_config.get("num_workers", 2))
  if _pipeline_kind(data_config) == "tf":
    from mim_jax.data import tf_pipeline  # pylint: disable=g-import-not-at-top

    norm = tf_pipeline.normalization(opts, _channels(source, base))
    common = dict(image_size=image_size, opts=opts, seed=_seed(seed),
                  num_workers=num_workers)
    if isinstance(source, sources_lib.TfdsSource):
      stream = tf_pipeline.TfdsStream(
          source, base, ids, batch=batch, host=process_index,
          shuffle_buffer=int(data_config.get("shuffle_buffer", 10000)), **common)
    else:
      _, all_ids = subsets.resolve(split, source)   # every host's: one global order
      stream = tf_pipeline.IndexedStream(source, base, all_ids,
                                         global_batch=global_batch_size,
                                         host=process_index, hosts=process_count, **common)
    return _TfTrainIterator(stream, int(start_step), _describer(source, base), norm)
  kwargs = dict(batch=batch, image_size=image_size, opts=opts, seed=_seed(seed),
                start_step=int(start_step), process_index=process_index,
                num_workers=num_workers)
  if isinstance(source, sources_lib.TfdsSource):
    return _TfdsTrainIterator(source, base, ids,
                              shuffle_buffer=int(data_config.get("shuffle_buffer", 10000)), **kwargs)
  return _IndexedTrainIterator(source, base, ids, **kwargs)


# --------------------------------------------------------------- evaluation


class _EvalIterator(BatchIterator):
  """One pass over this host's part of a split, in order, padded to ``num_batches``."""

  def __init__(self, source, base, ids, *, batch, image_size, opts, num_batches, num_workers,
               whole_image=False):
    super().__init__(0 if source.in_memory else max(num_workers, 1))
    self._source, self._base, self._ids, self._n = source, base, ids, len(ids)
    self._batch, self._image_size, self._opts = batch, image_size, opts
    self._transform_batch, self._transform_one = (
        (transforms.whole_transform, transforms.whole_transform_one) if whole_image
        else (transforms.eval_transform, transforms.eval_transform_one))
    self.num_batches = num_batches
    self._done = 0
    self._raw = None
    if isinstance(source, sources_lib.TfdsSource) and len(ids):
      self._raw = source.read(base, int(ids[0]), int(ids[-1]) + 1, ids).batch(
          batch).prefetch(2).as_numpy_iterator()
    elif not isinstance(source, sources_lib.TfdsSource):
      self._labels = source.labels(base)

  def __len__(self):
    return self.num_batches

  def __next__(self):
    if self._done >= self.num_batches:
      raise StopIteration
    positions = self._done * self._batch + np.arange(self._batch)
    self._done += 1
    mask = positions < self._n
    count = int(mask.sum())
    out = {"image": None,
           "label": np.zeros(self._batch, np.int32),
           "id": np.full(self._batch, -1, np.int32),
           "mask": mask}
    if self._source.in_memory:
      ids = self._ids[positions[:count]]
      images = self._transform_batch(self._source.images(self._base)[ids],
                                     self._image_size, self._opts)
      out["label"][:count] = self._labels[ids]
      out["id"][:count] = ids
      out["image"] = _pad(images, self._batch)
      return out
    if self._raw is not None and count:
      encoded, labels, ids = next(self._raw)
      items = [(encoded[j], int(ids[j])) for j in range(count)]
      loader = self._decode_item
    else:
      ids = self._ids[positions[:count]]
      labels = self._labels[ids] if count else np.zeros(0, np.int32)
      items = [int(i) for i in ids]
      loader = self._load_item
    images = [f.result() for f in self._map(loader, items)]
    ok = np.array([image is not None for image in images] + [False] * (self._batch - count))
    out["mask"] = ok
    out["label"][:count] = labels
    out["id"][:count] = ids
    out["label"][~ok], out["id"][~ok] = 0, -1
    shape = (self._image_size, self._image_size, self._source.channels)
    out["image"] = np.stack([im if im is not None else np.zeros(shape, np.float32) for im in images]
                            + [np.zeros(shape, np.float32)] * (self._batch - count))
    return out

  def _transform(self, image):
    return self._transform_one(image, self._image_size, self._opts)

  def _load_item(self, index):
    try:
      return self._transform(self._source.load(self._base, index))
    except Exception as e:  # pylint: disable=broad-except
      self._record_skip(self._source.file(self._base, index), e)
      return None

  def _decode_item(self, item):
    encoded, index = item
    try:
      return self._transform(sources_lib.decode_image(encoded))
    except Exception as e:  # pylint: disable=broad-except
      self._record_skip(f"example {index}", e)
      return None


def _pad(images: np.ndarray, batch: int) -> np.ndarray:
  out = np.zeros((batch,) + images.shape[1:], np.float32)
  out[:len(images)] = images
  return out


class _TfEvalIterator(BatchIterator):
  """An evaluation pass built by tf.data (``tf_pipeline.eval_dataset``)."""

  def __init__(self, dataset, num_batches: int, describe, normalization):
    super().__init__(0)
    self._raw = dataset.as_numpy_iterator()
    self.num_batches = num_batches
    self._done = 0
    self._describe = describe  # id -> what to name in the log
    self.image_normalization = normalization  # applied on the device (device_prefetch)

  def __len__(self):
    return self.num_batches

  def __next__(self):
    if self._done >= self.num_batches:
      raise StopIteration
    self._done += 1
    batch = next(self._raw)
    tried = batch.pop("tried")
    for index in tried[batch.pop("bad")]:
      self._record_skip(self._describe(int(index)), "unreadable")
    return batch


def eval_iterator(data_config, dataset: str, split: str | subsets.Subset, *,
                  global_batch_size: int, image_size: int, process_index: int | None = None,
                  process_count: int | None = None,
                  max_examples: int | None = None, seed: int = 0,
                  whole_image: bool = False) -> BatchIterator:
  """One ordered pass (by id) over this host's part of ``split`` (eval transform).

  ``split`` is a split string or a ``subsets.Subset``. ``max_examples`` keeps
  a draw of that many examples of a split string (``subsets``: stratified by
  class, seeded by ``seed``; never the first ones, which in a class-ordered
  split are one class), the same on every host, before it is divided
  between hosts; the whole split when it has no more. The default seed 0 is
  what the evaluators use, so that every run, whatever its ``config.seed``,
  scores the same examples. Every host yields the same number of batches,
  ``.num_batches``; padding has ``mask`` False, id -1. ``whole_image``
  replaces the resize + center crop with a bicubic resize of the whole image
  to image_size x image_size (no crop, aspect ratio not kept), e.g. to look
  at un-augmented training images.
  """
  process_index, process_count = _hosts(process_index, process_count)
  batch = _local_batch_size(global_batch_size, process_count)
  opts = transforms.AugmentOptions.from_config(data_config)
  source = sources_lib.open_source(dataset, data_config)
  opts.check_channels(source.channels)
  if max_examples is not None:
    if isinstance(split, subsets.Subset):
      raise ValueError(f"max_examples draws from a split string; {split} is already a draw")
    if int(max_examples) <= 0:
      base, ids = subsets.resolve(split, source)
      ids = ids[:0]
    else:
      base, ids = subsets.resolve(subsets.Subset(split, count=int(max_examples), seed=seed),
                                  source)
  else:
    base, ids = subsets.resolve(split, source)
  largest = -(-len(ids) // process_count)  # host 0 has the most examples
  num_batches = -(-largest // batch)
  num_workers = int(data_config.get("num_workers", 2))
  if _pipeline_kind(data_config) == "tf":
    from mim_jax.data import tf_pipeline  # pylint: disable=g-import-not-at-top

    ds = tf_pipeline.eval_dataset(source, base, _host_ids(ids, process_index, process_count),
                                  batch=batch, num_batches=num_batches,
                                  image_size=image_size, opts=opts,
                                  whole_image=bool(whole_image), num_workers=num_workers)
    norm = tf_pipeline.normalization(opts, _channels(source, base))
    return _TfEvalIterator(ds, num_batches, _describer(source, base), norm)
  return _EvalIterator(source, base, _host_ids(ids, process_index, process_count), batch=batch,
                       image_size=image_size, opts=opts, num_batches=num_batches,
                       num_workers=int(data_config.get("num_workers", 2)),
                       whole_image=bool(whole_image))
