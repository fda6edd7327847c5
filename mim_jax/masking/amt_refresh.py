"""AMT's attention-map refresh (amt.md): one pass of the current model over every training image.

Each image is taken whole (resized to the training size, no crop, no flip), the encoder's last
block gives the [CLS] attention over the patches, and the post-processed map replaces the image's
entry in the cache ``extra["amt_cache"]`` (``mim_jax.masking.amt``). The pass is sharded like training:
every host reads its own part of the training split, the batch is split over all devices, and the
jitted update writes the maps of the whole global batch into the replicated cache.

A refresh reports the mean attention entropy (nats) and writes a picture of a few training
images: the image, its cached map, and the masked (grey) / thrown (blue) / visible patches AMT
would draw for the uncropped image.
"""

import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax import data
from mim_jax.core import sharding, visualize
from mim_jax.core.metrics import format_duration
from mim_jax.masking import amt

log = logging.getLogger("mim_jax")


class AttentionRefresh:
  """A step hook: ``due(step)``, then ``run(state, step, rng) -> (state, metrics, images)``.

  ``method`` has ``amt`` (an ``amt.AMTMasking``) and ``encoder`` (an ``EncoderSpec``).
  """
  name = "amt"

  def __init__(self, config, method, mesh):
    self.config = config
    self.strategy = method.amt
    encoder = method.encoder
    n = mesh.size
    self.batch_size = math.ceil(config.amt.batch_size / n) * n
    self.picture_size = math.ceil(config.amt.images / n) * n
    self.mesh = mesh
    self.replicated = sharding.replicated(mesh)
    self.batched = sharding.batch_sharding(mesh)
    grid = self.strategy.grid

    def update(cache, params, images, ids):
      maps, entropy = amt.attention_maps(encoder.cls_attention(params["encoder"], images))
      valid = ids >= 0  # padding and unreadable images have id -1
      index = jnp.where(valid, ids, cache.shape[0])  # out of range: dropped
      cache = cache.at[index].set(maps.reshape((-1,) + grid).astype(cache.dtype), mode="drop")
      return cache, jnp.sum(jnp.where(valid, entropy, 0.0)), jnp.sum(valid)

    def picture(cache, images, ids, rng):
      maps = cache[jnp.maximum(ids, 0)].astype(jnp.float32)
      masked, thrown, _ = self.strategy.split(rng, self.strategy.unit_weights(maps, {}))
      return images, maps, self.strategy.unit_states(masked, thrown)

    r, b = self.replicated, self.batched  # the parameters stay as they lie (replicated or fsdp)
    self._update = jax.jit(update, in_shardings=(r, None, b, b), out_shardings=r, donate_argnums=0)
    self._picture = jax.jit(picture, out_shardings=r)

  def due(self, step: int) -> bool:
    return self.strategy.refresh_due(step)

  def _batches(self, batch_size, max_examples=None):
    c = self.config
    batches = data.eval_batches(c.data, c.dataset, c.train_split, global_batch_size=batch_size,
                                image_size=c.image_size, mesh=self.mesh,
                                max_examples=max_examples, whole_image=True,
                                prefetch_size=c.data.prefetch)
    return batches.num_batches, batches

  def run(self, state, step: int, rng):
    t0 = time.time()
    num_batches, batches = self._batches(self.batch_size)
    cache = state["extra"]["amt_cache"]
    entropy, count = 0.0, 0
    every = max(1, math.ceil(num_batches / 10))
    log.info("AMT refresh at step %d: attention maps of the training split (%d batches of %d)",
             step, num_batches, self.batch_size)
    try:
      for i, batch in enumerate(batches, 1):
        cache, e, n = self._update(cache, state["params"], batch["image"], batch["id"])
        entropy, count = entropy + e, count + n
        if i % every == 0 or i == num_batches:
          jax.block_until_ready(cache)
          elapsed = time.time() - t0
          log.info("AMT refresh: %d/%d batches, %.1f img/s, ETA %s", i, num_batches,
                   i * self.batch_size / max(elapsed, 1e-9),
                   format_duration(elapsed * (num_batches - i) / i))
    finally:
      batches.close()
    state = dict(state, extra=dict(state["extra"], amt_cache=cache))
    count = int(count)
    metrics = {"amt/attention_entropy": float(entropy) / max(count, 1),
               "amt/max_entropy": float(np.log(self.strategy.grid[0] * self.strategy.grid[1])),
               "amt/refreshed_images": count,
               "amt/refresh_seconds": time.time() - t0}
    return state, metrics, {"amt": self._draw(cache, rng)}

  def _draw(self, cache, rng):
    """PNG grid: image | cached attention map | masked (grey) / thrown (blue) / visible."""
    _, batches = self._batches(self.picture_size, self.picture_size)
    try:
      batch = next(iter(batches))
    finally:
      batches.close()
    images, maps, states = jax.device_get(self._picture(cache, batch["image"], batch["id"], rng))
    c = self.config
    originals = visualize.to_uint8(images, c.data.mean, c.data.std)
    return visualize.panels_grid([
        originals,
        visualize.heatmap(maps, c.image_size),
        visualize.unit_states(originals, states, self.strategy.unit_grid)])
