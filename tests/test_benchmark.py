"""benchmarks/: workload sizes, peak-FLOP estimates, the FLOP count behind mfu, and the
MAE / MixMIM comparison."""

import dataclasses
import importlib.util
import io
import json
import math

import jax
import jax.numpy as jnp
import pytest

import benchmarks
from benchmarks import (WORKLOADS, accelerator_peak_flops, analytic_flops, cpu_peak_flops,
                        fixed_pos_embed_count, mixmim_encoder_flops, param_count)
from benchmarks import mae_step, torch_peer
from benchmarks.torch_peer import params_match
from mim_jax import methods


def built(name, **changes):
  w = dataclasses.replace(WORKLOADS[name], **changes)
  config = mae_step.make_config(w)
  model_config = config.copy_and_resolve_references()
  if w.method == "mixmim":   # batch 8 over the tests' 8 devices: use one mask group here
    model_config.model.mask_groups = 1
  method = methods.get(w.method)(model_config, channels=3)
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


def test_mixmim_b224_builds_mixmim_b():
  """MixMIM-B (mixmim.md): hierarchical encoder, 4x4 patches, stages 2/2/18/2 of widths
  128..1024 and heads 4..32, windows 14/14/14/7, 7x7 cells at ratio 0.5, decoder 512/8/16."""
  w, config, method, params = built("mixmim_b224")
  m = config.model
  assert (config.method, m.encoder, m.variant) == ("mixmim", "hierarchical", "B")
  assert config.image_size == 224 and config.batch_size == 8
  assert config.compute_dtype == "float32" and m.norm_pix_loss and m.mask_ratio == 0.5
  assert m.mask_groups == 0        # one mask per device, as the official code
  assert (config.optimizer.b1, config.optimizer.b2, config.optimizer.weight_decay) == (
      0.9, 0.95, 0.05)
  enc, dec = params["encoder"], params["decoder"]
  module = method.encoder.module
  assert module.heads == (4, 8, 16, 32) and module.window_sizes == (14, 14, 14, 7)
  assert enc["patch_embed"]["kernel"].shape == (4 * 4 * 3, 128)
  for i, depth in enumerate((2, 2, 18, 2)):
    stage = enc[f"stage_{i}"]
    c = 128 * 2 ** i
    assert len([k for k in stage if k.startswith("block_")]) == depth
    assert stage["block_0"]["attn"]["qkv"]["kernel"].shape == (c, 3 * c)
    assert stage["block_0"]["mlp"]["fc1"]["kernel"].shape == (c, 4 * c)
  assert method.cell_grid == (7, 7) and method.num_cells == 49 and w.num_cells == 49
  assert dec["embed"]["kernel"].shape == (1024, 512)
  assert len(blocks(dec)) == 8 and method.model.decoder.heads == 16
  assert dec["pred"]["kernel"].shape == (512, 32 * 32 * 3)
  # mixmim.md: encoder 87.94 M trainable with the 1.02 M head -> 86.92 M; the decoder's
  # 27.35 M counts its 49 x 512 sin-cos table (ours is a constant) -> 27.32 M.
  assert count(enc) == 86_917_944 and count(dec) == 27_321_344
  assert param_count(w) == 114_239_288


def test_mixmim_b224_encoder_flops_are_the_papers():
  """mixmim.md: MixMIM-B is 16.35 G multiply-adds at 224 (fvcore, with a 1.02 M-MAC head)."""
  w = WORKLOADS["mixmim_b224"]
  assert mixmim_encoder_flops(w) / 2 == pytest.approx(16.35e9, rel=0.01)
  # its step does about twice the FLOPs of MAE ViT-B/16's, whose encoder sees 1/4 of the tokens
  ratio = analytic_flops(w, 8) / analytic_flops(WORKLOADS["base224"], 8)
  assert 1.5 < ratio < 2.5


def test_mixmim_analytic_flops_written_out():
  """A case small enough to check by hand: 16x16 image, 4x4 patches, two stages (4x4 tokens
  8 wide, then 2x2 tokens 16 wide; 2x2 windows), decoder width 4 on 2x2 cells of 8x8 px."""
  w = benchmarks.Workload("hand", image_size=16, patch_size=4, variant="tiny_test", width=8,
                          depth=2, heads=1, decoder_width=4, decoder_depth=1, decoder_heads=1,
                          batch_size=1, mask_ratio=0.5, method="mixmim", stage_depths=(1, 1),
                          stage_heads=(1, 2), window_sizes=(2, 2))
  assert (w.stride, w.num_cells, w.num_patches) == (8, 4, 16)
  patch = 2 * 16 * 48 * 8
  stage0 = 2 * 12 * 8 * 8 * 16 + 4 * 16 * 4 * 8 + 2 * 4 * 32 * 16   # block, merge to 4 tokens
  stage1 = 2 * 12 * 16 * 16 * 4 + 4 * 4 * 4 * 16
  encoder = patch + stage0 + stage1
  assert mixmim_encoder_flops(w) == encoder
  copy = 2 * 12 * 4 * 4 * 4 + 4 * 4 * 4 * 4 + 2 * 4 * 4 * 192      # block + head, 4 cells
  decoder = 2 * 4 * 16 * 4 + 2 * copy
  assert analytic_flops(w, 1) == 3 * (encoder + decoder) - patch


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


def test_compare_and_peer_arguments(capsys):
  args = mae_step.parse_args(["--compare"])
  assert args.workloads == ["base224", "mixmim_b224"] and args.rounds == 3
  args = mae_step.parse_args(["--workload", "mixmim_b224", "--workload", "base224"])
  assert args.workloads == ["mixmim_b224", "base224"] and not args.compare
  for argv, message in [
      (["--workload", "mixmim_b224", "--peer", "torch"], "MAE only"),
      (["--workload", "all", "--peer", "torch"], "MAE only"),
      (["--workload", "mixmim_tiny32", "--masking", "both"], "is MAE's"),
      (["--compare", "--workload", "tiny32"], "at least two workloads"),
      (["--compare", "--peer", "torch"], "leave out --peer"),
  ]:
    with pytest.raises(SystemExit):
      mae_step.parse_args(argv)
    assert message in capsys.readouterr().err, argv
  with pytest.raises(ValueError, match="ViTMAE"):   # before torch is imported
    torch_peer.TorchMAE(WORKLOADS["mixmim_tiny32"])


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


def test_step_flops_falls_back_to_the_analytic_count_when_xla_misses_library_calls():
  # CPU: XLA counts the matmuls (and some elementwise work): its count is kept.
  assert mae_step.step_flops(1.05e12, 1e12) == (1.05e12, "xla cost_analysis of the compiled step")
  # GPU: cuBLAS / cuDNN calls are not in XLA's count (measured: 0.01 of ViT-B/16 MAE's).
  flops, source = mae_step.step_flops(0.01e12, 1e12)
  assert flops == 1e12 and source.startswith("analytic") and "0.01" in source
  # No analytic count (AMT's token counts): XLA's, whatever it is.
  assert mae_step.step_flops(3.0, 0.0)[0] == 3.0


def test_split_steps():
  assert mae_step.split_steps(5, 3) == [2, 2, 1]
  assert mae_step.split_steps(2, 3) == [1, 1]
  assert sum(mae_step.split_steps(10, 4)) == 10


def test_peer_without_torch_says_how_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else real(name, *a))
  with pytest.raises(SystemExit, match=r"pip install -e \"\.\[torch\]\" -c constraints.txt"):
    mae_step.require_peer("torch")


class FakePeer:
  """Stands in for the torch process: records the call order, answers like it."""

  def __init__(self, w, dtype, batch_size, torch_compile, log):
    self.w, self.log = w, log

  def wait_ready(self):
    return {"ready": True, "device": "cpu"}

  def run(self, steps, pipelined=False):
    assert not pipelined
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

  def run(self, steps, pipelined=False):
    assert not pipelined
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


# ---------------------------------------------------------------------------------------------
# MixMIM's step, compiled once for the tests below (mixmim_tiny32: 2 one-block stages at 32 px),
# on one device (the tests see 8 host devices; one mask group of 8 images).
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixmim_step():
  jx = mae_step.JaxStep(WORKLOADS["mixmim_tiny32"], devices=jax.devices()[:1])
  jx.run(2)
  return jx


def test_mixmim_step_runs_and_counts(mixmim_step):
  """Two steps of the real MixMIM step: a finite loss, the method's parameter count, and XLA's
  FLOPs (the mfu numerator) near the analytic matmul count and above what the encoder's forward
  pass alone costs (XLA's cost analysis of it, lowered on its own)."""
  jx, w = mixmim_step, WORKLOADS["mixmim_tiny32"]
  assert math.isfinite(jx.loss()) and jx.loss() > 0
  assert int(jax.device_get(jx.state["step"])) == 2
  method = methods.get("mixmim")(jx.config, channels=3)
  params = jax.eval_shape(method.init, jax.random.key(0))
  assert jx.params == count(params) == param_count(w)
  analytic = analytic_flops(w, jx.batch_size)
  assert 0.8 < jx.flops / analytic < 1.5, (jx.flops, analytic)
  images = jnp.zeros((jx.batch_size, w.image_size, w.image_size, 3))
  forward = jax.jit(lambda p, x: method.encoder.apply(p, x)).lower(
      params["encoder"], images).cost_analysis()["flops"]
  assert forward > jx.batch_size * mixmim_encoder_flops(w) * 0.9
  assert jx.flops > 2 * forward, (jx.flops, forward)
  ready = jx.ready()
  assert ready["method"] == "mixmim" and ready["flops_per_step"] == jx.flops
  assert ready["params"] == jx.params and json.loads(json.dumps(ready)) == ready


def test_worker_protocol(mixmim_step):
  """What --compare's worker process answers (``serve`` over its JaxStep)."""
  out = io.StringIO()
  commands = [{"cmd": "run", "steps": 1}, {"cmd": "run", "steps": 2, "pipelined": True},
              {"cmd": "info"}, {"cmd": "quit"}]
  start = int(mixmim_step.state["step"])
  torch_peer.serve(mixmim_step, io.StringIO("".join(json.dumps(c) + "\n" for c in commands)),
                   out, ready=mixmim_step.ready())
  ready, run, piped, info, bye = [json.loads(line) for line in out.getvalue().splitlines()]
  assert ready["ready"] and ready["workload"] == "mixmim_tiny32"
  assert len(run["times"]) == 1 and run["times"][0] > 0
  # pipelined: both steps ran (the state's counter moved by 3), one mean time for each
  assert int(mixmim_step.state["step"]) == start + 3
  assert len(piped["times"]) == 2 and piped["times"][0] == piped["times"][1] > 0
  assert info["peak_bytes"] > 0 and math.isfinite(info["loss"]) and bye == {"bye": True}


class FakeRunner:
  """Stands in for a worker process of a MAE workload: fixed step time and FLOPs."""

  def __init__(self, w, step_s, flops, log):
    self.w, self.step_s, self.flops, self.log = w, step_s, flops, log

  def ready(self):
    return {"ready": True, "workload": self.w.name, "method": self.w.method, "batch_size": 8,
            "devices": 1, "device_kind": "cpu", "platform": "cpu",
            "flops_per_step": self.flops, "flops_per_device": self.flops,
            "flops_source": "fake", "xla_flops_per_step": self.flops,
            "params": param_count(self.w), "compile_s": 0.0, "jax": jax.__version__}

  def run(self, steps, pipelined=False):
    self.log.append((self.w.name, steps))
    return [self.step_s] * steps

  def info(self):
    return {"peak_bytes": 1_000, "peak_bytes_source": "fake", "loss": 1.0}

  def close(self):
    self.log.append((self.w.name, "closed"))


def test_compare_alternates_and_reports_ratios(mixmim_step, monkeypatch):
  """--compare: a (fake) MAE runner and the real MixMIM step in rounds A B, B A, A B; one line
  each, and the ratio line is the ratio of the two lines."""
  mae_w, mix_w = WORKLOADS["tiny32"], WORKLOADS["mixmim_tiny32"]
  log = []
  real_run = mae_step.JaxStep.run

  def run(self, steps, pipelined=False):
    assert not pipelined
    log.append((self.workload.name, steps))
    return real_run(self, steps)
  monkeypatch.setattr(mae_step.JaxStep, "run", run)

  def runner(w, dtype, batch_size, mem_fraction):
    assert (dtype, batch_size, mem_fraction) == ("float32", 0, "0.450")
    return FakeRunner(w, 0.25, 1e9, log) if w.method == "mae" else mixmim_step
  args = mae_step.parse_args(["--compare", "--workload", "mixmim_tiny32", "--workload",
                              "tiny32", "--steps", "3", "--warmup", "1", "--peak_flops", "1e11"])
  mix, mae, ratio = mae_step.bench_compare([mix_w, mae_w], args, runner=runner)

  assert log == [("mixmim_tiny32", 1), ("tiny32", 1),                      # warm-up
                 ("mixmim_tiny32", 1), ("tiny32", 1), ("tiny32", 1), ("mixmim_tiny32", 1),
                 ("mixmim_tiny32", 1), ("tiny32", 1), ("tiny32", "closed")]
  assert (mix["method"], mae["method"]) == ("mixmim", "mae")
  for row in (mix, mae):
    for key in ("step_s", "images_per_sec", "mfu", "flops_per_step", "peak_bytes", "params",
                "compile_s", "loss", "load_avg_1m_at_start"):
      assert row[key] is not None, key
  assert mae["step_s"] == 0.25 and mae["images_per_sec"] == 32.0
  assert mae["mfu"] == pytest.approx(1e9 / 0.25 / 1e11)
  assert mix["flops_per_step"] == mixmim_step.flops and mix["params"] == param_count(mix_w)
  assert math.isfinite(mix["loss"]) and mix["peak_bytes"] > 0
  assert ratio["workload"] == "mixmim_tiny32" and ratio["reference"] == "tiny32"
  assert ratio["mixmim_over_mae_images_per_sec"] == pytest.approx(
      mix["images_per_sec"] / mae["images_per_sec"])
  assert ratio["mixmim_over_mae_step_s"] == pytest.approx(mix["step_s"] / mae["step_s"])
  assert ratio["mixmim_over_mae_step_s_min"] == pytest.approx(mix["step_s_min"] / 0.25)
  assert ratio["mixmim_over_mae_flops"] == pytest.approx(mix["flops_per_step"] / 1e9)
  assert ratio["mixmim_over_mae_mfu"] == pytest.approx(mix["mfu"] / mae["mfu"])
  assert ratio["mixmim_over_mae_params"] == pytest.approx(mix["params"] / mae["params"])


def test_compare_ratio_names_workloads_of_one_method():
  rows = [{"workload": n, "method": "mae", "dtype": "float32", "images_per_sec": ips,
           "step_s": 8 / ips, "step_s_min": 8 / ips, "flops_per_step": f, "batch_size": 8, "mfu": None, "params": 10,
           "peak_bytes": 5} for n, ips, f in (("tiny32", 4.0, 2.0), ("base224", 1.0, 8.0))]
  (line,) = mae_step.compare_ratios(rows)
  assert line["base224_over_tiny32_images_per_sec"] == 0.25
  assert line["base224_over_tiny32_flops"] == 4.0 and line["base224_over_tiny32_mfu"] is None
