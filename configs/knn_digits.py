"""kNN evaluation of the digits demo's MAE encoder (CPU, seconds).

  python -m mim_jax.main --config configs/knn_digits.py --workdir runs/knn_digits \
      --config.init_from=runs/mae_digits

k = 20 nearest neighbours by cosine similarity among the 1437 training images' features, votes
weighted by exp(similarity / 0.07); top-1 / top-5 on the 360 test images. Features: the average
of the patch tokens after the final norm (--config.knn.pool=cls for [CLS]).
Measured: RESULTS.md.
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  parse_arg(arg)
  c = base_config("knn")
  recipes.digits_data(c)
  recipes.digits_encoder(c.model)
  recipes.digits_evaluation(c)
  c.eval_only = True
  c.batch_size = 120
  c.knn.enabled = True
  c.knn.pool = "avg"
  c.knn.k = 20
  c.knn.temperature = 0.07
  return c
