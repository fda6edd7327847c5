"""The league's table, its claims and figures, rebuilt from the cells' workdirs (and, for cells
whose workdir is not here, from the ledger: the table's previous JSON, ``mim_jax/league/runner.py``).

Per cell: the last value of the protocol's metric in ``metrics.jsonl`` (``METRICS``; a league
config may replace it with its own ``METRICS``), and for a pre-training cell its wall-clock
(``league_cell.json``, all attempts) and median images/s. Per row and protocol: the mean and
standard deviation over the seeds done.

A claim ("A beats B on protocol P") is tested on the difference of the means, in points, with
its noise ``sqrt(s_A^2 / n_A + s_B^2 / n_B)``; a row measured at one seed borrows the largest
seed standard deviation measured for that protocol (the multi-seed rows'). Verdicts: *holds*
when the difference exceeds twice its noise, *reversed* below minus twice, *not shown*
between; *not measured* when a side is missing.
"""

import json
import math
import os

import numpy as np

from mim_jax.league import runner as league_lib

METRICS = {"linear_probe": "eval/top1", "finetune": "eval/top1", "finetune10": "eval/top1",
           "knn": "knn/top1"}
NAMES = {"linear_probe": "linear probe", "knn": "kNN", "finetune": "fine-tune",
         "finetune10": "fine-tune, 10% labels"}
CURVE_KEYS = ("probe/accuracy", "knn/top1")


def _rows_of(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def cell_result(cell, metrics) -> dict:
  """What the table needs of one cell."""
  record = league_lib.read_cell(cell.workdir)
  out = {"row": cell.row, "protocol": cell.protocol, "seed": cell.seed,
         "status": record.get("status", "not run"), "exit_status": record.get("exit_status"),
         "wall_s": record.get("wall_s"), "commit": record.get("commit", "")}
  rows = _rows_of(cell.workdir)
  if cell.protocol == "pretrain":
    speeds = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
    out["images_per_sec"] = float(np.median(speeds)) if speeds else None
    out["curves"] = {k: [(r["step"], r[k]) for r in rows if k in r] for k in CURVE_KEYS}
  else:
    key = metrics.get(cell.protocol)
    values = [r[key] for r in rows if key in r]
    out["value"] = values[-1] if values and out["status"] == "done" else None
  return out


def _stats(values):
  values = [v for v in values if v is not None]
  if not values:
    return None
  return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
          else None, "n": len(values)}


def summarize(rows, results) -> dict:
  """{row: {protocol: stats, 'pretrain_wall_s': stats, 'images_per_sec': stats, 'failed': [...]}}."""
  table = {}
  for row in rows:
    mine = [r for r in results if r["row"] == row["name"]]
    entry = {"failed": [f"{r['protocol']} s{r['seed']} (exit {r['exit_status']})"
                        for r in mine if r["status"] == "failed"]}
    for protocol in row["protocols"]:
      entry[protocol] = _stats([r.get("value") for r in mine if r["protocol"] == protocol])
    pre = [r for r in mine if r["protocol"] == "pretrain" and r["status"] == "done"]
    entry["pretrain_wall_s"] = _stats([r["wall_s"] for r in pre])
    entry["images_per_sec"] = _stats([r["images_per_sec"] for r in pre])
    table[row["name"]] = entry
  return table


def verdict(table, claim) -> dict:
  a, b, protocol = table.get(claim["row"], {}), table.get(claim["than"], {}), claim["protocol"]
  sa, sb = a.get(protocol), b.get(protocol)
  if not sa or not sb:
    return {"verdict": "not measured", "text": "not measured"}
  seed_stds = [e[protocol]["std"] for e in table.values()
               if e.get(protocol) and e[protocol]["std"] is not None]
  fallback = max(seed_stds) if seed_stds else 0.0
  noise = math.sqrt(sum((s["std"] if s["std"] is not None else fallback) ** 2 / s["n"]
                        for s in (sa, sb)))
  diff = sa["mean"] - sb["mean"]
  word = ("holds" if diff > 2 * noise else "reversed" if diff < -2 * noise else "not shown")
  text = f"{word}: {100 * diff:+.1f} +- {100 * noise:.1f} points"
  if noise == 0.0:
    word += " (no seed noise measured)"
    text = f"{word}: {100 * diff:+.1f} points"
  return {"verdict": word, "diff_points": 100 * diff, "noise_points": 100 * noise, "text": text}


def _fmt(stats, scale=1.0, digits=4):
  if not stats:
    return ""
  text = f"{stats['mean'] * scale:.{digits}f}"
  if stats["std"] is not None:
    text += f" +- {stats['std'] * scale:.{digits}f} ({stats['n']})"
  return text


def markdown(module, rows, table, claims, name, command="") -> str:
  protocols = []
  for row in rows:
    protocols += [p for p in row["protocols"] if p not in protocols]
  head = ["row", "encoder"] + [NAMES.get(p, p) for p in protocols] + [
      "pre-training wall-clock (s)", "images/s", "failed cells"]
  lines = [f"# League: {name}", "", (module.__doc__ or "").strip().split("\n\n")[0], ""]
  if command:
    lines += [f"Measured with `{command}` (run again, it goes on where it stopped; with "
              f"`--report`, it rebuilds this table).", ""]
  lines += [
           "Accuracies are top-1 fractions of the evaluation split, mean +- standard deviation "
           "over seeds (their number in brackets; one seed shows the value alone). images/s: "
           "the median training rate of the pre-training run's progress lines, in images read "
           "(MI-MAE: images, each seen in several views, which its budget counts; MLO-MAE: its "
           "MAE's images); wall-clock: every attempt of the cell, start-up and evaluations "
           "included.", "",
           "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for row in rows:
    e = table[row["name"]]
    cells = [row.get("label", row["name"]), row.get("encoder", "")]
    cells += [_fmt(e.get(p)) if p in row["protocols"] else "n/a" for p in protocols]
    cells += [_fmt(e["pretrain_wall_s"], digits=0), _fmt(e["images_per_sec"], digits=0),
              ", ".join(e["failed"])]
    lines.append("| " + " | ".join(cells) + " |")
  if claims:
    lines += ["", "## Paper claims, tested here", "",
              "| claim | protocol | verdict (difference of means, +- its noise) |",
              "| --- | --- | --- |"]
    for claim, v in claims:
      lines.append(f"| {claim['text']} | {NAMES.get(claim['protocol'], claim['protocol'])} | "
                   f"{v['text']} |")
  return "\n".join(lines) + "\n"


def figures(rows, table, results, out_dir, name) -> list:
  """Accuracy per row with error bars, per protocol; each pre-training row's evaluator curve.
  Needs matplotlib (the `figures` extra); without it, no figures."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  paths = []
  protocols = sorted({p for row in rows for p in row["protocols"]})
  fig, axes = plt.subplots(1, len(protocols), figsize=(4.5 * len(protocols), 4.5), squeeze=False)
  for ax, protocol in zip(axes[0], protocols):
    names = [r for r in rows if table[r["name"]].get(protocol)]
    means = [table[r["name"]][protocol]["mean"] for r in names]
    errs = [table[r["name"]][protocol]["std"] or 0.0 for r in names]
    ax.barh(range(len(names)), means, xerr=errs, color="tab:blue", alpha=0.8)
    ax.set_yticks(range(len(names)), [r.get("label", r["name"]) for r in names], fontsize=8)
    ax.set_title(NAMES.get(protocol, protocol))
    ax.set_xlabel("top-1")
    if means:
      ax.set_xlim(max(0.0, min(means) - 0.1), min(1.0, max(means) + 0.05))
  fig.tight_layout()
  paths.append(os.path.join(out_dir, f"league_{name}_accuracy.png"))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  curves = [r for r in results if r["protocol"] == "pretrain" and r.get("curves")]
  keys = [k for k in CURVE_KEYS if any(r["curves"].get(k) for r in curves)]
  if keys:
    # one colour per row, one line style per seed (seeds of a row side by side)
    row_names = list(dict.fromkeys(r["row"] for r in curves))
    colours = plt.get_cmap("tab10" if len(row_names) <= 10 else "tab20")
    seeds = sorted({r["seed"] for r in curves})
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, len(keys), figsize=(7.5 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
      for r in sorted(curves, key=lambda r: (row_names.index(r["row"]), r["seed"])):
        if r["curves"].get(key):
          steps, values = zip(*r["curves"][key])
          ax.plot(steps, values, marker=".", color=colours(row_names.index(r["row"])),
                  linestyle=styles[seeds.index(r["seed"]) % len(styles)],
                  label=f"{r['row']} s{r['seed']}")
      ax.set_title(f"{key} during pre-training")
      ax.set_xlabel("step")
      ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"league_{name}_curves.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
  return paths


def commits_line(results) -> str:
  """Which code ran the cells: each commit with its number of cells."""
  counts = {}
  for r in results:
    if r["status"] != "not run":
      key = r.get("commit") or "unrecorded"
      counts[key] = counts.get(key, 0) + 1
  if not counts:
    return ""
  return "Cells ran at commit " + ", ".join(f"{c} ({n} cells)" for c, n in counts.items()) + "."


def write(module, rows, workdir, out_dir, name, seeds=None, command="") -> list:
  """Writes league_<name>.md, .json and the figures into ``out_dir``; returns their paths. A
  cell with no workdir record keeps its ledger entry (the JSON written before); ledger entries
  of cells outside this table (other seeds) are kept in the JSON. ``command``: the league's
  command, named in the table."""
  metrics = dict(METRICS, **getattr(module, "METRICS", {}))
  ledger = league_lib.read_ledger(out_dir, name)
  results = []
  for c in league_lib.cells(rows, workdir, seeds=seeds):
    key = (c.row, c.seed, c.protocol)
    here = league_lib.read_cell(c.workdir)
    results.append(cell_result(c, metrics) if here or key not in ledger else ledger[key])
  table = summarize(rows, results)
  claims = [(c, verdict(table, c)) for c in (module.claims() if hasattr(module, "claims")
                                               else [])]
  os.makedirs(out_dir, exist_ok=True)
  md = os.path.join(out_dir, f"league_{name}.md")
  js = league_lib.ledger_path(out_dir, name)
  pngs = figures(rows, table, results, out_dir, name)
  text = markdown(module, rows, table, claims, name, command)
  commits = commits_line(results)
  text += f"\n{commits}\n" if commits else ""
  text += "".join(f"\n![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in pngs)
  shown = {(r["row"], r["seed"], r["protocol"]) for r in results}
  kept = [r for key, r in ledger.items() if key not in shown]
  with open(md, "w") as f:
    f.write(text)
  with open(js + ".tmp", "w") as f:
    json.dump({"table": table, "cells": results + kept,
               "claims": [dict(c, **v) for c, v in claims]}, f, indent=2)
  os.replace(js + ".tmp", js)
  return [md, js] + pngs
