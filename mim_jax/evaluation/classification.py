"""Top-1 / top-5 accuracy of a classifier (fine-tuned or linear-probed) on a labelled split.

Logits are computed under the training mesh's sharding; correct counts are summed on device
with the padding masked out, so the numbers cover exactly the split's examples (with
``eval.max_examples`` > 0: a seeded, class-stratified draw of that many, the same in every run).
With an EMA of the weights (``ema_decay`` > 0) the EMA weights are scored too
(``.../ema_top1``).
"""

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax import data
from mim_jax.config import ConfigError
from mim_jax.core import sharding


class ClassifierEvaluator:
  name = "eval"

  def __init__(self, config, method, mesh):
    self.config, self.eval = config, config.eval
    self.every_steps = config.eval.every_steps
    if self.eval.batch_size % jax.device_count():
      raise ConfigError(f"eval.batch_size {self.eval.batch_size} must divide over "
                        f"{jax.device_count()} devices")
    self.mesh = mesh

    def counts(params, extra, batch):
      logits = method.logits(params, extra, batch["image"])
      labels, valid = batch["label"], batch["mask"].astype(jnp.float32)
      top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
      hit5 = jnp.any(top5 == labels[:, None], axis=-1)
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
      return jnp.stack([jnp.sum((top5[:, 0] == labels) * valid), jnp.sum(hit5 * valid),
                        jnp.sum(nll * valid), jnp.sum(valid)])
    self._counts = jax.jit(counts, out_shardings=sharding.replicated(mesh))

  def _score(self, params, extra):
    batches = data.eval_batches(self.config.data, self.config.dataset, self.eval.split,
                                global_batch_size=self.eval.batch_size,
                                image_size=self.config.image_size, mesh=self.mesh,
                                max_examples=self.eval.max_examples or None)
    total = np.zeros(4)
    for batch in batches:
      total += np.asarray(self._counts(params, extra, batch), np.float64)
    n = max(total[3], 1.0)
    return {"top1": total[0] / n, "top5": total[1] / n, "loss": total[2] / n,
            "examples": int(total[3])}

  def run(self, state, prefix: str = "eval/") -> dict:
    extra = state.get("extra", {})
    out = {prefix + k: v for k, v in self._score(state["params"], extra).items()}
    if "ema_params" in extra:
      ema = self._score(extra["ema_params"], extra)
      out.update({prefix + "ema_" + k: ema[k] for k in ("top1", "top5", "loss")})
    return out
