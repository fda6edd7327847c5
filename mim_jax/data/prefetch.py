"""Turning host-local numpy batches into global, sharded jax.Arrays ahead of time."""

from __future__ import annotations

import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np

_ITEM, _END, _ERROR = "item", "end", "error"


def _put(out: queue.Queue, stop: threading.Event, item) -> bool:
  """Puts item unless stop is set first; True if it was put."""
  while not stop.is_set():
    try:
      out.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


@jax.jit
def _normalize_image(image, scale, shift):
  return image.astype(jnp.float32) * scale + shift


@jax.jit
def _erase(images, boxes, seeds):
  """Random erasing ("pixel" mode) of normalized images [B, H, W, C]: each example's box
  (top, left, h, w; h = 0: none) filled with N(0, 1) values from its seed."""
  def one(image, box, seed):
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), seed), image.shape,
                              image.dtype)
    rows = jnp.arange(image.shape[0])[:, None, None]
    cols = jnp.arange(image.shape[1])[None, :, None]
    inside = ((rows >= box[0]) & (rows < box[0] + box[2]) & (cols >= box[1])
              & (cols < box[1] + box[3]))
    return jnp.where(inside, noise, image)
  return jax.vmap(one)(images, boxes, seeds)


def normalize_on_device(arrays, normalization):
  """Applies an iterator's ``image_normalization`` to device batches: (scale, shift) to
  ``arrays["image"]`` (uint8 -> float32), then the random erasing the host drew
  (``erase_box``, ``erase_seed``, consumed here); a dict of them to the batches of a ``Zip``;
  None leaves the batch as it is."""
  if normalization is None:
    return arrays
  if isinstance(normalization, dict):
    return {name: normalize_on_device(value, normalization.get(name))
            for name, value in arrays.items()}
  scale, shift = normalization
  out = dict(arrays, image=_normalize_image(arrays["image"], scale, shift))
  if "erase_box" in out:
    out["image"] = _erase(out["image"], out.pop("erase_box"), out.pop("erase_seed"))
  return out


def _fill(iterator, sharding, out: queue.Queue, stop: threading.Event) -> None:
  """Thread body: converts batches and queues them, then an end or error marker."""
  normalization = getattr(iterator, "image_normalization", None)
  try:
    for batch in iterator:
      if stop.is_set():
        return
      arrays = jax.tree_util.tree_map(
          lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
      arrays = normalize_on_device(arrays, normalization)
      if not _put(out, stop, (_ITEM, arrays)):
        return
    _put(out, stop, (_END, None))
  except BaseException as e:  # pylint: disable=broad-except
    _put(out, stop, (_ERROR, e))


class DevicePrefetcher:
  """Iterator of global ``jax.Array`` batches built in a background thread.

  Each host-local numpy batch dict from ``iterator`` becomes a dict of global
  arrays via ``jax.make_array_from_process_local_data(sharding, local)``: the
  global batch is the concatenation of all hosts' local batches along axis 0.
  uint8 images of an iterator with ``image_normalization`` (the tf.data
  pipeline's) are normalized there, on the devices.
  Up to ``size`` converted batches wait in a queue. An exception raised while
  reading or converting is re-raised by ``next()`` in the consumer.

  Other attributes (``skipped_images``, ``num_batches``...) are read from the
  wrapped iterator, so they stay available. The thread stops at the end of the
  data, on ``close()``, or when the prefetcher is garbage collected.
  """

  def __init__(self, iterator, sharding, size: int = 2):
    self._iterator = iterator
    self._queue: queue.Queue = queue.Queue(maxsize=max(int(size), 1))
    self._stop = threading.Event()
    self._finished = False
    # The thread gets no reference to self, so an abandoned prefetcher can be collected.
    self._thread = threading.Thread(
        target=_fill, args=(iterator, sharding, self._queue, self._stop),
        name="mim-device-prefetch", daemon=True)
    self._thread.start()

  def __iter__(self):
    return self

  def __next__(self):
    if self._finished:
      raise StopIteration
    kind, value = self._queue.get()
    if kind == _ITEM:
      return value
    self._finished = True
    if kind == _ERROR:
      raise value
    raise StopIteration

  def close(self, timeout: float = 30.0) -> None:
    """Stops the background thread and waits (up to ``timeout`` s) for it to end, so that
    no thread is inside JAX when the interpreter exits (that can abort the process); the
    wrapped iterator is left as it is."""
    stop = self.__dict__.get("_stop")
    if stop is not None:
      stop.set()
    thread = self.__dict__.get("_thread")
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
      thread.join(timeout)

  def __del__(self):
    self.close(timeout=0)

  def __getattr__(self, name):
    if name.startswith("_"):
      raise AttributeError(name)
    return getattr(self._iterator, name)


def device_prefetch(iterator, sharding, size: int = 2) -> DevicePrefetcher:
  """Wraps a host-local batch iterator into one yielding sharded global jax.Arrays.

  ``sharding`` is typically ``NamedSharding(mesh, P('data'))``.
  """
  return DevicePrefetcher(iterator, sharding, size)
