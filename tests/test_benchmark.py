"""benchmarks/: workload sizes, peak-FLOP estimates, and the FLOP count behind mfu."""

import dataclasses
import importlib.util

import jax
import pytest

import benchmarks
from benchmarks import (WORKLOADS, accelerator_peak_flops, analytic_flops, cpu_peak_flops,
                        fixed_pos_embed_count, param_count)
from benchmarks import mae_step
from benchmarks.torch_peer import params_match
from mim_jax import methods


def built(name, **changes):
  w = dataclasses.replace(WORKLOADS[name], **changes)
  config = mae_step.make_config(w)
  method = methods.get("mae")(config, channels=3)
  params = jax.eval_shape(method.init, jax.random.key(0))
  return w, config, method, params


def blocks(tree):
  return sorted(k for k in tree["transformer"] if k.startswith("block_"))


def count(params):
  return sum(int(x.size) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name,image,patch,enc,dec,batch", [
    ("tiny32", 32, 4, (192, 12, 3), (128, 4, 4), 64),
    ("base224", 224, 16, (768, 12, 12), (512, 8, 16), 8),
])
def test_workload_builds_the_sizes_it_names(name, image, patch, enc, dec, batch):
  _, config, method, params = built(name)
  e, d = params["encoder"], params["decoder"]
  patch_dim = patch * patch * 3
  assert config.image_size == image and config.batch_size == batch
  assert config.compute_dtype == "float32" and config.model.norm_pix_loss
  assert config.model.mask_ratio == 0.75
  assert method.num_patches == (image // patch) ** 2
  assert method.num_kept == method.num_patches // 4
  # encoder: patch embedding [p*p*3, width], depth blocks, MLP ratio 4, heads
  assert e["patch_embed"]["proj"]["kernel"].shape == (patch_dim, enc[0])
  assert len(blocks(e)) == enc[1]
  assert e["transformer"]["block_0"]["attn"]["qkv"]["kernel"].shape == (enc[0], 3 * enc[0])
  assert e["transformer"]["block_0"]["mlp"]["fc1"]["kernel"].shape == (enc[0], 4 * enc[0])
  assert method.model.encoder.heads == enc[2]
  # decoder: embedding width -> decoder width, depth blocks, heads, prediction of p*p*3 pixels
  assert d["embed"]["kernel"].shape == (enc[0], dec[0])
  assert len(blocks(d)) == dec[1]
  assert d["transformer"]["block_0"]["mlp"]["fc1"]["kernel"].shape == (dec[0], 4 * dec[0])
  assert method.model.decoder.heads == dec[2]
  assert d["pred"]["kernel"].shape == (dec[0], patch_dim)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_analytic_parameter_count_matches_the_built_model(name):
  w, _, _, params = built(name)
  assert count(params) == param_count(w)


def test_base224_counts_are_vit_b16_mae():
  w = WORKLOADS["base224"]
  assert param_count(w) == 111_655_680
  assert fixed_pos_embed_count(w) == 252_160    # HF keeps the sin-cos tables as parameters


def test_workload_selection():
  assert benchmarks.select(["all"]) == list(WORKLOADS)
  assert benchmarks.select(None) == ["tiny32"]
  assert benchmarks.select(["base224", "tiny32", "base224"]) == ["base224", "tiny32"]
  with pytest.raises(ValueError, match="unknown workload"):
    benchmarks.select(["huge"])


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
cpu MHz\t\t: 3499.998
siblings\t: 4
cpu cores\t: 4
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq
"""


def test_cpu_peak_estimate_avx512_is_cores_clock_64():
  peak, source = cpu_peak_flops(CPUINFO, cores=4)
  assert peak == pytest.approx(4 * 2.9e9 * 64)
  assert "avx512f" in source


def test_cpu_peak_estimate_avx2_mhz_fallback_and_hyperthreads():
  text = (CPUINFO.replace(" avx512f avx512dq", "")
          .replace(" @ 2.90GHz", "").replace("siblings\t: 4", "siblings\t: 8"))
  peak, _ = cpu_peak_flops(text, cores=8)   # 8 hyper-threads on 4 cores, 3.5 GHz
  assert peak == pytest.approx(4 * 3.499998e9 * 32)


def test_accelerator_peak_table():
  assert accelerator_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
  assert accelerator_peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494.7e12
  assert accelerator_peak_flops("NVIDIA H200", "bfloat16") == 989.4e12
  assert accelerator_peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
  assert accelerator_peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert accelerator_peak_flops("TPU v4", "float32") == 275e12
  assert accelerator_peak_flops("Some New Chip", "bfloat16") is None
  assert benchmarks.peak_flops("cpu", "cpu", "float32", override=1e12) == (1e12, "--peak_flops")


def test_split_steps():
  assert mae_step.split_steps(5, 3) == [2, 2, 1]
  assert mae_step.split_steps(2, 3) == [1, 1]
  assert sum(mae_step.split_steps(10, 4)) == 10


def test_peer_without_torch_says_how_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else real(name, *a))
  with pytest.raises(SystemExit, match="pip install -r requirements-bench.txt"):
    mae_step.require_peer("torch")


class FakePeer:
  """Stands in for the torch process: records the call order, answers like it."""

  def __init__(self, w, dtype, batch_size, torch_compile, log):
    self.w, self.log = w, log

  def wait_ready(self):
    return {"ready": True, "device": "cpu"}

  def run(self, steps):
    self.log.append(("torch", steps))
    return [0.5] * steps

  def request(self, cmd):
    assert cmd == "info"
    fixed = fixed_pos_embed_count(self.w)
    return {"device": "cpu", "peak_bytes": 1, "peak_bytes_source": "fake",
            "params": {"total": param_count(self.w) + fixed, "fixed": fixed,
                       "trainable": param_count(self.w)}}

  def close(self):
    pass


def test_benchmark_rows_alternation_and_flops_near_analytic(monkeypatch):
  """One compiled step of a reduced tiny32 (2 + 1 blocks): the JSON rows, jax/torch rounds
  alternating, and XLA's FLOP count (the mfu numerator) within 2x of the analytic matmul count."""
  w = dataclasses.replace(WORKLOADS["tiny32"], name="tiny32_reduced", depth=2,
                          decoder_depth=1, batch_size=16)
  log = []
  monkeypatch.setattr(mae_step, "TorchPeerProcess",
                      lambda *a: FakePeer(*a, log=log))
  real_run = mae_step.JaxStep.run

  def run(self, steps):
    log.append(("jax", steps))
    return real_run(self, steps)
  monkeypatch.setattr(mae_step.JaxStep, "run", run)

  args = mae_step.parse_args(["--steps", "2", "--warmup", "1", "--peer", "torch",
                              "--rounds", "2", "--peak_flops", "1e11"])
  jax_row, torch_row, ratio = mae_step.bench_workload(w, args)

  assert log == [("jax", 1), ("torch", 1), ("jax", 1), ("torch", 1), ("jax", 1), ("torch", 1)]
  for row in (jax_row, torch_row):
    for key in ("workload", "step_s", "images_per_sec", "mfu", "peak_bytes",
                "peak_bytes_source", "peak_flops", "peak_source", "params"):
      assert key in row, key
  assert jax_row["peak_bytes"] > 0 and jax_row["peak_flops"] == 1e11
  assert jax_row["images_per_sec"] == pytest.approx(16 / jax_row["step_s"])
  assert torch_row["params"]["same_model"] and torch_row["params"]["mim_jax"] == param_count(w)
  assert ratio == {"workload": "tiny32_reduced", "dtype": "float32",
                   "jax_over_torch": pytest.approx(0.5 / jax_row["step_s"])}

  analytic = analytic_flops(w, 16)
  assert 0.5 < jax_row["flops_per_step"] / analytic < 2.0, (jax_row["flops_per_step"], analytic)
  assert jax_row["mfu"] == pytest.approx(
      jax_row["flops_per_step"] / jax_row["devices"] / jax_row["step_s"] / 1e11)


def test_analytic_flops_written_out_for_one_block():
  """The formula on a case small enough to check by hand: 16x16 image, patch 8 (L = 4, K = 1),
  width 8, one block each, decoder width 4, batch 1."""
  w = benchmarks.Workload("hand", image_size=16, patch_size=8, variant="tiny_test/8", width=8,
                          depth=1, heads=1, decoder_width=4, decoder_depth=1, decoder_heads=1,
                          batch_size=1)
  P, te, td = 192, 2, 5
  patch = 2 * 4 * P * 8
  enc = 2 * 12 * 64 * te + 4 * te * te * 8
  dec = 2 * te * 8 * 4 + 2 * 12 * 16 * td + 4 * td * td * 4 + 2 * td * 4 * P
  assert analytic_flops(w, 1) == 3 * (patch + enc + dec) - patch
