"""The generic trainer: one loop for every pre-training method.

Read top to bottom: mesh | schedule and optimizer | state | step function | the run itself
(data, restore or initialize, evaluators, loop with the method's hooks and stages, logging,
images, checkpoints, preemption).
A method (``mim_jax.methods``: a pre-training method or an evaluation protocol, each a
``methods.base.Method``) supplies the model and its loss; nothing here is specific to one method.
"""

import contextlib
import dataclasses
import functools
import io
import logging
import math
import os
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from mim_jax import data, evaluation, methods
from mim_jax import config as config_lib
from mim_jax.config import ConfigError
from mim_jax.core import optim, preemption, sharding, visualize
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.core import workdir as workdir_lib
from mim_jax.core.errors import NonFiniteLossError, WriteError, write_failure
from mim_jax.core.metrics import MetricLogger, format_duration, progress_line
from mim_jax.core.rng import stream_key
from mim_jax.data import on_device
from mim_jax.interop import pretrained
from mim_jax.models import layout

log = logging.getLogger("mim_jax")


# ---------------------------------------------------------------------------------------------
# Mesh: 'data' x 'fsdp' over every device of every host; batches split over both, the state
# replicated or sharded over 'fsdp' by config.mesh's rules (mim_jax/core/sharding.py).
# ---------------------------------------------------------------------------------------------
def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
  return sharding.make_mesh(fsdp, devices)


# ---------------------------------------------------------------------------------------------
# Schedule and optimizer.
# ---------------------------------------------------------------------------------------------
def schedule_for(config, num_examples: int, step_images: int = 0):
  """(lr schedule, total steps) from the config and the training split's size; a step takes
  ``step_images`` of it (default: ``batch_size``)."""
  o = config.optimizer
  total, warmup, steps_per_epoch = optim.run_length(config, num_examples, step_images)
  peak = optim.learning_rate(o.blr, config.batch_size)
  if o.schedule == "cosine":
    return optim.warmup_cosine(peak, warmup, total, o.min_lr, o.warmup_lr), total
  if o.schedule == "multistep":
    milestones = [round(e * steps_per_epoch) for e in o.decay_epochs]
    return optim.warmup_multistep(peak, warmup, milestones, o.decay_rate, o.warmup_lr), total
  raise ValueError(f"optimizer.schedule must be 'cosine' or 'multistep', got {o.schedule!r}")


def optimizer_for(config, method, schedule, params):
  """The optimizer of ``config.optimizer`` with the method's layer ids and frozen parameters."""
  lr_scales = frozen = None
  if config.optimizer.layer_decay != 1.0:
    if method.layer_ids is None:
      raise ValueError(f"optimizer.layer_decay needs a method with layer ids; "
                       f"{config.method!r} has none")
    ids, num_layers = method.layer_ids(params)
    lr_scales = optim.layer_decay_scales(ids, num_layers, config.optimizer.layer_decay)
  frozen = method.frozen(params)
  return optim.make_optimizer(config.optimizer, schedule, params, lr_scales, frozen)


# ---------------------------------------------------------------------------------------------
# State: a plain pytree {step, params, opt_state, extra}. ``extra`` is state that is not trained
# by the optimizer: the method's (BatchNorm statistics, caches) and, with ``ema_decay``, an EMA
# of the parameters (``extra["ema_params"]``).
# ---------------------------------------------------------------------------------------------
def state_initializer(method, tx, base_key, ema: bool = False):
  def init():
    params = method.init(stream_key(base_key, "init", 0))
    extra = dict(method.init_extra(stream_key(base_key, "init_extra", 0)))
    if ema:
      extra["ema_params"] = params
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "extra": extra}
  return init


# ---------------------------------------------------------------------------------------------
# Step function. A non-finite loss or gradient leaves the state as it was (and is reported by
# the loop), so the last good state is what a checkpoint can hold.
# ---------------------------------------------------------------------------------------------
def make_train_step(method, tx, schedule, base_key, ema_decay: float = 0.0, stage=None):
  """The jit-able update of one batch. A method with stages (``method.stage(step)``, e.g. AMT's
  'random' then 'amt' masking with other token counts) gets one step function per stage. A
  method with its own update rule (``method.make_train_step(tx, base_key)``: MLO-MAE's three
  levels) builds its step itself, from the ``tx`` its ``optimizer`` gave."""
  if method.make_train_step is not None:
    if ema_decay > 0:
      raise ValueError(f"ema_decay is not supported by {type(method).__name__}'s own train step")
    return method.make_train_step(tx, base_key)
  loss_fn = method.loss if stage is None else functools.partial(method.loss, stage=stage)

  def train_step(state, batch):
    step = state["step"]
    rngs = {name: stream_key(base_key, name, step) for name in method.rng_streams}
    extra = {k: v for k, v in state["extra"].items() if k != "ema_params"}
    (loss, (aux, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], extra, batch, rngs)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if ema_decay > 0:
      extra = dict(extra, ema_params=optax.incremental_update(
          params, state["extra"]["ema_params"], 1.0 - ema_decay))
    new = {"step": step + 1, "params": params, "opt_state": opt_state, "extra": extra}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return new, dict(aux, loss=loss, grad_norm=grad_norm, lr=schedule(step))
  return train_step


def scan_steps(train_step):
  """K steps in one function: ``(state, batches) -> (state, metrics)`` over batches stacked
  along a leading axis of K, the metrics stacked the same way (``steps_per_call``)."""
  def steps(state, batches):
    return jax.lax.scan(train_step, state, batches)
  return steps


def jit_train_step(train_step, mesh, state_sharding=None, steps: int = 1):
  """The jitted step (``steps`` > 1: that many, ``scan_steps``, over stacked batches); the
  state keeps ``state_sharding`` (default: replicated) and is donated."""
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state_sharding = replicated if state_sharding is None else state_sharding
  if steps > 1:
    train_step, batched = scan_steps(train_step), on_device.stacked_sharding(mesh)
  return jax.jit(train_step, in_shardings=(state_sharding, batched),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)


def call_length(step: int, steps_per_call: int, total_steps: int, boundary) -> int:
  """How many steps the call starting at ``step`` runs: ``steps_per_call`` when the call is
  aligned (``step`` a multiple of it), ends within the run and nothing has to happen between
  two of its steps (``boundary(t)``: something is due between steps t - 1 and t: a checkpoint,
  an evaluation, an image, a hook, a change of stage); else 1. So calls start at the same steps
  however a run was interrupted and resumed, and everything due runs at its own step."""
  k = steps_per_call
  if k <= 1 or step % k or step + k > total_steps:
    return 1
  return 1 if any(boundary(t) for t in range(step + 1, step + k)) else k


def note_unfused_intervals(config, evals, images: bool) -> None:
  """Logs the intervals that are not multiples of ``steps_per_call``: single steps are taken up
  to each of their steps (``call_length``)."""
  k = config.steps_per_call
  intervals = [("checkpoint.every_steps", config.checkpoint.every_steps)] + (
      [("image_every", config.image_every)] if images else []) + [
      (f"{e.name}.every_steps", e.every_steps) for e in evals]
  off = [f"{name} {every}" for name, every in intervals if k > 1 and every % k]
  if off:
    log.info("steps_per_call %d: %s not a multiple of it; the run takes single steps up to "
             "each of their steps", k, ", ".join(off))


def unstack_metrics(metrics, steps: int) -> list:
  """The per-step metric dicts of a call (host copies; stacked along the first axis when
  ``steps`` > 1)."""
  if steps == 1:
    return [metrics]
  return [{k: v[i] for k, v in metrics.items()} for i in range(steps)]


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------
def _run_status(workdir: str, status: str, step: int) -> None:
  if jax.process_index() == 0:
    workdir_lib.write_run_status(workdir, status, step)


def train_and_evaluate(config, workdir: str) -> dict:
  """Pre-trains (or, with ``eval_only``, evaluates) and returns the final metrics.

  The workdir is locked for the run (``mim_jax.core.workdir``); SIGTERM is handled from here on
  (``mim_jax.core.preemption``) unless the caller already handles it (the entry point does, from its
  first line)."""
  owns_signal = preemption.install()
  try:
    lock = workdir_lib.acquire_for_run(workdir_lib.make(workdir))
    try:
      return _run(config, workdir)
    except Exception as e:  # pylint: disable=broad-except
      reason = None if isinstance(e, WriteError) else write_failure(e)
      if reason is None:
        raise
      steps = ckpt_lib.finished_steps(workdir)
      last = f"step {max(steps)}" if steps else "none"
      where = getattr(e, "filename", None) or f"in {workdir}"
      raise WriteError(f"{reason} writing {where}; last good checkpoint: {last}") from e
    finally:
      if lock is not None:
        lock.release()
  finally:
    if owns_signal:
      preemption.uninstall()


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What a run trains, as ``setup_run`` builds it from the config (no workdir touched)."""
  info: data.DatasetInfo       # the training split's
  method: object               # a methods.base.Method
  streams: dict                # {name: (split, global batch)}: Method.data_streams
  step_images: int             # images of the first stream per step
  schedule: object             # step -> learning rate
  total_steps: int
  base_key: jax.Array          # the run's key, folded into named streams (core/rng.py)
  tx: object                   # the optimizer
  init: object                 # () -> a fresh state
  state_sharding: object
  abstract_state: object       # shapes and shardings of the state


def setup_run(config, mesh) -> RunSetup:
  """The method, its data streams, schedule, optimizer and state initializer of ``config`` (a
  ConfigError for settings that cannot run); what ``train_and_evaluate`` runs, and what
  benchmarks and tests build steps from."""
  if config.batch_size % jax.device_count():
    raise ConfigError(f"batch_size {config.batch_size} does not divide over "
                      f"{jax.device_count()} devices")
  if not (isinstance(config.steps_per_call, int) and config.steps_per_call >= 1):
    raise ConfigError(f"steps_per_call must be an integer >= 1, got {config.steps_per_call!r}")
  if config.data.on_device:
    on_device.check_options(config.data)
  if not 0.0 < config.train_fraction <= 1.0:
    raise ConfigError(f"train_fraction must be in (0, 1], got {config.train_fraction}")
  train_split = (config.train_split if config.train_fraction == 1.0 else
                 data.Subset(config.train_split, fraction=config.train_fraction, seed=0))
  info = data.dataset_info(config.data, config.dataset, train_split)
  method = methods.get(config.method)(config, info.channels, num_classes=info.num_classes,
                                      data_info=info)
  # The training streams: the train split, or those the method names (MLO-MAE: three). The
  # first is what epochs count passes over and images/s counts images of.
  streams = method.data_streams(train_split, config.batch_size)
  if list(streams) != [""] and config.train_fraction != 1.0:
    raise ConfigError(f"train_fraction is not supported by {config.method!r}, which draws its "
                      f"own parts of train_split")
  trains = method.loss is not None
  if not trains and not config.eval_only:
    raise ConfigError(f"method {config.method!r} trains nothing: run it with "
                      f"--config.eval_only=True")
  for name, (split, size) in streams.items():
    if size % jax.device_count():
      raise ConfigError(f"the batch of {size} images of stream {name or 'train'!r} does not "
                        f"divide over {jax.device_count()} devices")
  main_split, step_images = next(iter(streams.values()))
  main_examples = data.dataset_info(config.data, config.dataset, main_split).num_examples
  # An epoch is a pass over that split, or the share of it a method says (MI-MAE).
  epoch_examples = max(1, round(main_examples * method.epoch_fraction))
  schedule, total_steps = schedule_for(config, epoch_examples, step_images)
  base_key = jax.random.key(config.seed)
  abstract_params = jax.eval_shape(method.init, stream_key(base_key, "init", 0))
  # An evaluation needs no optimizer state (and restores none). A method with its own
  # optimizers (MLO-MAE) builds them for the run's length.
  if config.eval_only:
    tx = optax.set_to_zero()
  elif method.optimizer is not None:
    tx = method.optimizer(schedule, total_steps)
  else:
    tx = optimizer_for(config, method, schedule, abstract_params)
  init = state_initializer(method, tx, base_key, ema=config.ema_decay > 0)
  shapes = jax.eval_shape(init)
  state_sharding = sharding.state_shardings(shapes, mesh, config.mesh)
  return RunSetup(info, method, streams, step_images, schedule, total_steps, base_key, tx, init,
                  state_sharding, ckpt_lib.abstract_sharded(shapes, state_sharding))


def _run(config, workdir: str) -> dict:
  config = methods.get(config.method).resolve_config(config)  # what runs, and config.json says
  mesh = make_mesh(fsdp=config.mesh.fsdp)
  replicated = sharding.replicated(mesh)
  run = setup_run(config, mesh)
  info, method, streams, step_images = run.info, run.method, run.streams, run.step_images
  schedule, total_steps, base_key, tx = run.schedule, run.total_steps, run.base_key, run.tx
  init, state_sharding, abstract_state = run.init, run.state_sharding, run.abstract_state
  n_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
  log.info("%s on %s (%d examples, %d classes): %s parameters, %d steps of %d images, "
           "%d devices on %d hosts, mesh %s", config.method, config.dataset, info.num_examples,
           info.num_classes, f"{n_params:,}", total_steps, step_images, jax.device_count(),
           jax.process_count(), dict(mesh.shape))
  if mesh.shape["fsdp"] > 1:
    log.info("fsdp: %.1f%% of the state's elements sharded over %d devices",
             100 * sharding.sharded_fraction(state_sharding, abstract_state), mesh.shape["fsdp"])
  if len(streams) > 1:
    log.info("training streams: %s", ", ".join(f"{name} {split} ({size} per step)"
                                                 for name, (split, size) in streams.items()))

  # Restore: this workdir's latest checkpoint, else init_from's weights, else a fresh init.
  ckpt = ckpt_lib.Checkpointer(workdir, config.checkpoint.keep, config.checkpoint.async_save)
  closers = [ckpt]  # closed when the run ends, however it ends
  try:
    start = ckpt.latest_step()
    resumed = start is not None
    if resumed and not config.eval_only:  # before anything is restored or written
      workdir_lib.check_resume(config, workdir, start)
    if resumed:
      state = ckpt.restore(start, abstract_state, optimizer=not config.eval_only)
      if "opt_state" not in state:
        state["opt_state"] = jax.jit(tx.init, out_shardings=state_sharding["opt_state"])(
            state["params"])
      state["step"] = jax.device_put(jnp.asarray(start, jnp.int32), replicated)
      state.setdefault("extra", {})
      log.info("resumed from %s at step %d", ckpt.directory, start)
    else:
      start = 0
      state = jax.jit(init, out_shardings=state_sharding)()
      if config.init_from:
        state = _initialize_from(config, method, state, abstract_state, state_sharding, mesh)
    if jax.process_index() == 0:  # only now: the config.json of a workdir describes its checkpoints
      if config.eval_only:  # an evaluation of an existing workdir keeps its config.json
        config_lib.save(config, workdir, "eval_config.json")
      else:
        workdir_lib.write_config(config, workdir, start)

    writer = MetricLogger(workdir)
    closers.append(writer)
    if not config.eval_only:  # rows written after the checkpoint resumed from are replayed
      dropped = writer.truncate_after(start if resumed else -1)
      if dropped:
        log.info("metrics.jsonl: %d rows after step %d, written after the checkpoint resumed "
                 "from, were dropped (those steps run again)", dropped, start)
    evals = evaluation.build(config, method, mesh, info.num_classes)
    results = {}
    if config.eval_only:
      if not evals:
        raise ConfigError("eval_only needs an evaluator: enable probe or knn, or use a method "
                          "that classifies")
      for evaluator in evals:
        t0 = time.time()
        results.update(evaluator.run(state))
        log.info("%s at step %d (%.1fs): %s", evaluator.name, start, time.time() - t0,
                 _format(results, evaluator.name))
      writer.write(start, results)
      _run_status(workdir, "done", start)
      return results
    probe = next((e for e in evals if e.name == "probe"), None)
    if probe and config.probe.random_init and start == 0 and not config.init_from:
      t0 = time.time()
      random_init = probe.run(state, prefix="probe/random_init_")
      writer.write(0, random_init)
      log.info("probe of the encoder at random init: accuracy %.4f (%.1fs)",
               random_init["probe/random_init_accuracy"], time.time() - t0)

    reconstruct = None
    if method.reconstruct is not None:
      vis_images = _visualization_batch(config, mesh)
      reconstruct = jax.jit(method.reconstruct, out_shardings=replicated)
    # One jitted step per stage of the method (most methods have one) and call length: 1, and
    # steps_per_call where that is more than 1 (call_length).
    step_fns = {}

    def step_fn_at(step, k):
      stage = method.stage(step)
      if (stage, k) not in step_fns:
        step_fns[stage, k] = jit_train_step(
            make_train_step(method, tx, schedule, base_key, config.ema_decay, stage), mesh,
            state_sharding, steps=k)
      return step_fns[stage, k]

    # Hooks run before the step they are due at (AMT's attention refresh).
    hooks = method.step_hooks(mesh)
    batches = data.train_feeder(config, streams, mesh, start,
                                {name: _stream_seed(config.seed, name) for name in streams})
    closers.append(batches)

    note_unfused_intervals(config, evals, reconstruct is not None)

    def boundary(t):  # something is due between steps t - 1 and t (call_length)
      return (t % config.checkpoint.every_steps == 0
              or (reconstruct is not None and t % config.image_every == 0)
              or any(t % e.every_steps == 0 for e in evals)
              or any(hook.due(t) for hook in hooks) or method.stage(t) != method.stage(t - 1))
    pending = []  # (step, metrics on device, steps in the call) since the last check
    window_start, window_steps, excluded = None, 0, 0.0

    def flush(step):
      """Fetches pending metrics, stops on a non-finite loss, logs means and a progress line."""
      nonlocal window_start, window_steps, excluded
      if not pending:
        return
      fetched = []
      for (s, _, k), m in zip(pending, jax.device_get([m for _, m, _ in pending])):
        fetched += [(s - k + 1 + i, one) for i, one in enumerate(unstack_metrics(m, k))]
      for s, m in fetched:
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
          last = ckpt.latest_step()
          raise NonFiniteLossError(
              f"non-finite loss ({m['loss']}) or gradient norm ({m['grad_norm']}) at step {s}; "
              f"that update was not applied; last checkpoint: "
              f"{'none' if last is None else f'step {last} in {ckpt.directory}'}")
      means = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
      means["lr"] = float(fetched[-1][1]["lr"])
      pending.clear()
      row = dict(means, **{"data/skipped_images": batches.skipped_images})
      if window_start is not None and window_steps:
        elapsed = time.time() - window_start - excluded
        row["images_per_sec"] = window_steps * step_images / max(elapsed, 1e-9)
        eta = (total_steps - step) * elapsed / window_steps
        extra = {k: means[k] for k in method.progress_keys if k in means}
        log.info(progress_line(step, total_steps, means["loss"], means["lr"],
                               row["images_per_sec"], eta, extra))
      writer.write(step, row)
      window_start, window_steps, excluded = time.time(), 0, 0.0

    def write_image(step, name, image):
      if writer.active:
        os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
        visualize.save_png(image, os.path.join(workdir, "images", f"{name}_{step:08d}.png"))
      writer.write_image(step, name, image)

    def visualize_now(step):
      cols = jax.device_get(reconstruct(state["params"], vis_images,
                                        stream_key(base_key, "visualize", step)))
      write_image(step, "reconstruction", visualize.grid(cols, config.data.mean, config.data.std))

    def run_hooks(state, step):
      nonlocal excluded
      for hook in hooks:
        if hook.due(step):
          t0 = time.time()
          state, out, images = hook.run(state, step, stream_key(base_key, hook.name, step))
          for name, image in images.items():
            write_image(step, name, image)
          if out:  # a hook that only logs (MI-MAE's CLUB switch) reports nothing here
            writer.write(step, out)
            log.info("step %d: %s (%.1fs)", step, _format(out, hook.name), time.time() - t0)
          excluded += time.time() - t0
      return state

    step = start
    t_start = time.time()
    preemption.check()
    preemption.training_started()  # from here SIGTERM saves a checkpoint at the next step
    previous = None  # the metrics of the step before: at most two steps are queued on the device
    while step < total_steps:
      state = run_hooks(state, step)
      k = call_length(step, config.steps_per_call, total_steps, boundary)
      compiled = len(step_fns)
      step_fn = step_fn_at(step, k)
      if len(step_fns) > compiled and window_start is not None:  # a new step compiles now
        flush(step)
        window_start = None
      t_step = time.time()
      state, m = step_fn(state, batches.take(step, k))
      before, step = step, step + k
      pending.append((step, m, k))
      if previous is not None:  # so that a checkpoint can be taken at the next step boundary
        jax.block_until_ready(previous["loss"])
      previous = m
      ckpt.raise_if_failed()
      if window_start is None:  # the first step includes compilation: time from its end
        jax.block_until_ready(m["loss"])
        stage = method.stage(step - 1)
        log.info("first %s%s done (compiled) in %s", "step" if k == 1 else f"call of {k} steps",
                 "" if stage is None else f" of {stage!r}",
                 format_duration(time.time() - (t_start if before == start else t_step)))
        window_start = time.time()
      else:
        window_steps += k
      last = step == total_steps
      preempted = preemption.requested() or (
          jax.process_count() > 1 and ckpt.manager.reached_preemption(step))
      save = step % config.checkpoint.every_steps == 0 or last or preempted
      if step // config.log_every > before // config.log_every or save:
        flush(step)  # a checkpoint's step is in metrics.jsonl before the checkpoint
      t0 = time.time()
      if reconstruct and (step % config.image_every == 0 or last):
        visualize_now(step)
      if save:
        ckpt.save(step, state)
      for evaluator in evals:
        if step % evaluator.every_steps == 0 or last:
          out = evaluator.run(state)
          results.update(out)
          writer.write(step, out)
          log.info("step %d: %s", step, _format(out, evaluator.name))
      excluded += time.time() - t0
      if preempted:
        ckpt.wait()
        log.warning("preempted: checkpoint of step %d saved; run again to resume", step)
        _run_status(workdir, "preempted", step)
        return results
    ckpt.wait()  # the last checkpoint is written (or its failure reported) before "done"

    log.info("done: %d steps in %s", total_steps, format_duration(time.time() - t_start))
    _run_status(workdir, "done", total_steps)
    if "probe/accuracy" in results:
      random_init = writer.last_value("probe/random_init_accuracy")
      if random_init is not None:
        results["probe/random_init_accuracy"] = random_init
        log.info("probe accuracy: pre-trained %.4f vs random init %.4f (%+.1f points)",
                 results["probe/accuracy"], random_init,
                 100 * (results["probe/accuracy"] - random_init))
    return results
  finally:
    error = sys.exc_info()[1]  # an error on its way out is not hidden by another
    # After a failed write, what is still being written fails too, noisily: that is muted.
    with contextlib.redirect_stderr(io.StringIO()) if error is not None and (
        isinstance(error, WriteError) or write_failure(error)) else contextlib.nullcontext():
      for closer in reversed(closers):
        try:
          closer.close()
        except Exception:  # pylint: disable=broad-except
          if error is None:
            raise


def _initialize_from(config, method, state, abstract_state, shardings, mesh):
  """Puts the weights of ``config.init_from``'s checkpoint into a freshly initialized state."""
  if method.load_pretrained is not None:  # on host copies: gather what fsdp shards first
    params, extra = jax.device_get(jax.jit(lambda t: t, out_shardings=sharding.replicated(mesh))(
        (state["params"], state["extra"])))
    step, params, extra, what = method.load_pretrained(params, extra, config.init_from,
                                                       config.init_step)
    if "ema_params" in extra:  # the EMA starts from the restored weights
      extra["ema_params"] = params
    state["params"] = jax.device_put(params, shardings["params"])
    state["extra"] = jax.device_put(extra, shardings["extra"])
  else:  # the same model, maybe in the other block layout (model.scan_blocks)
    step, saved = pretrained.read_params(config.init_from, config.init_step)
    saved = layout.to_layout_of(saved, abstract_state["params"])
    ckpt_lib.check_compatible(saved, abstract_state["params"],
                              f"{config.init_from} step {step}")
    state["params"] = jax.device_put(
        jax.tree.map(lambda s, a: np.asarray(s, a.dtype), saved, abstract_state["params"]),
        shardings["params"])
    what = "parameters"
  log.info("%s initialized from %s step %d", what, config.init_from, step)
  return state


def _stream_seed(seed: int, name: str) -> int:
  """The data seed of a training stream: the run's seed for the only stream, else one per name."""
  return seed if not name else (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 31)


def _format(metrics: dict, prefix: str) -> str:
  return ", ".join(f"{k.split('/', 1)[-1]} {v:.4f}" if isinstance(v, float) else f"{k.split('/', 1)[-1]} {v}"
                   for k, v in metrics.items() if k.startswith(prefix + "/"))


def _visualization_batch(config, mesh):
  """A fixed batch (8 images, rounded up to the device count) of the probe's test split."""
  n = math.ceil(8 / jax.device_count()) * jax.device_count()
  split = config.probe.test_split if config.probe.enabled else config.train_split
  batches = data.eval_batches(config.data, config.dataset, split, global_batch_size=n,
                              image_size=config.image_size, mesh=mesh, max_examples=n)
  try:
    return next(iter(batches))["image"]
  finally:
    batches.close()
