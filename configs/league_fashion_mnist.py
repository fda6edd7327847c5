"""The league on Fashion-MNIST: every method, one encoder per family, equal budgets.

  python -m mim_jax.league --config configs/league_fashion_mnist.py \
      --dataset folder:runs/fashion_mnist --workdir runs/league_fashion_mnist
  python -m mim_jax.main --config configs/league_fashion_mnist.py:row=mae,protocol=pretrain \
      --workdir /tmp/mae_pretrain                       # one cell by hand
  python -m mim_jax.main --config configs/league_fashion_mnist.py:row=mae,protocol=finetune \
      --workdir /tmp/mae_finetune --config.init_from=/tmp/mae_pretrain

``get_config("row=ROW,protocol=PROTOCOL[,runlocal]")`` is one cell of the matrix; ``league()``
is the matrix (rows, their evaluations and default seeds) that ``python -m mim_jax.league``
runs: each cell an ordinary trainer run with ``--config.seed=S``; an evaluation cell of a
pre-training row takes ``--config.init_from`` = that row's pre-training cell of the same seed.
Random-init and supervised rows have no pre-training. The rows and cells are built by
mim_jax/league/cells.py from ``SETUP`` below (the same rows on every dataset). Online, use
``--dataset tfds:fashion_mnist`` (its ``test`` split is the evaluation role); offline, the
README's Data section converts Debian's IDX files into the folder.

Data. Fashion-MNIST (28x28 grey, 60,000 train / 10,000 test, 10 classes) as a folder dataset at
runs/fashion_mnist (train/ and test/, converted from the IDX files; a folder source decodes the
grey PNGs to three equal channels). Splits by role: train, and evaluation (= test). mean / std
0.2860 / 0.3530. Pre-training: RandomResizedCrop scale 0.35-1, the digits recipes' choice
rather than MAE's 0.2: at 28 px with 4 px patches, a 0.2-area crop is 12.5 px wide, so each
patch is ~1.8 source pixels upsampled and reconstruction becomes interpolation of blur (the
digits demo saw the same with 2 px patches); at 0.35 a patch still covers 2.4 source pixels.
The linear probe and the fine-tunings: no crop (``protocol_crop_scale``; since 2026-12-07,
issue #34), the whole image as evaluation sees it, where MAE crops 0.08-1 (an 0.08 crop, 8 px
of a 28 px garment, would often hold no class evidence). Until then they cropped 0.35-1
(results/league_fashion_mnist_v1.md), and the crop was what kept them low: measured on this VM
(2026-12-07, seed 0), the linear probe on the pixels themselves scored 0.723 after 1 epoch with
the crop and 0.815 without (10 epochs: 0.743 / 0.826), and the ViT from scratch fine-tuned 500
steps 0.713 with it, 0.764 with a 0.8-1 crop and 0.800 without (``--config configs/league_fashion_mnist.py:row=
supervised,protocol=finetune,scale=2,device,k=10 --config.data.crop_scale=(1.0,1.0)
--config.data.crop_ratio=(1.0,1.0)``; with blr 4e-3 instead of 1e-3, 0.824: one seed, within
from-scratch fine-tuning's seed spread of ~3 points, so the recipe keeps MAE's 1e-3). Horizontal flip
on (MAE's default, unlike digits): every class is a garment, shoe or bag whose mirror image is
the same class, so flipping is label-preserving. The shoes do face one way (99.7 % of the
sneakers and every ankle boot of train are closer to their class's mean image than to its
mirror; garments 66-79 %), so a flipped shoe is a view the test split never shows, but still of
its class, and no class differs from another by orientation. Evaluation: the whole 28 px image
(no center crop).

Encoders (equal footing). Every ViT row: 4 px patches (7x7 = 49 tokens), 128 wide, 4 blocks, 4
heads, MLP 4x (0.80 M parameters). Every hierarchical row: the "mnist28" size of
models/hierarchical.py: 2 px patches, 14x14 tokens 64 wide (2 blocks, 2 heads, four 7x7
windows), patch merging, 7x7 tokens 128 wide (3 blocks, 4 heads, one 7x7 window) (0.73 M),
whose last grid is the ViT's 7x7, so MixMIM's mask cells are the ViT's patches.

Rows. Method settings are those of the digits configs (configs/<method>_digits.py, loaded and
then given this file's data, encoder and budgets; their docstrings explain each choice): MAE
(mask 0.75: 36 of 49 patches), MAE + AMT (r 0.45 / t 0.40 after the first 10 % of the steps,
maps refreshed every 10 %), SimMIM (4 px cells, mask 0.6: 29 of 49), SimMIM + AMT (r 0.44 /
t 0.26 after 20 %, refresh every 20 %), MI-MAE (4 partition views, InfoNCE + CLUB), MI-MAE + AMT
(each view an AMT draw at MAE's r 0.45 / t 0.40 after 10 %: `model.masking=amt`), MixMIM on the
hierarchical encoder and on the ViT (our plain-ViT variant; mask 0.5 of the 7x7 cells: 24 from the
partner), MLO-MAE with the official finite-difference hypergradient (masking-network lr
1e-5 x 16 / 49, scaled for 49 patches: see ``_adjust_pretraining``; not measured). Baselines:
the raw pixels (no encoder: the linear probe and kNN on the normalized image itself, the row a
reader compares every probe with first; added 2026-12-07, issue #34), each encoder at random
init (linear probe, kNN; 3 seeds since 2026-12-07: the random ViT's probe moved 2.9 points
between two inits), and the ViT trained from scratch with the fine-tune recipe and budget
(finetune, finetune10); the same two for SimMIM's ViT (its block options below differ from the
plain ViT's; added 2026-12-03, after the first SimMIM rows scored far below MAE's: SimMIM's gain
or loss is read against its own encoder's baselines).

Protocols. pretrain: the row's method, with a fast probe (draws of 1000 / 2000 images, every
quarter of the steps) for a curve. linear_probe: MAE's protocol as configs/linear_probe_digits.py
(LARS, blr 6.4, BatchNorm + linear on the frozen encoder), average-pooled tokens in every row (the
hierarchical encoder has no [CLS]), evaluated after every epoch (its curve shows whether it
converged: the budget table's last section). knn: k 20, cosine, T 0.07, average-pooled features of all
60,000 training / 10,000 test images. finetune: configs/finetune_digits.py's recipe (layer decay
0.75, drop path 0.1, label smoothing 0.1, blr 1e-3) on all 60,000 labelled images, without
MAE's mixup / cutmix, RandAugment and random erasing (made for ~100 epochs: with them, MAE's
seed-0 encoder fine-tuned for these 250 steps scored 0.511 top-1, below its 1-epoch linear
probe's 0.609 and its kNN's 0.785; ``finetune_mix_aug`` in mim_jax/league/cells.py). finetune10: the same recipe and steps on 10 % of the labels: ``train_fraction
= 0.1``, a class-stratified draw of train (600 images per class, subsets.Subset with seed 0: the
same images in every row and seed; ``train[:10%]`` would be the first 6,000 files of a folder
listed class by class: class 0 alone). Evaluation cells of a
pre-training row describe that row's encoder (SimMIM's ViT options: no absolute position table,
a shared relative bias, layer scale, q/v biases; fine-tuning gives each block a copy of the
shared bias, as SimMIM fine-tunes). Top-1 / top-5 on all 10,000 test images at the end.

Budget. Measured 2026-12-03 on this 2-core VM (no GPU) while other jobs ran beside (the load
average, this run included, is given), folder:/tmp/fashion_mnist converted from the Debian IDX
files, 60 steps per row, images/s of the progress lines after compilation (steps 1-20, 21-40,
41-60; budget units: MI-MAE views = 4 x images, MLO-MAE the MAE's images):
  python -m mim_jax.main --config configs/league_fashion_mnist.py:row=ROW,protocol=PROTOCOL \
      --workdir /tmp/lg_ROW --config.dataset=folder:/tmp/fashion_mnist \
      --config.total_steps=60 --config.log_every=20 [--config.probe.enabled=False]
      [AMT rows: --config.amt.start_epoch=0.0533 --config.amt.interval_epochs=100.0]
  pre-training (load 1.9-3.3)             img/s                     planning rate
    MAE                                   356 / 313 / 334           330
    MAE + AMT      random, then AMT       254 | 386 (AMT)           330, 386
    SimMIM                                143 / 144 / 152           146
    SimMIM + AMT   cells, then AMT        157 | 193 (AMT)           157, 193
    MI-MAE (views)                        276 / 286 / 292           285
    MI-MAE + AMT   (views)                366 | 630 (AMT)           285, 630
    MixMIM, hierarchical                  82 / 78 / 75              77
    MixMIM, plain ViT                     108 / 107 / 105           107
    MLO-MAE (the MAE's images)            91 / 76 / 78              78
    AMT's attention refresh: 537-560 img/s, 107-110 s per pass over the 60,000 images
  evaluation                              img/s                     planning rate
    linear probe, ViT (load 2.9)          481 / 556 / 473           500
    linear probe, hierarchical (2.6)      253 / 262 / 277           265
    kNN, ViT: 70,000 features (2.9-5.6)   193 s                     160 s in all
    kNN, hierarchical (5.3)               373 s                     270 s
    fine-tune, ViT (5.0-5.4)              93 / 92 / 91, 96 / 103    160
    fine-tune, hierarchical (5.9-8)       54 / 53 / 56, 55 / 50     90
    a cell's start, compilation and final evaluation: 40-65 s
  The load doubles a run's time: MAE re-measured at load ~5 ran 167 / 211 / 192 img/s (1.7x
  slower), MixMIM at ~6 44 img/s, the linear probe at ~6-7 243-253; the evaluations' planning
  rates are their heavy-load figures divided by 1.7.

  The arithmetic at those rates (seconds; each pre-training run + 90 s for start, compilation
  and 4 probes). Pre-training, 96,000 images each: MAE 3 x (291 + 90) = 1143; MAE + AMT 29 +
  224 + 9 refreshes x 110 + 90 = 1333; SimMIM 658 + 90 = 748; SimMIM + AMT 122 + 398 + 4 x 110
  + 90 = 1050; MI-MAE 337 + 90 = 427; MI-MAE + AMT 34 + 137 + 990 + 90 = 1251; MixMIM 1247 + 90
  = 1337; MixMIM (ViT) 897 + 90 = 987; MLO-MAE 1231 + 90 = 1321: 9,597 s. Linear probe, 1 epoch
  (60,000): 11 ViT cells x (120 + 50) + 2 hierarchical x (226 + 65) = 2,453 s. kNN: 11 x 160 +
  2 x 270 = 2,300 s. Fine-tune, 250 steps of 120: 13 ViT cells (10 pre-trained + 3 from scratch)
  x (188 + 65) + 1 hierarchical x (333 + 90) = 3,706 s; finetune10 the same: 3,706 s. In all
  21,762 s = 6.0 hours for the 65 cells (11 pre-training runs, 54 evaluations); under the heavy
  load of a test suite running beside it, ~1.7x that. SimMIM's two baseline rows, added later,
  add 4 ViT cells (170 + 160 + 2 x 253 = 836 s): 69 cells, ~6.3 hours.

  What it can show: at one small, equal budget (1.6 epochs, 600 steps of 160), which methods
  give a better encoder than random init (kNN at random init: ViT 0.69, hierarchical 0.74 top-1)
  for a linear read-out and for fine-tuning with all or 10 % of the labels at a small
  fine-tune budget (half an epoch), against supervised training from scratch at that budget;
  each method's speed; MAE's and from-scratch's spread over 3 seeds, the noise that the
  single-seed rows are read against (MI-MAE and MAE + AMT at 3 seeds, SimMIM and SimMIM + AMT
  at 2, added later, are read against their own spread: ~1.5 hours more). What it cannot
  show: the papers' claims, made at hundreds of epochs of ImageNet on ViT-B (MAE 1600, AMT 400,
  MI-MAE 400, MixMIM 600): at 1.6 epochs a ranking is one of early-training efficiency, not of
  converged quality; differences within ~2 seed standard deviations; AMT's saving (fewer
  tokens: 386 vs 330 img/s) at this size, since its 9 refresh passes (990 s) take 4x its own
  training time; a full linear probe (1 epoch instead of 90 understates what is linearly
  readable); MLO-MAE's masking network after more than 300 rounds. The pre-training budget is
  in images seen, so slow methods (MixMIM, MLO-MAE) get more wall-clock: the table's
  wall-clock and images/s columns show that cost.

Budget axis (issue #34). ``--arg scale=N`` runs every training budget N times longer (the
pre-training images, the probe's and the fine-tunings' steps; shares and schedules follow) as
its own league, ``league_fashion_mnist_xN`` (table and ledger; give it its own ``--workdir``);
``--budget`` gathers every scale's ledger into results/league_fashion_mnist_budget.md and its
figure. The CPU runs scale 10 (960,000 images of pre-training, 16 epochs; a 10-epoch probe;
2,500 fine-tuning steps, 5 epochs), a GPU scale 50 (``--arg scale=50,pipeline=python,device,
k=32``: benchmarks/device_window.sh):
  python -m mim_jax.league --config configs/league_fashion_mnist.py \
      --dataset folder:runs/fashion_mnist --workdir runs/league_fashion_mnist_x10 \
      --arg scale=10,device,k=8 --only mae,mae_amt,simmim,mi_mae,pixels,random_vit,supervised \
      --seeds 0 --hours 2
"""

from mim_jax.league import cells as league_cells

PROTOCOLS = league_cells.PROTOCOLS


def _adjust_pretraining(c, row):
  if c.method == "mlo_mae":
    # mlo_mae_digits' masking-network lr (1e-5) keeps the mask alive with a first layer of 16
    # patches x 128 inputs; AdamW moves each weight by ~lr per update, so a pre-activation moves
    # by up to ~lr x inputs: 49 patches get the lr that moves it as much (not measured here).
    c.mlo.masker_lr = 1e-5 * 16 / 49


# The docstring has the measurements and the arithmetic behind the budgets.
SETUP = league_cells.Setup(
    dataset="folder:runs/fashion_mnist",
    train_images=60_000,          # the evaluation split: the 10,000 test images
    image_size=28,
    mean=(0.2860,),               # one value: the folder source decodes grey PNGs to 3 channels
    std=(0.3530,),
    crop_scale=(0.35, 1.0),
    flip=True,
    # the probe and the fine-tunings see whole images, as evaluation does (measured 2026-12-07:
    # the 0.35-1 crop cost the pixels' probe 9 points and from-scratch fine-tuning 9 points)
    protocol_crop_scale=(1.0, 1.0),
    vit_variant="tiny_test/4",    # 4 px patches: 7x7 = 49 tokens
    vit_size=(128, 4, 4),         # width, depth, heads: 0.80 M parameters
    hierarchical="mnist28",       # last grid 7x7, as the ViT's
    pretrain_batch=160,           # images (MI-MAE: views) per MAE update; 60,000 = 375 x 160
    pretrain_images=96_000,       # every pre-training row: 1.6 epochs, 600 steps of 160
    linear_probe_batch=240,       # 60,000 = 250 x 240
    linear_probe_steps=250,       # 1 epoch
    finetune_batch=120,           # 60,000 = 500 x 120; 6,000 = 50 x 120
    finetune_steps=250,           # 30,000 images: half an epoch of the 60,000 labelled images
    finetune10_steps=250,         # the same steps: 5 epochs of the 6,000
    eval_batch=240,               # evaluation, kNN features, AMT's refresh (divides over 8)
    finetune_mix_aug=False,       # at half an epoch MAE's regularizers keep it from fitting
    pipeline="python",            # the one the league was measured with (the default then)
    adjust_pretraining=_adjust_pretraining,
    # the rows of the claims that held or were reversed at one seed (MI-MAE's probe, AMT's
    # on MAE and on SimMIM), each read against its own seeds' spread, not MAE's (added
    # 2026-12-05: 10 to 20 minutes a seed)
    seeds={"mi_mae": [0, 1, 2], "mae_amt": [0, 1, 2], "simmim": [0, 1], "simmim_amt": [0, 1]},
)


def league():
  return league_cells.league(SETUP)


def claims():
  return league_cells.claims()


def get_config(arg=None):
  return league_cells.get_config(SETUP, arg)
