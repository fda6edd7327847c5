"""MI-MAE (mi_mae.md): partition masks, gradient routing of the information terms, the N = 1 case
against plain MAE, epoch accounting, and runs (with AMT too) that log every term."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import config as config_lib, data, masking, methods, train
from test_train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_INFO = data.DatasetInfo(num_classes=10, channels=1, num_examples=1437,
                               base_split_size=1437)


@pytest.mark.parametrize("views,patches", [(2, 16), (4, 16), (4, 196), (3, 10)])
def test_partition_masks_are_disjoint_and_cover(views, patches):
  b = 5
  ids_keep, ids_restore, mask = masking.partition_masking(jax.random.key(views), b, patches,
                                                          views)
  kept = patches // views
  keep = np.asarray(ids_keep).reshape(b, views, kept)
  mask = np.asarray(mask).reshape(b, views, patches)
  for i in range(b):
    union = np.concatenate(list(keep[i]))
    assert len(set(union.tolist())) == views * kept               # disjoint
    if views * kept == patches:
      assert sorted(union.tolist()) == list(range(patches))       # covering
    for k in range(views):
      visible = np.flatnonzero(mask[i, k] == 0)
      assert sorted(visible.tolist()) == sorted(keep[i, k].tolist())
  # ids_restore un-shuffles [kept..., rest...] back into image order
  restore = np.asarray(ids_restore)
  flat_keep = np.asarray(ids_keep)
  for r in range(b * views):
    assert np.all(restore[r][flat_keep[r]] == np.arange(kept))


def tiny(**overrides):
  c = config_lib.load(os.path.join(ROOT, "configs", "mi_mae_digits.py:runlocal"))
  settings = {"model.width": 32, "model.depth": 1, "model.heads": 2, "model.decoder_width": 32,
              "model.decoder_depth": 1, "model.decoder_heads": 2, "mi_mae.v_hidden": 16,
              "batch_size": 8}
  settings.update(overrides)
  for key, value in settings.items():
    config_lib.override(c, key, str(value))
  return c


def grads_with(lambdas, params, batch, rngs):
  c = tiny(**{"mi_mae.lambda_max": lambdas[0], "mi_mae.lambda_min": lambdas[1],
              "mi_mae.lambda_approx": lambdas[2]})
  method = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
  fn = jax.jit(jax.grad(lambda p: method.loss(p, {}, batch, rngs)[0]))
  return fn(params)


def test_gradient_routing_of_the_information_terms():
  method = methods.get("mi_mae")(tiny(), 1, data_info=DIGITS_INFO)
  params = jax.jit(method.init)(jax.random.key(0))
  batch = {"image": jax.random.normal(jax.random.key(1), (8, 16, 16, 1))}
  rngs = {"mask": jax.random.key(2)}
  base = grads_with((0, 0, 0), params, batch, rngs)
  approx = grads_with((0, 0, 1), params, batch, rngs)
  info = grads_with((1, 1, 0), params, batch, rngs)
  diff = lambda a, b: jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)
  # L_rec does not reach V.
  assert max(jax.tree.leaves(jax.tree.map(lambda x: float(jnp.abs(x).max()),
                                          base["variational"]))) == 0
  # L_approx changes only V.
  d = diff(approx, base)
  assert max(jax.tree.leaves(d["variational"])) > 0
  assert max(jax.tree.leaves({k: v for k, v in d.items() if k != "variational"})) == 0
  # L_min and L_max do not change V, and do reach the encoder.
  d = diff(info, base)
  assert max(jax.tree.leaves(d["variational"])) == 0
  assert max(jax.tree.leaves(d["encoder"])) > 0
  assert max(jax.tree.leaves(d["decoder"])) == 0


def test_one_view_without_information_terms_is_plain_mae():
  c = tiny(**{"mi_mae.num_masks": 1, "mi_mae.mask_mode": "independent",
              "mi_mae.lambda_max": 0, "mi_mae.lambda_min": 0, "mi_mae.lambda_approx": 0,
              "mi_mae.epoch_unit": "images"})
  mi_mae = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
  params = jax.jit(mi_mae.init)(jax.random.key(0))
  mae_config = config_lib.base_config("mae")
  mae_config.model.update({k: c.model[k] for k in mae_config.model})
  mae_config.image_size = c.image_size
  mae = methods.get("mae")(mae_config, 1)
  batch = {"image": jax.random.normal(jax.random.key(1), (8, 16, 16, 1))}
  rngs = {"mask": jax.random.key(2)}
  got = jax.jit(lambda p: mi_mae.loss(p, {}, batch, rngs))(params)
  mae_params = {"encoder": params["encoder"], "decoder": params["decoder"]}
  want = jax.jit(lambda p: mae.loss(p, {}, batch, rngs))(mae_params)
  assert float(got[0]) == float(want[0])
  assert float(got[1][0]["loss/rec"]) == float(want[0])


def test_epochs_in_views_and_the_imagenet_recipe():
  c = config_lib.load(os.path.join(ROOT, "configs", "mi_mae_digits.py"))
  method = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
  assert method.epoch_fraction == 0.25
  _, total = train.schedule_for(c, round(1437 * method.epoch_fraction))
  assert total == 1100
  assert total * c.batch_size * c.mi_mae.num_masks == 1100 * 128        # mae_digits' views
  c = config_lib.load(os.path.join(ROOT, "configs", "mi_mae_imagenet.py"))
  assert (c.batch_size, c.total_epochs, c.warmup_epochs, c.optimizer.blr) == (1024, 400, 10,
                                                                              1.5e-4)
  assert (c.mi_mae.lambda_max, c.mi_mae.lambda_min, c.mi_mae.lambda_approx) == (1, 1, 10)
  assert c.mi_mae.temperature == 0.07 and c.mi_mae.num_masks == 4


@pytest.mark.parametrize("masking_name", ["random", "amt"])
def test_runs_log_every_term(tmp_path, masking_name):
  overrides = {"total_steps": 4, "log_every": 1, "probe.enabled": False,
               "probe.random_init": False, "image_every": 4, "train_split": "train[:64]"}
  if masking_name == "amt":   # MI-MAE's losses on AMT's masks: a config change
    overrides.update({"model.masking": "amt", "amt.start_epoch": 0.25, "amt.interval_epochs": 1.0,
                      "amt.batch_size": 64, "mi_mae.epoch_unit": "images"})
  c = tiny(**overrides)
  workdir = str(tmp_path / masking_name)
  train.train_and_evaluate(c, workdir)
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert len(rows) == 4
  for key in ("loss/rec", "loss/max", "loss/min", "loss/approx", "mi/infonce_nats",
              "mi/club_nats"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert all(r["mi/infonce_nats"] <= np.log(8) + 1e-5 for r in rows)
  if masking_name == "amt":
    assert [r["step"] for r in read_metrics(workdir) if "amt/attention_entropy" in r] == [2]
