"""The league configs (configs/league_fashion_mnist.py, configs/league_cifar.py for CIFAR-10
and CIFAR-100): every cell of ``league()`` loads and validates; equal footing (one encoder per
family, one pre-training budget in images seen, one budget per evaluation protocol); ``runlocal``
is tiny; the hierarchical sizes "mnist28" and "cifar32" fit their images with the ViT's last
grid. Configs are only loaded and models only traced: nothing trains here."""

import dataclasses
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from mim_jax import config as config_lib
from mim_jax.core import optim
from mim_jax.league import cells as league_cells
from mim_jax.models import encoders, hierarchical

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODER_KEYS = tuple(encoders.encoder_config())
SIZE_KEYS = ("encoder", "variant", "width", "depth", "heads", "mlp_ratio", "stage_depths",
             "stage_heads", "window_sizes", "patch_size")


@dataclasses.dataclass(frozen=True)
class League:
  """A league config file, its extra config argument, and what its cells must say (written
  here, independently of the file)."""
  file: str
  arg: str
  train: int                   # training images
  dataset: str
  image_size: int
  mean: tuple
  std: tuple
  crop_scale: tuple
  vit: tuple                   # variant, width, depth, heads
  hierarchical: str
  pretrain_images: int
  mae_batch: int               # images per MAE update (MI-MAE: views)
  compute_dtype: str
  mix_aug: bool                # fine-tuning with mixup, cutmix, RandAugment, random erasing
  pipeline: str = "tf"         # data.pipeline (Fashion-MNIST: python, as it was measured)
  protocol_crop: tuple = None  # the crop of the probe and fine-tunings (None: crop_scale's)

  @property
  def path(self):
    return os.path.join(ROOT, "configs", self.file)


FASHION_MNIST = League("league_fashion_mnist.py", "", 60_000, "folder:runs/fashion_mnist", 28,
                       (0.2860,), (0.3530,), (0.35, 1.0), ("tiny_test/4", 128, 4, 4), "mnist28",
                       96_000, 160, "float32", False, "python", (1.0, 1.0))
CIFAR10 = League("league_cifar.py", "", 50_000, "tfds:cifar10", 32, (0.4914, 0.4822, 0.4465),
                 (0.2470, 0.2435, 0.2616), (0.2, 1.0), ("Ti/2", 192, 12, 3), "cifar32",
                 10_240_000, 512, "bfloat16", True)
CIFAR100 = dataclasses.replace(CIFAR10, arg="data=cifar100", dataset="tfds:cifar100",
                               mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
LEAGUES = {"fashion_mnist": FASHION_MNIST, "cifar10": CIFAR10, "cifar100": CIFAR100}


@pytest.fixture(params=list(LEAGUES))
def lg(request):
  return LEAGUES[request.param]


@functools.lru_cache(maxsize=None)
def module(lg=FASHION_MNIST):
  spec = importlib.util.spec_from_file_location("_" + lg.file[:-3], lg.path)
  out = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(out)
  return out


@functools.lru_cache(maxsize=None)
def load(row, protocol, runlocal=False, lg=FASHION_MNIST):
  arg = f"row={row},protocol={protocol}" + (",runlocal" if runlocal else "") + (
      "," + lg.arg if lg.arg else "")
  return config_lib.load(f"{lg.path}:{arg}")


def cells(lg=FASHION_MNIST, runlocal=False):
  """(row, protocol, config) of every cell: a pre-training row's pretrain cell, then its
  evaluations."""
  return [(r, p, load(r["name"], p, runlocal, lg)) for r in module(lg).league()
          for p in (["pretrain"] if r["pretrain"] else []) + r["protocols"]]


def images_per_step(c):
  """Images a step sees: MI-MAE counts views, MLO-MAE its round's MAE updates."""
  if c.method == "mi_mae":
    return c.batch_size * c.mi_mae.num_masks
  if c.method == "mlo_mae":
    return c.batch_size * c.mlo.unroll_steps
  return c.batch_size


def epoch(c, train):
  """(examples per epoch, images per step) as the trainer counts a pre-training run."""
  if c.method == "mi_mae":
    return train // c.mi_mae.num_masks, c.batch_size       # epochs of views
  if c.method == "mlo_mae":
    return train - round(c.mlo.heldout_fraction * train), c.batch_size * c.mlo.unroll_steps
  return train, c.batch_size


# ----------------------------------------------------------------------------- the matrix


def test_a_setup_names_only_rows_of_the_league_in_its_seeds():
  setup = dataclasses.replace(module().SETUP, seeds={"mi_mae": [0, 1], "mea": [0, 1]})
  with pytest.raises(ValueError, match=r"unknown rows \['mea'\]"):
    league_cells.league(setup)


def test_matrix(lg):
  rows = module(lg).league()
  names = [r["name"] for r in rows]
  assert names == ["mae", "mae_amt", "simmim", "simmim_amt", "mi_mae", "mi_mae_amt", "mixmim",
                   "mixmim_vit", "mlo_mae", "pixels", "random_vit", "random_hierarchical",
                   "supervised", "random_simmim_vit", "supervised_simmim_vit"]
  evals = ["linear_probe", "knn", "finetune", "finetune10"]
  for r in rows:
    assert set(r) >= {"name", "label", "encoder", "pretrain", "protocols", "seeds", "claims"}
    assert r["encoder"] in ("vit", "hierarchical", "pixels")
    assert r["pretrain"] == (r["name"] not in ("pixels", "random_vit", "random_hierarchical",
                                               "supervised", "random_simmim_vit",
                                               "supervised_simmim_vit"))
    if r["pretrain"]:
      assert r["protocols"] == evals
    more = ({"mi_mae": [0, 1, 2], "mae_amt": [0, 1, 2], "simmim": [0, 1], "simmim_amt": [0, 1]}
            if lg is FASHION_MNIST else {})
    # MAE, from scratch and the random inits at 3 seeds: the noise the others are read against
    default = [0, 1, 2] if r["name"] in ("mae", "supervised") or r["name"].startswith(
        "random_") else [0]
    assert r["seeds"] == more.get(r["name"], default)
  by = {r["name"]: r for r in rows}
  assert by["random_vit"]["protocols"] == by["random_hierarchical"]["protocols"] == [
      "linear_probe", "knn"]
  assert by["supervised"]["protocols"] == by["supervised_simmim_vit"]["protocols"] == [
      "finetune", "finetune10"]
  assert by["random_simmim_vit"]["protocols"] == by["pixels"]["protocols"] == [
      "linear_probe", "knn"]
  assert [r["name"] for r in rows if r["encoder"] == "pixels"] == ["pixels"]
  assert [r["name"] for r in rows if r["encoder"] == "hierarchical"] == ["mixmim",
                                                                          "random_hierarchical"]
  for claim in module(lg).claims():
    assert claim["row"] in by and claim["than"] in by and claim["text"]
    assert claim["protocol"] in by[claim["row"]]["protocols"]
    assert claim["protocol"] in by[claim["than"]]["protocols"]
    assert claim in by[claim["row"]]["claims"]


def test_every_cell_loads_validates_and_builds_its_method(lg):
  from mim_jax import methods
  from mim_jax.data import DatasetInfo
  info = DatasetInfo(num_classes=10, channels=3, num_examples=lg.train, base_split_size=lg.train)
  for r, protocol, c in cells(lg):
    config_lib.validate(c)
    assert c.method == {"pretrain": None, "finetune10": "finetune"}.get(protocol, protocol) or (
        protocol == "pretrain" and c.method in ("mae", "simmim", "mi_mae", "mixmim", "mlo_mae"))
    # the method's module accepts it (models are built, nothing is initialized)
    methods.get(c.method)(c, 3, num_classes=10, data_info=info)
  with pytest.raises(config_lib.ConfigError, match="no protocol 'pretrain'"):
    load("supervised", "pretrain", lg=lg)
  with pytest.raises(config_lib.ConfigError, match="no protocol 'finetune'"):
    load("random_vit", "finetune", lg=lg)
  with pytest.raises(config_lib.ConfigError, match="row must be one of"):
    load("nope", "knn", lg=lg)


def test_data_and_splits_are_the_same_everywhere(lg):
  for _, protocol, c in cells(lg):
    assert c.dataset == lg.dataset and c.image_size == lg.image_size
    assert c.train_split == "train"
    assert c.train_fraction == (0.1 if protocol == "finetune10" else 1.0)
    assert c.data.mean == lg.mean and c.data.std == lg.std
    crop = lg.crop_scale if protocol == "pretrain" else lg.protocol_crop or lg.crop_scale
    assert c.data.crop_scale == crop and c.data.flip and c.data.eval_crop_pct == 1.0
    if crop == (1.0, 1.0):   # no crop at all: the whole image
      assert c.data.crop_ratio == (1.0, 1.0)
    assert c.compute_dtype == ("float32" if c.method == "mlo_mae" else lg.compute_dtype)
    assert c.data.pipeline == lg.pipeline
    if protocol != "pretrain":
      assert c.eval.split == "evaluation" and c.eval.max_examples == 0
      assert (c.knn.train_split, c.knn.test_split) == ("train", "evaluation")
      assert c.init_from == "" and not c.probe.enabled


# ----------------------------------------------------------------------------- equal footing


def test_one_encoder_per_family(lg):
  sizes = {}
  for r, protocol, c in cells(lg):
    assert c.model.encoder == r["encoder"]
    size = tuple(c.model[k] for k in SIZE_KEYS)
    assert sizes.setdefault(r["encoder"], size) == size, (r["name"], protocol)
    if r["encoder"] == "vit":   # the model built is the ViT meant
      spec = encoders.build(c.model, c.image_size)
      m = spec.module
      assert (c.model.variant, m.width, m.depth, m.heads) == lg.vit
  assert dict(zip(SIZE_KEYS, sizes["hierarchical"]))["variant"] == lg.hierarchical


def test_evaluations_restore_their_rows_encoder(lg):
  """Every evaluation cell of a pre-training row describes the encoder that row pre-trains
  (SimMIM's block options included; its fine-tuning gives each block a copy of the shared
  relative position table, as SimMIM fine-tunes); SimMIM's baselines describe SimMIM's; the
  others describe the default ViT."""
  default = load("random_vit", "knn", lg=lg).model
  of = {"random_simmim_vit": "simmim", "supervised_simmim_vit": "simmim"}
  for r, protocol, c in cells(lg):
    if protocol == "pretrain":
      continue
    if r["pretrain"] or r["name"] in of:
      source = of.get(r["name"], r["name"])
      want = {k: load(source, "pretrain", lg=lg).model[k] for k in ENCODER_KEYS}
    else:
      want = {k: (default[k] if r["encoder"] == "vit" else c.model[k]) for k in ENCODER_KEYS}
    if c.method == "finetune" and want["rel_pos"] == "shared":
      want["rel_pos"] = "per_block"
    assert {k: c.model[k] for k in ENCODER_KEYS} == want, (r["name"], protocol)
  assert load("simmim_amt", "knn", lg=lg).model.rel_pos == "shared"
  assert load("random_simmim_vit", "knn", lg=lg).model.rel_pos == "shared"
  assert load("random_simmim_vit", "knn", lg=lg).model.rel_pos != default.rel_pos
  assert load("mixmim_vit", "knn", lg=lg).model.encoder == "vit"


def test_pretraining_rows_see_the_same_images(lg):
  seen, schedules = {}, {}
  for r, protocol, c in cells(lg):
    if protocol != "pretrain":
      continue
    seen[r["name"]] = c.total_steps * images_per_step(c)
    # the trainer's own arithmetic: steps, warmup, AMT's and SimMIM's epoch-valued settings
    examples, step_images = epoch(c, lg.train)
    total, warmup, per_epoch = optim.run_length(c, examples, step_images)
    assert total == c.total_steps
    assert warmup == round(0.1 * total), r["name"]
    if c.model.get("masking") == "amt":
      spe = optim.steps_per_epoch(examples, c.batch_size)
      share = 0.2 if c.method == "simmim" else 0.1
      assert round(c.amt.start_epoch * spe) == round(share * total)
      assert round(c.amt.interval_epochs * spe) == round(share * total)
    if c.optimizer.schedule == "multistep":
      assert [round(e * per_epoch) for e in c.optimizer.decay_epochs] == [round(0.875 * total)]
    schedules[r["name"]] = per_epoch
  assert len(seen) == 9 and len(set(seen.values())) == 1, seen
  assert seen["mae"] == lg.pretrain_images
  # MAE's step sees B images; MI-MAE's B / 4 images x 4 views; MLO-MAE's round 2 x B.
  b = lg.mae_batch
  mi, mlo = load("mi_mae", "pretrain", lg=lg), load("mlo_mae", "pretrain", lg=lg)
  assert load("mae", "pretrain", lg=lg).batch_size == b
  assert (mi.batch_size, mi.mi_mae.num_masks, mi.mi_mae.epoch_unit) == (b // 4, 4, "views")
  assert (mlo.batch_size, mlo.mlo.unroll_steps) == (b, 2)
  assert load("mi_mae_amt", "pretrain", lg=lg).model.masking == "amt"


def test_evaluation_protocols_agree_across_rows(lg):
  """Apart from the encoder's description, each protocol's config is the same in every row."""
  by_protocol = {}
  for r, protocol, c in cells(lg):
    if protocol == "pretrain":
      continue
    d = c.to_dict()
    d["model"] = {k: v for k, v in d["model"].items() if k not in ENCODER_KEYS}
    first = by_protocol.setdefault(protocol, (r["name"], d))
    assert d == first[1], (r["name"], first[0], protocol)
  assert set(by_protocol) == {"linear_probe", "knn", "finetune", "finetune10"}
  ft, ft10 = load("mae", "finetune", lg=lg), load("mae", "finetune10", lg=lg)
  assert ft.batch_size == ft10.batch_size
  for c in (ft, ft10):
    regularizers = (c.model.mixup, c.model.cutmix, c.data.randaugment, c.data.random_erase)
    assert regularizers == ((0.8, 1.0, "rand-m9-mstd0.5-inc1", 0.25) if lg.mix_aug else
                            (0.0, 0.0, "", 0.0))
    assert (c.model.label_smoothing, c.model.drop_path, c.optimizer.layer_decay) == (0.1, 0.1, 0.75)
  for c, images in ((ft, lg.train), (ft10, lg.train // 10)):   # warmup: 10 % of the steps
    assert optim.run_length(c, images)[1] == round(0.1 * c.total_steps)


def test_runlocal_is_tiny(lg):
  for r, protocol, c in cells(lg, runlocal=True):
    config_lib.validate(c)
    assert c.total_steps <= 4
    if protocol == "pretrain":
      assert c.total_steps * images_per_step(c) <= 128
      assert c.batch_size % 8 == 0    # divides over the tests' 8 devices
    assert c.batch_size <= 32
    if c.model.get("masking") == "amt":
      assert c.train_split == "train[:256]" and c.amt.batch_size <= 16
      examples, _ = epoch(c, 256)
      spe = optim.steps_per_epoch(examples, c.batch_size)
      assert (round(c.amt.start_epoch * spe), round(c.amt.interval_epochs * spe)) == (1, 2)
    assert c.eval.max_examples <= 64
    assert 0 < c.knn.train_examples <= 64 and 0 < c.knn.test_examples <= 64
    if c.probe.enabled:
      assert c.probe.train_examples <= 64 and c.probe.test_examples <= 64


def test_scale_multiplies_every_training_budget_and_keeps_the_shares():
  """``scale=N`` (the league at a larger budget) runs every cell N times longer, warmup, AMT's
  start and the probe's period at the same shares; ``workers=W``, ``pipeline=P`` and
  ``memory`` set the input pipeline only."""
  rows = [("mae", "pretrain"), ("mae_amt", "pretrain"), ("mi_mae", "pretrain"),
          ("mae", "linear_probe"), ("mae", "finetune"), ("supervised", "finetune10")]
  for row, protocol in rows:
    base = load(row, protocol)
    big = config_lib.load(
        f"{FASHION_MNIST.path}:row={row},protocol={protocol},scale=3,workers=7,pipeline=tf,"
        f"memory")
    assert big.total_steps == 3 * base.total_steps, (row, protocol)
    assert big.batch_size == base.batch_size and big.model == base.model
    assert big.warmup_epochs == pytest.approx(3 * base.warmup_epochs)
    assert big.data.num_workers == 7 != base.data.num_workers
    assert (base.data.pipeline, big.data.pipeline) == ("python", "tf")
    assert (base.data.in_memory, big.data.in_memory) == (False, True)
    if protocol == "pretrain":
      assert big.probe.every_steps == 3 * base.probe.every_steps
    if row == "mae_amt":
      assert big.amt.start_epoch == pytest.approx(3 * base.amt.start_epoch)
    if protocol == "linear_probe":   # evaluated after each of its 3 epochs (60,000 = 250 x 240)
      assert (base.eval.every_steps, big.eval.every_steps, big.total_steps) == (250, 250, 750)
  # device, k=K: the dataset on the devices, K steps per call, intervals multiples of K
  fused = config_lib.load(f"{FASHION_MNIST.path}:row=mae,protocol=pretrain,device,k=32")
  base = load("mae", "pretrain")
  assert (fused.data.on_device, fused.steps_per_call) == (True, 32)
  for group in ("checkpoint", "probe"):
    every, was = fused[group].every_steps, base[group].every_steps
    assert every % 32 == 0 and was <= every < was + 32, group
  for bad in ("0", "-2"):
    with pytest.raises(config_lib.ConfigError, match="scale must be a whole number"):
      config_lib.load(f"{FASHION_MNIST.path}:row=mae,protocol=pretrain,scale={bad}")


# ----------------------------------------------------------------------------- mnist28


def block(d, heads, w):
  """Parameters of a windowed block: 2 LayerNorms, qkv, bias table, proj, MLP 4x."""
  return 2 * 2 * d + (3 * d * d + 3 * d) + (2 * w - 1) ** 2 * heads + (d * d + d) + (
      d * 4 * d + 4 * d) + (4 * d * d + d)


def test_mnist28_fits_28px_with_the_vits_last_grid():
  size = hierarchical.parse_hier_variant("mnist28")
  assert (size.patch_size, size.embed_dim, size.depths, size.heads) == (2, 64, (2, 3), (2, 4))
  # stage 0: 14x14 tokens in 2x2 windows of 7x7; stage 1: 7x7 tokens, one 7x7 window
  assert hierarchical.stage_windows(28, size.patch_size, size.window_sizes) == [(14, 7), (7, 7)]
  with pytest.raises(ValueError, match="resolution 14 is not divisible by window size 8"):
    hierarchical.stage_windows(28, 2, hierarchical.HIER_SIZES["digits"].window_sizes)

  def build(family):
    m = ConfigDict(encoders.encoder_config())
    m.encoder, m.variant = family, ("mnist28" if family == "hierarchical" else "tiny_test/4")
    m.width, m.depth, m.heads = (0, 0, 0) if family == "hierarchical" else (128, 4, 4)
    return encoders.build(m, 28)

  images = jnp.zeros((2, 28, 28, 3))
  hier, vit = build("hierarchical"), build("vit")
  params = jax.eval_shape(hier.init, jax.random.key(0), images)
  tokens = jax.eval_shape(hier.apply, params, images)
  vit_tokens = jax.eval_shape(vit.apply, jax.eval_shape(vit.init, jax.random.key(0), images),
                              images)
  assert tokens.shape == (2, 7 * 7, 128) and hier.width == 128
  assert vit_tokens.shape == (2, 1 + 7 * 7, 128)      # [CLS] + the same 7x7 grid
  tables = [params[f"stage_{i}"]["block_0"]["attn"]["relative_position_bias_table"].shape
            for i in range(2)]
  assert tables == [(13 * 13, 2), (13 * 13, 4)]

  # parameters, counted from the layout (3 input channels: a folder source's decoded PNGs)
  c0 = 64
  expected = (2 * 2 * 3 * c0 + c0) + 2 * c0                   # patch embedding + its norm
  expected += 2 * block(c0, 2, 7)                              # stage 0
  expected += 2 * 4 * c0 + 4 * c0 * 2 * c0                     # merging: norm, reduction
  expected += 3 * block(2 * c0, 4, 7)                          # stage 1
  expected += 2 * 2 * c0                                       # final norm
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == expected == 731_984
  vit_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      jax.eval_shape(vit.init, jax.random.key(0), images)))
  assert 0.85 < count / vit_count < 0.95    # 0.73 M against the ViT's 0.80 M


def test_cifar32_fits_32px_with_vit_ti2s_grid_and_width():
  size = hierarchical.parse_hier_variant("cifar32")
  # stage 0: 32x32 tokens in 4x4 windows of 8x8; stage 1: 16x16 tokens, one window
  assert hierarchical.stage_windows(32, size.patch_size, size.window_sizes) == [(32, 8), (16, 16)]
  m = ConfigDict(encoders.encoder_config())
  m.encoder, m.variant = "hierarchical", "cifar32"
  hier = encoders.build(m, 32)
  m.encoder, m.variant = "vit", "Ti/2"
  vit = encoders.build(m, 32)
  images = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(hier.init, jax.random.key(0), images)
  vit_params = jax.eval_shape(vit.init, jax.random.key(0), images)
  assert jax.eval_shape(hier.apply, params, images).shape == (2, 16 * 16, 192)
  assert jax.eval_shape(vit.apply, vit_params, images).shape == (2, 1 + 16 * 16, 192)
  c0 = 96
  expected = (3 * c0 + c0) + 2 * c0                            # 1 px patch embedding + norm
  expected += 2 * block(c0, 3, 8)                              # stage 0
  expected += 2 * 4 * c0 + 4 * c0 * 2 * c0                     # merging
  expected += 10 * block(2 * c0, 6, 16)                        # stage 1
  expected += 2 * 2 * c0                                       # final norm
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == expected == 4_806_786
  vit_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(vit_params))
  assert vit_count == 5_341_440 and 0.85 < count / vit_count < 0.95
