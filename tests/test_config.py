"""Config files, arg strings, overrides and their errors."""

import json
import os

import pytest

from mim_jax import data, methods
from mim_jax import config as config_lib
from mim_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "mae_digits.py")
IMAGENET = os.path.join(ROOT, "configs", "mae_imagenet.py")


def test_imagenet_variants_and_recipe():
  for variant in ("B/16", "L/16", "H/14"):
    c = config_lib.load(f"{IMAGENET}:variant={variant}")
    assert c.model.variant == variant
  c = config_lib.load(IMAGENET)
  assert (c.batch_size, c.optimizer.blr, c.optimizer.b2, c.total_epochs, c.warmup_epochs) == \
      (4096, 1.5e-4, 0.95, 800.0, 40.0)
  assert c.model.mask_ratio == 0.75 and c.model.norm_pix_loss
  with pytest.raises(config_lib.ConfigError, match=r"variant must be one of \('B/16', "):
    config_lib.load(f"{IMAGENET}:variant=B/32")
  for name in ("simmim_digits.py", "simmim_imagenet.py", "mixmim_digits.py", "mixmim_imagenet.py"):
    with pytest.raises(config_lib.ConfigError, match="encoder must be one of .*got 'swin'"):
      config_lib.load(os.path.join(ROOT, "configs", f"{name}:encoder=swin"))


def test_runlocal_shrinks_the_config():
  full, quick = config_lib.load(DIGITS), config_lib.load(f"{DIGITS}:runlocal")
  assert quick.total_epochs < full.total_epochs


def test_unknown_arg_word_is_an_error():
  with pytest.raises(config_lib.ConfigError, match="unknown config argument 'runlcal'"):
    config_lib.load(f"{DIGITS}:runlcal")


def test_overrides_parse_and_check_types():
  c = config_lib.load(DIGITS)
  config_lib.override(c, "model.mask_ratio", "0.6")
  config_lib.override(c, "batch_size", "64")
  config_lib.override(c, "data.crop_scale", "(0.5, 1)")
  config_lib.override(c, "dataset", "folder:/data/x")
  config_lib.override(c, "optimizer.blr", "1")  # int where a float is expected: fine
  assert (c.model.mask_ratio, c.batch_size, c.data.crop_scale, c.dataset, c.optimizer.blr) == \
      (0.6, 64, (0.5, 1), "folder:/data/x", 1.0)
  with pytest.raises(config_lib.ConfigError, match="'model.mask_ration'.*'model.mask_ratio'"):
    config_lib.override(c, "model.mask_ration", "0.5")
  with pytest.raises(config_lib.ConfigError, match="'batch_size' expects int"):
    config_lib.override(c, "batch_size", "1.5")
  with pytest.raises(config_lib.ConfigError, match="'probe.enabled' expects bool"):
    config_lib.override(c, "probe.enabled", "yes")
  with pytest.raises(config_lib.ConfigError, match="is a group"):
    config_lib.override(c, "model", "1")


def test_config_file_with_unknown_key_fails(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from mim_jax.config import base_config\n"
                 "def get_config(arg=None):\n"
                 "  c = base_config('mae')\n"
                 "  c.model.mask_rato = 0.5\n"
                 "  return c\n")
  with pytest.raises(config_lib.ConfigError, match="mask_rato"):
    config_lib.load(str(bad))


def test_cli_reports_config_errors_before_running(tmp_path, capsys):
  workdir = tmp_path / "w"
  rc = main_lib.main(["--config", DIGITS, "--workdir", str(workdir), "--config.modl.width=3"])
  assert rc == 2
  assert "unknown config key 'modl.width'" in capsys.readouterr().err
  assert not workdir.exists()      # nothing ran
  rc = main_lib.main(["--config", DIGITS, "--workdir", str(workdir), "--bogus"])
  assert rc == 2 and "unrecognized argument '--bogus'" in capsys.readouterr().err


def test_resolved_config_round_trips(tmp_path):
  c = config_lib.load(DIGITS)
  config_lib.override(c, "seed", "7")
  path = config_lib.save(c, str(tmp_path))
  saved = json.load(open(path))
  assert saved["seed"] == 7 and saved["model"]["variant"] == c.model.variant


def _load(name):
  return config_lib.load(os.path.join(ROOT, "configs", name))


def test_every_config_file_loads_with_its_variants():
  names = sorted(n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".py"))
  assert len(names) >= 11
  variants = {"finetune_mae_imagenet.py": ("B/16", "L/16", "H/14"),
              "linear_probe_imagenet.py": ("B/16", "L/16", "H/14"),
              "finetune_mixmim_imagenet.py": ("B", "L"), "mae_imagenet.py": ("B/16", "L/16"),
              "mixmim_imagenet.py": ("B", "L")}
  for name in names:
    for arg in variants.get(name, (None,)):
      spec = name if arg is None else f"{name}:variant={arg}"
      c = _load(spec)
      assert c.method in methods.names(), spec
      info = data.DatasetInfo(10, 1 if c.dataset == "digits" else 3, 1000, 1000)
      methods.get(c.method)(c, info.channels, num_classes=10, data_info=info)  # builds


def test_fine_tune_and_linear_probe_recipes_match_evaluation_md():
  """The numbers of docs/methods/evaluation.md and the official scripts."""
  for variant, (epochs, blr, decay, drop) in {"B/16": (100, 5e-4, 0.65, 0.1),
                                              "L/16": (50, 1e-3, 0.75, 0.2),
                                              "H/14": (50, 1e-3, 0.75, 0.3)}.items():
    c = _load(f"finetune_mae_imagenet.py:variant={variant}")
    assert (c.total_epochs, c.optimizer.blr, c.optimizer.layer_decay, c.model.drop_path) == \
        (epochs, blr, decay, drop)
    assert (c.batch_size, c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay) == \
        (1024, 0.9, 0.999, 0.05)
    assert (c.warmup_epochs, c.optimizer.min_lr, c.model.label_smoothing) == (5.0, 1e-6, 0.1)
    assert (c.model.mixup, c.model.cutmix, c.data.random_erase) == (0.8, 1.0, 0.25)
    assert c.data.randaugment == "rand-m9-mstd0.5-inc1" and c.model.pool == "avg"
    assert c.data.crop_scale == (0.08, 1.0) and c.init_from == ""
  scratch = _load("supervised_imagenet.py")
  assert scratch.init_from == "" and scratch.optimizer.blr == 5e-4 and scratch.method == "finetune"
  lp = _load("linear_probe_imagenet.py")
  assert (lp.optimizer.name, lp.optimizer.blr, lp.batch_size, lp.total_epochs) == \
      ("lars", 0.1, 16384, 90.0)
  assert (lp.optimizer.momentum, lp.optimizer.trust_coefficient, lp.optimizer.weight_decay,
          lp.warmup_epochs, lp.model.pool) == (0.9, 0.001, 0.0, 10.0, "cls")
  assert _load("linear_probe_imagenet.py:variant=L/16").total_epochs == 50.0
  mix = _load("finetune_mixmim_imagenet.py")
  assert (mix.model.encoder, mix.optimizer.layer_decay, mix.optimizer.blr) == \
      ("hierarchical", 0.7, 5e-4)
  sim = _load("finetune_simmim_imagenet.py")
  # SimMIM scales lr per 512 images: 1.25e-3 * 2048 / 512 = 5e-3.
  assert abs(sim.optimizer.blr * sim.batch_size / 256 - 5e-3) < 1e-12
  assert (sim.warmup_epochs, sim.optimizer.grad_clip_norm, sim.optimizer.layer_decay) == \
      (20.0, 5.0, 0.65)
  knn = _load("knn_imagenet.py")
  assert knn.eval_only and (knn.knn.k, knn.knn.temperature) == (20, 0.07)


def test_classifier_sizes_of_the_imagenet_fine_tune_configs():
  """ViT-B/16 classifier with a learnable position embedding: 86,567,656 parameters (timm's
  vit_base_patch16_224); MixMIM-B: 87.94 M trainable (mixmim.md: 88.34 M with the fixed 0.40 M
  sin-cos table), of which the head 1.02 M."""
  import jax
  from mim_jax import methods
  for name, expect in (("finetune_mae_imagenet.py", 86_567_656),
                       ("finetune_mixmim_imagenet.py", 87_942_944)):
    c = _load(name)
    method = methods.get("finetune")(c, 3, num_classes=1000)
    shapes = jax.eval_shape(method.init, jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == expect, name
    assert sum(x.size for x in jax.tree.leaves(shapes["head"])) == \
        (768 if "mae" in name else 1024) * 1000 + 1000


def test_amt_imagenet_configs_default_to_the_papers_ratios_and_offer_the_released_run():
  """Issue #20: the default follows the paper's r / t with the crop alignment fixed; ``:released``
  is the run the released code makes (MAE-AMT: main_pretrain.py's 0.75 / 0, which the README's
  command keeps; SimMIM-AMT: the yaml's 0.44 / 0.26) with its crop bug. Nothing else differs."""
  cases = {"mae_amt_imagenet.py": ((0.45, 0.40), (0.75, 0.0)),
           "simmim_amt_imagenet.py": ((0.44, 0.26), (0.44, 0.26))}
  for name, (paper, released) in cases.items():
    default, variant = _load(name), _load(f"{name}:released")   # _load validates
    assert default.model.masking == variant.model.masking == "amt", name
    assert (default.amt.mask_ratio, default.amt.throw_ratio) == paper, name
    assert default.amt.faithful_crop_bug is False, name
    assert (variant.amt.mask_ratio, variant.amt.throw_ratio) == released, name
    assert variant.amt.faithful_crop_bug is True, name
    rest = []
    for c in (default, variant):
      d = c.to_dict()
      for key in ("mask_ratio", "throw_ratio", "faithful_crop_bug"):
        del d["amt"][key]
      rest.append(d)
    assert rest[0] == rest[1], name
    for arg in ("runlocal", "released,runlocal"):
      quick = _load(f"{name}:{arg}")
      assert quick.total_steps and quick.amt.faithful_crop_bug == ("released" in arg), name
      info = data.DatasetInfo(10, 3, 256, 256)
      methods.get(quick.method)(quick, 3, num_classes=10, data_info=info)  # AMT counts fit
  # the released MAE-AMT run keeps the plain 0.75 masking before AMT, as the paper's does
  assert _load("mae_amt_imagenet.py:released").model.mask_ratio == 0.75
  with pytest.raises(config_lib.ConfigError, match="unknown config argument 'relased'"):
    _load("mae_amt_imagenet.py:relased")


def test_each_method_carries_only_its_own_config_groups():
  own = {"mae": {"amt"}, "simmim": {"amt"}, "mi_mae": {"amt", "mi_mae"}, "mlo_mae": {"mlo"},
         "mixmim": set(), "finetune": set(), "linear_probe": set(), "knn": set()}
  assert set(own) == set(methods.names())
  for method, groups in own.items():
    c = config_lib.base_config(method)
    assert {g for g in ("amt", "mi_mae", "mlo") if g in c} == groups, method
  # another method's key is an error naming whose it is, from the command line ...
  c = config_lib.base_config("finetune")
  with pytest.raises(config_lib.ConfigError, match="'mlo' belongs to the method.* mlo_mae; this "
                                                   "run's method is 'finetune'"):
    config_lib.override(c, "mlo.hypergrad", "jvp")
  with pytest.raises(config_lib.ConfigError, match="'amt' belongs to .*mae, mi_mae, simmim"):
    config_lib.override(config_lib.base_config("mixmim"), "amt.start_epoch", "3")
  # ... and from a saved config (a config.json of a run whose method changed)
  saved = config_lib.base_config("mae").to_dict()
  saved["method"] = "mlo_mae"
  with pytest.raises(config_lib.ConfigError, match="'amt' belongs to"):
    config_lib.validate(config_lib.ConfigDict(saved))
  # a name no method owns stays an unknown key
  with pytest.raises(config_lib.ConfigError, match="unknown config key 'mloo.hypergrad'"):
    config_lib.override(c, "mloo.hypergrad", "jvp")


def test_the_method_resolves_what_it_decides_before_config_json_is_written():
  c = config_lib.base_config("mlo_mae")
  assert methods.get("mlo_mae").resolve_config(c).model.attention == "auto"  # first order
  config_lib.override(c, "mlo.hypergrad", "unroll")
  assert methods.get("mlo_mae").resolve_config(c).model.attention == "xla"
  assert c.model.attention == "auto"   # a copy: the caller's config is left as given
  config_lib.override(c, "model.attention", "cudnn")
  with pytest.raises(ValueError, match="cuDNN's fused kernel cannot"):
    methods.get("mlo_mae").resolve_config(c)
