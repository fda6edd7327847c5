"""The league's budget axis: the same league run at several scales (``--arg scale=N``, each
scale in its own workdir and ledger ``league_<name>_xN.json``; scale 1 is ``league_<name>.json``),
gathered into one table and one figure:

  python -m mim_jax.league --config configs/league_fashion_mnist.py --budget

writes ``league_<name>_budget.md`` (per protocol, every row's value at every scale measured;
every claim's verdict at every scale, by ``mim_jax.league.stats``; each linear probe's top-1
after every epoch, to show whether it converged) and ``league_<name>_budget.png`` (accuracy against the images of
pre-training, one line per row, one panel per protocol). Everything is read from the ledgers,
so the cells' workdirs need not be on this machine.
"""

import glob
import json
import os
import re

from mim_jax.league import report as league_report
from mim_jax.league import runner as league_lib


def ledgers(results_dir: str, name: str) -> dict:
  """{scale: ledger path} of the league ``name`` in ``results_dir``."""
  out = {}
  if os.path.exists(league_lib.ledger_path(results_dir, name)):
    out[1] = league_lib.ledger_path(results_dir, name)
  for path in glob.glob(os.path.join(results_dir, f"league_{name}_x*.json")):
    match = re.fullmatch(rf"league_{re.escape(name)}_x(\d+)\.json", os.path.basename(path))
    if match:
      out[int(match.group(1))] = path
  return dict(sorted(out.items()))


def _load(path):
  with open(path) as f:
    return json.load(f)


def probe_curve(cells: list, row: str):
  """The row's linear-probe top-1 after each of its evaluations (every epoch), mean over the
  seeds that have the same number of them; None without a curve."""
  curves = [[v for _, v in c["curve"]] for c in cells
            if c["row"] == row and c["protocol"] == "linear_probe" and c.get("curve")]
  if not curves:
    return None
  longest = max(len(c) for c in curves)
  curves = [c for c in curves if len(c) == longest]
  return [sum(c[i] for c in curves) / len(curves) for i in range(longest)]


def gather(module, rows, results_dir: str, name: str) -> dict:
  """{scale: {"table", "claims", "cells", "command"}} from every ledger of the league."""
  claims = module.claims() if hasattr(module, "claims") else []
  out = {}
  for scale, path in ledgers(results_dir, name).items():
    data = _load(path)
    cells = [c for c in data.get("cells", []) if c.get("status") == "done"]
    table = league_report.summarize(rows, cells)
    out[scale] = {"table": table, "cells": cells, "command": data.get("command", ""),
                  "claims": [(c, league_report.verdict(table, c)) for c in claims]}
  return out


def _images(setup, scale: int) -> str:
  n = setup.pretrain_images * scale if setup is not None else None
  if n is None:
    return f"x{scale}"
  return f"x{scale} ({n / 1e6:.2f} M images)" if n >= 1e6 else f"x{scale} ({n // 1000} k images)"


def markdown(module, rows, gathered: dict, name: str, config_path: str = "CONFIG") -> str:
  setup = getattr(module, "SETUP", None)
  scales = list(gathered)
  heads = [_images(setup, s) for s in scales]
  lines = [f"# League budget axis: {name}", "",
           "The same league at each scale of its budget (`--arg scale=N`: N times the "
           "pre-training images and the linear-probe and fine-tuning steps). Per protocol, "
           "every row's top-1 at every scale measured (mean +- std over seeds, their number in "
           "brackets; one seed: the value alone); each column is headed by the scale and its "
           "images of pre-training per row (MI-MAE: views). Rebuilt with `python -m "
           f"mim_jax.league --config {config_path} --budget`.", ""]
  for scale in scales:
    command = gathered[scale]["command"]
    if command:
      lines.append(f"- x{scale}: `{command}`")
  lines.append("")
  for protocol in league_report.table_protocols(rows):
    lines += [f"## {league_report.NAMES.get(protocol, protocol)}", "",
              "| row | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(scales)]
    for row in rows:
      if protocol not in row["protocols"]:
        continue
      values = [league_report.fmt(gathered[s]["table"][row["name"]].get(protocol))
                for s in scales]
      if any(values):
        lines.append(f"| {row.get('label', row['name'])} | " + " | ".join(values) + " |")
    lines.append("")
  claims = [c for c, _ in next(iter(gathered.values()))["claims"]] if gathered else []
  if claims:
    lines += ["## Paper claims at each budget", "",
              "Welch's t-test on the seed values, two-sided p < 0.05 (`mim_jax.league.stats`); "
              "a side at one seed is not judged.", "",
              "| claim | protocol | " + " | ".join(heads) + " |",
              "| --- | --- |" + " --- |" * len(scales)]
    for i, claim in enumerate(claims):
      verdicts = [gathered[s]["claims"][i][1]["text"] for s in scales]
      lines.append(f"| {claim['text']} | "
                   f"{league_report.NAMES.get(claim['protocol'], claim['protocol'])} | "
                   + " | ".join(verdicts) + " |")
    lines.append("")
  for scale in scales:
    curves = {r["name"]: probe_curve(gathered[scale]["cells"], r["name"]) for r in rows}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
      continue
    epochs = max(len(v) for v in curves.values())
    lines += [f"## Has the linear probe converged? x{scale}", "",
              "Its top-1 after each epoch (mean over seeds), and the gain of the last epoch in "
              "points.", "",
              "| row | " + " | ".join(str(e + 1) for e in range(epochs)) + " | last gain |",
              "| --- |" + " --- |" * (epochs + 1)]
    for row in rows:
      curve = curves.get(row["name"])
      if curve:
        gain = f"{100 * (curve[-1] - curve[-2]):+.2f}" if len(curve) > 1 else ""
        lines.append(f"| {row.get('label', row['name'])} | " + " | ".join(
            f"{v:.4f}" for v in curve) + " |" * (epochs - len(curve)) + f" | {gain} |")
    lines.append("")
  mi = [(scale, c) for scale in scales for c in gathered[scale]["cells"]
        if c["protocol"] == "pretrain" and (c.get("curves") or {}).get(league_report.MI_KEYS[0])]
  if mi:
    labels = {r["name"]: r.get("label", r["name"]) for r in rows}
    lines += ["## MI-MAE's estimators during pre-training", "",
              "CLUB's estimate, V's NLL (nats) and the latents' scale (mean per-dimension std; "
              "logged since 2026-12-07) at the first and the last logged step: V's variance is "
              "bounded below (1/e, CLUB's tanh), so both estimates grow with the latents' scale "
              "(benchmarks/mi_mae_club.py).", "",
              "| scale | row, seed | CLUB | V's NLL | latent std |", "| --- | --- | --- | --- | --- |"]
    for scale, c in mi:
      ends = []
      for key in league_report.MI_KEYS:
        curve = c["curves"].get(key) or []
        ends.append(f"{curve[0][1]:.2f} -> {curve[-1][1]:.2f} (steps {curve[0][0]}-"
                    f"{curve[-1][0]})" if curve else "not logged")
      lines.append(f"| x{scale} | {labels.get(c['row'], c['row'])}, {c['seed']} | "
                   + " | ".join(ends) + " |")
    lines.append("")
  return "\n".join(lines)


def figure(plt, module, rows, gathered: dict):
  """Accuracy against the images of pre-training (log axis), one panel per protocol in the
  table's order, one line per row (error bars +-1 std over the seeds; hollow markers where a
  point is one seed); rows without pre-training are drawn at their scale's images too (their
  own budgets scale with it)."""
  setup = getattr(module, "SETUP", None)
  per_scale = setup.pretrain_images if setup is not None else 1
  protocols = league_report.table_protocols(rows)
  fig, axes = plt.subplots(1, len(protocols), figsize=(4.4 * len(protocols), 5.4),
                           sharex=True, sharey=True, squeeze=False)
  xs_all = [s * per_scale for s in gathered]
  colours = plt.get_cmap("tab20")
  for ax, protocol in zip(axes[0], protocols):
    for i, row in enumerate(rows):
      points = [(s * per_scale, gathered[s]["table"][row["name"]].get(protocol))
                for s in gathered]
      points = [(x, st) for x, st in points if st]
      if not points:
        continue
      xs = [x for x, _ in points]
      ys = [st["mean"] for _, st in points]
      style = dict(color=colours(i % 20), linestyle="--" if not row.get("pretrain") else "-")
      ax.plot(xs, ys, label=row.get("label", row["name"]), **style)
      for x, st in points:
        many = st["n"] > 1
        ax.errorbar([x], [st["mean"]], yerr=[st["std"]] if many else None, fmt="o", capsize=2,
                    markersize=4, color=style["color"],
                    markerfacecolor=style["color"] if many else "white")
    ax.set_xscale("log")
    ax.set_xlim(min(xs_all) / 1.6, max(xs_all) * 1.6)
    ax.set_ylim(0.0, 1.0)
    ax.set_title(league_report.NAMES.get(protocol, protocol), fontsize=10)
    ax.set_xlabel("images of pre-training (log)", fontsize=8)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("top-1 (error bars +-1 std over seeds; hollow: one seed)", fontsize=8)
  handles, labels = [], []
  for ax in axes[0]:
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in labels:
        handles.append(h)
        labels.append(l)
  fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7,
             frameon=False)
  fig.tight_layout(rect=(0, 0.04 * (1 + (len(labels) - 1) // 4), 1, 1))
  return fig


def write(module, rows, results_dir: str, name: str, config_path: str = "CONFIG") -> list:
  """Writes league_<name>_budget.md and .png into ``results_dir``; returns their paths."""
  gathered = gather(module, rows, results_dir, name)
  if not gathered:
    raise SystemExit(f"no ledger of league {name!r} in {results_dir} (league_{name}.json or "
                     f"league_{name}_xN.json)")
  md = os.path.join(results_dir, f"league_{name}_budget.md")
  paths = [md]
  plt = league_report.pyplot()
  text = markdown(module, rows, gathered, name, config_path)
  if plt is not None:
    fig = figure(plt, module, rows, gathered)
    paths.append(os.path.join(results_dir, f"league_{name}_budget.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    text += f"\n![{os.path.basename(paths[-1])}]({os.path.basename(paths[-1])})\n"
  with open(md, "w") as f:
    f.write(text)
  return paths
