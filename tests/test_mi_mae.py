"""MI-MAE (mi_mae.md): partition masks, gradient routing of the information terms, the N = 1 case
against plain MAE, epoch accounting, and runs (with AMT too) that log every term."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax

from mim_jax import data, methods, train
from mim_jax import config as config_lib
from mim_jax.core.rng import stream_key
from mim_jax.masking import sampling
from mim_jax.objectives import mi_estimators as mi
from test_train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_INFO = data.DatasetInfo(num_classes=10, channels=1, num_examples=1437,
                               base_split_size=1437)


@pytest.mark.parametrize("views,patches", [(2, 16), (4, 16), (4, 196), (3, 10)])
def test_partition_masks_are_disjoint_and_cover(views, patches):
  b = 5
  ids_keep, ids_restore, mask = sampling.partition_masking(jax.random.key(views), b, patches,
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


def state_of(method, seed=0):
  """(params, extra) as the trainer initializes them."""
  key = jax.random.key(seed)
  return (jax.jit(method.init)(stream_key(key, "init", 0)),
          jax.jit(method.init_extra)(stream_key(key, "init_extra", 0)))


BATCH = {"image": jax.random.normal(jax.random.key(1), (8, 16, 16, 1))}
RNGS = {"mask": jax.random.key(2)}


@pytest.mark.parametrize("v_steps", [1, 3])
def test_v_is_fitted_first_by_its_own_adamw_and_l_min_uses_it(v_steps):
  """One step against a reference: V's new parameters are ``v_steps`` AdamW steps (its own lr) on
  its NLL of the detached latents, and L_min is CLUB under that new V."""
  c = tiny(**{"mi_mae.v_lr": 0.01, "mi_mae.v_weight_decay": 0.1, "mi_mae.v_steps": v_steps,
              "mi_mae.club_start": 0})
  method = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
  params, extra = state_of(method)
  loss, (m, new_extra) = jax.jit(method.loss)(params, extra, BATCH, RNGS)

  # Reference: the same views, z and x, then V's update written out with optax's AdamW.
  n, b = method.views, BATCH["image"].shape[0]

  @jax.jit
  def views(params):
    patches, ids_keep, ids_restore, _, _ = method._views(extra, BATCH, RNGS["mask"], None)
    _, latent = method.model.apply({"params": params}, patches, ids_keep, ids_restore,
                                   return_latent=True)
    return (method._latents(params, latent).reshape(b, n, -1),
            method._inputs(params, patches, ids_keep).reshape(b, n, -1))

  z, x = views(params)
  v = extra["mi"]["v_params"]

  def nll(p):
    mu, logvar = method.variational.apply({"params": p}, x)
    return -jnp.mean(mi.gaussian_log_likelihood(z, mu, logvar))

  tx = optax.adamw(0.01, b1=0.9, b2=0.999, weight_decay=0.1)
  want_v, opt_state = v, tx.init(v)
  for _ in range(v_steps):
    grads = jax.tree.map(lambda g: 10.0 * g, jax.grad(nll)(want_v))    # lambda_approx 10
    updates, opt_state = tx.update(grads, opt_state, want_v)
    want_v = optax.apply_updates(want_v, updates)
  jax.tree.map(lambda a, w: np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-6),
               new_extra["mi"]["v_params"], want_v)
  np.testing.assert_allclose(m["mi/v_nll"], nll(v), rtol=1e-5)
  mu, logvar = method.variational.apply({"params": want_v}, x)
  club = mi.club(z, mu, logvar, "views")
  np.testing.assert_allclose(m["mi/club_nats"], club, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m["loss/min"], club / method.latent_dim, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss, m["loss/rec"] + m["loss/max"] + m["loss/min"], rtol=1e-6)
  # the latents' scale: each dimension's std over the batch's views, averaged (numpy's)
  zs = np.asarray(z).reshape(-1, z.shape[-1])
  np.testing.assert_allclose(m["mi/z_std"], zs.std(axis=0).mean(), rtol=1e-5)
  assert int(new_extra["mi"]["step"]) == 1 and int(new_extra["mi"]["club_on_step"]) == 0


def test_gradient_routing_of_the_information_terms():
  """V is outside the trained parameters; L_max and L_min reach the encoder, not the decoder."""
  def grads_with(lambdas):
    c = tiny(**{"mi_mae.lambda_max": lambdas[0], "mi_mae.lambda_min": lambdas[1],
                "mi_mae.club_start": 0})
    method = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
    params, extra = state_of(method)
    return params, jax.jit(jax.grad(lambda p: method.loss(p, extra, BATCH, RNGS)[0]))(params)

  params, base = grads_with((0, 0))
  assert set(params) == {"encoder", "decoder"}
  for lambdas in ((1, 0), (0, 1)):
    _, grads = grads_with(lambdas)
    d = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), grads, base)
    assert max(jax.tree.leaves(d["encoder"])) > 0, lambdas
    assert max(jax.tree.leaves(d["decoder"])) == 0, lambdas


@pytest.mark.parametrize("start,max_nll,on_at", [(3, 0.0, 3), (0, 1e9, 0), (0, 1e-3, None)])
def test_club_is_switched_on_by_step_or_by_v_nll(start, max_nll, on_at):
  """Before the switch L_min adds nothing (its estimate is still logged); the step of the switch
  is kept in the state. V's NLL is always above 1e-3 nats, so that threshold never switches."""
  c = tiny(**{"mi_mae.club_start": start, "mi_mae.club_start_nll": max_nll,
              "mi_mae.min_per_dim": False})
  method = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
  params, extra = state_of(method)
  loss_fn = jax.jit(method.loss)
  for step in range(5):
    rngs = {"mask": jax.random.fold_in(RNGS["mask"], step)}
    loss, (m, extra) = loss_fn(params, extra, BATCH, rngs)
    on = on_at is not None and step >= on_at
    assert float(m["mi/club_on"]) == float(on), step
    assert (float(m["loss/min"]) == float(m["mi/club_nats"])) if on else (
        float(m["loss/min"]) == 0.0 and float(m["mi/club_nats"]) != 0.0), step
    np.testing.assert_allclose(loss, m["loss/rec"] + m["loss/max"] + m["loss/min"], rtol=1e-6)
  assert int(extra["mi"]["club_on_step"]) == (-1 if on_at is None else on_at)


@pytest.mark.parametrize("projector_dim", [0, 16])
def test_mae_parts_start_from_maes_init(projector_dim):
  c = tiny(**{"mi_mae.projector_dim": projector_dim})
  mi_mae = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
  mae_config = config_lib.base_config("mae")
  mae_config.model.update({k: c.model[k] for k in mae_config.model})
  mae_config.image_size = c.image_size
  mae = methods.get("mae")(mae_config, 1)
  key = stream_key(jax.random.key(c.seed), "init", 0)
  got, want = jax.jit(mi_mae.init)(key), jax.jit(mae.init)(key)
  assert set(got) == {"encoder", "decoder"} | ({"projector"} if projector_dim else set())
  want_leaves = jax.tree_util.tree_leaves_with_path(want)
  got_leaves = jax.tree_util.tree_leaves_with_path({k: got[k] for k in want})
  assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
  for (path, a), (_, w) in zip(got_leaves, want_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(w), err_msg=str(path))


def test_one_view_without_information_terms_is_plain_mae():
  c = tiny(**{"mi_mae.num_masks": 1, "mi_mae.mask_mode": "independent",
              "mi_mae.lambda_max": 0, "mi_mae.lambda_min": 0, "mi_mae.epoch_unit": "images"})
  mi_mae = methods.get("mi_mae")(c, 1, data_info=DIGITS_INFO)
  params, extra = state_of(mi_mae)
  mae_config = config_lib.base_config("mae")
  mae_config.model.update({k: c.model[k] for k in mae_config.model})
  mae_config.image_size = c.image_size
  mae = methods.get("mae")(mae_config, 1)
  got = jax.jit(lambda p: mi_mae.loss(p, extra, BATCH, RNGS))(params)
  want = jax.jit(lambda p: mae.loss(p, {}, BATCH, RNGS))(params)
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


LOGGED = ("loss/rec", "loss/max", "loss/min", "mi/v_nll", "mi/infonce_nats", "mi/club_nats",
          "mi/club_on", "mi/z_std")


def check_logged(rows, batch_size):
  for key in LOGGED:
    assert all(np.isfinite(r[key]) for r in rows), key
  assert all(r["mi/infonce_nats"] <= np.log(batch_size) + 1e-5 for r in rows)


def test_amt_run_logs_every_term(tmp_path):
  """MI-MAE's losses on AMT's masks (a config change); random masks: the digits test below."""
  c = tiny(**{"total_steps": 4, "log_every": 1, "probe.enabled": False,
              "probe.random_init": False, "image_every": 4, "train_split": "train[:64]",
              "model.masking": "amt", "amt.start_epoch": 0.25, "amt.interval_epochs": 1.0,
              "amt.batch_size": 64, "mi_mae.epoch_unit": "images"})
  workdir = str(tmp_path)
  train.train_and_evaluate(c, workdir)
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert len(rows) == 4
  check_logged(rows, 8)
  assert [r["step"] for r in read_metrics(workdir) if "amt/attention_entropy" in r] == [2]


def full_state(workdir, c):
  """(step, the whole checkpointed state: params, both optimizer states, V's state)."""
  from mim_jax.core import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  info = data.dataset_info(c.data, c.dataset, c.train_split)
  method = methods.get("mi_mae")(c, 1, data_info=info)
  schedule, _ = train.schedule_for(c, info.num_examples)
  params = jax.eval_shape(method.init, jax.random.key(0))
  tx = train.optimizer_for(c, method, schedule, params)
  shapes = jax.eval_shape(train.state_initializer(method, tx, jax.random.key(0)))
  replicated = jax.sharding.NamedSharding(train.make_mesh(), jax.sharding.PartitionSpec())
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True, async_save=False)
  try:
    step = ckpt.latest_step()
    return step, ckpt.restore(step, ckpt_lib.abstract(shapes, replicated))
  finally:
    ckpt.close()


def test_interrupted_run_resumes_bit_exact_with_both_optimizers(tmp_path, monkeypatch):
  from test_train import run_straight_and_interrupted  # pylint: disable=g-import-not-at-top
  c = tiny(**{"total_steps": 8, "log_every": 2, "checkpoint.every_steps": 4, "image_every": 8,
              "probe.enabled": False, "probe.random_init": False, "train_split": "train[:64]",
              "mi_mae.club_start": 2})
  straight, interrupted = run_straight_and_interrupted(c, tmp_path, monkeypatch, at_batch=3)
  train.train_and_evaluate(c, interrupted)
  (s1, a), (s2, b) = full_state(straight, c), full_state(interrupted, c)
  assert s1 == s2 == 8
  assert set(a) == {"params", "opt_state", "extra"} and "v_opt_state" in a["extra"]["mi"]
  assert int(a["extra"]["mi"]["club_on_step"]) == 2
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_default_digits_config_fits_v(tmp_path, monkeypatch):
  """Under configs/mi_mae_digits.py as it is (its schedule included; logging every step), V's
  NLL after 110 steps is at most 0.7x its first value, and the CLUB switch is where configured
  (step 100: the last ten steps run with CLUB on)."""
  from test_train import sigterm_at  # pylint: disable=g-import-not-at-top
  c = config_lib.load(os.path.join(ROOT, "configs", "mi_mae_digits.py"))
  for key, value in {"log_every": 1, "probe.enabled": False, "probe.random_init": False,
                     "image_every": 10_000, "checkpoint.every_steps": 10_000}.items():
    config_lib.override(c, key, str(value))
  sigterm_at(monkeypatch, at_batch=110)   # stops (with a checkpoint) after step 110
  train.train_and_evaluate(c, str(tmp_path))
  rows = {r["step"]: r for r in read_metrics(str(tmp_path)) if "mi/v_nll" in r}
  assert sorted(rows) == list(range(1, 111))
  check_logged(rows.values(), c.batch_size)
  first, last = rows[1]["mi/v_nll"], rows[110]["mi/v_nll"]
  assert last <= 0.7 * first, (first, last)
  on = [s for s in sorted(rows) if rows[s]["mi/club_on"] == 1.0]
  assert c.mi_mae.club_start == 100 and on == list(range(101, 111))
