"""kNN evaluation of a pre-trained encoder on ImageNet-1K (DINO's protocol, evaluation.md).

  python -m mim_jax.main --config configs/knn_imagenet.py:variant=B/16 --workdir runs/knn_b16 \
      --config.init_from=runs/mae_b16 --config.data.data_dir=/path/to/tensorflow_datasets

k = 20 nearest neighbours by cosine similarity among the 1.28 M training images' features
([CLS] after the final norm; --config.knn.pool=avg for the patch average), votes weighted by
exp(similarity / 0.07); top-1 / top-5 on the 50 000 validation images. The feature bank
(1.28 M x 768 float32 = 3.9 GB for ViT-B) is held on every device.
MAE's papers report no kNN numbers.
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, variant="B/16", encoder="vit", runlocal=False)
  c = base_config("knn")
  recipes.imagenet_run(c)
  c.model.encoder = arg.encoder
  c.model.variant = arg.variant
  c.eval_only = True
  c.batch_size = 1024
  c.probe.enabled = False
  c.knn.enabled = True
  c.knn.pool = "cls" if arg.encoder == "vit" else "avg"
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
  return c
