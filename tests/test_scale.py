"""Scale: two processes (jax.distributed) against one, FSDP against data parallelism, bfloat16
against float32, and the sharding rules. The runs happen in subprocesses of
tests/multihost_worker.py (each needs its own device count), started together once."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mim_jax import config as config_lib
from mim_jax.core import sharding
from mim_jax.interop import pretrained

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("scale"))
  port = str(_free_port())
  commands = [[sys.executable, WORKER, "reference", out],
              [sys.executable, WORKER, "multihost", out, "0", port],
              [sys.executable, WORKER, "multihost", out, "1", port]]
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for c in commands]
  for command, proc in zip(commands, procs):
    try:
      log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    assert proc.returncode == 0, f"{' '.join(command[1:])} failed:\n{log[-4000:]}"

  def load(name):
    with open(os.path.join(out, name + ".json")) as f:
      result = json.load(f)
    with np.load(os.path.join(out, name + ".npz")) as z:
      result["params"] = dict(z)
    return result
  results = {name: load(name) for name in ("dp", "fsdp", "bf16", "multihost")}
  with np.load(os.path.join(out, "dp_initial.npz")) as z:
    results["initial"] = dict(z)
  return out, results


def _relative_to_training(a, b, initial):
  """|a - b| over how far training moved the parameters (|b - initial|), whole-model norms."""
  assert a.keys() == b.keys() == initial.keys()
  diff = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a))
  moved = np.sqrt(sum(np.sum((b[k] - initial[k]) ** 2) for k in b))
  assert moved > 0
  return diff / moved


def test_two_processes_match_one_process(runs):
  """2 processes x 2 devices, each feeding half of every global batch, train exactly as one
  process with 4 devices on the same global batches."""
  _, r = runs
  np.testing.assert_allclose(r["multihost"]["losses"], r["dp"]["losses"], rtol=1e-5)
  assert r["dp"]["losses"][-1] < r["dp"]["losses"][0]   # the steps train
  assert _relative_to_training(r["multihost"]["params"], r["dp"]["params"], r["initial"]) < 1e-3


def test_on_device_batches_are_the_same_on_one_and_two_processes(runs):
  """data.on_device: every process computes the global batch's ids; the devices gather and
  augment their part; gathered, the batches of 1 process x 4 devices and of 2 x 2 are one."""
  out, _ = runs
  with np.load(os.path.join(out, "device_batches_reference.npz")) as z:
    reference = dict(z)
  assert reference["1_image"].shape[:2] == (2, 16) and len(reference) == 10
  for process in (0, 1):
    with np.load(os.path.join(out, f"device_batches_multihost_{process}.npz")) as z:
      for key, value in z.items():
        np.testing.assert_allclose(value, reference[key], atol=1e-6, err_msg=key)


def test_multihost_trainer_run_writes_once_and_checkpoints(runs):
  """The real trainer in 2 processes (fsdp over each host's 2 devices): both finish, process 0
  alone writes metrics (one row per step, not two) and images, every host takes part in the
  checkpoints, which hold the whole parameters."""
  out, _ = runs
  run = os.path.join(out, "run")
  for process in (0, 1):
    with open(os.path.join(out, f"done_{process}")) as f:
      assert f.read() == "2"
  with open(os.path.join(run, "metrics.jsonl")) as f:
    steps = [row["step"] for row in map(json.loads, f) if "loss" in row]
  assert steps == [1, 2, 3]
  assert sorted(os.listdir(os.path.join(run, "images"))) == [
      "reconstruction_00000002.png", "reconstruction_00000003.png"]
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "3"]
  step, params = pretrained.read_params(run)     # the whole arrays, on one device here
  assert step == 3
  kernel = params["encoder"]["transformer"]["block_0"]["attn"]["qkv"]["kernel"]
  assert kernel.shape == (128, 384) and np.isfinite(np.asarray(kernel)).all()
  assert "block_2" not in params["encoder"]["transformer"]     # the 2-block demo model


def test_fsdp_matches_data_parallel(runs):
  """mesh.fsdp = 4 shards parameters and optimizer state over the 4 devices and gives the same
  losses and parameters as plain data parallelism."""
  _, r = runs
  specs = r["fsdp"]["specs"]
  assert specs["encoder/transformer/block_0/attn/qkv/kernel"] == str(P(None, "fsdp"))
  assert specs["encoder/transformer/block_0/norm1/scale"] == str(P())   # small: replicated
  assert r["fsdp"]["fraction"] > 0.9
  np.testing.assert_allclose(r["fsdp"]["losses"], r["dp"]["losses"], rtol=1e-5)
  # Other reduction orders: AdamW's g / sqrt(v) magnifies rounding where g is near 0, so the
  # parameters agree to a small share of the distance they trained, not bit for bit.
  assert _relative_to_training(r["fsdp"]["params"], r["dp"]["params"], r["initial"]) < 1e-3


def test_bfloat16_tracks_float32(runs):
  """bfloat16 compute (float32 parameters, optimizer state and loss) stays within 2.5% of the
  float32 losses over the demo's first steps, while not being the same computation."""
  _, r = runs
  f32, bf16 = np.array(r["dp"]["losses"]), np.array(r["bf16"]["losses"])
  np.testing.assert_allclose(bf16, f32, rtol=0.025)
  assert np.max(np.abs(bf16 - f32)) > 1e-5       # bf16 did run in lower precision
  assert all(v.dtype == np.float32 for v in r["bf16"]["params"].values())


def test_fsdp_spec_rules():
  """The strategy picks the largest dimension the axis divides; small, indivisible and
  unmatched arrays, the step and non-EMA extras stay replicated; the first rule wins."""
  assert sharding.fsdp_spec((768, 2304), 4, 16) == P(None, "fsdp")
  assert sharding.fsdp_spec((2304, 768), 4, 16) == P("fsdp")
  assert sharding.fsdp_spec((6, 9), 4, 16) == P()                  # nothing divisible
  assert sharding.fsdp_spec((64, 64), 4, 2 ** 14) == P()           # below min_shard_size
  assert sharding.fsdp_spec((64, 64), 1, 16) == P()                # fsdp 1: replicated
  rules = sharding.check_rules(((r"decoder/", "replicate"), (".*", "fsdp")))
  assert sharding.spec_for("params/decoder/embed/kernel", (128, 64), rules, 4, 16) == P()
  assert sharding.spec_for("opt_state/1/0/mu/encoder/x", (128, 64), rules, 4, 16) == P("fsdp")
  assert sharding.spec_for("extra/ema_params/encoder/x", (128, 64), rules, 4, 16) == P("fsdp")
  assert sharding.spec_for("extra/amt_cache", (128, 64), rules, 4, 16) == P()
  assert sharding.spec_for("step", (), rules, 4, 16) == P()
  with pytest.raises(ValueError, match="strategy"):
    sharding.check_rules(((".*", "shard_everything"),))
  with pytest.raises(ValueError, match="divisor"):
    sharding.make_mesh(3, jax.devices())
  mesh = sharding.make_mesh(2, jax.devices())
  assert dict(mesh.shape) == {"data": len(jax.devices()) // 2, "fsdp": 2}


def test_distributed_arguments_from_config_then_environment():
  from mim_jax.main import distributed_args
  dist = config_lib.base_config("mae").distributed
  assert distributed_args(dist, {}) == dict(coordinator_address=None, num_processes=None,
                                            process_id=None)   # JAX detects SLURM / TPU
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert distributed_args(dist, env) == dict(coordinator_address="10.0.0.1:1234",
                                             num_processes=4, process_id=3)
  with dist.unlocked():
    dist.coordinator_address, dist.num_processes, dist.process_id = "host:9", 2, 0
  assert distributed_args(dist, env) == dict(coordinator_address="host:9", num_processes=2,
                                             process_id=0)
  with pytest.raises(config_lib.ConfigError, match="JAX_NUM_PROCESSES"):
    distributed_args(config_lib.base_config("mae").distributed, {"JAX_NUM_PROCESSES": "four"})
