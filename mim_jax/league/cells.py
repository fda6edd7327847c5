"""The league's matrix and the config of each of its cells, for any dataset.

A league config file (configs/league_*.py) describes its dataset, encoders and budgets as a
``Setup`` and hands the rest to this module:

  SETUP = league_cells.Setup(...)
  def league(): return league_cells.league(SETUP)
  def claims(): return league_cells.claims()
  def get_config(arg=None): return league_cells.get_config(SETUP, arg)

The rows are the same on every dataset: each method's pre-training (its digits config, then the
setup's data, encoder and budget: equal footing), the encoders at random init, and the ViT
trained from scratch. ``get_config("row=ROW,protocol=PROTOCOL[,runlocal]")`` is one cell.
"""

import dataclasses
from typing import Callable, Optional

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg
from mim_jax.models import encoders

PROTOCOLS = ("pretrain", "linear_probe", "knn", "finetune", "finetune10")
EVALUATIONS = PROTOCOLS[1:]


@dataclasses.dataclass(frozen=True)
class Setup:
  """A dataset, one encoder per family, and the budgets every row shares."""
  # data: the split roles "train" and "evaluation" must exist in ``dataset``
  dataset: str
  train_images: int               # of the train split (epoch conversions, finetune10's share)
  image_size: int
  mean: tuple
  std: tuple
  crop_scale: tuple               # RandomResizedCrop of every training run
  flip: bool
  # encoders: the ViT (variant; (width, depth, heads) over the variant's size, or None) and the
  # hierarchical size of models/hierarchical.py
  vit_variant: str
  vit_size: Optional[tuple]
  hierarchical: str
  # budgets: pre-training in images seen (MI-MAE: views; MLO-MAE: its MAE's images)
  pretrain_batch: int
  pretrain_images: int
  linear_probe_batch: int
  linear_probe_steps: int
  finetune_batch: int
  finetune_steps: int
  finetune10_steps: int
  eval_batch: int
  warmup_share: float = 0.1       # of every training run's steps
  fast_probe: tuple = (1000, 2000)  # pre-training's probe: training / evaluation images drawn
  compute_dtype: str = "float32"  # of every cell but MLO-MAE's (its finite differences need fp32)
  pipeline: str = "tf"            # data.pipeline of every cell
  # RandomResizedCrop scale of the linear probe and the fine-tunings, where it differs from
  # pre-training's ``crop_scale``; (1.0, 1.0): no crop (the whole image, flipped or not, as
  # evaluation sees it)
  protocol_crop_scale: Optional[tuple] = None
  # fine-tuning with MAE's regularizers (mixup, cutmix, RandAugment, random erasing), made for
  # ~100 epochs; False: crop + flip only (label smoothing, drop path, layer decay kept)
  finetune_mix_aug: bool = True
  # dataset-specific changes to a pre-training config, after the league's: f(c, row name)
  adjust_pretraining: Optional[Callable] = None
  # seeds of rows other than the default ones (MAE and from-scratch at 0, 1, 2; the rest at 0):
  # {row name: [seeds]}, e.g. for the rows whose claims need their own seed noise
  seeds: dict = dataclasses.field(default_factory=dict)


def _rows():
  """(name, label, encoder, pretrain config (digits config, its arg) or None, evaluations,
  seeds)."""
  every = list(EVALUATIONS)
  return (
      ("mae", "MAE", "vit", ("mae_digits", None), every, [0, 1, 2]),
      ("mae_amt", "MAE + AMT", "vit", ("mae_amt_digits", None), every, [0]),
      ("simmim", "SimMIM", "vit", ("simmim_digits", None), every, [0]),
      ("simmim_amt", "SimMIM + AMT", "vit", ("simmim_amt_digits", None), every, [0]),
      ("mi_mae", "MI-MAE", "vit", ("mi_mae_digits", None), every, [0]),
      ("mi_mae_amt", "MI-MAE + AMT", "vit", ("mi_mae_digits", None), every, [0]),
      ("mixmim", "MixMIM (hierarchical)", "hierarchical", ("mixmim_digits", None), every, [0]),
      ("mixmim_vit", "MixMIM (plain ViT, ours)", "vit", ("mixmim_digits", "encoder=vit"), every,
       [0]),
      ("mlo_mae", "MLO-MAE (finite differences)", "vit", ("mlo_mae_digits", None), every, [0]),
      # the baselines: no encoder at all (the pixels themselves: kNN has no seed, the probe's
      # seed only orders its batches), the encoders at random init (3 seeds: their probe moves
      # ~3 points with the init) and the ViT trained from scratch
      ("pixels", "raw pixels (no encoder)", "pixels", None, ["linear_probe", "knn"], [0]),
      ("random_vit", "ViT, random init", "vit", None, ["linear_probe", "knn"], [0, 1, 2]),
      ("random_hierarchical", "hierarchical, random init", "hierarchical", None,
       ["linear_probe", "knn"], [0, 1, 2]),
      ("supervised", "ViT from scratch (supervised)", "vit", None, ["finetune", "finetune10"],
       [0, 1, 2]),
      # SimMIM's ViT differs from the plain one (no absolute position table, a relative position
      # bias, layer scale): its own baselines
      ("random_simmim_vit", "SimMIM's ViT, random init", "vit", None, ["linear_probe", "knn"],
       [0, 1, 2]),
      ("supervised_simmim_vit", "SimMIM's ViT from scratch (supervised)", "vit", None,
       ["finetune", "finetune10"], [0]),
  )


# Baseline rows on the encoder of a pre-training row (its size and block options), not on the
# setup's plain one.
ENCODER_OF = {"random_simmim_vit": "simmim", "supervised_simmim_vit": "simmim"}


def claims():
  """What the papers report, as "row beats than on protocol" (mim_jax.league.report tests
  each on the difference of the means against the seed noise)."""
  def claim(row, than, protocol, text):
    return dict(row=row, than=than, protocol=protocol, text=text)
  return [
      claim("mae_amt", "mae", "linear_probe",
            "MAE + AMT beats MAE on linear probing (amt.md: +2.9 to +5.9 points, 5 datasets)"),
      claim("mae_amt", "mae", "finetune", "MAE + AMT beats MAE on fine-tuning (amt.md)"),
      claim("simmim_amt", "simmim", "finetune",
            "SimMIM + AMT beats SimMIM on fine-tuning (amt.md)"),
      claim("mi_mae", "mae", "finetune", "MI-MAE beats MAE on fine-tuning (mi_mae.md)"),
      claim("mi_mae", "mae", "linear_probe", "MI-MAE beats MAE on linear probing (mi_mae.md)"),
      claim("mi_mae", "mae", "finetune10",
            "MI-MAE beats MAE on fine-tuning with few labels (mi_mae.md: 1 % in the paper)"),
      claim("mlo_mae", "mae", "finetune",
            "MLO-MAE beats MAE on fine-tuning (mlo_mae.md: CIFAR-10 96.2 vs 93.7)"),
      claim("mixmim", "mae", "finetune",
            "MixMIM beats MAE on fine-tuning (mixmim.md: MixMIM-B 84.6 at 300 epochs vs MAE "
            "ViT-B 83.6 at 1600; each on its own encoder, as in the paper)"),
      claim("mixmim_vit", "mae", "finetune",
            "MixMIM beats MAE on fine-tuning, both on the ViT (our plain-ViT MixMIM)"),
      claim("mae", "supervised", "finetune",
            "MAE pre-training beats training the same ViT from scratch (mlo_mae.md: CIFAR-10 "
            "93.7 vs 82.3)"),
  ]


def league(setup: Setup):
  """The matrix: one dict per row (name, label, encoder, pretrain, protocols, seeds, claims:
  the entries of ``claims()`` about the row). ``protocols`` are the evaluations; a row with
  ``pretrain`` also has the cell ``protocol=pretrain``, which its evaluations start from (the
  runner's convention)."""
  every_claim = claims()
  unknown = sorted(set(setup.seeds) - {r[0] for r in _rows()})
  if unknown:
    raise ValueError(f"Setup.seeds: unknown rows {unknown}")
  return [dict(name=name, label=label, encoder=encoder, pretrain=base is not None,
               protocols=list(protocols), seeds=list(setup.seeds.get(name, seeds)),
               claims=[c for c in every_claim if c["row"] == name])
          for name, label, encoder, base, protocols, seeds in _rows()]


def _row(name):
  rows = {r[0]: r for r in _rows()}
  choose("row", name, tuple(rows))
  return rows[name]


def get_config(setup: Setup, arg=None):
  """One cell: ``arg`` is "row=ROW,protocol=PROTOCOL[,scale=N][,workers=W][,pipeline=P]
  [,memory][,device][,k=K][,runlocal]" (a string or parsed). ``scale=N``: every training budget
  N times the setup's (the league at a larger budget, as on a GPU: ``python -m mim_jax.league
  ... --arg scale=50,pipeline=python,device,k=32``); ``workers=W``: W input-pipeline workers
  (data.num_workers); ``pipeline=P``: data.pipeline P instead of the setup's; ``memory``: a
  folder dataset decoded into memory once per cell (data.in_memory); ``device``: the dataset
  on the devices (data.on_device: what feeds a GPU); ``k=K``: K steps per jitted call
  (steps_per_call), the checkpoint, evaluation and image intervals rounded up to multiples of
  K."""
  if arg is None or isinstance(arg, str):
    arg = parse_arg(arg, row="mae", protocol="pretrain", runlocal=False, scale=1, workers=0,
                    pipeline="", memory=False, device=False, k=1)
  if arg.get("scale", 1) != 1:
    setup = scaled(setup, arg.scale)
  name, _, encoder, base, protocols, _ = _row(arg.row)
  choose("protocol", arg.protocol, PROTOCOLS)
  has = (["pretrain"] if base else []) + protocols
  if arg.protocol not in has:
    raise ValueError(f"row {name!r} has no protocol {arg.protocol!r}; it has {has}")
  if arg.protocol == "pretrain":
    c = pretraining(setup, name, base)
  else:
    source = name if base else ENCODER_OF.get(name)
    pretrained = pretraining(setup, source, _row(source)[3]).model if source else None
    c = evaluation(setup, arg.protocol, encoder, pretrained)
  if c.method != "mlo_mae":
    c.compute_dtype = setup.compute_dtype
  if arg.get("workers", 0):
    c.data.num_workers = arg.workers
  if arg.get("pipeline", ""):
    c.data.pipeline = choose("pipeline", arg.pipeline, ("python", "tf"))
  if arg.get("memory", False):
    c.data.in_memory = True
  if arg.get("device", False):
    c.data.on_device = True
  if arg.get("k", 1) != 1:
    c.steps_per_call = arg.k
    for group, key in (("checkpoint", "every_steps"), ("probe", "every_steps"),
                       ("knn", "every_steps"), ("eval", "every_steps"), (None, "image_every")):
      owner = c[group] if group else c   # up to a multiple of K: every call stays fused
      owner[key] = -(-owner[key] // arg.k) * arg.k
  if arg.runlocal:
    runlocal(c)
  return c


def scaled(setup: Setup, factor: int) -> Setup:
  """``setup`` with every training budget (pre-training images, linear-probe and fine-tune
  steps) ``factor`` times longer; schedules, shares and evaluations follow."""
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f"scale must be a whole number >= 1, got {factor!r}")
  return dataclasses.replace(
      setup, pretrain_images=factor * setup.pretrain_images,
      linear_probe_steps=factor * setup.linear_probe_steps,
      finetune_steps=factor * setup.finetune_steps,
      finetune10_steps=factor * setup.finetune10_steps)


# ----------------------------------------------------------------------------- pieces
def data(c, setup: Setup):
  """The setup's data: splits by role, its normalization and crop, the whole image at
  evaluation (no center crop)."""
  c.dataset = setup.dataset
  c.train_split = "train"
  c.image_size = setup.image_size
  c.data.mean = tuple(setup.mean)
  c.data.std = tuple(setup.std)
  c.data.crop_scale = tuple(setup.crop_scale)
  c.data.flip = setup.flip
  c.data.eval_crop_pct = 1.0
  c.data.pipeline = setup.pipeline
  return c


def encoder(m, setup: Setup, family: str = "vit"):
  """The setup's encoder of a family (``vit``, ``hierarchical`` or ``pixels``: none) in the
  model config ``m``."""
  if family == "pixels":
    m.encoder = "pixels"
    return m
  if family == "hierarchical":
    m.encoder, m.variant = "hierarchical", setup.hierarchical
    return m
  if family != "vit":
    raise ValueError(f"league encoder family must be 'vit', 'hierarchical' or 'pixels', got "
                     f"{family!r}")
  m.encoder, m.variant = "vit", setup.vit_variant
  # the variant's own size unless the setup gives one (the base configs set the digits ViT's)
  m.width, m.depth, m.heads = setup.vit_size or (0, 0, 0)
  return m


def images_per_step(c) -> int:
  """Training images one step of a pre-training config sees: ``batch_size``; MI-MAE counts
  views (x ``mi_mae.num_masks``); MLO-MAE counts its MAE's images (a step is a round of
  ``mlo.unroll_steps`` MAE updates; the head's and masking network's batches are not counted)."""
  if c.method == "mi_mae":
    return c.batch_size * c.mi_mae.num_masks
  if c.method == "mlo_mae":
    return c.batch_size * c.mlo.unroll_steps
  return c.batch_size


def epoch_steps(c, train_images: int) -> int:
  """Steps per epoch as the trainer counts them for ``c`` on a train split of ``train_images``:
  MI-MAE with ``epoch_unit='views'``: a pass over 1 / num_masks of the images; MLO-MAE: a pass
  over the MAE's part of the split (1 - heldout_fraction), rounds of unroll_steps batches."""
  from mim_jax.core import optim  # pylint: disable=g-import-not-at-top
  examples, per_step = train_images, c.batch_size
  if c.method == "mi_mae" and c.mi_mae.epoch_unit == "views":
    examples = round(train_images / c.mi_mae.num_masks)
  if c.method == "mlo_mae":
    if not c.mlo.stage1_uses_all_train:
      examples -= int(c.mlo.heldout_fraction * train_images + 0.5)
    per_step = c.batch_size * c.mlo.unroll_steps
  return optim.steps_per_epoch(examples, per_step)


def pretraining(setup: Setup, name: str, base):
  """The row's digits config with the setup's data, encoder and budget."""
  digits_name, digits_arg = base
  c = recipes.sibling_config(digits_name, digits_arg)
  data(c, setup)
  encoder(c.model, setup, c.model.encoder)
  if name == "mi_mae_amt":   # MAE + AMT's ratios and shares, per view
    recipes.amt(c, mask_ratio=0.45, throw_ratio=0.40, start_epoch=0.1 * c.total_epochs,
                interval_epochs=0.1 * c.total_epochs)
  if c.model.get("masking") == "amt":
    c.amt.batch_size = setup.eval_batch
  # MAE updates of pretrain_batch images (MI-MAE: pretrain_batch views of a quarter as many
  # images, at MAE's absolute lr as on digits; MLO-MAE: rounds of 2 such updates).
  c.batch_size = setup.pretrain_batch
  if c.method == "mi_mae":
    c.batch_size = setup.pretrain_batch // c.mi_mae.num_masks
  if setup.adjust_pretraining is not None:
    setup.adjust_pretraining(c, name)
  _pretraining_budget(c, setup)
  return c


def _pretraining_budget(c, setup: Setup):
  """``setup.pretrain_images`` images seen (``images_per_step``; must divide), warmup_share of
  the steps warmup, then cosine (or the config's own multistep: its one drop moved to 7/8 of
  the steps). Epoch-valued settings (warmup, SimMIM's drop, AMT's start and refresh interval at
  the shares the config had) are converted for the setup's train split. The fast probe:
  class-stratified draws (``setup.fast_probe``), mean-pooled, every quarter of the steps and at
  the end, with a checkpoint each time; no random-init probe (the league has random-init
  rows)."""
  per_step = images_per_step(c)
  if setup.pretrain_images % per_step:
    raise ValueError(f"{setup.pretrain_images} images do not divide into steps of {per_step}")
  steps = setup.pretrain_images // per_step
  spe = epoch_steps(c, setup.train_images)
  if c.model.get("masking") == "amt":  # keep the config's shares of the run
    start_share = c.amt.start_epoch / c.total_epochs
    interval_share = c.amt.interval_epochs / c.total_epochs
    c.amt.start_epoch = start_share * steps / spe
    c.amt.interval_epochs = interval_share * steps / spe
  if c.optimizer.schedule == "multistep":
    c.optimizer.decay_epochs = (0.875 * steps / spe,)
  c.total_steps = steps
  c.total_epochs = steps / spe
  c.warmup_epochs = setup.warmup_share * steps / spe
  c.log_every = 50
  c.image_every = steps
  c.probe.enabled = True
  c.probe.train_split, c.probe.test_split = "train", "evaluation"
  c.probe.train_examples, c.probe.test_examples = setup.fast_probe
  c.probe.every_steps = steps // 4
  c.probe.batch_size = setup.eval_batch
  c.probe.pool = "avg"
  c.probe.random_init = False
  c.checkpoint.every_steps = c.probe.every_steps   # an interrupted row loses a quarter at most
  return c


def evaluation(setup: Setup, protocol: str, family: str, pretrained=None):
  """An evaluation cell; ``pretrained``: the ``config.model`` of the row's pre-training, whose
  encoder (size and block options: SimMIM's differ) the evaluation restores. Top-1 / top-5 on
  the whole evaluation split at the end."""
  method = {"finetune10": "finetune"}.get(protocol, protocol)
  c = base_config(method)
  if method == "finetune":
    recipes.finetune_protocol(c)
  elif method == "linear_probe":
    recipes.linear_probe_protocol(c)
  data(c, setup)
  encoder(c.model, setup, family)
  if pretrained is not None:
    for key in encoders.encoder_config():
      c.model[key] = pretrained[key]
    if method == "finetune" and c.model.rel_pos == "shared":
      c.model.rel_pos = "per_block"   # SimMIM's fine-tuning: each block's copy of the shared one
  if setup.protocol_crop_scale is not None:
    c.data.crop_scale = tuple(setup.protocol_crop_scale)
    if c.data.crop_scale == (1.0, 1.0):
      c.data.crop_ratio = (1.0, 1.0)   # the whole image: no crop at all
  c.eval.split = "evaluation"
  c.eval.batch_size = setup.eval_batch
  c.eval.max_examples = 0
  c.knn.train_split = "train"
  c.knn.test_split = "evaluation"
  c.knn.train_examples = c.knn.test_examples = 0
  c.knn.batch_size = setup.eval_batch
  c.probe.enabled = False
  if method == "knn":   # k 20, cosine, T 0.07 on average-pooled features
    c.eval_only = True
    c.batch_size = setup.eval_batch
    c.knn.enabled = True
    c.knn.pool = "avg"
    c.knn.k = 20
    c.knn.temperature = 0.07
    return c
  if method == "linear_probe":   # as configs/linear_probe_digits.py, average-pooled
    c.model.pool = "avg"
    c.optimizer.blr = 6.4
    c.batch_size = setup.linear_probe_batch
    _steps(c, setup, setup.linear_probe_steps, setup.train_images)
    # evaluated after every epoch too: the curve that shows whether the probe converged
    c.eval.every_steps = min(setup.linear_probe_steps, setup.train_images // c.batch_size)
    return c
  # fine-tuning, as configs/finetune_digits.py (with the setup's protocol crop and flip)
  if not setup.finetune_mix_aug:
    c.model.mixup = c.model.cutmix = 0.0
    c.data.randaugment, c.data.random_erase = "", 0.0
  c.model.drop_path = 0.1
  c.optimizer.layer_decay = 0.75
  c.optimizer.blr = 1e-3
  c.batch_size = setup.finetune_batch
  if protocol == "finetune10":   # a class-stratified draw of 10 % of train (seed 0)
    c.train_fraction = 0.1
    _steps(c, setup, setup.finetune10_steps, setup.train_images // 10)
  else:
    _steps(c, setup, setup.finetune_steps, setup.train_images)
  return c


def _steps(c, setup: Setup, steps: int, train_images: int):
  """``steps`` steps of ``batch_size``, the setup's share of them warmup (in epochs of
  ``train_images``), evaluated at the end only."""
  spe = train_images // c.batch_size
  c.total_steps = steps
  c.total_epochs = steps / spe
  c.warmup_epochs = setup.warmup_share * steps / spe
  c.log_every = 50
  c.checkpoint.every_steps = 1000
  c.eval.every_steps = steps


def runlocal(c, images: int = 32):
  """``runlocal`` of a cell: 4 steps of ``images`` training images (MI-MAE: 8 images x 4
  views; MLO-MAE: rounds of 2 x 16), evaluations on class-stratified draws of 64, a checkpoint
  at the end. AMT (whose refresh reads the whole training split) starts at step 1 and refreshes
  every 2 steps over ``train[:256]``, as ``amt_runlocal`` does."""
  per_step = images_per_step(c) // c.batch_size
  c.batch_size = images // per_step
  c.total_steps = 4
  c.warmup_epochs = 0.0
  c.log_every = 1
  c.image_every = 4
  c.checkpoint.every_steps = 4
  if c.model.get("masking") == "amt":
    c.train_split = "train[:256]"
    spe = epoch_steps(c, 256)
    c.amt.start_epoch, c.amt.interval_epochs = 1 / spe, 2 / spe
    c.amt.batch_size = 16
  if c.method == "mi_mae":
    c.mi_mae.club_start = 2
  if c.optimizer.schedule == "multistep":
    c.optimizer.decay_epochs = ()
  return recipes.tiny_evaluations(c, every_steps=4)
