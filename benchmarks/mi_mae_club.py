"""Why MI-MAE's CLUB estimate and V's NLL rise while L_min is minimized (issue #34).

On the digits demo (configs/mi_mae_digits.py) the logged ``mi/club_nats`` climbs from ~3 to ~5
nats and ``mi/v_nll`` from ~57 to ~130 over the run. Three explanations are told apart here, on
the run's own checkpoints:

- latent scale growth: the latents z fed to V grow, and a Gaussian q(z | x) whose variance is
  bounded (V's log-variance is ``tanh``-limited to [-1, 1]: 1/e <= variance <= e) pays
  0.5 * residual / sigma^2 per dimension, so its NLL, and CLUB (a difference of such terms),
  grow with z's variance although no more information is carried;
- V lagging the encoder: V (5 Adam updates per step) trails the moving latents; then a V
  re-fitted from scratch, to convergence, on the same latents has a much lower NLL;
- per-dimension scaling: a few dimensions of z grow more than others and dominate the sum; then
  CLUB with every dimension standardized (and V re-fitted on the standardized latents) stays flat.

For each checkpoint the script encodes a fixed set of training batches (the run's augmentation,
its own data seed; fixed partition masks), and measures on held-out views of them:
``z std`` (mean over dimensions of each dimension's std over the views), CLUB and NLL under the
checkpoint's V (``extra["mi"]["v_params"]``), the same under a V re-fitted from scratch (V's own
architecture, Adam at ``mi_mae.v_lr``, ``--fit_steps`` minibatch updates on the other batches),
and under a V re-fitted on latents divided by one global scale (the mean per-dimension std:
``glob``) or standardized per dimension (``std``): scale-free CLUBs. A second table
breaks the re-fitted V's NLL into its residual term 0.5 * sum (z - mu)^2 / sigma^2 and its
log-variance term, and gives the share of V's log-variances at the tanh bound and the NLL a
Gaussian with a free (unbounded) per-dimension variance around the same mean would have.

  # the run, with a checkpoint every 100 steps (the config's default is every 500, 3 kept)
  nice -n 15 python -m mim_jax.main --config configs/mi_mae_digits.py \\
      --workdir /tmp/mi_club/run0 --config.checkpoint.every_steps=100 --config.checkpoint.keep=20
  # the tables (CPU, ~5 minutes for 11 checkpoints)
  nice -n 15 python -m benchmarks.mi_mae_club --workdir /tmp/mi_club/run0

``--config`` (default configs/mi_mae_digits.py) and ``--config.key=value`` overrides must
describe the run (the script compares them with the workdir's config.json and warns).
"""

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax import data, methods
from mim_jax import main as main_lib
from mim_jax import train
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.core import workdir as workdir_lib
from mim_jax.objectives import mi_estimators as mi

_LOG_2PI = math.log(2.0 * math.pi)


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="the MI-MAE run's workdir (its checkpoints)")
  p.add_argument("--config", default="configs/mi_mae_digits.py", help="the run's config")
  p.add_argument("--steps", default="", help="comma-separated checkpoint steps (default: all)")
  p.add_argument("--fit_batches", type=int, default=24, help="batches V is re-fitted on")
  p.add_argument("--eval_batches", type=int, default=8, help="held-out batches measured on")
  p.add_argument("--fit_steps", type=int, default=3000, help="re-fit: Adam updates")
  p.add_argument("--fit_batch", type=int, default=256, help="re-fit: views per update")
  p.add_argument("--data_seed", type=int, default=1234)
  p.add_argument("--sweep_step", type=int, default=-1,
                  help="checkpoint whose latents are re-scaled by --sweep (-1: the last)")
  p.add_argument("--sweep", default="0.2,0.5,1,2",
                 help="factors c: V re-fitted on c * z; the information in z is unchanged")
  p.add_argument("--json", default="", help="also write the rows here (JSON lines)")
  args, rest = p.parse_known_args(argv)
  config, _ = main_lib.parse(["--config", args.config, "--workdir", args.workdir] + rest)
  return args, config


def logged_rows(workdir):
  """{step: (mi/club_nats, mi/v_nll, mi/z_std or None)} of the run's metrics.jsonl (means over
  the log window; mi/z_std is logged by runs from after issue #34)."""
  rows = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        r = json.loads(line)
        if "mi/club_nats" in r:
          rows[r["step"]] = (r["mi/club_nats"], r["mi/v_nll"], r.get("mi/z_std"))
  return rows


def make_encode(method):
  """(params, images, key) -> (x [B, N, width], z [B, N, Dz]) exactly as MIMAE.loss builds them."""
  def encode(params, images, key):
    b, n = images.shape[0], method.views
    patches, ids_keep, ids_restore, ids_decode, _ = method._views(None, {"image": images}, key,
                                                                  None)
    mae_params = {"encoder": params["encoder"], "decoder": params["decoder"]}
    _, latent = method.model.apply({"params": mae_params}, patches.astype(method.dtype),
                                   ids_keep, ids_restore, ids_decode, return_latent=True)
    z = method._latents(params, latent).reshape(b, n, -1)
    x = method._inputs(params, patches, ids_keep).reshape(b, n, -1)
    return x, z
  return jax.jit(encode)


def make_refit(net, lr, steps, batch):
  """(key, x_fit, z_fit [M, ...]) -> V's params fitted from scratch: ``steps`` Adam updates on
  random minibatches of ``batch`` views (whole images, so CLUB's views stay together)."""
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps))   # decays to 0: a converged fit

  def refit(key, x, z):
    init_key, key = jax.random.split(key)
    params = net.init(init_key, x[:1, 0])["params"]
    opt = tx.init(params)

    def nll(p, xb, zb):
      mu, logvar = net.apply({"params": p}, xb)
      return mi.variational_nll(zb, mu, logvar)

    def one(carry, k):
      p, o = carry
      idx = jax.random.randint(k, (batch // x.shape[1],), 0, x.shape[0])
      loss, g = jax.value_and_grad(nll)(p, x[idx], z[idx])
      u, o = tx.update(g, o, p)
      return (optax.apply_updates(p, u), o), loss

    (params, _), losses = jax.lax.scan(one, (params, opt), jax.random.split(key, steps))
    return params, losses
  return jax.jit(refit)


def measure(net, v_params, x, z, negatives):
  """CLUB, NLL and the NLL's parts under V on held-out (x, z) [B, N, D]."""
  mu, logvar = net.apply({"params": v_params}, x)
  resid = 0.5 * jnp.mean(jnp.sum(jnp.square(z - mu) * jnp.exp(-logvar), -1))
  logv = 0.5 * jnp.mean(jnp.sum(logvar + _LOG_2PI, -1))
  # The NLL a Gaussian with a free per-dimension variance around the same mean would have.
  r = jnp.mean(jnp.square(z - mu), axis=(0, 1))
  free = 0.5 * jnp.sum(jnp.log(2 * math.pi * r) + 1.0)
  return dict(club=mi.club(z, mu, logvar, negatives), nll=mi.variational_nll(z, mu, logvar),
              resid=resid, logvar_term=logv, free_nll=free,
              at_floor=jnp.mean(logvar < -0.95), at_ceiling=jnp.mean(logvar > 0.95))


def table(rows, cols):
  head = " | ".join(f"{name:>{w}}" for name, _, w, _ in cols)
  out = [head, "-" * len(head)]
  for r in rows:
    out.append(" | ".join(
        f"{'' if r.get(key) is None else format(r[key], fmt):>{w}}" for _, key, w, fmt in cols))
  return "\n".join(out)


def main(argv=None):
  args, config = parse(sys.argv[1:] if argv is None else argv)
  config = methods.get(config.method).resolve_config(config)
  if config.method != "mi_mae":
    raise SystemExit(f"--config is a {config.method!r} config, not mi_mae")
  saved = workdir_lib.saved_config(args.workdir)
  if saved is not None:
    changes = [c for c in workdir_lib.config_changes(saved, config)
               if not workdir_lib.harmless(c[0]) and not c[0].startswith("checkpoint.")]
    if changes:
      print(f"warning: --config differs from {args.workdir}/config.json: {changes[:5]}")
  mesh = train.make_mesh()
  run = train.setup_run(config, mesh)
  method = run.method
  o = method.o
  ckpt = ckpt_lib.Checkpointer(args.workdir, read_only=True, async_save=False)
  try:
    steps = sorted(ckpt.manager.all_steps())
    if args.steps:
      wanted = {int(s) for s in args.steps.split(",")}
      steps = [s for s in steps if s in wanted]
    if not steps:
      raise SystemExit(f"no checkpoints in {args.workdir} (run it with the command in the "
                       f"docstring)")

    # A fixed set of training batches (the run's augmentation, another seed) and masks.
    n_batches = args.fit_batches + args.eval_batches
    feeder = data.train_feeder(config, run.streams, mesh, 0, {n: args.data_seed
                                                              for n in run.streams})
    try:
      images = [np.asarray(feeder.take(i)["image"]) for i in range(n_batches)]
    finally:
      feeder.close()
    mask_keys = [jax.random.fold_in(jax.random.key(args.data_seed), i) for i in range(n_batches)]
    encode = make_encode(method)
    net = method.variational
    refit = make_refit(net, o.v_lr, args.fit_steps, args.fit_batch)
    logged = logged_rows(args.workdir)
    rows, sweep = [], []
    sweep_step = steps[-1] if args.sweep_step < 0 else args.sweep_step
    for step in steps:
      t0 = time.time()
      state = ckpt.restore(step, run.abstract_state, optimizer=False)
      params, v_params = state["params"], state["extra"]["mi"]["v_params"]
      xs, zs = zip(*(encode(params, im, k) for im, k in zip(images, mask_keys)))
      x, z = jnp.concatenate(xs), jnp.concatenate(zs)
      nf = args.fit_batches * images[0].shape[0]
      x_fit, z_fit, x_ev, z_ev = x[:nf], z[:nf], x[nf:], z[nf:]
      flat = z_ev.reshape(-1, z.shape[-1])
      var = jnp.var(flat, axis=0)
      within = jnp.mean(jnp.var(z_ev, axis=1))           # across the views of an image
      ckpt_v = measure(net, v_params, x_ev, z_ev, o.club_negatives)
      key = jax.random.key(step)
      v_fit, losses = refit(key, x_fit, z_fit)
      fit = measure(net, v_fit, x_ev, z_ev, o.club_negatives)
      m, s = jnp.mean(z_fit.reshape(-1, z.shape[-1]), 0), jnp.std(z_fit.reshape(-1, z.shape[-1]), 0)
      zs_fit, zs_ev = (z_fit - m) / s, (z_ev - m) / s
      v_std, _ = refit(key, x_fit, zs_fit)
      std = measure(net, v_std, x_ev, zs_ev, o.club_negatives)
      g = jnp.mean(s)                                     # one scale for all dimensions
      v_glob, _ = refit(key, x_fit, z_fit / g)
      glob = measure(net, v_glob, x_ev, z_ev / g, o.club_negatives)
      # The checkpoint's V before its tanh: how saturated its log-variance head is.
      lv = v_params
      h = jax.nn.relu(x_ev @ lv["logvar_1"]["kernel"] + lv["logvar_1"]["bias"])
      pre = h @ lv["logvar_2"]["kernel"] + lv["logvar_2"]["bias"]
      half = args.fit_steps // 2
      tail = float(jnp.mean(losses[-100:]))
      drift = float(jnp.mean(losses[half - 100:half])) - tail   # a converged fit: ~0
      top8 = float(jnp.sum(jnp.sort(var)[-8:]) / jnp.sum(var))
      row = dict(step=step, z_std=float(jnp.mean(jnp.sqrt(var))),
                 z_norm=float(jnp.mean(jnp.linalg.norm(flat, axis=-1))),
                 within_std=float(jnp.sqrt(within)), top8=100 * top8,
                 log_club=logged.get(step, (None,) * 3)[0],
                 log_nll=logged.get(step, (None,) * 3)[1],
                 log_z_std=logged.get(step, (None,) * 3)[2],
                 club_ckpt=float(ckpt_v["club"]), nll_ckpt=float(ckpt_v["nll"]),
                 club_refit=float(fit["club"]), nll_refit=float(fit["nll"]),
                 club_std=float(std["club"]), nll_std=float(std["nll"]),
                 club_glob=float(glob["club"]), nll_glob=float(glob["nll"]),
                 pre_tanh=float(jnp.median(pre)),
                 resid=float(fit["resid"]), logvar_term=float(fit["logvar_term"]),
                 free_nll=float(fit["free_nll"]), floor=100 * float(fit["at_floor"]),
                 ceiling=100 * float(fit["at_ceiling"]),
                 floor_ckpt=100 * float(ckpt_v["at_floor"]),
                 fit_tail=tail, fit_drift=drift, secs=time.time() - t0)
      rows.append(row)
      if step == sweep_step and args.sweep:
        for c in (float(v) for v in args.sweep.split(",")):
          v_c, _ = refit(key, x_fit, c * z_fit)
          r = measure(net, v_c, x_ev, c * z_ev, o.club_negatives)
          sweep.append(dict(c=c, z_std=c * row["z_std"], club=float(r["club"]),
                            nll=float(r["nll"]), free_nll=float(r["free_nll"]),
                            floor=100 * float(r["at_floor"]),
                            ceiling=100 * float(r["at_ceiling"])))
      print(f"step {step}: {time.time() - t0:.0f}s (re-fit train NLL {tail:.1f}, "
            f"fell {drift:.2f} over its second half)", flush=True)
  finally:
    ckpt.close()

  print(f"\n{args.workdir}: {len(images) * images[0].shape[0]} images x {method.views} views; "
        f"V re-fitted on {args.fit_batches} batches, measured on {args.eval_batches} held out; "
        f"CLUB negatives: {o.club_negatives}; nats. V's log-variance is tanh-bounded to [-1, 1]: "
        f"its NLL is at least 0.5 * {method.latent_dim} * (log 2 pi - 1) = "
        f"{0.5 * method.latent_dim * (_LOG_2PI - 1):.1f}\n")
  print(table(rows, [
      ("step", "step", 5, "d"), ("z std", "z_std", 6, ".3f"),
      ("logged CLUB", "log_club", 11, ".2f"), ("logged NLL", "log_nll", 10, ".1f"),
      ("CLUB ckpt V", "club_ckpt", 11, ".2f"), ("NLL ckpt V", "nll_ckpt", 10, ".1f"),
      ("NLL refit V", "nll_refit", 11, ".1f"), ("CLUB refit V", "club_refit", 12, ".2f"),
      ("CLUB glob", "club_glob", 9, ".2f"), ("NLL glob", "nll_glob", 8, ".1f"),
      ("CLUB std", "club_std", 8, ".2f"), ("NLL std", "nll_std", 7, ".1f")]))
  print()
  print(table(rows, [
      ("step", "step", 5, "d"), ("logged z std", "log_z_std", 12, ".3f"),
      ("|z|", "z_norm", 6, ".2f"),
      ("view std", "within_std", 8, ".3f"), ("top-8 var %", "top8", 11, ".1f"),
      ("refit: resid", "resid", 12, ".1f"), ("logvar term", "logvar_term", 11, ".1f"),
      ("at floor %", "floor", 10, ".0f"), ("at ceiling %", "ceiling", 12, ".0f"),
      ("ckpt V at floor %", "floor_ckpt", 17, ".0f"),
      ("ckpt V pre-tanh", "pre_tanh", 15, ".1f"),
      ("free-var NLL", "free_nll", 12, ".1f")]))
  if sweep:
    print(f"\nThe latents of step {sweep_step} times c (the same information), V re-fitted:\n")
    print(table(sweep, [
        ("c", "c", 4, ".1f"), ("z std", "z_std", 6, ".3f"), ("CLUB refit V", "club", 12, ".2f"),
        ("NLL refit V", "nll", 11, ".1f"), ("free-var NLL", "free_nll", 12, ".1f"),
        ("at floor %", "floor", 10, ".0f"), ("at ceiling %", "ceiling", 12, ".0f")]))
  if args.json:
    with open(args.json, "w") as f:
      for r in rows + [dict(r, sweep_step=sweep_step) for r in sweep]:
        f.write(json.dumps(r) + "\n")
  return rows


if __name__ == "__main__":
  main()
