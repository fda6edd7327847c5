"""The PyTorch peer of the MAE training step: Hugging Face ``ViTMAEForPreTraining``.

MAE workloads only (``Workload.method == "mae"``; MixMIM has no peer here). Same sizes as
mim_jax's workload (encoder and decoder width / depth / heads, MLP ratio 4,
patch and image size, 3 channels, mask ratio 0.75, norm_pix_loss, qkv bias, LayerNorm eps 1e-6,
exact GELU), in train mode, with AdamW (betas 0.9 / 0.95, weight decay 0.05 on tensors of more
than one dimension, as MAE). One step = forward + backward + optimizer.step + zero_grad.

Run alone:           python -m benchmarks.torch_peer --workload tiny32 --steps 5
Driven by mae_step:  ``--serve`` reads JSON commands on stdin and answers one JSON line each on
stdout, so that ``benchmarks.mae_step --peer torch`` can alternate JAX and torch rounds while
each keeps its own process (its own peak memory, thread pools and accelerator allocator).
"""

import argparse
import json
import statistics
import sys
import time

from benchmarks import (INSTALL_HINT, WORKLOADS, analytic_flops, cpu_count,
                        fixed_pos_embed_count, param_count, peak_flops, peak_rss,
                        reset_peak_rss)


def require_torch():
  """Imports torch and transformers, or exits with a message telling how to install them."""
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as e:
    raise SystemExit(f"error: {INSTALL_HINT} ({e})") from None


def hf_config(w):
  from transformers import ViTMAEConfig
  return ViTMAEConfig(
      hidden_size=w.width, num_hidden_layers=w.depth, num_attention_heads=w.heads,
      intermediate_size=int(w.mlp_ratio * w.width),
      decoder_hidden_size=w.decoder_width, decoder_num_hidden_layers=w.decoder_depth,
      decoder_num_attention_heads=w.decoder_heads,
      decoder_intermediate_size=int(w.mlp_ratio * w.decoder_width),
      image_size=w.image_size, patch_size=w.patch_size, num_channels=w.channels,
      mask_ratio=w.mask_ratio, norm_pix_loss=True, qkv_bias=True, layer_norm_eps=1e-6,
      hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


class TorchMAE:
  """The HF model, its AdamW and a fixed random batch; ``run(n)`` times n full steps."""

  def __init__(self, w, batch_size=None, dtype="float32", device=None, compile=False, seed=0):
    if w.method != "mae":
      raise ValueError(f"the torch peer is HF's ViTMAE: workload {w.name} is {w.method}, "
                       f"not mae")
    require_torch()
    import torch
    from transformers import ViTMAEForPreTraining
    torch.set_num_threads(cpu_count())
    torch.manual_seed(seed)
    self.torch = torch
    self.workload = w
    self.batch_size = batch_size or w.batch_size
    self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    self.dtype = dtype
    model = ViTMAEForPreTraining(hf_config(w)).to(self.device).train()
    self.params = self._count(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": 0.05},
              {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]
    self.optimizer = torch.optim.AdamW(groups, lr=1.5e-4 * self.batch_size / 256,
                                       betas=(0.9, 0.95))
    self.model = torch.compile(model) if compile else model
    self.compiled = bool(compile)
    # bf16 autocast (on CUDA, and on CPU too, where mim_jax then also computes in bf16).
    self.autocast = dtype == "bfloat16"
    if dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    self.images = torch.randn(self.batch_size, w.channels, w.image_size, w.image_size,
                              device=self.device)
    self.loss = None
    if self.device.type == "cuda":
      torch.cuda.reset_peak_memory_stats(self.device)
    self._rss_reset = reset_peak_rss()

  @staticmethod
  def _count(model):
    total = sum(p.numel() for p in model.parameters())
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"total": total, "fixed": fixed, "trainable": total - fixed}

  def _sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize(self.device)

  def step(self):
    torch = self.torch
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      loss = self.model(pixel_values=self.images).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.loss = loss.detach()

  def run(self, steps: int, pipelined: bool = False) -> list:
    """Seconds of each of ``steps`` steps, each timed to its end on the device; with
    ``pipelined``, all queued back to back and waited for once (each entry the mean)."""
    times = []
    self._sync()
    if pipelined:
      t0 = time.perf_counter()
      for _ in range(steps):
        self.step()
      self._sync()
      return [(time.perf_counter() - t0) / steps] * steps
    for _ in range(steps):
      t0 = time.perf_counter()
      self.step()
      self._sync()
      times.append(time.perf_counter() - t0)
    return times

  def peak_bytes(self):
    if self.device.type == "cuda":
      return self.torch.cuda.max_memory_allocated(self.device), "torch.cuda.max_memory_allocated"
    return peak_rss(self._rss_reset)

  def device_kind(self) -> str:
    if self.device.type == "cuda":
      return self.torch.cuda.get_device_name(self.device)
    return "cpu"

  def info(self) -> dict:
    peak, source = self.peak_bytes()
    w = self.workload
    return {
        "torch": self.torch.__version__,
        "transformers": __import__("transformers").__version__,
        "device": self.device.type, "device_kind": self.device_kind(),
        "threads": self.torch.get_num_threads(), "torch_compile": self.compiled,
        "autocast_bf16": self.autocast,
        "params": dict(self.params, expected_fixed=fixed_pos_embed_count(w),
                       expected_trainable=param_count(w)),
        "peak_bytes": peak, "peak_bytes_source": source,
        "loss": None if self.loss is None else float(self.loss.float().item()),
    }


def params_match(torch_params: dict, mim_jax_params: int, w) -> bool:
  """HF total == mim_jax's trainable count + the two fixed sin-cos tables."""
  return (torch_params["trainable"] == mim_jax_params
          and torch_params["fixed"] == fixed_pos_embed_count(w)
          and torch_params["total"] == mim_jax_params + fixed_pos_embed_count(w))


def serve(peer, inp=sys.stdin, out=None, ready=None):
  """JSON-line commands: {"cmd": "run", "steps": n} -> {"times": [...]};
  {"cmd": "info"} -> info(); {"cmd": "quit"}. A first line {"ready": true, ...} (``ready``,
  default the torch peer's) says the model is built. Errors come back as {"error": "..."}.
  Also serves mim_jax's ``JaxStep`` (``benchmarks.mae_step --serve``, for ``--compare``)."""
  out = out or sys.stdout

  def reply(obj):
    out.write(json.dumps(obj) + "\n")
    out.flush()

  reply(ready or {"ready": True, "device": peer.device.type, "params": peer.params})
  for line in inp:
    if not line.strip():
      continue
    try:
      msg = json.loads(line)
      if msg["cmd"] == "run":
        reply({"times": peer.run(int(msg["steps"]), bool(msg.get("pipelined", False)))})
      elif msg["cmd"] == "info":
        reply(peer.info())
      elif msg["cmd"] == "quit":
        reply({"bye": True})
        return
      else:
        reply({"error": f"unknown command {msg['cmd']!r}"})
    except Exception as e:  # reported to the driver, which stops with it
      reply({"error": f"{type(e).__name__}: {e}"})
      return


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workload", default="tiny32",
                  choices=sorted(n for n, w in WORKLOADS.items() if w.method == "mae"))
  ap.add_argument("--batch_size", type=int, default=0, help="0: the workload's batch")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--device", default=None, help="cpu or cuda; default cuda if available")
  ap.add_argument("--torch_compile", action="store_true")
  ap.add_argument("--peak_flops", type=float, default=0.0,
                  help="peak FLOP/s of the device for mfu; default: table or CPU estimate")
  ap.add_argument("--serve", action="store_true", help="(used by benchmarks.mae_step)")
  return ap.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  require_torch()
  w = WORKLOADS[args.workload]
  if args.serve:
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # keep library prints off the protocol stream
    try:
      peer = TorchMAE(w, args.batch_size or None, args.dtype, args.device, args.torch_compile)
    except Exception as e:
      protocol_out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
      protocol_out.flush()
      raise SystemExit(1)
    serve(peer, sys.stdin, protocol_out)
    return
  peer = TorchMAE(w, args.batch_size or None, args.dtype, args.device, args.torch_compile)
  peer.run(args.warmup)
  times = peer.run(args.steps)
  step_s = statistics.median(times)
  flops = analytic_flops(w, peer.batch_size)
  peak, peak_source = peak_flops(peer.device_kind(), peer.device.type, args.dtype,
                                 args.peak_flops)
  row = {"workload": w.name, "impl": "torch", "step_s": step_s,
         "images_per_sec": peer.batch_size / step_s,
         "mfu": flops / step_s / peak if peak else None,
         "flops_per_step": flops, "flops_source": "analytic (matmuls only)",
         "peak_flops": peak, "peak_source": peak_source, "batch_size": peer.batch_size,
         "dtype": args.dtype, "steps": args.steps, "warmup": args.warmup,
         "step_s_min": min(times), "step_s_max": max(times)}
  row.update(peer.info())
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
