"""What the trainer and the evaluators read batches from: the host pipelines through
``device_prefetch``, or the dataset on the devices (``data.on_device``, ``on_device``).

``train_feeder`` gives ``take(step, k)``: the global batch of ``step`` (k = 1), or the batches
of steps ``step .. step + k - 1`` stacked along a new leading axis, for ``steps_per_call`` = k
steps in one call. ``eval_batches`` gives one ordered pass over a split as device arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mim_jax.core import sharding
from mim_jax.data import on_device, pipeline, prefetch, streams


class HostFeeder:
  """Batches of a host iterator put on the devices ahead of time; k of them stacked on the
  devices for a call of k steps. The iterator's batches come in order: ``take`` must be called
  for consecutive steps, as the trainer does."""

  def __init__(self, iterator, mesh, size: int = 2):
    self._batches = prefetch.device_prefetch(iterator, sharding.batch_sharding(mesh), size)
    self._stack = jax.jit(lambda batches: jax.tree.map(lambda *x: jnp.stack(x), *batches),
                          out_shardings=on_device.stacked_sharding(mesh))

  @property
  def skipped_images(self) -> int:
    return getattr(self._batches, "skipped_images", 0)

  def take(self, step: int, k: int = 1):
    del step  # the iterator started at the run's first step and is read in order
    if k == 1:
      return next(self._batches)
    return self._stack([next(self._batches) for _ in range(k)])

  def close(self) -> None:
    self._batches.close()


class DeviceFeeder:
  """Named ``on_device.TrainStream``s: one batch, or ``{name: batch}`` for several streams."""

  skipped_images = 0

  def __init__(self, named: dict):
    self._streams = dict(named)

  def take(self, step: int, k: int = 1):
    if list(self._streams) == [""]:
      return self._streams[""].take(step, k)
    return {name: s.take(step, k) for name, s in self._streams.items()}

  def close(self) -> None:
    pass


def train_feeder(config, named_streams: dict, mesh, start_step: int, seeds: dict):
  """The trainer's batches: ``named_streams`` {name: (split, global batch)} (``Method.
  data_streams``), each from ``seeds[name]``, from ``start_step`` on."""
  if config.data.get("on_device", False):
    return DeviceFeeder({
        name: on_device.TrainStream(config.data, config.dataset, split, global_batch_size=size,
                                    image_size=config.image_size, seed=seeds[name], mesh=mesh)
        for name, (split, size) in named_streams.items()})
  its = {name: pipeline.train_iterator(config.data, config.dataset, split,
                                       global_batch_size=size, image_size=config.image_size,
                                       seed=seeds[name], start_step=start_step)
         for name, (split, size) in named_streams.items()}
  it = its[""] if "" in its else streams.Zip(its)
  return HostFeeder(it, mesh, config.data.prefetch)


def eval_batches(data_config, dataset: str, split, *, global_batch_size: int, image_size: int,
                 mesh, max_examples=None, seed: int = 0, whole_image: bool = False,
                 prefetch_size: int = 2):
  """One ordered pass over ``split`` as device batches (``image``, ``label``, ``id``, ``mask``),
  with ``num_batches`` and ``close()``: ``pipeline.eval_iterator``'s pass, or the dataset on
  the devices'."""
  kwargs = dict(global_batch_size=global_batch_size, image_size=image_size,
                max_examples=max_examples, seed=seed, whole_image=whole_image)
  if data_config.get("on_device", False):
    return on_device.EvalBatches(data_config, dataset, split, mesh=mesh, **kwargs)
  it = pipeline.eval_iterator(data_config, dataset, split, **kwargs)
  return _Pass(prefetch.device_prefetch(it, sharding.batch_sharding(mesh), size=prefetch_size),
               it.num_batches)


class _Pass:
  """An evaluation pass of device batches, and how many there are."""

  def __init__(self, batches, num_batches: int):
    self._batches, self.num_batches = batches, num_batches

  def __len__(self):
    return self.num_batches

  def __iter__(self):
    return iter(self._batches)

  def close(self) -> None:
    if hasattr(self._batches, "close"):
      self._batches.close()
