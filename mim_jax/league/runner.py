"""The method league: every method x protocol x seed through the ordinary trainer, one table.

  python -m mim_jax.league --config configs/league_fashion_mnist.py \
      --dataset folder:runs/fashion_mnist --workdir runs/league_fashion_mnist
  python -m mim_jax.league ... --report            # rebuild the table from the workdirs
  python -m mim_jax.league ... --only mae,mae_amt --seeds 0   # some rows / seeds
  python -m mim_jax.league ... --arg scale=10 --workdir runs/league_fashion_mnist_x10
      # the league at 10x the budget: its own table and ledger, league_fashion_mnist_x10
  python -m mim_jax.league --config configs/league_fashion_mnist.py --budget
      # every scale's ledger in one table and figure (mim_jax.league.budget)

A league config file is an ordinary config file (``get_config("row=R,protocol=P[,arg]")``, one
cell's config) that also has ``league()``: the rows, each a dict with ``name``, ``label``,
``encoder``, ``pretrain`` (bool), ``protocols`` and ``seeds``; and may have ``claims()``:
the paper claims the table tests (``mim_jax.league.report``).

Each cell is a normal workdir, ``WORKDIR/ROW/sSEED/PROTOCOL``, run by ``python -m
mim_jax.main`` in a subprocess (its output in ``league.log`` there); an evaluation cell of a
pre-training row starts from that row's ``pretrain`` cell (``init_from``). A cell is done when
its ``league_cell.json`` says so; running the league again skips done cells, resumes
interrupted ones from their checkpoints (the trainer does that), and runs failed ones again.
A failed cell is in the table as failed, with its exit status. A cell is done only when its
trainer exited 0 *and* wrote "done" in its ``run_status.json`` (a trainer stopped by SIGTERM
also exits 0, with "preempted" there). SIGTERM to the league is passed on to the running cell,
which saves a checkpoint; the league then stops, and running it again resumes that cell.

The table's ``league_<name>.json`` (``--results``) is also the league's ledger: every cell's
result, status, wall-clock and the commit of the code that ran it. A cell whose workdir is gone
(another machine, a new checkout) is taken from the ledger: done there, it is not run again, and
``--report`` keeps it. The one exception: a pre-training cell whose evaluations are not all done
runs again, since they start from its checkpoint. So a league can go on across machines that
share only the repository: commit the ledger, and a row group (a pre-training cell and its
evaluations) finished on one machine is never run again on another. ``--hours H`` starts no new
row group after H hours (the evaluations of a pre-training run in progress still run), so that a
session of known length ends between groups.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

from mim_jax.core import workdir as workdir_lib
from mim_jax.core.metrics import format_duration

CELL_FILE = "league_cell.json"


@dataclasses.dataclass(frozen=True)
class Cell:
  row: str
  protocol: str
  seed: int
  workdir: str
  init_from: str = ""   # the pre-training cell this evaluation starts from

  @property
  def name(self) -> str:
    return f"{self.row} s{self.seed} {self.protocol}"


def load_league(config_path: str):
  """The league config file as a module (it must have ``league()``)."""
  if not os.path.isfile(config_path):
    raise SystemExit(f"league config {config_path!r} not found")
  spec = importlib.util.spec_from_file_location("_mim_jax_league_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "league"):
    raise SystemExit(f"{config_path} has no league(): it is not a league config")
  return module


def cells(rows, workdir: str, only=None, seeds=None) -> list:
  """The matrix in running order: every row's first seed, then every row's second seed, and so
  on (a league stopped early has one seed of everything before more seeds of anything); per row
  and seed, pre-training before its evaluations."""
  known = {r["name"] for r in rows}
  unknown = sorted(set(only or ()) - known)
  if unknown:
    raise SystemExit(f"--only: unknown rows {unknown}; the league has {sorted(known)}")
  chosen = [(row, list(seeds if seeds is not None else row["seeds"])) for row in rows
            if not only or row["name"] in only]
  out = []
  for i in range(max((len(s) for _, s in chosen), default=0)):
    for row, row_seeds in chosen:
      if i >= len(row_seeds):
        continue
      seed = row_seeds[i]
      base = os.path.join(workdir, row["name"], f"s{seed}")
      pretrain = os.path.join(base, "pretrain") if row["pretrain"] else ""
      if pretrain:
        out.append(Cell(row["name"], "pretrain", seed, pretrain))
      out += [Cell(row["name"], p, seed, os.path.join(base, p), pretrain)
              for p in row["protocols"]]
  return out


def read_cell(workdir: str) -> dict:
  path = os.path.join(workdir, CELL_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _write_cell(workdir: str, record: dict) -> None:
  path = os.path.join(workdir, CELL_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


def command(cell: Cell, config_path: str, dataset: str, arg: str = "") -> list:
  spec = f"{config_path}:row={cell.row},protocol={cell.protocol}" + (f",{arg}" if arg else "")
  cmd = [sys.executable, "-m", "mim_jax.main", "--config", spec, "--workdir", cell.workdir,
         f"--config.seed={cell.seed}"]
  if dataset:
    cmd.append(f"--config.dataset={dataset}")
  if cell.init_from:
    cmd.append(f"--config.init_from={cell.init_from}")
  return cmd


def code_commit() -> str:
  """The commit of the code running the league (``+changes`` when tracked files differ from
  it); "" outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "mim_jax", "configs"],
                           cwd=root, capture_output=True).returncode != 0
  except (OSError, subprocess.CalledProcessError):
    return ""
  return head + ("+changes" if dirty else "")


def ledger_path(results_dir: str, name: str) -> str:
  return os.path.join(results_dir, f"league_{name}.json")


def read_ledger(results_dir: str, name: str) -> dict:
  """{(row, seed, protocol): the cell's result} from the table's JSON; {} when there is none."""
  path = ledger_path(results_dir, name)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    data = json.load(f)
  return {(r["row"], r["seed"], r["protocol"]): r for r in data.get("cells", [])}


def status_of(cell: Cell, ledger: dict) -> str:
  """The cell's status: its workdir's record where there is one, else the ledger's."""
  record = read_cell(cell.workdir)
  if record:
    return record.get("status", "not run")
  return ledger.get((cell.row, cell.seed, cell.protocol), {}).get("status", "not run")


def needs_running(cell: Cell, todo: list, ledger: dict) -> bool:
  """Whether to run the cell: it is not done; or it is a pre-training cell done only in the
  ledger (no checkpoint here) with an evaluation still to run."""
  if status_of(cell, ledger) != "done":
    return True
  if cell.protocol != "pretrain" or read_cell(cell.workdir):
    return False
  return any(c.init_from == cell.workdir and status_of(c, ledger) != "done" for c in todo)


_stop = {"requested": False, "child": None}


def _on_sigterm(signum, frame):
  """SIGTERM to the league: pass it on to the running cell (it checkpoints and exits 0), then
  stop after that cell."""
  del signum, frame
  _stop["requested"] = True
  child = _stop["child"]
  if child is not None and child.poll() is None:
    child.send_signal(signal.SIGTERM)


def run_cell(cell: Cell, cmd: list) -> dict:
  """Runs (or resumes) one cell; returns its record, also written to its workdir. The wall-clock
  sums every attempt, interrupted ones included as far as they were timed. Status: "done"
  (exit 0 and the trainer's run_status.json says done), "interrupted" (exit 0 without that:
  stopped by SIGTERM; or killed by the league's SIGTERM before the trainer could catch it) or
  "failed"."""
  os.makedirs(cell.workdir, exist_ok=True)
  previous = read_cell(cell.workdir)
  status_path = os.path.join(cell.workdir, workdir_lib.RUN_STATUS_NAME)
  if os.path.exists(status_path):
    os.remove(status_path)   # this attempt's own word only
  t0 = time.time()
  with open(os.path.join(cell.workdir, "league.log"), "a") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    _stop["child"] = child
    try:
      rc = child.wait()
    finally:
      _stop["child"] = None
  tail = ""
  finished = workdir_lib.read_run_status(cell.workdir).get("status") == "done"
  if finished and rc in (0, -signal.SIGTERM):
    status = "done"          # (a SIGTERM may arrive after the trainer wrote "done")
  elif rc == -signal.SIGTERM and _stop["requested"]:
    status = "interrupted"   # the league's SIGTERM reached the cell before its handler was set
  elif rc:
    with open(os.path.join(cell.workdir, "league.log")) as f:
      tail = "".join(f.readlines()[-5:]).strip()
    status = "failed"
  else:
    status = "interrupted"
  record = {"row": cell.row, "protocol": cell.protocol, "seed": cell.seed,
            "status": status, "exit_status": rc,
            "wall_s": previous.get("wall_s", 0.0) + time.time() - t0, "commit": code_commit(),
            "attempts": previous.get("attempts", 0) + 1, "command": " ".join(cmd),
            "error": tail}
  _write_cell(cell.workdir, record)
  return record


def run(args) -> int:
  from mim_jax.league import report as league_report  # pylint: disable=g-import-not-at-top
  module = load_league(args.config)
  rows = module.league()
  todo = cells(rows, args.workdir, args.only, args.seeds)
  ledger = read_ledger(args.results, args.name)
  done_s, done_n, failed = 0.0, 0, 0
  t_start = time.time()
  signal.signal(signal.SIGTERM, _on_sigterm)
  ran_pretraining = set()   # pre-training cells run (or found done here) by this invocation
  for i, cell in enumerate(todo, start=1):
    if _stop["requested"]:
      print(f"league: stopped by SIGTERM before {cell.name}; run it again to go on", flush=True)
      break
    if not needs_running(cell, todo, ledger):
      record = read_cell(cell.workdir) or ledger[(cell.row, cell.seed, cell.protocol)]
      where = "" if read_cell(cell.workdir) else ", in the ledger"
      print(f"[{i}/{len(todo)}] {cell.name}: done already ({format_duration(record['wall_s'])}"
            f"{where})", flush=True)
      if read_cell(cell.workdir):
        ran_pretraining.add(cell.workdir)
      continue
    if cell.init_from and status_of(Cell(cell.row, "pretrain", cell.seed, cell.init_from),
                                    ledger) != "done":
      print(f"[{i}/{len(todo)}] {cell.name}: skipped, its pre-training cell is not done",
            flush=True)
      continue
    new_group = not cell.init_from or cell.init_from not in ran_pretraining
    if args.hours is not None and new_group and time.time() - t_start > 3600 * args.hours:
      print(f"league: --hours {args.hours} have passed; stopped before {cell.name}, between row "
            f"groups; run it again to go on", flush=True)
      break
    if cell.init_from and not read_cell(cell.init_from):
      print(f"[{i}/{len(todo)}] {cell.name}: skipped, its pre-training is done in the ledger "
            f"but its checkpoint is not here", flush=True)
      continue
    remaining = len(todo) - i + 1
    eta = "?" if not done_n else format_duration(done_s / done_n * remaining)
    print(f"[{i}/{len(todo)}] {cell.name}: running (league {format_duration(time.time() - t_start)}"
          f" so far, ETA of the rest ~{eta})", flush=True)
    record = run_cell(cell, command(cell, args.config, args.dataset, args.arg))
    if cell.protocol == "pretrain":
      ran_pretraining.add(cell.workdir)
    done_s, done_n = done_s + record["wall_s"], done_n + 1
    failed += record["status"] == "failed"
    print(f"[{i}/{len(todo)}] {cell.name}: {record['status']} in "
          f"{format_duration(record['wall_s'])}" +
          (f" (exit {record['exit_status']}; see {cell.workdir}/league.log)"
           if record["status"] == "failed" else ""), flush=True)
    # the table (and ledger) after every cell: a machine that goes away keeps what it finished
    league_report.write(module, rows, args.workdir, args.results, args.name, args.seeds,
                        league_command(args))
  paths = league_report.write(module, rows, args.workdir, args.results, args.name, args.seeds,
                              league_command(args))
  print(f"league: {len(todo)} cells, {failed} failed this time; table: {paths[0]}", flush=True)
  return 0


def league_command(args) -> str:
  """The command that runs this league (its whole matrix: --only and --seeds left out)."""
  parts = ["python -m mim_jax.league", "--config", args.config]
  for flag in ("dataset", "arg", "workdir"):
    if getattr(args, flag):
      parts += [f"--{flag}", getattr(args, flag)]
  if os.path.normpath(args.results) != "results":
    parts += ["--results", args.results]
  if args.name != default_name(args.config, args.arg):
    parts += ["--name", args.name]
  return " ".join(parts)


def scale_of(arg: str) -> int:
  """The ``scale=N`` of a league's ``--arg`` (1 without one)."""
  for part in (arg or "").split(","):
    key, _, value = part.partition("=")
    if key.strip() == "scale":
      try:
        return int(value)
      except ValueError:
        raise SystemExit(f"--arg scale={value!r}: the scale must be a whole number") from None
  return 1


def default_name(config_path: str, arg: str = "") -> str:
  """league_<name>: the config's name without ``league_``, ``_xN`` at ``scale=N`` (each scale
  its own table and ledger: the budget axis, ``mim_jax.league.budget``)."""
  name = os.path.splitext(os.path.basename(config_path))[0].removeprefix("league_")
  scale = scale_of(arg)
  return name if scale == 1 else f"{name}_x{scale}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="mim_jax.league", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="a league config file")
  parser.add_argument("--workdir", default="",
                      help="one workdir per cell goes under it (all but --budget need it)")
  parser.add_argument("--dataset", default="", help="config.dataset of every cell")
  parser.add_argument("--arg", default="", help="extra config argument, e.g. runlocal")
  parser.add_argument("--only", default="", help="comma-separated rows")
  parser.add_argument("--seeds", default="", help="comma-separated seeds (default: each row's)")
  parser.add_argument("--report", action="store_true", help="only rebuild the table")
  parser.add_argument("--budget", action="store_true",
                      help="only rebuild the budget table: every scale's ledger in --results")
  parser.add_argument("--results", default="results", help="where the table and figures go")
  parser.add_argument("--name", default="", help="league_<name>.md (default: the config's)")
  parser.add_argument("--hours", type=float, default=None,
                      help="start no new row group after this many hours")
  args = parser.parse_args(argv)
  args.only = [r for r in args.only.split(",") if r]
  args.seeds = [int(s) for s in args.seeds.split(",") if s] or None
  if args.budget:
    from mim_jax.league import budget as league_budget
    module = load_league(args.config)
    paths = league_budget.write(module, module.league(), args.results,
                                args.name or default_name(args.config), args.config)
    print(f"budget table: {paths[0]}")
    return 0
  if not args.workdir:
    parser.error("--workdir is required (but for --budget)")
  if not args.name:
    args.name = default_name(args.config, args.arg)
  if args.report:
    from mim_jax.league import report as league_report
    module = load_league(args.config)
    paths = league_report.write(module, module.league(), args.workdir, args.results, args.name,
                                args.seeds, league_command(args))
    print(f"table: {paths[0]}")
    return 0
  return run(args)


if __name__ == "__main__":
  sys.exit(main())
