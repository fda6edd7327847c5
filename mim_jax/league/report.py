"""The league's table, its claims and figures, rebuilt from the cells' workdirs (and, for cells
whose workdir is not here, from the ledger: the table's previous JSON, ``mim_jax/league/runner.py``).

Per cell: the last value of the protocol's metric in ``metrics.jsonl`` (``METRICS``; a league
config may replace it with its own ``METRICS``), and for a pre-training cell its wall-clock
(``league_cell.json``, all attempts) and median images/s. Per row and protocol: the mean and
standard deviation over the seeds done.

A claim ("A beats B on protocol P") is judged by Welch's t-test on the two rows' seed values
(``mim_jax.league.stats``): *holds* or *reversed* at p < 0.05 (two-sided), *not shown* above;
a row at one seed is not judged.
"""

import json
import os

import numpy as np

from mim_jax.league import runner as league_lib
from mim_jax.league import stats as league_stats

METRICS = {"linear_probe": "eval/top1", "finetune": "eval/top1", "finetune10": "eval/top1",
           "knn": "knn/top1"}
NAMES = {"linear_probe": "linear probe", "knn": "kNN", "finetune": "fine-tune",
         "finetune10": "fine-tune, 10% labels"}
CURVE_KEYS = ("probe/accuracy", "knn/top1")
# MI-MAE's estimators during pre-training: CLUB, V's NLL and the latents' scale, which V's
# bounded variance makes the other two grow with (benchmarks/mi_mae_club.py)
MI_KEYS = ("mi/club_nats", "mi/v_nll", "mi/z_std")


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
    out["curves"].update({k: [(r["step"], r[k]) for r in rows if k in r]
                          for k in MI_KEYS if any(k in r for r in rows)})
  else:
    key = metrics.get(cell.protocol)
    values = [r[key] for r in rows if key in r]
    out["value"] = values[-1] if values and out["status"] == "done" else None
    if len(values) > 1:   # evaluated along the way (the linear probe: every epoch)
      out["curve"] = [(r["step"], r[key]) for r in rows if key in r]
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
  """The claim's verdict (``mim_jax.league.stats``) from the table's two rows."""
  protocol = claim["protocol"]
  return league_stats.verdict(table.get(claim["row"], {}).get(protocol),
                              table.get(claim["than"], {}).get(protocol))


def fmt(stats, scale=1.0, digits=4):
  if not stats:
    return ""
  text = f"{stats['mean'] * scale:.{digits}f}"
  if stats["std"] is not None:
    text += f" +- {stats['std'] * scale:.{digits}f} ({stats['n']})"
  return text


def markdown(module, rows, table, claims, name, command="") -> str:
  protocols = table_protocols(rows)
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
    cells += [fmt(e.get(p)) if p in row["protocols"] else "n/a" for p in protocols]
    cells += [fmt(e["pretrain_wall_s"], digits=0), fmt(e["images_per_sec"], digits=0),
              ", ".join(e["failed"])]
    lines.append("| " + " | ".join(cells) + " |")
  if claims:
    lines += ["", "## Paper claims, tested here", "",
              "| claim | protocol | verdict (Welch's t-test, two-sided p < 0.05; difference of the "
              "means +- its standard error) |",
              "| --- | --- | --- |"]
    for claim, v in claims:
      lines.append(f"| {claim['text']} | {NAMES.get(claim['protocol'], claim['protocol'])} | "
                   f"{v['text']} |")
  return "\n".join(lines) + "\n"


def table_protocols(rows) -> list:
  """The evaluation protocols in the table's column order."""
  out = []
  for row in rows:
    out += [p for p in row["protocols"] if p not in out]
  return out


def pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return plt


ONE_SEED = dict(facecolor="0.75", hatch="///", edgecolor="0.35")
SEEDS = dict(facecolor="tab:blue", edgecolor="tab:blue")


def accuracy_figure(plt, rows, table, title=""):
  """One panel per protocol in the table's order, the rows top to bottom as in the table, one
  accuracy axis from 0 to 1 shared by every panel; bars the mean, error bars +-1 std over the
  seeds, one-seed rows hatched grey, each bar's value written beside it; a dashed line at the
  raw-pixel row where there is one."""
  protocols = table_protocols(rows)
  fig, axes = plt.subplots(1, len(protocols), figsize=(3.6 * len(protocols) + 2.2,
                                                       0.32 * len(rows) + 1.6),
                           sharex=True, sharey=True, squeeze=False)
  for ax, protocol in zip(axes[0], protocols):
    for y, row in enumerate(rows):
      stats = table[row["name"]].get(protocol)
      if not stats:
        continue
      many = stats["n"] > 1
      ax.barh(y, stats["mean"], xerr=stats["std"] if many else None, capsize=2, height=0.7,
              **(SEEDS if many else ONE_SEED))
      right = stats["mean"] + (stats["std"] if many else 0.0)
      ax.text(right + 0.01, y, f"{stats['mean']:.3f}", va="center", fontsize=7)
    pixels = table.get("pixels", {}).get(protocol)
    if pixels:
      ax.axvline(pixels["mean"], color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(NAMES.get(protocol, protocol), fontsize=10)
    ax.set_xlim(0.0, 1.12)
    ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("top-1", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
  axes[0][0].set_yticks(range(len(rows)), [r.get("label", r["name"]) for r in rows], fontsize=8)
  axes[0][0].invert_yaxis()
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  handles = [Patch(**SEEDS, label="mean, error bar +-1 std over N >= 2 seeds"),
             Patch(**ONE_SEED, label="one seed (no error bar; claims on it not judged)")]
  if any(table.get("pixels", {}).get(p) for p in protocols):
    handles.append(Line2D([], [], color="tab:red", linestyle="--", label="raw pixels"))
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
             frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  return fig


def images_per_step_of(module, row: str):
  """Training images one pre-training step of ``row`` sees (``league_cells.images_per_step``),
  from the league config's cell; None where the config cannot say."""
  from mim_jax.league import cells as league_cells  # pylint: disable=g-import-not-at-top
  try:
    return league_cells.images_per_step(module.get_config(f"row={row},protocol=pretrain"))
  except Exception:  # pylint: disable=broad-except
    return None


def curves_figure(plt, rows, results, per_step, keys=CURVE_KEYS, bounded=True):
  """Each pre-training run's curves ``keys`` (default: its evaluators') against the images it
  has seen (``per_step``: {row: images per step}; a step where a row's is unknown): one colour
  per row, one line style per seed, the table's row names in the legend; ``bounded``: the y
  axis from 0 to 1 (accuracies)."""
  curves = [r for r in results if r["protocol"] == "pretrain" and r.get("curves")]
  keys = [k for k in keys if any(r["curves"].get(k) for r in curves)]
  if not keys:
    return None
  labels = {r["name"]: r.get("label", r["name"]) for r in rows}
  row_names = [r["name"] for r in rows if any(c["row"] == r["name"] for c in curves)]
  colours = plt.get_cmap("tab10" if len(row_names) <= 10 else "tab20")
  seeds = sorted({r["seed"] for r in curves})
  styles = ("-", "--", ":", "-.")
  in_images = all(per_step.get(name) for name in row_names)
  fig, axes = plt.subplots(1, len(keys), figsize=(7.5 * len(keys), 4.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for r in sorted(curves, key=lambda r: (row_names.index(r["row"]), r["seed"])):
      if r["curves"].get(key):
        steps, values = zip(*r["curves"][key])
        x = [s * per_step[r["row"]] for s in steps] if in_images else steps
        ax.plot(x, values, marker=".", color=colours(row_names.index(r["row"])),
                linestyle=styles[seeds.index(r["seed"]) % len(styles)],
                label=f"{labels.get(r['row'], r['row'])}, seed {r['seed']}")
    ax.set_title(f"{key} during pre-training")
    ax.set_xlabel("images seen (MI-MAE: views)" if in_images else "step")
    if bounded:
      ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  return fig


def figures(rows, table, results, out_dir, name, per_step=None) -> list:
  """The accuracy figure (``accuracy_figure``), the pre-training curves (``curves_figure``)
  and, where MI-MAE rows logged them, its estimators' curves as PNGs in ``out_dir``. Needs matplotlib (the `figures` extra); without it, no figures."""
  plt = pyplot()
  if plt is None:
    return []
  paths = []
  for kind, fig in (("accuracy", accuracy_figure(plt, rows, table)),
                    ("curves", curves_figure(plt, rows, results, per_step or {})),
                    ("mi", curves_figure(plt, rows, results, per_step or {}, MI_KEYS, False))):
    if fig is not None:
      paths.append(os.path.join(out_dir, f"league_{name}_{kind}.png"))
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
  per_step = {r["name"]: images_per_step_of(module, r["name"]) for r in rows if r["pretrain"]}
  pngs = figures(rows, table, results, out_dir, name, per_step)
  text = markdown(module, rows, table, claims, name, command)
  commits = commits_line(results)
  text += f"\n{commits}\n" if commits else ""
  text += "".join(f"\n![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in pngs)
  shown = {(r["row"], r["seed"], r["protocol"]) for r in results}
  kept = [r for key, r in ledger.items() if key not in shown]
  with open(md, "w") as f:
    f.write(text)
  with open(js + ".tmp", "w") as f:
    json.dump({"command": command, "table": table, "cells": results + kept,
               "claims": [dict(c, **v) for c, v in claims]}, f, indent=2)
  os.replace(js + ".tmp", js)
  return [md, js] + pngs
