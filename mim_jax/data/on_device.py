"""A small dataset kept on the accelerators (``data.on_device``): batches gathered and augmented there.

What it is for: the small models of the league train tens of thousands of images per second on
one GPU, more than any host pipeline prepares in Python (~700 images/s from a PNG folder,
~23,000 from memory on one core: benchmarks/README.md). With ``data.on_device`` a split is
decoded once (digits; a folder, as ``data.in_memory`` does; a TFDS split through tf.data) into
a uint8 array and placed on every device, replicated: a device gathers its own examples of each
batch from its copy, with no communication, and the copies cost memory that small datasets have
to spare (Fashion-MNIST: 47 MB grey; CIFAR-10: 150 MB). A split over ``MAX_BYTES`` (4 GiB), or
over a quarter of a device's memory where the device says how much it has, is refused: such a
dataset belongs in a host pipeline. A split whose channels are all equal (grey images that a
folder decodes to RGB) is kept with one channel and broadcast after the resize.

Training batches (``TrainStream``). Step s of a stream takes the examples of the Python
pipeline's epoch order for one host (``pipeline``: position p = s * B + j is example
``ids[perm_e[p mod n]]``, ``perm_e`` numpy's permutation keyed by (seed, 0, 0, e)), for the
global batch: the same ids as ``data.pipeline=python`` on one host, and the same global batch on
any number of hosts (each host computes the global batch's ids; the devices gather their part).
RandomResizedCrop and flip are drawn on the devices from ``fold_in(fold_in(key(seed), s), j)``
(``device_augment``): a pure function of (seed, step, position), so a resumed run gets the same
batches. RandAugment and random erasing run on the host (PIL, numpy): with ``data.on_device``
they are refused. Batches carry ``crop_box`` and ``flipped`` like the host pipelines'.

Evaluation batches (``eval_batches``) take the split's examples in the order of their ids
(``eval_iterator``'s order on one host; on several hosts too, where the host pipeline
concatenates each host's part), padded with ``mask`` False, transformed on the devices.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mim_jax.config import ConfigError
from mim_jax.core import sharding
from mim_jax.core.errors import DatasetError
from mim_jax.data import device_augment, pipeline, subsets, transforms
from mim_jax.data import sources as sources_lib

logger = logging.getLogger(__name__)

MAX_BYTES = 4 << 30  # the largest decoded split put on the devices
_DEVICE_SHARE = 0.25  # ... and at most this share of a device's memory, where it is known
_SPLITS_KEPT = 4


def check_options(data_config) -> None:
  """A ConfigError for what ``data.on_device`` cannot do (the host-side augmentations)."""
  if data_config.get("randaugment"):
    raise ConfigError("data.randaugment runs on the host (PIL) and cannot be used with "
                      "data.on_device=True: set data.randaugment='' or data.on_device=False")
  if data_config.get("random_erase", 0.0):
    raise ConfigError("data.random_erase is drawn on the host and cannot be used with "
                      "data.on_device=True: set data.random_erase=0 or data.on_device=False")


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """A base split on the devices: ``images`` uint8 [N, H, W, c] and ``labels`` int32 [N], both
  replicated; ``channels`` is the dataset's (``c`` is 1 for a grey split kept with one)."""

  images: jax.Array
  labels: jax.Array
  channels: int


_CACHE: dict = {}
_LOCK = threading.Lock()


def host_images(source, base: str) -> np.ndarray:
  """uint8 [N, H, W, C] of a whole base split, decoded once (a DatasetError if impossible)."""
  if source.in_memory:
    return source.images(base)
  if isinstance(source, sources_lib.TfdsSource):
    return _tfds_images(source, base)
  return sources_lib.InMemoryFolderSource(source.path).images(base)


def _tfds_images(source, base: str) -> np.ndarray:
  tf = sources_lib.import_tensorflow()
  n = source.split_size(base)
  ds = source.read(base, 0, n).map(
      lambda image, label, i: tf.io.decode_image(image, channels=3, expand_animations=False),
      num_parallel_calls=tf.data.AUTOTUNE)
  try:
    parts = list(ds.batch(4096).as_numpy_iterator())
  except tf.errors.InvalidArgumentError as e:
    raise DatasetError(f"{source.spec} split {base!r}: data.on_device needs images of one size "
                       f"that decode ({str(e).splitlines()[0]}); set data.on_device=False") from None
  return np.concatenate(parts).astype(np.uint8)


def _check_size(nbytes: int, what: str) -> None:
  limit = MAX_BYTES
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (a backend without memory statistics)
    stats = {}
  if stats.get("bytes_limit"):
    limit = min(limit, int(_DEVICE_SHARE * stats["bytes_limit"]))
  if nbytes > limit:
    raise DatasetError(f"{what} takes {nbytes / 2**30:.2f} GiB decoded, over the "
                       f"{limit / 2**30:.2f} GiB data.on_device allows per device (a quarter "
                       f"of the device's memory, at most 4 GiB); set data.on_device=False")


def device_split(data_config, dataset: str, base: str, mesh) -> DeviceSplit:
  """The base split ``base`` of ``dataset`` on every device of ``mesh`` (cached per process)."""
  source = sources_lib.open_source(dataset, data_config)
  key = (dataset, data_config.get("data_dir", ""), base, tuple(mesh.devices.flat))
  with _LOCK:
    if key in _CACHE:
      return _CACHE[key]
    images = host_images(source, base)
    channels = images.shape[-1]
    if channels > 1 and np.array_equal(images, np.broadcast_to(images[..., :1], images.shape)):
      images = np.ascontiguousarray(images[..., :1])  # grey: one channel is enough
    _check_size(images.nbytes, f"{dataset} split {base!r}")
    labels = np.asarray(source.labels(base), np.int32)
    replicated = sharding.replicated(mesh)
    split = DeviceSplit(_put(images, replicated), _put(labels, replicated), channels)
    while len(_CACHE) >= _SPLITS_KEPT:
      _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = split
    logger.info("%s split %r on the devices: %d images of %s (%.0f MB per device)", dataset,
                base, len(images), images.shape[1:], images.nbytes / 2**20)
    return split


def _put(array: np.ndarray, target) -> jax.Array:
  """A global array of the same ``array`` every host holds (any number of hosts)."""
  return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def stacked_sharding(mesh) -> NamedSharding:
  """[K, B, ...]: K batches stacked, each split over the mesh like a training batch."""
  return NamedSharding(mesh, P(None, tuple(mesh.axis_names)))


class TrainStream:
  """A training stream of global batches made on the devices; ``take(step, k)`` gives the
  batches of steps ``step .. step + k - 1``, stacked ([k, B, ...]) when k > 1."""

  skipped_images = 0  # every image decoded when the split was loaded

  def __init__(self, data_config, dataset: str, split, *, global_batch_size: int,
               image_size: int, seed: int, mesh):
    check_options(data_config)
    source = sources_lib.open_source(dataset, data_config)
    base, self._ids = subsets.resolve(split, source)
    if not len(self._ids):
      raise DatasetError(f"dataset {dataset!r}: split {str(split)!r} has no examples")
    self._data = device_split(data_config, dataset, base, mesh)
    self._batch = int(global_batch_size)
    self._order = pipeline._EpochOrder(len(self._ids), pipeline._seed(seed), 0)  # pylint: disable=protected-access
    self._key = jax.random.key(pipeline._seed(seed) % 2**31)  # pylint: disable=protected-access
    self._opts = transforms.AugmentOptions.from_config(data_config)
    self._opts.check_channels(self._data.channels)
    self._image_size = int(image_size)
    self._mesh = mesh
    self._fns = {}

  def ids(self, steps) -> np.ndarray:
    """int32 [len(steps), B]: the example ids of each step's global batch."""
    positions = np.asarray(steps, np.int64)[:, None] * self._batch + np.arange(self._batch)
    return self._ids[self._order.local_indices(positions.reshape(-1))].reshape(
        positions.shape).astype(np.int32)

  def _fn(self, k: int):
    if k not in self._fns:
      def make(images, labels, ids, steps):
        def one(step_ids, step):
          image, box, flipped = device_augment.train_batch(
              images[step_ids], jax.random.fold_in(self._key, step), self._image_size,
              self._data.channels, self._opts)
          return {"image": image, "label": labels[step_ids], "id": step_ids, "crop_box": box,
                  "flipped": flipped}
        out = jax.lax.map(lambda a: one(*a), (ids, steps))
        return jax.tree.map(lambda x: x[0], out) if k == 1 else out
      target = sharding.batch_sharding(self._mesh) if k == 1 else stacked_sharding(self._mesh)
      self._fns[k] = jax.jit(make, out_shardings=target)
    return self._fns[k]

  def take(self, step: int, k: int = 1) -> dict:
    steps = np.arange(step, step + k)
    ids = _put(self.ids(steps), stacked_sharding(self._mesh))
    steps = _put(steps.astype(np.int32), sharding.replicated(self._mesh))
    return self._fn(k)(self._data.images, self._data.labels, ids, steps)

  def close(self) -> None:
    pass


class EvalBatches:
  """One ordered pass over a split's examples on the devices: dicts of ``image``, ``label``,
  ``id`` (-1 for padding) and ``mask``; ``num_batches`` of them."""

  skipped_images = 0

  def __init__(self, data_config, dataset: str, split, *, global_batch_size: int,
               image_size: int, mesh, max_examples=None, seed: int = 0,
               whole_image: bool = False):
    check_options(data_config)
    source = sources_lib.open_source(dataset, data_config)
    if max_examples is not None and int(max_examples) > 0:
      if isinstance(split, subsets.Subset):
        raise ValueError(f"max_examples draws from a split string; {split} is already a draw")
      split = subsets.Subset(split, count=int(max_examples), seed=seed)
    base, ids = subsets.resolve(split, source)
    if max_examples is not None and int(max_examples) <= 0:
      ids = ids[:0]
    self._data = device_split(data_config, dataset, base, mesh)
    self._batch = int(global_batch_size)
    self.num_batches = -(-len(ids) // self._batch)
    self._ids = np.full(self.num_batches * self._batch, -1, np.int32)
    self._ids[:len(ids)] = ids
    self._mesh, self._done = mesh, 0
    opts = transforms.AugmentOptions.from_config(data_config)
    opts.check_channels(self._data.channels)
    height, width = self._data.images.shape[1:3]
    self._fn = _eval_fn(opts, self._data.channels, height, width, int(image_size),
                        bool(whole_image), sharding.batch_sharding(mesh))

  def __len__(self):
    return self.num_batches

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._done >= self.num_batches:
      raise StopIteration
    lo = self._done * self._batch
    self._done += 1
    ids = _put(self._ids[lo:lo + self._batch], sharding.batch_sharding(self._mesh))
    return self._fn(self._data.images, self._data.labels, ids)

  def close(self) -> None:
    pass


@functools.lru_cache(maxsize=32)
def _eval_fn(opts, channels, height, width, image_size, whole_image, target):
  wy, wx = device_augment.eval_matrices(height, width, image_size, opts, whole_image)

  def make(images, labels, ids):
    mask = ids >= 0
    safe = jnp.maximum(ids, 0)
    image = device_augment.eval_batch(images[safe], wy, wx, channels, opts)
    return {"image": jnp.where(mask[:, None, None, None], image, 0.0), "label": jnp.where(mask, labels[safe], 0), "id": ids, "mask": mask}
  return jax.jit(make, out_shardings=target)
