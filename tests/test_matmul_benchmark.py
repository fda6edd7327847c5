"""benchmarks.matmuls: the MAE step's matmul list, the products it times, and its report."""

import json

import numpy as np
import pytest

from benchmarks import WORKLOADS, Matmul, analytic_flops, mae_matmuls
from benchmarks import matmuls


@pytest.mark.parametrize("name", ["tiny32", "base224"])
@pytest.mark.parametrize("batch", [1, 8])
def test_mae_matmuls_add_up_to_the_written_out_flops(name, batch):
  """The shapes, timed one by one, are the whole step's matmul work: their forward, weight- and
  input-gradient FLOPs sum to ``analytic_flops`` (the closed form, itself checked against XLA's
  count of the compiled step in test_benchmark.py)."""
  w = WORKLOADS[name]
  assert sum(mm.step_flops for mm in mae_matmuls(w, batch)) == analytic_flops(w, batch)


def test_mae_matmuls_shapes_of_vit_b16():
  """ViT-B/16 MAE at batch 8: 50 encoder tokens (49 kept + [CLS]), 197 decoder tokens, 16
  decoder heads of width 32; the patch embedding has no input gradient (its input is the
  image)."""
  by_name = {mm.name: mm for mm in mae_matmuls(WORKLOADS["base224"], 8)}
  shape = lambda n: (by_name[n].batch, by_name[n].m, by_name[n].k, by_name[n].n,
                     by_name[n].count)
  assert shape("patch_embed") == (1, 8 * 196, 768, 768, 1)
  assert not by_name["patch_embed"].input_grad
  assert shape("encoder.qkv") == (1, 400, 768, 2304, 12)
  assert shape("encoder.fc2") == (1, 400, 3072, 768, 12)
  assert shape("encoder.logits") == (96, 50, 64, 50, 12)
  assert shape("decoder_embed") == (1, 400, 768, 512, 1)
  assert shape("decoder.attend") == (128, 197, 197, 32, 8)
  assert shape("pred") == (1, 8 * 197, 512, 768, 1)
  assert len(by_name) == 2 * 6 + 3
  with pytest.raises(ValueError, match="MAE's"):
    mae_matmuls(WORKLOADS["mixmim_tiny32"], 8)


def reference(way, lhs, rhs):
  """x . w, x^T dy and dy w^T written with numpy."""
  t = lambda a: np.swapaxes(a, -1, -2)
  return {"forward": lambda: lhs @ rhs, "weight_grad": lambda: t(lhs) @ rhs,
          "input_grad": lambda: lhs @ t(rhs)}[way]()


def test_each_side_computes_the_three_products():
  """Both sides' products of a linear layer (shared weight) and of a batched attention matmul
  equal numpy's on the same operands, in the shapes autograd's products have: forward
  [b, m, n], weight gradient [b, k, n] (a linear layer's: [k, n]), input gradient [b, m, k];
  and the patch-embedding-like matmul has no input-gradient product."""
  mms = [Matmul("linear", 1, 6, 4, 5, count=2), Matmul("heads", 3, 7, 4, 5),
         Matmul("embed", 1, 6, 4, 5, input_grad=False)]
  jx = matmuls.JaxProducts(mms, "float32")
  pt = matmuls.TorchProducts(mms, "float32")
  expected_shape = {"forward": lambda mm: (mm.m, mm.n), "weight_grad": lambda mm: (mm.k, mm.n),
                    "input_grad": lambda mm: (mm.m, mm.k)}
  for mm in mms:
    lead = (mm.batch,) if mm.batch > 1 else ()
    for way in matmuls.ways(mm):
      for side, to_np in ((jx, np.asarray), (pt, lambda a: a.cpu().numpy())):
        lhs, rhs = (to_np(a) for a in side.operands[mm.name, way])
        out = to_np(side.calls[mm.name, way]())
        assert out.shape == lead + expected_shape[way](mm), (side.side, mm.name, way)
        np.testing.assert_allclose(out, reference(way, lhs, rhs), rtol=1e-5, atol=1e-5)
  assert ("embed", "input_grad") not in jx.calls and ("embed", "weight_grad") in jx.calls


def test_report_weighs_each_matmul_by_its_count():
  """The summary's seconds are sum over matmuls of count x (its ways' seconds); speeds are
  FLOPs over them; jax_over_torch is torch's seconds over JAX's."""
  w = WORKLOADS["tiny32"]
  mms = [Matmul("a", 1, 4, 4, 4, count=3), Matmul("b", 2, 4, 4, 4, input_grad=False)]
  jax_s = {("a", "forward"): 1.0, ("a", "weight_grad"): 2.0, ("a", "input_grad"): 3.0,
           ("b", "forward"): 4.0, ("b", "weight_grad"): 5.0}
  best = {"jax": jax_s, "torch": {key: s / 2 for key, s in jax_s.items()}}
  rows = matmuls.report(w, mms, best, "float32", 64, 1e9, "test")
  a, b, summary = rows
  assert a["jax_gflops"]["weight_grad"] == pytest.approx(128 / 2.0 / 1e9)
  assert set(b["torch_gflops"]) == {"forward", "weight_grad"}
  assert summary["jax_matmul_s"] == pytest.approx(3 * 6.0 + 9.0)
  assert summary["torch_matmul_s"] == pytest.approx((3 * 6.0 + 9.0) / 2)
  assert summary["jax_over_torch"] == pytest.approx(0.5)
  flops = 3 * 3 * 128 + 2 * 256
  assert summary["matmul_flops"] == flops
  assert summary["jax_matmul_flops_per_s"] == pytest.approx(flops / 27.0)
  assert summary["jax_fraction_of_peak"] == pytest.approx(flops / 27.0 / 1e9)
  assert json.loads(json.dumps(rows)) == rows


def test_compiler_options_parse_and_reach_xla():
  """KEY=VALUE options: booleans and integers typed, an empty value kept as ''; an option XLA
  does not know stops the run with XLA's error naming it."""
  assert matmuls.parse_option("xla_cpu_use_onednn=true") == ("xla_cpu_use_onednn", True)
  assert matmuls.parse_option("xla_cpu_parallel_codegen_split_count=4") == (
      "xla_cpu_parallel_codegen_split_count", 4)
  assert matmuls.parse_option("xla_cpu_experimental_ynn_fusion_type=") == (
      "xla_cpu_experimental_ynn_fusion_type", "")
  with pytest.raises(SystemExit):
    matmuls.parse_args(["--compiler_option", "no_equals_sign"])
  with pytest.raises(Exception, match="no_such_xla_option"):
    matmuls.JaxProducts([Matmul("a", 1, 4, 4, 4)], "float32", {"no_such_xla_option": True})


def test_main_prints_one_line_per_matmul_and_a_summary(capsys):
  """An end-to-end run on tiny32 at batch 1, one round, JAX alone: a line per matmul of the
  step, positive speeds, and a summary whose FLOPs are the step's."""
  matmuls.main(["--workload", "tiny32", "--batch_size", "1", "--rounds", "1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  *lines, summary = rows
  w = WORKLOADS["tiny32"]
  assert [r["matmul"] for r in lines] == [mm.name for mm in mae_matmuls(w, 1)]
  assert all(v > 0 for r in lines for v in r["jax_gflops"].values())
  assert summary["matmul_flops"] == summary["analytic_flops"] == analytic_flops(w, 1)
  assert summary["jax_matmul_s"] > 0 and "torch_matmul_s" not in summary
  assert summary["batch_size"] == 1 and summary["peak_flops"] > 0
