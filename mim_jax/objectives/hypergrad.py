"""Hypergradients of MLO-MAE's top level (mlo_mae.md) as pure functions of loss callables.

Three levels, each a parameter pytree:
  theta (the MAE)              minimizes loss_p(theta, phi, batch_p)   (stage I, pre-training)
  psi   (the classifier head)  minimizes loss_f(theta, psi, batch_f)   (stage II, fine-tuning)
  phi   (the masking network)  minimizes loss_m(theta, psi, batch_m)   (stage III, validation)

Every function here returns ``grad_phi``, a pytree like ``phi`` that estimates dL_M/dphi: the
gradient to **descend** on (``phi <- phi - lr * grad_phi``, or feed it to an optimizer as is).

Notation. v_theta = grad_theta L_M and v_psi = grad_psi L_M at the current (theta, psi);
H^P_{phi theta} = d/dtheta of grad_phi L_P, H^F_{theta psi} = d/dpsi of grad_theta L_F. Implicit
differentiation with both inverse Hessians replaced by the identity (DARTS' first-order reading)
gives

  grad_phi ~ -H^P_{phi theta} (v_theta - H^F_{theta psi} v_psi).

* ``finite_difference`` computes this as Betty's ``darts`` method does (the official code): two
  central differences of gradients, each with its own step eps = alpha / ||direction||.
* ``jvp`` computes the same expression exactly, by forward-over-reverse differentiation.
* ``unroll`` differentiates L_M through K explicit inner updates of theta (and psi).

The losses must be deterministic functions of their arguments: anything random or discrete that
should stay the same across the paired evaluations (a dropout key, MLO-MAE's top-k mask) belongs
in the batch. All functions can be traced under ``jax.jit``; K and ``psi_every`` are static.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

# An inner update rule: (params, grads, state) -> (new params, new state). ``state`` is whatever
# the rule carries (an optax state, or None for plain SGD); it must be a pytree.
InnerUpdate = Callable[[Any, Any, Any], tuple]


def sgd(learning_rate: float) -> InnerUpdate:
  """Plain gradient descent, params - lr * grads; the state passes through unchanged."""
  def update(params, grads, state):
    new = jax.tree.map(lambda p, g: p - jnp.asarray(learning_rate, p.dtype) * g, params, grads)
    return new, state
  return update


def optax_update(tx: optax.GradientTransformation) -> InnerUpdate:
  """An optax optimizer as an inner update (state from ``tx.init(params)``).

  Differentiating through Adam-type optimizers: sqrt(nu) has an infinite derivative at nu = 0,
  so a parameter whose gradient is exactly zero gives NaN hypergradients unless ``eps_root`` > 0
  (e.g. ``optax.adamw(..., eps_root=1e-16)``).
  """
  def update(params, grads, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return update


def tree_norm(tree):
  """Euclidean norm of all leaves together."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros(())
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def _add_scaled(x, scale, v):
  """x + scale * v leaf by leaf, in x's dtypes."""
  return jax.tree.map(lambda a, b: a + (scale * b).astype(a.dtype), x, v)


def _validation_grads(loss_m, theta, psi, batch_m):
  loss, (v_theta, v_psi) = jax.value_and_grad(loss_m, argnums=(0, 1))(theta, psi, batch_m)
  return loss, v_theta, v_psi


def _negated_central_difference(grad_fn, x, direction, alpha):
  """-[grad_fn(x + e d) - grad_fn(x - e d)] / (2 e) with e = alpha / ||d||: minus the
  directional derivative of ``grad_fn`` along ``d`` (Betty's darts step). Returns (value, e)."""
  eps = alpha / (tree_norm(direction) + 1e-12)
  plus = grad_fn(_add_scaled(x, eps, direction))
  minus = grad_fn(_add_scaled(x, -eps, direction))
  value = jax.tree.map(lambda p, m: (m - p) / (2 * eps).astype(p.dtype), plus, minus)
  return value, eps


def finite_difference(loss_p, loss_f, loss_m, theta, psi, phi, batch_p, batch_f, batch_m,
                      alpha: float = 0.01):
  """The official first-order hypergradient (Betty 0.2.1's ``darts``, alpha = 0.01).

    path A: g_A = -[grad_phi L_P(theta + e v_theta, phi) - grad_phi L_P(theta - e v_theta, phi)]
                  / (2 e),                      e = alpha / ||v_theta||
    path B: u   = -[grad_theta L_F(theta, psi + e' v_psi) - grad_theta L_F(theta, psi - e' v_psi)]
                  / (2 e'),                     e' = alpha / ||v_psi||
            g_B = path A's formula along u,     e'' = alpha / ||u||
    grad_phi = g_A + g_B  ~  -H^P_{phi theta} (v_theta - H^F_{theta psi} v_psi).

  Six gradient evaluations of L_P / L_F plus one of L_M. Returns (grad_phi, diagnostics), the
  diagnostics a dict of scalars (L_M, the norms of v_theta, v_psi, u, g_A, g_B, grad_phi and the
  three steps).
  """
  loss, v_theta, v_psi = _validation_grads(loss_m, theta, psi, batch_m)
  grad_phi_p = lambda t: jax.grad(loss_p, argnums=1)(t, phi, batch_p)
  grad_theta_f = lambda s: jax.grad(loss_f, argnums=0)(theta, s, batch_f)
  g_a, eps_a = _negated_central_difference(grad_phi_p, theta, v_theta, alpha)
  u, eps_u = _negated_central_difference(grad_theta_f, psi, v_psi, alpha)
  g_b, eps_b = _negated_central_difference(grad_phi_p, theta, u, alpha)
  grad = jax.tree.map(jnp.add, g_a, g_b)
  diagnostics = dict(loss_m=loss, v_theta_norm=tree_norm(v_theta), v_psi_norm=tree_norm(v_psi),
                     u_norm=tree_norm(u), g_a_norm=tree_norm(g_a), g_b_norm=tree_norm(g_b),
                     grad_norm=tree_norm(grad), eps_a=eps_a, eps_u=eps_u, eps_b=eps_b)
  return grad, diagnostics


def jvp(loss_p, loss_f, loss_m, theta, psi, phi, batch_p, batch_f, batch_m):
  """The same first-order expression without an epsilon, by forward-over-reverse:

    u = -H^F_{theta psi} v_psi    (jax.jvp of psi -> grad_theta L_F(theta, psi) along v_psi)
    w = v_theta + u
    grad_phi = -H^P_{phi theta} w  (jax.jvp of theta -> grad_phi L_P(theta, phi) along w)

  Paths A and B share the second product (it is linear in w), so this costs two jvps of
  gradients plus one gradient of L_M. Returns (grad_phi, diagnostics) as ``finite_difference``.
  """
  loss, v_theta, v_psi = _validation_grads(loss_m, theta, psi, batch_m)
  grad_phi_p = lambda t: jax.grad(loss_p, argnums=1)(t, phi, batch_p)
  grad_theta_f = lambda s: jax.grad(loss_f, argnums=0)(theta, s, batch_f)
  _, h_f = jax.jvp(grad_theta_f, (psi,), (v_psi,))
  w = jax.tree.map(lambda v, h: v - h.astype(v.dtype), v_theta, h_f)
  _, h_p = jax.jvp(grad_phi_p, (theta,), (w,))
  grad = jax.tree.map(jnp.negative, h_p)
  diagnostics = dict(loss_m=loss, v_theta_norm=tree_norm(v_theta), v_psi_norm=tree_norm(v_psi),
                     u_norm=tree_norm(h_f), w_norm=tree_norm(w), grad_norm=tree_norm(grad))
  return grad, diagnostics


class InnerState(NamedTuple):
  """Where ``unroll``'s inner steps end (no gradient attached)."""
  theta: Any
  theta_state: Any
  psi: Any
  psi_state: Any


def unroll(loss_p, loss_f, loss_m, theta, psi, phi, batches_p: Sequence, batches_f: Sequence,
           batch_m, theta_update: InnerUpdate, psi_update: InnerUpdate, theta_state=None,
           psi_state=None, psi_every: int = 1, remat: bool = True):
  """dL_M(theta_K, psi_n)/dphi through K explicit inner steps (truly unrolled).

  For k = 1..K (K = len(batches_p)):
    theta_k = theta_update(theta_{k-1}, grad_theta L_P(theta_{k-1}, phi, batches_p[k-1]))
    and after every ``psi_every``-th theta step (j counting them from 1)
    psi_j = psi_update(psi_{j-1}, grad_psi L_F(theta_k, psi_{j-1}, batches_f[j-1])),
  i.e. a psi step uses the theta just updated, so psi depends on phi through theta. Then
  grad_phi = jax.grad of L_M(theta_K, psi_n, batch_m) w.r.t. phi, n = K // psi_every =
  len(batches_f). ``psi_every=2`` with K = 2 mirrors MLO-MAE's schedule (two theta updates, then
  one psi update). Each inner step is wrapped in ``jax.checkpoint`` (``remat``) so that the
  backward pass recomputes a step's activations instead of storing them for all K steps.

  With SGD at rates a (theta) and b (psi) and K = 1, grad_phi = -a H^P_{phi theta} (v_theta -
  b H^F_{theta psi} v_psi) at the updated point: the first-order expression scaled by a, with
  path B weighted by b relative to path A.

  Returns (grad_phi, diagnostics, InnerState): diagnostics holds L_M after the inner steps,
  grad_phi's norm and the mean L_P / L_F of the inner steps (each at the point it was taken);
  InnerState the updated theta / psi and optimizer states, which a trainer can
  keep as its real update.
  """
  steps = len(batches_p)
  if steps < 1:
    raise ValueError("unroll needs at least one inner step (batches_p is empty)")
  if psi_every < 1:
    raise ValueError(f"psi_every must be >= 1, got {psi_every}")
  if len(batches_f) != steps // psi_every:
    raise ValueError(f"{steps} theta steps with psi_every={psi_every} take "
                     f"{steps // psi_every} stage-II batches, got {len(batches_f)}")

  def theta_step(t, state, p, batch):
    value, grads = jax.value_and_grad(loss_p, argnums=0)(t, p, batch)
    return theta_update(t, grads, state), value

  def psi_step(s, state, t, batch):
    value, grads = jax.value_and_grad(loss_f, argnums=1)(t, s, batch)
    return psi_update(s, grads, state), value

  if remat:
    theta_step, psi_step = jax.checkpoint(theta_step), jax.checkpoint(psi_step)

  def outer(p):
    t, t_state, s, s_state = theta, theta_state, psi, psi_state
    values_p, values_f = [], []
    for k in range(steps):
      (t, t_state), value = theta_step(t, t_state, p, batches_p[k])
      values_p.append(value)
      if (k + 1) % psi_every == 0:
        (s, s_state), value = psi_step(s, s_state, t, batches_f[(k + 1) // psi_every - 1])
        values_f.append(value)
    inner_losses = (jnp.mean(jnp.stack(values_p)),
                    jnp.mean(jnp.stack(values_f)) if values_f else jnp.zeros(()))
    return loss_m(t, s, batch_m), (InnerState(t, t_state, s, s_state), inner_losses)

  (loss, (inner, (loss_p_mean, loss_f_mean))), grad = jax.value_and_grad(
      outer, has_aux=True)(phi)
  diagnostics = dict(loss_m=loss, grad_norm=tree_norm(grad), loss_p=jax.lax.stop_gradient(
      loss_p_mean), loss_f=jax.lax.stop_gradient(loss_f_mean))
  return grad, diagnostics, inner
