"""The league runner: a tiny matrix on a generated dataset, an interruption, a failed cell, and
the table rebuilt from the workdirs alone."""

import json
import os
import sys
import time

import numpy as np
import pytest

from mim_jax.league import report as league_report
from mim_jax.league import stats as league_stats
from mim_jax.league import runner as league
from tests.test_train import ONE_DEVICE_XLA_FLAGS, ROOT

# A league config: rows MAE (pre-training, then kNN from it), the ViT at random init (kNN) and
# a row whose kNN cell cannot run (its config asks for a split the dataset lacks).
TINY_LEAGUE = f'''
"""A tiny league for the tests."""
import sys
sys.path.insert(0, {ROOT!r})
from mim_jax import recipes
from mim_jax.config import base_config, parse_arg

def league():
  return [
      dict(name="mae", label="MAE", encoder="vit", pretrain=True, protocols=["knn"], seeds=[0]),
      dict(name="random_vit", label="ViT at random init", encoder="vit", pretrain=False,
           protocols=["knn"], seeds=[0]),
      dict(name="broken", label="broken", encoder="vit", pretrain=False, protocols=["knn"],
           seeds=[0]),
  ]

def claims():
  return [dict(text="MAE beats random init", row="mae", than="random_vit", protocol="knn")]

def tiny(m):
  m.variant, m.width, m.depth, m.heads = "tiny_test/4", 32, 1, 2

def get_config(arg=None):
  arg = parse_arg(arg, row="", protocol="")
  if arg.protocol == "pretrain":
    c = base_config("mae")
    recipes.digits_mae_model(c)
    tiny(c.model)
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    c.batch_size, c.total_steps, c.warmup_epochs = 16, 6, 0.05
    c.log_every, c.checkpoint.every_steps, c.image_every = 2, 3, 6
    c.probe.enabled = c.probe.random_init = False
    c.knn.enabled, c.knn.every_steps, c.knn.batch_size = True, 3, 16
    c.knn.train_examples, c.knn.test_examples = 40, 16
    return c
  c = base_config("knn")
  recipes.digits_data(c)
  recipes.digits_encoder(c.model)
  tiny(c.model)
  c.eval_only, c.batch_size = True, 16
  c.knn.enabled, c.knn.batch_size = True, 16
  c.knn.train_examples, c.knn.test_examples = 40, 16
  if arg.row == "broken":
    c.knn.test_split = "no_such_split"
  return c
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A class-ordered folder: 3 classes x 20 train / 6 test grey 16 px images."""
  from PIL import Image
  root = tmp_path_factory.mktemp("league_data")
  rng = np.random.default_rng(0)
  for split, n in (("train", 20), ("test", 6)):
    for label in range(3):
      os.makedirs(root / split / f"c{label}")
      for i in range(n):
        image = rng.integers(0, 60, (16, 16), dtype=np.uint8)
        image[:, 5 * label:5 * label + 5] = 255
        Image.fromarray(image).save(root / split / f"c{label}" / f"{i:03d}.png")
  return f"folder:{root}"


def test_tiny_league_runs_resumes_reports_failures_and_rebuilds(tmp_path, monkeypatch, dataset):
  monkeypatch.setenv("XLA_FLAGS", ONE_DEVICE_XLA_FLAGS)  # each cell on one CPU device
  config = tmp_path / "league_tiny.py"
  config.write_text(TINY_LEAGUE)
  workdir, results = str(tmp_path / "league"), str(tmp_path / "results")
  argv = ["--config", str(config), "--workdir", workdir, "--dataset", dataset,
          "--results", results]

  # Interrupted before its second cell: only MAE's pre-training ran.
  real = league.run_cell
  calls = []

  def interrupt_second(cell, cmd):
    calls.append(cell.name)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(cell, cmd)
  monkeypatch.setattr(league, "run_cell", interrupt_second)
  with pytest.raises(KeyboardInterrupt):
    league.main(argv)
  monkeypatch.setattr(league, "run_cell", real)
  assert league.read_cell(os.path.join(workdir, "mae", "s0", "pretrain"))["status"] == "done"

  assert league.main(argv) == 0   # the rest; the finished cell is skipped, not run again
  cells = {c.name: league.read_cell(c.workdir)
           for c in league.cells(league.load_league(str(config)).league(), workdir)}
  assert set(cells) == {"mae s0 pretrain", "mae s0 knn", "random_vit s0 knn", "broken s0 knn"}
  assert cells["mae s0 pretrain"]["attempts"] == 1
  assert [cells[n]["status"] for n in ("mae s0 knn", "random_vit s0 knn")] == ["done", "done"]
  assert cells["broken s0 knn"]["status"] == "failed"
  assert cells["broken s0 knn"]["exit_status"] == 2          # a user error, reported
  assert "no_such_split" in cells["broken s0 knn"]["error"]

  table_md = open(os.path.join(results, "league_tiny.md")).read()
  data = json.load(open(os.path.join(results, "league_tiny.json")))
  mae_knn = [r for r in data["cells"] if r["row"] == "mae" and r["protocol"] == "knn"][0]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "mae/s0/knn/metrics.jsonl"))]
  assert mae_knn["value"] == [r["knn/top1"] for r in rows if "knn/top1" in r][-1]
  assert f"| MAE | vit | {mae_knn['value']:.4f} |" in table_md
  assert (f"Measured with `python -m mim_jax.league --config {config} --dataset {dataset} "
          f"--workdir {workdir} --results {results}`") in table_md         # the whole matrix's
  assert "| broken | vit |  |  |  | knn s0 (exit 2) |" in table_md          # shown, not hidden
  pre = [r for r in data["cells"] if r["protocol"] == "pretrain"][0]
  assert pre["images_per_sec"] > 0 and [s for s, _ in pre["curves"]["knn/top1"]] == [3, 6]
  assert data["claims"][0]["verdict"] == "one seed: not judged"   # one seed a side

  for figure in ("accuracy", "curves"):
    assert os.path.getsize(os.path.join(results, f"league_tiny_{figure}.png")) > 1000
    assert f"(league_tiny_{figure}.png)" in table_md

  # --report rebuilds the same table from the workdirs alone.
  os.remove(os.path.join(results, "league_tiny.md"))
  assert league.main(argv + ["--report"]) == 0
  assert open(os.path.join(results, "league_tiny.md")).read() == table_md


def _fake_league(tmp_path, monkeypatch, hours_per_cell=0.0):
  """The tiny league's config, and a run_cell that runs nothing: it writes a done cell (a kNN
  value from its name) and advances a fake clock; returns (argv without --workdir, calls)."""
  config = tmp_path / "league_tiny.py"
  config.write_text(TINY_LEAGUE)
  calls, clock = [], [1000.0]

  def fake_run_cell(cell, cmd):
    calls.append(cell.name)
    clock[0] += 3600 * hours_per_cell
    os.makedirs(cell.workdir, exist_ok=True)
    longer = 0.1 if "scale=10" in " ".join(cmd) else 0.0
    with open(os.path.join(cell.workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 1, "knn/top1": 0.5 + 0.1 * len(cell.row) / 10 + longer,
                          "images_per_sec": 100.0}) + "\n")
    record = {"row": cell.row, "protocol": cell.protocol, "seed": cell.seed, "status": "done",
              "exit_status": 0, "wall_s": 2.0, "attempts": 1, "commit": "abc1234", "error": ""}
    league._write_cell(cell.workdir, record)
    return record
  monkeypatch.setattr(league, "run_cell", fake_run_cell)
  monkeypatch.setattr(league, "time", type("FakeTime", (), {"time": lambda: clock[0]}))
  return ["--config", str(config), "--results", str(tmp_path / "results")], calls


def test_the_ledger_carries_done_cells_to_a_checkout_without_their_workdirs(tmp_path, monkeypatch):
  argv, calls = _fake_league(tmp_path, monkeypatch)
  assert league.main(argv + ["--workdir", str(tmp_path / "machine_a")]) == 0
  assert len(calls) == 4
  md_path = tmp_path / "results" / "league_tiny.md"
  table_md = md_path.read_text()
  assert "Cells ran at commit abc1234 (4 cells)." in table_md

  # Another machine: the workdirs are gone, the ledger (the table's JSON) is there.
  calls.clear()
  assert league.main(argv + ["--workdir", str(tmp_path / "machine_b")]) == 0
  # the same table, its command naming this machine's workdir
  table_b = table_md.replace("machine_a", "machine_b")
  assert calls == [] and md_path.read_text() == table_b
  md_path.unlink()
  assert league.main(argv + ["--workdir", str(tmp_path / "machine_b"), "--report"]) == 0
  assert md_path.read_text() == table_b

  # An evaluation missing from the ledger: its pre-training runs again for the checkpoint.
  js = tmp_path / "results" / "league_tiny.json"
  data = json.loads(js.read_text())
  data["cells"] = [c for c in data["cells"] if (c["row"], c["protocol"]) != ("mae", "knn")]
  js.write_text(json.dumps(data))
  assert league.main(argv + ["--workdir", str(tmp_path / "machine_c")]) == 0
  assert calls == ["mae s0 pretrain", "mae s0 knn"]
  assert len(json.loads(js.read_text())["cells"]) == 4


def test_the_budget_axis_gathers_every_scales_ledger(tmp_path, monkeypatch):
  argv, _ = _fake_league(tmp_path, monkeypatch)
  assert league.main(argv + ["--workdir", str(tmp_path / "w1")]) == 0
  assert league.main(argv + ["--workdir", str(tmp_path / "w10"), "--arg", "scale=10"]) == 0
  results = tmp_path / "results"
  x10 = json.loads((results / "league_tiny_x10.json").read_text())   # its own table and ledger
  assert "--arg scale=10" in x10["command"] and "--name" not in x10["command"]
  assert league.main(argv + ["--budget"]) == 0
  md = (results / "league_tiny_budget.md").read_text()
  assert "| MAE | 0.5300 | 0.6300 |" in md and "| ViT at random init | 0.6000 | 0.7000 |" in md
  assert "- x10: `" + x10["command"] + "`" in md
  # one seed a side at both scales: the claim is not judged, at either
  claim = [line for line in md.splitlines() if line.startswith("| MAE beats random init")]
  assert claim == ["| MAE beats random init | kNN | one seed: not judged (-7.0 points, 1 vs 1 "
                   "seeds) | one seed: not judged (-7.0 points, 1 vs 1 seeds) |"]
  assert os.path.getsize(results / "league_tiny_budget.png") > 1000
  with pytest.raises(SystemExit, match="no ledger of league 'other'"):
    league.main(argv + ["--budget", "--name", "other"])

  # the probe's curve: its top-1 after every epoch, averaged over the seeds that have them all
  from mim_jax.league import budget
  probe = lambda seed, values: dict(row="mae", protocol="linear_probe", seed=seed, status="done",
                                    curve=[(250 * (i + 1), v) for i, v in enumerate(values)])
  cells = [probe(0, [0.5, 0.6, 0.7]), probe(1, [0.7, 0.8, 0.9]), probe(2, [0.1])]
  assert budget.probe_curve(cells, "mae") == pytest.approx([0.6, 0.7, 0.8])
  assert budget.probe_curve(cells, "random_vit") is None


def test_hours_stop_the_league_between_row_groups(tmp_path, monkeypatch):
  argv, calls = _fake_league(tmp_path, monkeypatch, hours_per_cell=1.2)
  assert league.main(argv + ["--workdir", str(tmp_path / "w"), "--hours", "1"]) == 0
  # MAE's kNN starts past the hour but belongs to the group begun before it; the next row waits
  assert calls == ["mae s0 pretrain", "mae s0 knn"]
  calls.clear()
  assert league.main(argv + ["--workdir", str(tmp_path / "w"), "--hours", "1"]) == 0
  assert calls == ["random_vit s0 knn"]     # a new group at the start; the next one after 1.2 h


def _summary(values):
  return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
          else None, "n": len(values)}


def test_claims_are_judged_by_welchs_t_test_and_one_seed_is_not_judged():
  from scipy import stats
  mae = [0.6591, 0.7056, 0.6741]      # the league's MAE and MI-MAE fine-tune seeds at 1.6 epochs
  mi_mae = [0.7144, 0.7031, 0.7069]
  rng = np.random.default_rng(0)
  for a, b in ((mi_mae, mae), (rng.normal(0.8, 0.02, 3), rng.normal(0.75, 0.05, 2)),
               (rng.normal(0.5, 0.01, 5), rng.normal(0.52, 0.03, 4))):
    want = stats.ttest_ind(a, b, equal_var=False)   # from the samples themselves
    got = league_stats.welch(_summary(a), _summary(b))
    assert abs(got["t"] - want.statistic) < 1e-9 and abs(got["p"] - want.pvalue) < 1e-9
  # MI-MAE's +2.9 points: p 0.17, which the old rule (beyond 2 standard errors) called "holds"
  table = {"mi_mae": {"p": _summary(mi_mae)}, "mae": {"p": _summary(mae)},
           "low": {"p": _summary([0.60, 0.61, 0.59])}, "one": {"p": _summary([0.99])}}
  v = league_report.verdict(table, dict(row="mi_mae", than="mae", protocol="p"))
  assert v["verdict"] == "not shown" and abs(v["p"] - 0.167) < 0.001
  assert v["text"] == "not shown: +2.9 +- 1.4 points (p 0.167, 3 vs 3 seeds)"
  assert league_report.verdict(table, dict(row="mae", than="low", protocol="p"))["verdict"] == (
      "holds")
  assert league_report.verdict(table, dict(row="low", than="mae", protocol="p"))["verdict"] == (
      "reversed")
  one = league_report.verdict(table, dict(row="one", than="mae", protocol="p"))
  assert one["verdict"] == "one seed: not judged" and "+31.0 points, 1 vs 3 seeds" in one["text"]
  assert league_report.verdict(table, dict(row="mae", than="z", protocol="p"))["verdict"] == (
      "not measured")
  # no spread at all: a difference is certain, none is not
  same = {"mean": 0.5, "std": 0.0, "n": 2}
  assert league_stats.welch(dict(same, mean=0.6), same)["p"] == 0.0
  assert league_stats.welch(same, same)["p"] == 1.0


def test_the_accuracy_figure_reads_at_a_glance():
  plt = league_report.pyplot()
  rows = [dict(name="mae", label="MAE", protocols=["linear_probe", "knn"]),
          dict(name="pixels", label="raw pixels", protocols=["knn", "linear_probe"]),
          dict(name="b", label="B", protocols=["finetune"])]
  table = {"mae": {"linear_probe": _summary([0.60, 0.62, 0.61]), "knn": _summary([0.78])},
           "pixels": {"knn": _summary([0.85]), "linear_probe": None},
           "b": {"finetune": _summary([0.70, 0.72])}}
  fig = league_report.accuracy_figure(plt, rows, table)
  probe, knn, finetune = fig.axes
  assert [a.get_title() for a in fig.axes] == ["linear probe", "kNN", "fine-tune"]  # table order
  assert {a.get_xlim() for a in fig.axes} == {(0.0, 1.12)}      # one axis, from 0
  assert [t.get_text() for t in probe.get_yticklabels()] == ["MAE", "raw pixels", "B"]
  assert [p.get_hatch() for p in probe.patches] == [None]          # three seeds: plain, error bar
  assert [p.get_hatch() for p in knn.patches] == ["///", "///"]    # one seed: marked
  assert [t.get_text() for t in knn.texts] == ["0.780", "0.850"]   # value labels
  assert list(knn.lines[-1].get_xdata()) == [0.85, 0.85]           # the pixels' line
  assert not [line for line in probe.lines if list(line.get_xdata()) == [0.85, 0.85]]
  assert "+-1 std over N >= 2 seeds" in fig.legends[0].get_texts()[0].get_text()
  plt.close(fig)


def test_cells_run_one_seed_of_every_row_before_more_seeds(tmp_path):
  rows = [dict(name="mae", pretrain=True, protocols=["knn", "finetune"], seeds=[0, 1, 2]),
          dict(name="random_vit", pretrain=False, protocols=["knn"], seeds=[0]),
          dict(name="supervised", pretrain=False, protocols=["finetune"], seeds=[0, 1])]
  order = [(c.row, c.seed, c.protocol, c.init_from) for c in league.cells(rows, "W")]
  pre = lambda s: os.path.join("W", "mae", f"s{s}", "pretrain")
  assert order == [
      ("mae", 0, "pretrain", ""), ("mae", 0, "knn", pre(0)), ("mae", 0, "finetune", pre(0)),
      ("random_vit", 0, "knn", ""), ("supervised", 0, "finetune", ""),
      ("mae", 1, "pretrain", ""), ("mae", 1, "knn", pre(1)), ("mae", 1, "finetune", pre(1)),
      ("supervised", 1, "finetune", ""),
      ("mae", 2, "pretrain", ""), ("mae", 2, "knn", pre(2)), ("mae", 2, "finetune", pre(2))]
  only = league.cells(rows, "W", only=["supervised"], seeds=[5])
  assert [(c.row, c.seed) for c in only] == [("supervised", 5)]
  with pytest.raises(SystemExit, match="unknown rows"):
    league.cells(rows, "W", only=["nope"])


# A stand-in for the trainer: says "done" in run_status.json unless SIGTERM comes first; exits
# 0 either way, as the trainer does.
FAKE_TRAINER = """
import json, os, signal, sys, time
workdir = sys.argv[1]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
open(os.path.join(workdir, "started"), "w").close()
for _ in range(int(sys.argv[2]) * 20):
  if stop:
    json.dump({"status": "preempted", "step": 1}, open(os.path.join(workdir, "run_status.json"), "w"))
    sys.exit(0)
  time.sleep(0.05)
json.dump({"status": "done", "step": 2}, open(os.path.join(workdir, "run_status.json"), "w"))
"""


def test_a_cell_is_done_only_when_its_trainer_says_so_and_sigterm_stops_the_league(tmp_path):
  import signal
  import threading
  fake = tmp_path / "fake_trainer.py"
  fake.write_text(FAKE_TRAINER)
  cell = league.Cell("mae", "knn", 0, str(tmp_path / "cell"))
  cmd = lambda seconds: [sys.executable, str(fake), cell.workdir, str(seconds)]

  assert league.run_cell(cell, cmd(0))["status"] == "done"
  # exit 0 without "done" (a stale one from before is removed first): interrupted, not done
  silent = [sys.executable, "-c", "pass"]
  record = league.run_cell(cell, silent)
  assert (record["status"], record["exit_status"], record["attempts"]) == ("interrupted", 0, 2)
  assert league.run_cell(cell, [sys.executable, "-c", "raise SystemExit(3)"])["status"] == "failed"

  # SIGTERM to the league reaches the running cell, which checkpoints ("preempted") and exits 0
  old = signal.signal(signal.SIGTERM, league._on_sigterm)
  try:
    started = os.path.join(cell.workdir, "started")
    os.remove(started)
    def terminate_when_started():
      while not os.path.exists(started):
        time.sleep(0.05)
      os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=terminate_when_started, daemon=True).start()
    t0 = time.time()
    record = league.run_cell(cell, cmd(30))
    assert time.time() - t0 < 20 and league._stop["requested"]
    assert record["status"] == "interrupted" and record["exit_status"] == 0
    # killed by that SIGTERM before its handler was set: interrupted too; on its own: failed
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    assert league.run_cell(cell, killed)["status"] == "interrupted"
    league._stop["requested"] = False
    assert league.run_cell(cell, killed)["status"] == "failed"
    # a SIGTERM after the trainer wrote "done" (during its shutdown): done
    status = os.path.join(cell.workdir, "run_status.json")
    done_then_killed = [sys.executable, "-c", (
        f"import json, os, signal; json.dump({{'status': 'done', 'step': 2}}, open({status!r}, "
        f"'w')); os.kill(os.getpid(), signal.SIGTERM)")]
    assert league.run_cell(cell, done_then_killed)["status"] == "done"
  finally:
    signal.signal(signal.SIGTERM, old)
    league._stop["requested"] = False
