"""Config files, arg strings, overrides and their errors."""

import json
import os

import pytest

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
  with pytest.raises(ValueError, match="variant must be one of"):
    config_lib.load(f"{IMAGENET}:variant=B/32")


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
