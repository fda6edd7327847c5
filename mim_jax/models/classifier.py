"""Classification heads on an encoder, for fine-tuning and linear probing (evaluation.md).

``Classifier`` (fine-tuning): pooled features -> optional LayerNorm (``fc_norm``: MAE's global
pooling, with the encoder's final norm left out) -> Dense head (trunc-normal std 2e-5).
``ProbeClassifier`` (linear probing): frozen features (gradients stopped) -> BatchNorm without
affine parameters (eps 1e-6) -> Dense head (trunc-normal std 0.01). Its BatchNorm statistics are
the ``batch_stats`` collection: updated in training, frozen at evaluation.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.patches import patchify
from mim_jax.models.vit import LN_EPS, torch_default_init, trunc_normal


def _pooled(encoder, patch_size, images, pool, deterministic):
  x = patchify(images, patch_size) if patch_size else images
  tokens = encoder(x.astype(encoder.dtype), deterministic=deterministic)
  if pool == "cls":
    return tokens[:, 0]
  return tokens[:, 1:].mean(axis=1) if patch_size else tokens.mean(axis=1)


class Classifier(nn.Module):
  encoder: nn.Module
  num_classes: int
  pool: str = "avg"            # avg | cls
  fc_norm: bool = True
  head_init_std: float = 2e-5
  patch_size: int = 0          # > 0: the encoder takes flattened patches (ViT)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    x = _pooled(self.encoder, self.patch_size, images, self.pool, deterministic)
    if self.fc_norm:
      x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="fc_norm")(x)
    head = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                    kernel_init=trunc_normal(self.head_init_std))
    return head(x).astype(jnp.float32)


class ProbeClassifier(nn.Module):
  encoder: nn.Module
  num_classes: int
  pool: str = "cls"
  patch_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = jax.lax.stop_gradient(_pooled(self.encoder, self.patch_size, images, self.pool, True))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-6, use_bias=False,
                     use_scale=False, dtype=jnp.float32, name="bn")(x.astype(jnp.float32))
    head = nn.Dense(self.num_classes, name="head",
                    kernel_init=trunc_normal(0.01))
    return head(x)


class FeatureHead(nn.Module):
  """A head on features an encoder already gave: LayerNorm (eps 1e-6) -> Dropout -> Dense, the
  Dense in PyTorch's default init (MLO-MAE's classification level on the [CLS] output)."""
  num_classes: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, features, deterministic: bool = True):
    x = nn.LayerNorm(epsilon=LN_EPS, name="norm")(features.astype(jnp.float32))
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    init = torch_default_init(features.shape[-1])
    return nn.Dense(self.num_classes, kernel_init=init, bias_init=init, name="fc")(x)
