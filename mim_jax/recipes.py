"""Pieces that several config files share: the bundled digits set-up, ImageNet's data settings and
the evaluation protocols' recipes (evaluation.md). Config files call these, then set what is
their own (sizes, epochs, learning rates), so each file still reads as the full recipe.
"""


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
  return c


def digits_encoder(m):
  """The digits demo's ViT: 4x4 patches (16 tokens), 128 wide, 4 blocks, 4 heads."""
  m.encoder = "vit"
  m.variant = "tiny_test/4"
  m.width, m.depth, m.heads = 128, 4, 4
  return m


def digits_evaluation(c):
  """Evaluation on the digits test split (all 360 images), batches of 120 (divides over 8)."""
  c.eval.split = "test"
  c.eval.batch_size = 120
  c.knn.train_split = "train"
  c.knn.test_split = "test"
  c.knn.batch_size = 120
  c.probe.enabled = False
  return c


def imagenet_run(c):
  """ImageNet-1K from tfds at 224 px (evaluation: resize 256, center crop 224), bfloat16
  compute, and the logging / checkpoint / evaluation cadence of a multi-day run."""
  c.dataset = "tfds:imagenet2012"
  c.train_split = "train"
  c.image_size = 224
  c.data.eval_crop_pct = 224 / 256
  c.eval.split = "validation"
  c.knn.train_split = "train"
  c.knn.test_split = "validation"
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
  for group in (c.eval, c.knn, c.probe):
    group.batch_size = 16
    group.every_steps = 10
  c.eval.max_examples = 64
  c.knn.train_examples = c.knn.test_examples = 64
  c.probe.train_examples = c.probe.test_examples = 64
  return c
