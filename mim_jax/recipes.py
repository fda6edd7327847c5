"""Pieces that several config files share: the bundled digits set-up, ImageNet's data settings and
the evaluation protocols' recipes (evaluation.md). Config files call these, then set what is
their own (sizes, epochs, learning rates), so each file still reads as the full recipe.
"""

import importlib.util
import os


def sibling_config(name: str, arg=None):
  """The config of ``configs/<name>.py`` (for a config that is another one plus a change)."""
  here = os.path.dirname(os.path.abspath(__file__))
  path = os.path.join(os.path.dirname(here), "configs", name + ".py")
  spec = importlib.util.spec_from_file_location("_mim_jax_config_" + name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def amt(c, mask_ratio: float, throw_ratio: float, start_epoch: float, interval_epochs: float):
  """AMT masking (amt.md) on a MAE or SimMIM config."""
  c.model.masking = "amt"
  c.amt.mask_ratio, c.amt.throw_ratio = mask_ratio, throw_ratio
  c.amt.start_epoch, c.amt.interval_epochs = start_epoch, interval_epochs
  return c


def amt_digits(c, mask_ratio: float, throw_ratio: float, schedule_share: float):
  """AMT on a digits config: plain masking for ``schedule_share`` of the epochs, then AMT with
  a refresh every ``schedule_share`` (0.1 for MAE's recipe, 0.2 for SimMIM's)."""
  share = schedule_share * c.total_epochs
  amt(c, mask_ratio, throw_ratio, start_epoch=share, interval_epochs=share)
  c.amt.batch_size = 120   # divides over 8 devices
  return c


def digits_data(c):
  """scikit-learn's 8x8 digits upsampled to 16x16 grey images; train 1437 / test 360."""
  c.dataset = "digits"
  c.train_split = "train"
  c.image_size = 16
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.data.crop_scale = (0.35, 1.0)
  c.data.flip = False  # digits are not mirror-symmetric
  c.data.eval_crop_pct = 1.0
  # The digits results (README, RESULTS.md) were measured with the Python pipeline.
  c.data.pipeline = "python"
  return c


def digits_encoder(m, family: str = "vit"):
  """The digits demo's encoder. ``vit``: 4x4 patches (16 tokens), 128 wide, 4 blocks, 4 heads.
  ``hierarchical``: the "digits" size of models/hierarchical.py (2 px patches, two stages; its
  last grid is the ViT's 4x4)."""
  if family == "hierarchical":
    m.encoder, m.variant = "hierarchical", "digits"
    return m
  if family != "vit":
    raise ValueError(f"digits encoder family must be 'vit' or 'hierarchical', got {family!r}")
  m.encoder = "vit"
  m.variant = "tiny_test/4"
  m.width, m.depth, m.heads = 128, 4, 4
  return m


def digits_mae_model(c):
  """The digits demo's data and MAE model (shared by MAE and MI-MAE): the digits encoder, a
  64-wide / 2-block / 4-head decoder, pixel targets without per-patch normalization."""
  digits_data(c)
  digits_encoder(c.model)
  c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 64, 2, 4
  c.model.norm_pix_loss = False
  return c


def digits_pretraining(c, runlocal: bool = False):
  """The digits demo's pre-training budget and fast probe (shared by MAE, SimMIM, AMT): batch
  128, 100 epochs (10 warmup); the probe fits a class-stratified draw of 300 labelled training
  images and scores the evaluation split (digits: the 360 test images), with mean-pooled
  features, also at random init. ``runlocal``: 4 epochs."""
  c.batch_size = 128
  c.total_epochs = 100.0
  c.warmup_epochs = 10.0
  c.log_every = 100
  c.image_every = 1000
  c.checkpoint.every_steps = 500
  c.probe.train_split = "train"
  c.probe.test_split = "evaluation"
  c.probe.every_steps = 500
  c.probe.train_examples = 300
  c.probe.test_examples = 360
  c.probe.batch_size = 256
  c.probe.pool = "avg"
  c.probe.random_init = True
  if runlocal:
    c.total_epochs = 4.0
    c.warmup_epochs = 1.0
    c.log_every = 10
    c.image_every = 40
    c.checkpoint.every_steps = 20
    c.probe.every_steps = 40
  return c


def digits_evaluation(c):
  """Evaluation on the evaluation split (digits: all 360 test images), batches of 120 (divides
  over 8)."""
  c.eval.split = "evaluation"
  c.eval.batch_size = 120
  c.knn.train_split = "train"
  c.knn.test_split = "evaluation"
  c.knn.batch_size = 120
  c.probe.enabled = False
  return c


def imagenet_pretraining(c):
  """A pre-training run's images and fast probe on ImageNet: a PNG every 5000 steps; the probe on
  class-stratified draws of 10,000 training / 10,000 validation images every 10,000 steps.

  The training draw is taken from the first 4% of train (51,247 images): TFDS shuffles a
  dataset when it prepares it, so they hold every class, and a draw spread over all of train
  would read its whole range (~140 GB) at each probe; this one reads 4% of it (its labels
  once). A share, not a count, so that the config runs on a smaller dataset too."""
  c.image_every = 5000
  c.probe.train_split, c.probe.test_split = "train[:4%]", "evaluation"
  c.probe.train_examples = c.probe.test_examples = 10_000
  c.probe.every_steps = 10_000
  c.probe.batch_size = 512
  return c


def imagenet_run(c):
  """ImageNet-1K from tfds at 224 px (evaluation: resize 256, center crop 224), bfloat16
  compute, and the logging / checkpoint / evaluation cadence of a multi-day run."""
  c.dataset = "tfds:imagenet2012"
  c.train_split = "train"
  c.image_size = 224
  c.data.eval_crop_pct = 224 / 256
  c.eval.split = "evaluation"       # ImageNet: validation
  c.knn.train_split = "train"
  c.knn.test_split = "evaluation"
  c.compute_dtype = "bfloat16"
  c.log_every = 100
  c.checkpoint.every_steps = 2000
  c.eval.every_steps = 5000
  c.eval.batch_size = 1024
  c.knn.batch_size = 1024
  return c


def finetune_protocol(c):
  """MAE's fine-tuning protocol, shared by the MAE, SimMIM and MixMIM recipes: AdamW
  (0.9, 0.999), weight decay 0.05 (none on 1-D parameters, position embedding, [CLS]), min lr
  1e-6, label smoothing 0.1, mixup 0.8, cutmix 1.0 (switch 0.5), RandAugment m9 (std 0.5,
  increasing ops), random erasing 0.25, RandomResizedCrop(0.08-1) + flip, average pooling."""
  c.optimizer.name = "adamw"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.wd_exclude = ("pos_embed", "cls_token")
  c.optimizer.min_lr = 1e-6
  c.model.pool = "avg"
  c.model.label_smoothing = 0.1
  c.model.mixup, c.model.cutmix = 0.8, 1.0
  c.model.mix_switch_prob, c.model.mix_prob = 0.5, 1.0
  c.data.randaugment = "rand-m9-mstd0.5-inc1"
  c.data.random_erase = 0.25
  c.data.crop_scale = (0.08, 1.0)
  c.probe.enabled = False
  return c


def linear_probe_protocol(c):
  """MAE's linear probing: LARS (momentum 0.9, trust 0.001), weight decay 0, blr 0.1, 10 warmup
  epochs then cosine, RandomResizedCrop(0.08-1) + flip only, the [CLS] token."""
  c.optimizer.name = "lars"
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.weight_decay = 0.0
  c.optimizer.blr = 0.1
  c.optimizer.min_lr = 0.0
  c.warmup_epochs = 10.0
  c.model.pool = "cls"
  c.data.crop_scale = (0.08, 1.0)
  c.probe.enabled = False
  return c


def simmim_vit_b(c, batch_size: int):
  """SimMIM's ViT-B/16 pre-training (microsoft/SimMIM, vit_base__800ep): model options, AdamW,
  lr per 512 images, warmup from 5e-7, clipping, crop (0.67-1); see configs/simmim_imagenet.py."""
  c.model.variant = "B/16"
  c.model.pos_embed, c.model.rel_pos = "none", "shared"
  c.model.layer_scale, c.model.qkv_bias, c.model.init = 0.1, "qv", "beit"
  c.model.drop_path = 0.1
  c.model.mask_patch_size = 32
  c.batch_size = batch_size
  c.optimizer.blr = 1e-4 * 256 / 512       # SimMIM scales per 512 images, this project per 256
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.weight_decay = 0.05
  c.optimizer.wd_exclude = ("pos_embed", "cls_token")
  c.optimizer.grad_clip_norm = 5.0
  c.optimizer.warmup_lr = 5e-7 * batch_size / 512
  c.data.crop_scale = (0.67, 1.0)
  c.data.crop_ratio = (3 / 4, 4 / 3)
  return imagenet_pretraining(c)


def amt_runlocal(c):
  """``runlocal`` of an AMT recipe: 256 training images (16 steps per epoch at batch 16), AMT
  from step 4 with a refresh every 3 steps, so the 10 steps cross the stage change and two
  refreshes."""
  c.train_split = "train[:256]"
  c.amt.start_epoch, c.amt.interval_epochs = 4 / 16, 3 / 16
  c.amt.batch_size = 16
  return c


def shrink_for_cpu(c):
  """``runlocal``: a few steps of a tiny model at 32 px on CPU, to check a recipe's wiring."""
  c.model.variant = "tiny_test/16" if c.model.encoder == "vit" else "tiny_test"
  c.image_size = 32
  c.compute_dtype = "float32"
  c.batch_size = 16
  c.total_steps = 10
  c.warmup_epochs = 0.0
  c.log_every = 2
  c.checkpoint.every_steps = 5
  return tiny_evaluations(c, every_steps=10)


def tiny_evaluations(c, every_steps: int):
  """Evaluation, kNN and fast probe of a ``runlocal`` check: batches of 16, every
  ``every_steps``, on class-stratified draws of 64 examples."""
  for group in (c.eval, c.knn, c.probe):
    group.batch_size = 16
    group.every_steps = every_steps
  c.eval.max_examples = 64
  c.knn.train_examples = c.knn.test_examples = 64
  c.probe.train_examples = c.probe.test_examples = 64
  return c


def mlo_mae(hypergrad: str):
  """An MLO-MAE config with what every MLO-MAE recipe shares (mlo_mae.md): the hypergradient
  mode (the config argument ``hypergrad``, checked), rounds of K = 2 MAE updates, mask 0.75, the
  training split cut 80 / 20 (a seeded, class-stratified draw of 20 % held out), weight decay
  0.01 on the head and the masking network (PyTorch AdamW's default, which the official code
  keeps), sin-cos position tables of encoder and
  decoder trained as parameters (the official models set requires_grad on both), float32
  (finite differences perturb theta by 0.01 / ||v||, below bfloat16's resolution)."""
  from mim_jax.config import base_config, choose  # pylint: disable=g-import-not-at-top
  from mim_jax.methods.mlo_mae import HYPERGRADS  # pylint: disable=g-import-not-at-top
  c = base_config("mlo_mae")
  c.mlo.hypergrad = choose("hypergrad", hypergrad, HYPERGRADS)
  c.mlo.unroll_steps = 2
  c.mlo.heldout_fraction = 0.2
  c.mlo.head_weight_decay = c.mlo.masker_weight_decay = 0.01
  c.mlo.learnable_pos = c.mlo.learnable_decoder_pos = True
  c.model.mask_ratio = 0.75
  c.compute_dtype = "float32"
  return c
