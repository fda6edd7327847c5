"""Masking invariants and the masked reconstruction loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.masking import sampling
from mim_jax.objectives import losses


@pytest.mark.parametrize("L,ratio", [(196, 0.75), (64, 0.75), (16, 0.5), (49, 0.9)])
def test_random_masking_invariants(L, ratio):
  B = 5
  ids_keep, ids_restore, mask = jax.jit(sampling.random_masking, static_argnums=(1, 2, 3))(
      jax.random.key(0), B, L, ratio)
  kept = int(L * (1 - ratio))
  assert ids_keep.shape == (B, kept) and ids_restore.shape == (B, L) and mask.shape == (B, L)
  mask, ids_keep, ids_restore = map(np.asarray, (mask, ids_keep, ids_restore))
  np.testing.assert_array_equal(mask.sum(1), L - kept)
  for b in range(B):
    assert len(set(ids_keep[b])) == kept
    np.testing.assert_array_equal(mask[b, ids_keep[b]], 0)
    # ids_restore is a permutation, and un-shuffling [kept..., masked...] gives back 0..L-1
    assert sorted(ids_restore[b]) == list(range(L))
    shuffle = np.argsort(ids_restore[b])
    np.testing.assert_array_equal(shuffle[:kept], ids_keep[b])
    np.testing.assert_array_equal(shuffle[ids_restore[b]], np.arange(L))


def test_masking_depends_on_key_only():
  a = sampling.random_masking(jax.random.key(0), 4, 64, 0.75)
  b = sampling.random_masking(jax.random.key(0), 4, 64, 0.75)
  c = sampling.random_masking(jax.random.key(1), 4, 64, 0.75)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  assert not np.array_equal(a[0][0], a[0][1])   # per-sample masks differ


def test_bad_ratio_is_an_error():
  with pytest.raises(ValueError, match="keeps 0"):
    sampling.num_kept(16, 1.0)


def test_loss_only_on_masked_patches():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 2, 16, 12)).astype(np.float32)
  mask = (rng.random((2, 16)) < 0.75).astype(np.float32)
  loss = float(losses.masked_mse(pred, target, mask))
  expected = sum(((pred[b, i] - target[b, i]) ** 2).mean()
                 for b in range(2) for i in range(16) if mask[b, i]) / mask.sum()
  assert loss == pytest.approx(expected, rel=1e-5)
  # changing predictions at visible patches does not change the loss
  pred2 = pred + 100 * (1 - mask)[:, :, None]
  assert float(losses.masked_mse(pred2, target, mask)) == pytest.approx(loss, rel=1e-6)


def test_norm_pix_targets_use_unbiased_variance():
  x = np.random.default_rng(1).normal(size=(1, 3, 8)).astype(np.float32) * 3 + 1
  t = np.asarray(losses.patch_targets(jnp.asarray(x), True))
  for i in range(3):
    v = x[0, i]
    np.testing.assert_allclose(t[0, i], (v - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-6),
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(losses.patch_targets(jnp.asarray(x), False), x)
