"""MLO-MAE building blocks: masking network, top-k mask, weighted loss, encoder embedding hook,
and the three hypergradient modes on a bilevel problem with a closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mim_jax.masking import sampling
from mim_jax.models.masking_net import MaskingNet
from mim_jax.models.posembed import sincos_2d
from mim_jax.models.vit_encoder import ViTEncoder
from mim_jax.objectives import hypergrad, losses


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def random_params(module, seed, *inputs):
  """Parameters of ``module`` with the shapes of its init, filled from numpy (no random-number
  kernels to compile: the tests stay fast on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, s.dtype), shapes)


# ------------------------------------------------------------------------------------------
# Masking network
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_patches,millions", [(256, 100.8), (196, 77.2)])
def test_masking_net_parameter_count_matches_spec(num_patches, millions):
  dim = 768
  shapes = jax.eval_shape(MaskingNet().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, num_patches, dim), jnp.float32))
  expected = num_patches * dim * 512 + 512 + 512 * num_patches + num_patches
  assert count(shapes) == expected
  assert round(expected / 1e6, 1) == millions
  p = shapes["params"]
  assert p["hidden"]["kernel"].shape == (num_patches * dim, 512)
  assert p["out"]["kernel"].shape == (512, num_patches)


def test_masking_net_forward_and_torch_default_init():
  b, num_patches, dim, hidden = 3, 16, 24, 64
  x = np.random.default_rng(0).normal(size=(b, num_patches, dim)).astype(np.float32)
  net = MaskingNet(hidden)

  @jax.jit
  def run(key, x):
    params = net.init(key, x)["params"]
    return params, net.apply({"params": params}, x), MaskingNet(
        hidden, dtype=jnp.bfloat16).apply({"params": params}, x)

  params, probs, low = run(jax.random.key(1), x)
  for name, fan_in in (("hidden", num_patches * dim), ("out", hidden)):
    bound = 1 / np.sqrt(fan_in)
    kernel, bias = (np.asarray(params[name][k]) for k in ("kernel", "bias"))
    assert bound * 0.99 < np.abs(kernel).max() <= bound
    assert abs(kernel.mean()) < 0.05 * bound
    assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)   # U(-b, b)
    assert 0.5 * bound < np.abs(bias).max() <= bound                      # not zeros
  assert probs.shape == (b, num_patches) and probs.dtype == jnp.float32
  h = np.maximum(x.reshape(b, -1) @ params["hidden"]["kernel"] + params["hidden"]["bias"], 0)
  logits = h @ params["out"]["kernel"] + params["out"]["bias"]
  np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
  assert np.all((np.asarray(probs) > 0) & (np.asarray(probs) < 1))
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, probs, atol=0.05)


# ------------------------------------------------------------------------------------------
# Top-k mask and weighted loss
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_patches", [256, 196, 64, 16])
def test_topk_masking_masks_the_highest_probabilities(num_patches):
  b, ratio = 4, 0.75
  probs = np.random.default_rng(num_patches).uniform(size=(b, num_patches)).astype(np.float32)
  ids_keep, ids_restore, mask = jax.jit(sampling.topk_masking, static_argnums=1)(probs, ratio)
  masked_count = int(num_patches * ratio)
  kept = num_patches - masked_count
  assert ids_keep.shape == (b, kept) and ids_restore.shape == (b, num_patches)
  assert ids_keep.dtype == jnp.int32 and ids_restore.dtype == jnp.int32
  assert mask.dtype == jnp.float32
  probs, ids_keep, ids_restore, mask = map(np.asarray, (probs, ids_keep, ids_restore, mask))
  np.testing.assert_array_equal(mask.sum(1), masked_count)
  for r in range(b):
    top = np.argsort(-probs[r], kind="stable")[:masked_count]
    assert set(np.flatnonzero(mask[r])) == set(top)
    assert set(ids_keep[r]) == set(np.flatnonzero(mask[r] == 0))
    np.testing.assert_array_equal(ids_keep[r], np.argsort(probs[r], kind="stable")[:kept])
    assert sorted(ids_restore[r]) == list(range(num_patches))
    shuffle = np.argsort(ids_restore[r])          # ids_restore inverts the shuffle
    np.testing.assert_array_equal(shuffle[:kept], ids_keep[r])
    np.testing.assert_array_equal(shuffle[ids_restore[r]], np.arange(num_patches))
    np.testing.assert_array_equal(mask[r], (ids_restore[r] >= kept).astype(np.float32))


def test_topk_masking_breaks_ties_by_index():
  probs = jnp.array([[0.5] * 8, [0.1, 0.9, 0.5, 0.5, 0.5, 0.2, 0.9, 0.1]])
  _, _, mask = sampling.topk_masking(probs, 0.5)
  # all equal: the higher indices are masked; row 2: both 0.9s, then the two highest-index 0.5s
  np.testing.assert_array_equal(mask[0], [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(mask[1], [0, 1, 0, 1, 1, 0, 1, 0])


def test_topk_mask_carries_no_gradient_but_weighted_loss_does():
  rng = np.random.default_rng(0)
  b, num_patches, d = 2, 16, 6
  pred, target = rng.normal(size=(2, b, num_patches, d)).astype(np.float32)
  probs = jnp.asarray(rng.uniform(size=(b, num_patches)), jnp.float32)

  # a function of p through the mask only: zero gradient
  mask_only = lambda p: jnp.sum(sampling.topk_masking(p, 0.75)[2] * jnp.arange(num_patches))
  np.testing.assert_array_equal(jax.grad(mask_only)(probs), 0)

  def loss(p):
    _, _, mask = sampling.topk_masking(p, 0.75)
    return losses.probability_weighted_mse(pred, target, mask, p)

  grad = np.asarray(jax.jit(jax.grad(loss))(probs))
  mask = np.asarray(sampling.topk_masking(probs, 0.75)[2])
  per_patch = ((pred - target) ** 2).mean(-1)
  # dL/dp_j = m_j l_j / sum(m): only the weighting, nothing from the sort
  np.testing.assert_allclose(grad, mask * per_patch / mask.sum(), rtol=1e-5)
  assert np.all(grad[mask == 1] > 0) and np.all(grad[mask == 0] == 0)


def test_probability_weighted_mse_matches_numpy_loop():
  rng = np.random.default_rng(3)
  b, num_patches, d = 3, 10, 5
  pred, target = rng.normal(size=(2, b, num_patches, d))
  mask = (rng.random((b, num_patches)) < 0.6).astype(np.float64)
  probs = rng.uniform(size=(b, num_patches))
  total, count_masked = 0.0, 0.0
  for i in range(b):
    for j in range(num_patches):
      err = sum((pred[i, j, k] - target[i, j, k]) ** 2 for k in range(d)) / d
      total += mask[i, j] * probs[i, j] * err
      count_masked += mask[i, j]
  got = losses.probability_weighted_mse(*(jnp.asarray(a, jnp.float32)
                                          for a in (pred, target, mask, probs)))
  assert float(got) == pytest.approx(total / count_masked, rel=1e-5)
  # with p = 1 it is the plain masked MSE
  ones = jnp.ones((b, num_patches))
  assert float(losses.probability_weighted_mse(pred, target, mask, ones)) == pytest.approx(
      float(losses.masked_mse(pred, target, mask)), rel=1e-6)


# ------------------------------------------------------------------------------------------
# Encoder embedding hook
# ------------------------------------------------------------------------------------------
def layer_norm(x, scale, bias, eps=1e-6):
  x = np.asarray(x, np.float64)
  normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
  return normed * np.asarray(scale) + np.asarray(bias)


@pytest.mark.parametrize("learnable_pos", [False, True])
def test_encoder_embed_is_what_the_encoder_adds_before_cls(learnable_pos):
  # depth 0: the encoder is embed -> [CLS] -> final LayerNorm, checkable by hand
  width, grid, patch_dim, b = 32, (4, 4), 12, 2
  enc = ViTEncoder(width, 0, 2, grid, learnable_pos=learnable_pos)
  rng = np.random.default_rng(0)
  patches = rng.normal(size=(b, 16, patch_dim)).astype(np.float32)
  params = random_params(enc, 0, patches)
  assert set(params) == {"patch_embed", "cls_token", "transformer"} | (
      {"pos_embed"} if learnable_pos else set())            # the hook adds no parameters
  table = sincos_2d(width, *grid, cls_token=True)[None]
  if learnable_pos:                                         # a parameter, not the table
    table = np.asarray(params["pos_embed"])
  ids_keep = jnp.array([[3, 0, 7], [15, 2, 9]], jnp.int32)
  net = MaskingNet(16)
  net_params = random_params(net, 1, jnp.zeros((b, 16, width)))
  weights = jnp.asarray(rng.normal(size=(b, 16)), jnp.float32)

  @jax.jit
  def run(params):
    v = {"params": params}
    emb = enc.apply(v, patches, method=ViTEncoder.embed)
    flag = enc.apply(v, patches, return_embeddings=True)
    # MLO-MAE: the masking net reads the embeddings; its output reaches the patch embedding
    objective = lambda p: jnp.sum(weights * net.apply(
        {"params": net_params}, enc.apply({"params": p}, patches, method=ViTEncoder.embed)))
    return emb, flag, enc.apply(v, patches), enc.apply(v, patches, ids_keep), jax.grad(
        objective)(params)

  emb, flag, full, kept, grads = run(params)
  proj = params["patch_embed"]["proj"]
  np.testing.assert_allclose(emb, patches @ proj["kernel"] + proj["bias"] + table[:, 1:],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(emb, flag)
  # the encoder's output is LayerNorm([cls + pos_0, embed(patches)]); with ids_keep, the
  # same on the kept rows of embed(patches)
  cls = np.broadcast_to(np.asarray(params["cls_token"]) + table[:, :1], (b, 1, width))
  norm = params["transformer"]["norm"]
  np.testing.assert_allclose(full, layer_norm(np.concatenate([cls, emb], 1), **norm), atol=1e-4)
  sub = np.take_along_axis(np.asarray(emb), np.asarray(ids_keep)[:, :, None], axis=1)
  np.testing.assert_allclose(kept, layer_norm(np.concatenate([cls, sub], 1), **norm), atol=1e-4)
  for leaf in ("kernel", "bias"):
    g = np.asarray(grads["patch_embed"]["proj"][leaf])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  np.testing.assert_array_equal(grads["cls_token"], 0)
  if learnable_pos:
    assert np.abs(np.asarray(grads["pos_embed"][:, 1:])).max() > 0
    np.testing.assert_array_equal(grads["pos_embed"][:, 0], 0)


# ------------------------------------------------------------------------------------------
# Hypergradients on a quadratic bilevel problem
#   L_P = 0.5 ||A theta - B phi - t||^2        H^P_{phi theta} = -B^T A
#   L_F = 0.5 ||C psi - D theta - s||^2        H^F_{theta psi} = -D^T C
#   L_M = 0.5 ||E theta + G psi - y||^2        v_theta = E^T r, v_psi = G^T r
# first order: -H^P_{phi theta} (v_theta - H^F_{theta psi} v_psi) = B^T A (v_theta + D^T C v_psi)
# Parameters are dicts so that the pytree plumbing is exercised too.
# ------------------------------------------------------------------------------------------
N_THETA, N_PSI, N_PHI = 6, 4, 3


def quadratic_problem(seed=0):
  rng = np.random.default_rng(seed)
  m = lambda r, c, s=1.0: rng.normal(size=(r, c)) * s / np.sqrt(c)
  mats = dict(A=m(7, N_THETA), B=m(7, N_PHI), C=m(5, N_PSI), D=m(5, N_THETA),
              E=m(3, N_THETA), G=m(3, N_PSI))
  theta = {"w": rng.normal(size=(N_THETA - 2,)), "b": rng.normal(size=(2,))}
  psi = {"h": rng.normal(size=(N_PSI,))}
  phi = {"m": rng.normal(size=(N_PHI,))}
  batches = dict(t=rng.normal(size=(3, 7)), s=rng.normal(size=(3, 5)), y=rng.normal(size=3))
  return mats, theta, psi, phi, batches


def vec_theta(theta):
  return jnp.concatenate([theta["w"], theta["b"]])


def quadratic_losses(mats):
  A, B, C, D, E, G = (jnp.asarray(mats[k]) for k in "ABCDEG")

  def loss_p(theta, phi, t):
    return 0.5 * jnp.sum(jnp.square(A @ vec_theta(theta) - B @ phi["m"] - t))

  def loss_f(theta, psi, s):
    return 0.5 * jnp.sum(jnp.square(C @ psi["h"] - D @ vec_theta(theta) - s))

  def loss_m(theta, psi, y):
    return 0.5 * jnp.sum(jnp.square(E @ vec_theta(theta) + G @ psi["h"] - y))

  return loss_p, loss_f, loss_m


def analytic_first_order(mats, theta, psi, y):
  A, B, C, D, E, G = (mats[k] for k in "ABCDEG")
  th = np.concatenate([theta["w"], theta["b"]])
  r = E @ th + G @ psi["h"] - y
  v_theta, v_psi = E.T @ r, G.T @ r
  return B.T @ A @ (v_theta + D.T @ C @ v_psi)


def cosine(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_jvp_and_finite_difference_match_the_analytic_first_order_expression():
  with jax.enable_x64(True):
    mats, theta, psi, phi, bt = quadratic_problem()
    loss_p, loss_f, loss_m = quadratic_losses(mats)
    args = (theta, psi, phi, bt["t"][0], bt["s"][0], bt["y"])
    expected = analytic_first_order(mats, theta, psi, bt["y"])
    run = jax.jit(lambda *args: (hypergrad.jvp(loss_p, loss_f, loss_m, *args),
                                 hypergrad.finite_difference(loss_p, loss_f, loss_m, *args)))
    (g_jvp, d_jvp), (g_fd, d_fd) = run(*args)
    np.testing.assert_allclose(g_jvp["m"], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_fd["m"], g_jvp["m"], rtol=1e-8, atol=1e-10)
    # both paths matter on this problem, and the diagnostics are consistent
    assert float(d_fd["g_b_norm"]) > 0.1 * float(d_fd["g_a_norm"]) > 0
    assert float(d_fd["u_norm"]) == pytest.approx(float(d_jvp["u_norm"]), rel=1e-8)
    assert float(d_fd["eps_a"]) == pytest.approx(0.01 / float(d_fd["v_theta_norm"]), rel=1e-9)
    th = np.concatenate([theta["w"], theta["b"]])
    r = mats["E"] @ th + mats["G"] @ psi["h"] - bt["y"]
    assert float(d_fd["loss_m"]) == pytest.approx(0.5 * r @ r, rel=1e-12)
    assert float(d_jvp["grad_norm"]) == pytest.approx(np.linalg.norm(expected), rel=1e-10)


def test_jvp_matches_finite_difference_on_a_non_quadratic_problem():
  with jax.enable_x64(True):
    mats, theta, psi, phi, bt = quadratic_problem(1)
    A, B, C, D, E, G = (jnp.asarray(mats[k]) for k in "ABCDEG")
    def loss_p(th, ph, t):
      return jnp.sum(jnp.tanh(A @ vec_theta(th) - B @ jnp.sin(ph["m"]) - t) ** 2)

    def loss_f(th, ps, s):
      return jnp.sum(jnp.log(jnp.cosh(C @ ps["h"] * (D @ vec_theta(th)) - s)))

    def loss_m(th, ps, y):
      return jnp.sum(jnp.tanh(E @ vec_theta(th) + G @ ps["h"] - y) ** 2)

    losses_ = (loss_p, loss_f, loss_m)

    @jax.jit
    def run(theta, psi, phi, t, s, y):
      args = losses_ + (theta, psi, phi, t, s, y)
      return (hypergrad.jvp(*args)[0], hypergrad.finite_difference(*args, alpha=1e-4)[0],
              hypergrad.finite_difference(*args)[0])    # alpha = 0.01: close, not exact

    g_jvp, g_fd, g_coarse = run(theta, psi, phi, bt["t"][0], bt["s"][0], bt["y"])
    np.testing.assert_allclose(g_fd["m"], g_jvp["m"], rtol=1e-6, atol=1e-9)
    assert cosine(g_coarse["m"], g_jvp["m"]) > 0.999


def hand_unrolled(mats, theta, psi, bt, a, b, psi_every):
  """phi -> L_M after two SGD steps of theta (psi steps after every ``psi_every``-th), written
  out by hand with the gradients of the quadratics."""
  A, B, C, D, E, G = (jnp.asarray(mats[k]) for k in "ABCDEG")

  def outer(ph):
    th, ps = vec_theta(theta), psi["h"]
    for k in range(2):
      th = th - a * A.T @ (A @ th - B @ ph - bt["t"][k])
      if (k + 1) % psi_every == 0:
        ps = ps - b * C.T @ (C @ ps - D @ th - bt["s"][(k + 1) // psi_every - 1])
    return 0.5 * jnp.sum(jnp.square(E @ th + G @ ps - bt["y"]))
  return outer


@pytest.mark.parametrize("psi_every", [1, 2])
def test_unroll_matches_hand_written_steps_and_points_like_first_order(psi_every):
  with jax.enable_x64(True):
    mats, theta, psi, phi, bt = quadratic_problem()
    loss_p, loss_f, loss_m = quadratic_losses(mats)
    a, b = 0.05, 0.03
    batches_p = [bt["t"][0], bt["t"][1]]
    batches_f = [bt["s"][k] for k in range(2 // psi_every)]
    tx_t, tx_s = optax.sgd(a), optax.sgd(b)
    by_hand = hand_unrolled(mats, theta, psi, bt, a, b, psi_every)

    @jax.jit
    def run(theta, psi, phi):
      common = (loss_p, loss_f, loss_m, theta, psi, phi, batches_p, batches_f, bt["y"])
      sgd = (hypergrad.sgd(a), hypergrad.sgd(b))
      return (hypergrad.unroll(*common, *sgd, psi_every=psi_every),
              hypergrad.unroll(*common, hypergrad.optax_update(tx_t),
                               hypergrad.optax_update(tx_s), tx_t.init(theta), tx_s.init(psi),
                               psi_every=psi_every)[0],
              jax.value_and_grad(by_hand)(phi["m"]))

    (grad, diag, inner), via_optax, (value, expected) = run(theta, psi, phi)
    np.testing.assert_allclose(grad["m"], expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(via_optax["m"], grad["m"], rtol=1e-10)    # optax SGD: same
    assert float(diag["loss_m"]) == pytest.approx(float(value), rel=1e-12)
    assert float(diag["loss_m"]) == pytest.approx(float(loss_m(inner.theta, inner.psi, bt["y"])))
    # a descent direction of the unrolled objective (sign convention)
    step = 1e-3 * np.asarray(grad["m"]) / np.linalg.norm(grad["m"])
    assert float(jax.jit(by_hand)(phi["m"] - step)) < float(value)
    # Small inner rates: unroll ~ -(K a) H^P_{phi theta} v_theta + O(a b) (path B is weighted by
    # the psi rate b, not by 1 as in the first-order expression), so it points like path A and
    # (on this problem) positively like the first-order expression.
    A, B, E, G = (mats[k] for k in "ABEG")
    r = E @ vec_theta(theta) + G @ psi["h"] - bt["y"]
    assert cosine(grad["m"], B.T @ A @ E.T @ r) > 0.99
    assert cosine(grad["m"], analytic_first_order(mats, theta, psi, bt["y"])) > 0.5


def test_unroll_with_unit_psi_rate_tends_to_the_first_order_expression():
  """K = 1, psi at its stage-II optimum, psi rate 1: unroll / a -> the first-order expression as
  the theta rate a -> 0 (unroll weights path B by the psi rate; see ``hypergrad.unroll``)."""
  with jax.enable_x64(True):
    mats, theta, psi, phi, bt = quadratic_problem()
    mats["C"] = np.linalg.qr(mats["C"][:N_PSI])[0]     # square, orthogonal: C^T C = I
    C, D = mats["C"], mats["D"][:N_PSI]
    mats["D"] = D
    s = np.zeros(N_PSI)
    psi = {"h": C.T @ D @ np.concatenate([theta["w"], theta["b"]])}   # grad_psi L_F = 0
    loss_p, loss_f, loss_m = quadratic_losses(mats)
    expected = analytic_first_order(mats, theta, psi, bt["y"])
    run = jax.jit(lambda a: hypergrad.unroll(
        loss_p, loss_f, loss_m, theta, psi, phi, [bt["t"][0]], [s], bt["y"], hypergrad.sgd(a),
        hypergrad.sgd(1.0))[0]["m"] / a)
    errors = [np.linalg.norm(run(a) - expected) / np.linalg.norm(expected) for a in (1e-3, 1e-4)]
    assert errors[0] < 0.05 and errors[1] < 0.2 * errors[0]    # O(a)


def test_unroll_through_adamw_is_finite_with_eps_root():
  mats, theta, psi, phi, bt = quadratic_problem()
  mats = {k: np.asarray(v, np.float32) for k, v in mats.items()}
  theta, psi, phi = (jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
                     for t in (theta, psi, phi))
  mats["A"][:, -1] = 0                                 # a theta entry that L_P does not use
  loss_p, loss_f, loss_m = quadratic_losses(mats)
  tx_t = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=1e-3, eps_root=1e-16)
  tx_s = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=1e-2, eps_root=1e-16)
  grad, diag, inner = jax.jit(lambda th, ps, ph: hypergrad.unroll(
      loss_p, loss_f, loss_m, th, ps, ph, [bt["t"][0], bt["t"][1]], [bt["s"][0]], bt["y"],
      hypergrad.optax_update(tx_t), hypergrad.optax_update(tx_s), tx_t.init(th), tx_s.init(ps),
      psi_every=2))(theta, psi, phi)
  assert np.all(np.isfinite(grad["m"])) and float(diag["grad_norm"]) > 0
  assert int(inner.theta_state[0].count) == 2 and int(inner.psi_state[0].count) == 1


def test_unroll_rejects_mismatched_batches():
  mats, theta, psi, phi, bt = quadratic_problem()
  loss_p, loss_f, loss_m = quadratic_losses(mats)
  with pytest.raises(ValueError, match="stage-II batches"):
    hypergrad.unroll(loss_p, loss_f, loss_m, theta, psi, phi, [bt["t"][0]] * 2, [bt["s"][0]],
                     bt["y"], hypergrad.sgd(0.1), hypergrad.sgd(0.1))
