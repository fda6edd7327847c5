"""The league on CIFAR-10 or CIFAR-100: every method, one encoder per family, GPU-sized budgets.

  python -m mim_jax.league --config configs/league_cifar.py --dataset tfds:cifar10 \
      --workdir runs/league_cifar10 --name cifar10
  python -m mim_jax.league --config configs/league_cifar.py --arg data=cifar100 \
      --dataset tfds:cifar100 --workdir runs/league_cifar100 --name cifar100
  python -m mim_jax.main --config configs/league_cifar.py:row=mae,protocol=pretrain,data=cifar100 \
      --workdir runs/mae_cifar100                          # one cell: MAE's CIFAR-100 recipe

``data=cifar10`` (default) or ``cifar100`` picks the dataset; everything else is the same. The
rows, protocols and claims are those of configs/league_fashion_mnist.py (mim_jax/league/cells.py
builds both); every pre-training row is its method's digits recipe (mask ratios, AMT's ratios
and schedule shares, MI-MAE's views and estimators, SimMIM's ViT options, learning rates) with
this file's data, encoder and budget, as on Fashion-MNIST. Each cell is also the CIFAR recipe of
its method for one run by hand. Sized for one GPU (every batch divides over 8 devices, too);
the ``runlocal`` argument makes any cell a 4-step CPU check.

Data. tfds ``cifar10`` / ``cifar100`` (50,000 train / 10,000 test, 32x32 RGB; the evaluation
role is ``test``). RandomResizedCrop(0.2-1) + horizontal flip for every training run (MAE's
pre-training crop; at 32 px a 0.08 crop would be 9 px), the whole image at evaluation.
Normalization by each dataset's own train-split mean / std.

Encoders. ViT-Ti/2: 2 px patches (16x16 = 256 tokens), 192 wide, 12 blocks, 3 heads (5.34 M
parameters), as the public small-scale MAE reference below and MLO-MAE's patch 2. The
hierarchical rows: "cifar32" of models/hierarchical.py (1 px patches; 32x32 tokens 96 wide in
8x8 windows, 2 blocks; then 16x16 tokens 192 wide, global, 10 blocks; 4.81 M), whose last grid
and width are ViT-Ti/2's, so MixMIM mixes the same 2 px cells on both encoders. Decoders of the
MAE family (MAE, MI-MAE, MLO-MAE, MixMIM): 192 wide, 4 blocks, 3 heads (the reference's).

Budgets. Pre-training 10,240,000 images seen (204.8 epochs of 50,000: 20,000 steps of 512;
MI-MAE 128 images x 4 views, MLO-MAE rounds of 2 x 512), MLO-MAE's CIFAR epochs (200). Linear
probe: 90 epochs (MAE's protocol), batch 400. Fine-tune: 100 epochs of 200 (MLO-MAE's CIFAR
fine-tuning length), finetune10 100 epochs of the 5,000 drawn images (2,500 steps). kNN over
all 50,000 / 10,000. Warmup 10 % of every run. bfloat16 compute, float32 parameters (MLO-MAE:
float32 throughout, as its finite differences need).

GPU time, projected, not measured (no GPU was lent when this was written): MAE's step at this
size is ~5.5 GFLOPs per image (forward 1.85 G: encoder 0.73 G on 65 tokens, decoder 1.11 G on
257; backward twice the forward), 56 PFLOPs for the pre-training budget; at an MFU of 0.1 (small
matrices; MAE ViT-B/16 reached 0.25 on an H100, benchmarks/README.md) an H200 (989 TFLOP/s bf16
peak) takes ~10 minutes. SimMIM and MixMIM run the encoder on all 256 tokens and cost ~2-4x, MLO-MAE
~3-4x (its rounds and hypergradient), AMT adds a refresh pass per interval: ~2-3 hours of
pre-training for the 9 rows, and ~2-3 hours of evaluations (fine-tuning: 5 M images through
the full-token ViT, ~10 minutes per cell), so ~5 hours on one H200 at one seed, ~8 with MAE's and
from-scratch's 3 seeds. Measure before trusting (benchmarks/mae_step.py with a ViT-Ti/2
workload).

Public reference points (fine-tune top-1 on the test split; other budgets and recipes, so an
order of magnitude to land near, not a target to match):
  CIFAR-10, ViT-Ti/2 (192 wide, 12 blocks), MAE 2000 epochs (batch 4096, blr 1.5e-4, decoder
    192 x 4, no augmentation), fine-tuned 100 epochs: 89.77 vs 74.13 from scratch
    (IcarusWizard/MAE, README).
  CIFAR-10 / CIFAR-100, ViT-B/2, 200 epochs of pre-training, 100 of fine-tuning (MLO-MAE paper,
    mlo_mae.md): from scratch 82.3 / 56.4, MAE 93.7 / 64.0, MLO-MAE 96.2 / 79.4.
  AMT (amt.md): +2.9 to +5.9 points of linear probing over MAE on CIFAR-10/100 among five datasets
    (per-dataset numbers not published in what we have).
"""

from mim_jax.config import choose, parse_arg
from mim_jax.league import cells as league_cells

PROTOCOLS = league_cells.PROTOCOLS
# per-channel mean / std of each train split (the usual published values)
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _adjust_pretraining(c, row):
  del row
  if c.method in ("mae", "mi_mae", "mlo_mae", "mixmim"):
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 192, 4, 3
  if c.method == "mlo_mae":   # the paper's CIFAR lrs for the head and the masking network
    c.mlo.head_lr = c.mlo.masker_lr = 4e-5


def setup(data: str = "cifar10") -> league_cells.Setup:
  choose("data", data, tuple(STATS))
  mean, std = STATS[data]
  return league_cells.Setup(
      dataset=f"tfds:{data}",
      train_images=50_000,
      image_size=32,
      mean=mean,
      std=std,
      crop_scale=(0.2, 1.0),
      flip=True,
      vit_variant="Ti/2",
      vit_size=None,
      hierarchical="cifar32",
      pretrain_batch=512,
      pretrain_images=10_240_000,
      linear_probe_batch=400,
      linear_probe_steps=90 * 125,
      finetune_batch=200,
      finetune_steps=100 * 250,
      finetune10_steps=100 * 25,
      eval_batch=400,
      fast_probe=(10_000, 10_000),
      compute_dtype="bfloat16",
      adjust_pretraining=_adjust_pretraining,
  )


def league():
  return league_cells.league(setup())


def claims():
  return league_cells.claims()


def get_config(arg=None):
  arg = parse_arg(arg, row="mae", protocol="pretrain", runlocal=False, data="cifar10")
  return league_cells.get_config(setup(arg.data), arg)
