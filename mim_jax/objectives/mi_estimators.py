"""Mutual-information estimators for MI-MAE: InfoNCE (lower bound) and CLUB (upper bound).

All functions are small pure ``jax.numpy`` functions, jit-compatible, and work in float32.
Quantities are in nats.

- ``infonce`` / ``multiview_infonce``: the maximization term (mask invariance between the latents
  of different views of the same image). ``log(B) - loss`` is a lower bound on the mutual
  information for any critic, and never exceeds ``log(B)``.
- ``club``: the contrastive log-ratio upper bound (Cheng et al., ICML 2020) on I(x; z), with a
  variational conditional q_theta(z | x) = Normal(mu(x), diag exp(logvar(x))) given by
  ``VariationalNet``; ``variational_nll`` is V's own fitting loss.
- ``fit_step`` / ``club_ready``: V is fitted by an optimizer of its own on latents treated as
  data, before an encoder uses the bound, and the bound is used only once V has fitted. CLUB is an
  upper bound only for a q close to the true conditional; with an unfitted q an encoder can drive
  the "estimate" far below zero without lowering any mutual information.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import logsumexp

_LOG_2PI = math.log(2.0 * math.pi)


def infonce(za, zb, temperature: float):
  """InfoNCE loss between paired rows of ``za`` and ``zb`` ([B, D]).

  logits[b, b'] = za[b] . zb[b'] / temperature; the loss is the mean over b of
  -log softmax_b'(logits[b])[b], i.e. cross-entropy with the diagonal as targets. The inputs are
  used as given (no normalization here). Returns the scalar loss; the mutual-information lower
  bound in nats is ``log(B) - loss`` (see ``infonce_bound``).
  """
  za = za.astype(jnp.float32)
  zb = zb.astype(jnp.float32)
  logits = za @ zb.T / temperature
  return jnp.mean(logsumexp(logits, axis=-1) - jnp.diagonal(logits))


def infonce_bound(loss, batch_size: int):
  """The InfoNCE lower bound on mutual information in nats: log(batch_size) - loss."""
  return math.log(batch_size) - loss


def multiview_infonce(z, temperature: float):
  """Mean InfoNCE over the ordered pairs of views of each image.

  z: [B, N, D], N views per image (already normalized by the caller). Returns the mean over
  ordered pairs (i, k), i != k, of ``infonce(z[:, i], z[:, k], temperature)`` as a scalar.
  Raises ValueError when N < 2.
  """
  n = z.shape[1]
  if n < 2:
    raise ValueError(f"multiview_infonce needs at least 2 views per image, got N={n}")
  z = z.astype(jnp.float32)
  # logits[i, k, b, c] = z[b, i] . z[c, k] / temperature: anchors from view i, candidates view k.
  logits = jnp.einsum("bid,ckd->ikbc", z, z) / temperature
  positives = jnp.diagonal(logits, axis1=2, axis2=3)                  # [N, N, B]
  per_pair = jnp.mean(logsumexp(logits, axis=-1) - positives, axis=-1)  # [N, N]
  off_diagonal = 1.0 - jnp.eye(n, dtype=jnp.float32)
  return jnp.sum(per_pair * off_diagonal) / (n * (n - 1))


def gaussian_log_likelihood(z, mu, logvar):
  """log N(z; mu, diag(exp(logvar))) summed over the last axis, in nats (2*pi constant included).

  Broadcasts over the leading axes.
  """
  sq = jnp.square(z - mu) * jnp.exp(-logvar)
  return -0.5 * jnp.sum(sq + logvar + _LOG_2PI, axis=-1)


def _expected_log_likelihood(z_mean, z_var, mu, logvar):
  """Mean over a set of samples z' of log N(z'; mu, diag exp(logvar)), from the set's moments.

  Uses mean_{z'} (z' - mu)^2 = var(z') + (mean(z') - mu)^2 per dimension (exact), so averaging
  over all pairs costs no pairwise tensor. z_mean, z_var broadcast against mu, logvar.
  """
  sq = (z_var + jnp.square(z_mean - mu)) * jnp.exp(-logvar)
  return -0.5 * jnp.sum(sq + logvar + _LOG_2PI, axis=-1)


def club(z, mu, logvar, negatives: str = "views"):
  """CLUB upper-bound estimate of I(x; z) (Cheng et al. 2020) in nats.

  z: [B, N, Dz], the latents of N views per image; mu, logvar: [B, N, Dz], the parameters of
  q(z | x) predicted from each view's input x_j.
  Positive term: mean over (b, j) of log q(z_{b,j} | x_{b,j}).
  Negative term: with negatives='views', the mean over (b, j, k) of log q(z_{b,k} | x_{b,j}),
  k running over the N views of the same image b; with negatives='batch', the mean over
  (b, j) and over every (b', k) in the batch of log q(z_{b',k} | x_{b,j}) (the standard CLUB
  when N = 1). Returns positive - negative as a scalar.

  The average over negatives is taken in closed form from the mean and (biased) variance of the
  negatives, which equals the pairwise average exactly, in value and gradient.
  """
  z = z.astype(jnp.float32)
  mu = mu.astype(jnp.float32)
  logvar = logvar.astype(jnp.float32)
  positive = jnp.mean(gaussian_log_likelihood(z, mu, logvar))
  if negatives == "views":
    axes = (1,)                     # the N views of the same image
  elif negatives == "batch":
    axes = (0, 1)                   # every view of every image
  else:
    raise ValueError(f"negatives must be 'views' or 'batch', got {negatives!r}")
  z_mean = jnp.mean(z, axis=axes, keepdims=True)
  z_var = jnp.mean(jnp.square(z - z_mean), axis=axes, keepdims=True)
  negative = jnp.mean(_expected_log_likelihood(z_mean, z_var, mu, logvar))
  return positive - negative


def variational_nll(z, mu, logvar):
  """-mean log q(z | x): V's own fitting loss (the caller stops the gradient into z)."""
  return -jnp.mean(gaussian_log_likelihood(
      z.astype(jnp.float32), mu.astype(jnp.float32), logvar.astype(jnp.float32)))


def fit_step(net, tx, params, opt_state, x, z, weight: float = 1.0):
  """One update of V (``net``, optimizer ``tx``) on its NLL of the pairs (x, z), z held fixed.

  ``weight`` multiplies the NLL's gradient (MI-MAE's lambda_approx); Adam-type optimizers
  normalize it away, so under them it changes nothing but the size of the step relative to their
  epsilon. Returns (params, opt_state, NLL of the pairs before the update): the NLL of data the
  update has not yet seen, the fair measure of how well V fits.
  """
  z = jax.lax.stop_gradient(z)
  x = jax.lax.stop_gradient(x)

  def objective(p):
    mu, logvar = net.apply({"params": p}, x)
    return variational_nll(z, mu, logvar)

  nll, grads = jax.value_and_grad(objective)(params)
  grads = jax.tree.map(lambda g: weight * g, grads)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, nll


def club_ready(step, nll, start_step: int, max_nll: float = 0.0):
  """Whether CLUB may be switched on: from ``start_step`` on and, with ``max_nll`` > 0, once V's
  NLL is at most ``max_nll`` (V's NLL is always positive: its log-variance is bounded by tanh)."""
  ready = jnp.asarray(step) >= start_step
  if max_nll > 0:
    ready = ready & (nll <= max_nll)
  return ready


class VariationalNet(nn.Module):
  """q_theta(z | x) = Normal(mu(x), diag exp(logvar(x))).

  mu = Dense(hidden)-ReLU-Dense(dz); logvar = Dense(hidden)-ReLU-Dense(dz)-tanh (CLUB's reference
  design; the tanh keeps the variance within [e^-1, e]). Returns (mu, logvar).
  """
  features: int     # dz
  hidden: int = 512

  @nn.compact
  def __call__(self, x):
    mu = nn.Dense(self.hidden, name="mu_1")(x)
    mu = nn.Dense(self.features, name="mu_2")(nn.relu(mu))
    logvar = nn.Dense(self.hidden, name="logvar_1")(x)
    logvar = jnp.tanh(nn.Dense(self.features, name="logvar_2")(nn.relu(logvar)))
    return mu, logvar
