"""One process of tests/test_scale.py (run as a script, not collected by pytest).

  python tests/multihost_worker.py reference OUT_DIR
      one process with 4 CPU devices: MAE on the digits demo, a few steps on fixed global
      batches in plain data parallelism (float32), with mesh.fsdp = 4, and in bfloat16;
  python tests/multihost_worker.py multihost OUT_DIR PROCESS_ID PORT
      one of two processes with 2 CPU devices each (jax.distributed, local coordinator): the
      same data-parallel steps, each process feeding its half of every global batch, then a
      short run of the real trainer (mesh.fsdp = 2) in OUT_DIR/run.

Writes OUT_DIR/<mode>[_<process>].json (losses) and .npz (final parameters), and
OUT_DIR/device_batches_<mode>[_<process>].npz: global batches made on the devices
(``data.on_device``), whole on every process.
"""

import json
import os
import sys

MODE, OUT = sys.argv[1], sys.argv[2]
DEVICES = 4 if MODE == "reference" else 2
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={DEVICES} "
                           "--xla_llvm_disable_expensive_passes=true")  # as conftest.py
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # each process compiles its own programs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

if MODE == "multihost":
  PROCESS, PORT = int(sys.argv[3]), int(sys.argv[4])
  jax.distributed.initialize(f"localhost:{PORT}", num_processes=2, process_id=PROCESS)
else:
  PROCESS = 0

import numpy as np  # noqa: E402

from mim_jax import config as config_lib  # noqa: E402
from mim_jax import data, methods, train  # noqa: E402
from mim_jax.core import sharding, tree_paths  # noqa: E402
from mim_jax.core.rng import stream_key  # noqa: E402
from mim_jax.data import on_device  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH, STEPS = 16, 4


def demo_config(**overrides):
  """The digits demo, its model cut to 2 encoder blocks and 1 decoder block (quicker compiles)."""
  c = config_lib.load(os.path.join(REPO, "configs", "mae_digits.py"))
  c.model.depth, c.model.decoder_depth = 2, 1
  c.batch_size = GLOBAL_BATCH
  c.total_steps = 100
  c.warmup_epochs = 0.0
  c.probe.enabled = False
  for key, value in overrides.items():
    config_lib.override(c, key, str(value))
  return c


def global_batches(c):
  """The same STEPS global batches in every process (one host's view of the whole stream)."""
  it = data.train_iterator(c.data, c.dataset, c.train_split, global_batch_size=GLOBAL_BATCH,
                           image_size=c.image_size, seed=0, process_index=0, process_count=1)
  return [next(it) for _ in range(STEPS)]


def run_steps(c, batches):
  """Losses of STEPS trainer steps on ``batches`` and the final parameters (on every host)."""
  mesh = train.make_mesh(fsdp=c.mesh.fsdp)
  info = data.dataset_info(c.data, c.dataset, c.train_split)
  method = methods.get(c.method)(c, info.channels, num_classes=info.num_classes, data_info=info)
  schedule, _ = train.schedule_for(c, info.num_examples)
  tx = train.optimizer_for(c, method, schedule, None)
  base_key = jax.random.key(c.seed)
  init = train.state_initializer(method, tx, base_key)
  shapes = jax.eval_shape(init)
  shardings = sharding.state_shardings(shapes, mesh, c.mesh)
  state = jax.jit(init, out_shardings=shardings)()
  step = train.jit_train_step(train.make_train_step(method, tx, schedule, base_key), mesh,
                              shardings)
  rows = GLOBAL_BATCH // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  initial = flat_params(state["params"], mesh)
  losses = []
  for batch in batches:
    local = {k: v[mine] for k, v in batch.items()}
    state, metrics = step(state, jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), x), local))
    losses.append(float(jax.device_get(metrics["loss"])))
  specs = {tree_paths.path_name(path): str(s.spec) for path, s in
           jax.tree_util.tree_flatten_with_path(shardings["params"])[0]}
  return losses, flat_params(state["params"], mesh), dict(
      specs=specs, fraction=sharding.sharded_fraction(shardings, shapes), initial=initial)


def device_batches(c):
  """Steps 0-2 of the demo's stream on the devices (the last two as one stacked call), gathered
  whole: the same on one process and on two."""
  mesh = train.make_mesh()
  stream = on_device.TrainStream(c.data, c.dataset, c.train_split, global_batch_size=GLOBAL_BATCH,
                                 image_size=c.image_size, seed=0, mesh=mesh)
  whole = jax.jit(lambda b: b, out_shardings=sharding.replicated(mesh))
  batches = [jax.device_get(whole(stream.take(0)))] + [
      jax.device_get(whole(stream.take(1, 2)))]
  name = "device_batches_" + MODE + (f"_{PROCESS}" if MODE == "multihost" else "")
  np.savez(os.path.join(OUT, name + ".npz"),
           **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})


def flat_params(params, mesh):
  """{path: numpy array} of the whole parameters, gathered from their shards."""
  gathered = jax.jit(lambda p: p, out_shardings=sharding.replicated(mesh))(params)
  return {tree_paths.path_name(path): np.asarray(x) for path, x in
          jax.tree_util.tree_flatten_with_path(jax.device_get(gathered))[0]}


def save(name, losses, params, extra=None):
  extra = dict(extra or {})
  initial = extra.pop("initial", None)
  with open(os.path.join(OUT, name + ".json"), "w") as f:
    json.dump(dict(losses=losses, **extra), f)
  np.savez(os.path.join(OUT, name + ".npz"), **params)
  if initial is not None:
    np.savez(os.path.join(OUT, name + "_initial.npz"), **initial)


def main():
  c = demo_config()
  batches = global_batches(c)
  device_batches(c)
  if MODE == "reference":
    save("dp", *run_steps(c, batches))
    losses, params, info = run_steps(demo_config(**{"mesh.fsdp": 4}), batches)
    save("fsdp", losses, params, info)
    save("bf16", *run_steps(demo_config(compute_dtype="bfloat16"), batches)[:2])
    return
  losses, params, _ = run_steps(c, batches)
  if PROCESS == 0:
    save("multihost", losses, params)
  run = demo_config(**{"mesh.fsdp": 2, "total_steps": 3, "log_every": 1, "image_every": 2,
                       "checkpoint.every_steps": 2, "checkpoint.async_save": False})
  train.train_and_evaluate(run, os.path.join(OUT, "run"))
  with open(os.path.join(OUT, f"done_{PROCESS}"), "w") as f:
    f.write(str(jax.process_count()))


if __name__ == "__main__":
  main()
