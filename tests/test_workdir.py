"""A workdir belongs to one run: the lock, the resume check, metrics after a resume, SIGTERM
during start-up, a failed checkpoint write, and the exit statuses of the entry point."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from mim_jax import train
from mim_jax import main as main_lib
from mim_jax.core import errors, preemption
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.core import workdir as workdir_lib
from tests.test_train import (DIGITS, ONE_DEVICE_XLA_FLAGS, ROOT, final_params, read_metrics,
                              sigterm_at, tiny_config)

# The overrides of tests.test_train.tiny_config, on the command line.
TINY = ["--config.model.variant=tiny_test/4", "--config.model.width=32", "--config.model.depth=1",
        "--config.model.heads=2", "--config.model.decoder_width=32",
        "--config.model.decoder_depth=1", "--config.model.decoder_heads=2",
        "--config.batch_size=16", "--config.total_steps=8", "--config.warmup_epochs=0.05",
        "--config.log_every=2", "--config.checkpoint.every_steps=4", "--config.image_every=8",
        "--config.probe.enabled=False", "--config.probe.random_init=False"]


def cli(workdir, *overrides):
  return ["--config", DIGITS + ":runlocal", "--workdir", str(workdir), *TINY, *overrides]


def start_subprocess(workdir, *overrides, preexec_fn=None):
  """The entry point in another process (stdout and stderr to files in ``workdir``'s parent)."""
  out = open(f"{workdir}.out", "w")
  env = dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS)  # one CPU device: quicker on 2 cores
  return subprocess.Popen([sys.executable, "-m", "mim_jax.main", *cli(workdir, *overrides)],
                          cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
                          env=env)


def wait_for(predicate, process, timeout=120.0):
  t0 = time.time()
  while not predicate():
    assert process.poll() is None, f"the run ended early ({process.returncode})"
    assert time.time() - t0 < timeout, "timed out"
    time.sleep(0.1)


def loss_steps(workdir):
  return [r["step"] for r in read_metrics(workdir) if "loss" in r]


# --------------------------------------------------------------------------------------------
def test_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path, caplog):
  first = workdir_lib.Lock(str(tmp_path)).acquire()
  owner = json.load(open(tmp_path / "lock"))
  assert owner["pid"] == os.getpid() and owner["run_id"] == first.run_id
  with pytest.raises(errors.WorkdirError, match=rf"in use by another run .*pid {os.getpid()}"):
    workdir_lib.Lock(str(tmp_path)).acquire()   # another open file: flock conflicts
  first.release()
  assert open(tmp_path / "lock").read() == ""   # a clean end leaves an empty lock file
  again = workdir_lib.Lock(str(tmp_path)).acquire()
  again.release()
  assert "did not end cleanly" not in caplog.text

  # A lock file naming a dead process (a run killed with -9) is taken over with a warning.
  (tmp_path / "lock").write_text(json.dumps({"host": "h", "pid": 999999, "run_id": "gone"}))
  workdir_lib.Lock(str(tmp_path)).acquire().release()
  assert "did not end cleanly (host h, pid 999999, run gone" in caplog.text


def test_second_run_on_a_workdir_exits_2_and_the_first_finishes(tmp_path, capsys):
  workdir = tmp_path / "run"
  first = start_subprocess(workdir, "--config.total_steps=300", "--config.log_every=50",
                           "--config.checkpoint.every_steps=100")
  try:
    wait_for(lambda: (workdir / "lock").exists() and (workdir / "lock").read_text(), first)
    listing = sorted(os.listdir(workdir))
    assert main_lib.main(cli(workdir, "--config.total_steps=300")) == errors.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"is in use by another run (host {os.uname().nodename}, pid {first.pid}" in err
    assert "Traceback" not in err
    assert sorted(os.listdir(workdir)) == listing   # touched nothing
    assert first.wait(timeout=300) == 0
  finally:
    first.kill()
  config = tiny_config(total_steps=300)
  step, _ = final_params(str(workdir), config)
  assert step == 300
  assert loss_steps(workdir) == list(range(50, 301, 50))   # each row once


def test_kill_9_then_resume_writes_each_step_once(tmp_path):
  workdir = tmp_path / "run"
  overrides = ["--config.total_steps=600", "--config.log_every=10",
               "--config.checkpoint.every_steps=100", "--config.image_every=100000"]
  run = start_subprocess(workdir, *overrides)
  try:
    def past_a_checkpoint():
      done = ckpt_lib.finished_steps(str(workdir))
      steps = loss_steps(workdir) if (workdir / "metrics.jsonl").exists() else []
      return done and steps and steps[-1] > done[-1] + 20
    wait_for(past_a_checkpoint, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
  finally:
    run.kill()
  resumed_from = ckpt_lib.finished_steps(str(workdir))[-1]
  assert loss_steps(workdir)[-1] > resumed_from        # rows past the checkpoint were written
  resume = start_subprocess(workdir, *overrides)       # takes over the stale lock
  assert resume.wait(timeout=300) == 0
  out = open(f"{workdir}.out").read()
  assert f"resumed from {workdir}/checkpoints at step {resumed_from}" in out
  assert "taking over the lock of a run that did not end cleanly" in out
  assert loss_steps(workdir) == list(range(10, 601, 10))


def test_resume_refuses_a_changed_run_and_allows_harmless_changes(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "run")
  with monkeypatch.context() as m:
    sigterm_at(m, at_batch=4)
    assert main_lib.main(cli(workdir)) == 0             # stopped at step 4 with a checkpoint
  capsys.readouterr()
  saved = open(os.path.join(workdir, "config.json")).read()

  assert main_lib.main(cli(workdir, "--config.batch_size=32")) == errors.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert "batch_size: 16 -> 32" in err and "another --workdir" in err
  assert "Traceback" not in err
  assert open(os.path.join(workdir, "config.json")).read() == saved  # not overwritten

  assert main_lib.main(cli(workdir, "--config.log_every=1")) == 0   # resumes to the end
  out = capsys.readouterr().out
  assert "resuming with a changed log_every: 2 -> 1" in out
  assert json.load(open(os.path.join(workdir, "config.json")))["log_every"] == 1
  history = os.listdir(os.path.join(workdir, "config_history"))
  assert history == ["config_before_step_00000004.json"]
  assert json.load(open(os.path.join(workdir, "config_history", history[0])))["log_every"] == 2
  assert loss_steps(workdir) == [2, 4, 5, 6, 7, 8]


def test_changes_are_sorted_into_harmless_and_refused():
  assert workdir_lib.harmless("log_every") and workdir_lib.harmless("checkpoint.keep")
  assert workdir_lib.harmless("probe.every_steps") and workdir_lib.harmless("mesh.fsdp")
  for key in ("batch_size", "method", "model.width", "dataset", "optimizer.blr", "seed",
              "total_epochs", "data.crop_scale", "train_split", "mi_mae.v_lr"):
    assert not workdir_lib.harmless(key), key


def test_sigterm_during_start_up_stops_at_once_with_a_message(tmp_path, monkeypatch, capsys):
  real = train.evaluation.build

  def build_then_sigterm(*args, **kwargs):
    signal.raise_signal(signal.SIGTERM)   # e.g. during the random-init probe
    return real(*args, **kwargs)
  monkeypatch.setattr(train.evaluation, "build", build_then_sigterm)
  workdir = str(tmp_path / "run")
  assert main_lib.main(cli(workdir)) == 0
  assert "SIGTERM before training began" in capsys.readouterr().err
  assert ckpt_lib.finished_steps(workdir) == []
  assert open(os.path.join(workdir, "lock")).read() == ""        # released
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL       # given back
  assert not preemption.requested()


def _file_size_limit(limit):
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


def test_a_failed_checkpoint_write_stops_the_run_in_one_line(tmp_path):
  """Files over 60 kB cannot be written (as on a full disk): the first checkpoint fails."""
  workdir = tmp_path / "run"
  run = start_subprocess(workdir, "--config.total_steps=2000", "--config.log_every=10",
                         "--config.checkpoint.every_steps=100", "--config.image_every=100000",
                         preexec_fn=_file_size_limit(60_000))
  assert run.wait(timeout=300) == errors.EXIT_WRITE
  log = open(f"{workdir}.out").read()
  assert ("stopped: writing the checkpoint of step 100 failed: File too large; last good "
          "checkpoint: none") in log
  assert "Traceback" not in log
  assert loss_steps(workdir)[-1] < 1000     # stopped soon after the failure, not at the end
  assert ckpt_lib.finished_steps(str(workdir)) == []


def test_user_errors_exit_2_with_one_message(tmp_path, capsys):
  bad_config = tmp_path / "bad.py"
  bad_config.write_text("def get_config(arg):\n  return undefined_name\n")
  broken_config = tmp_path / "broken.py"
  broken_config.write_text("def get_config(arg)\n  pass\n")
  a_file = tmp_path / "file"
  a_file.write_text("")
  cases = [
      (["--config", str(bad_config), "--workdir", str(tmp_path / "w")],
       f"{bad_config}' (line 2): NameError: name 'undefined_name' is not defined"),
      (["--config", str(broken_config), "--workdir", str(tmp_path / "w")],
       f"{broken_config}' line 1: syntax error"),
      (cli(a_file / "run"), f"cannot create workdir '{a_file}/run'"),
      (cli(tmp_path / "w1", f"--config.init_from={tmp_path}"),
       f"init_from: no checkpoints in '{tmp_path}/checkpoints'"),
  ]
  for argv, message in cases:
    assert main_lib.main(argv) == errors.EXIT_USER_ERROR, message
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 3, err
  # --debug shows the traceback too.
  assert main_lib.main(cli(a_file / "run", "--debug")) == errors.EXIT_USER_ERROR
  assert "Traceback" in capsys.readouterr().err


def test_non_finite_loss_exits_3(tmp_path, monkeypatch, capsys):
  real = train.data.train_iterator

  def poisoned(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs), start=1):
      yield dict(batch, image=batch["image"] * float("nan")) if i == 6 else batch
  monkeypatch.setattr(train.data.pipeline, "train_iterator", poisoned)
  assert main_lib.main(cli(tmp_path / "run")) == errors.EXIT_NON_FINITE
  err = capsys.readouterr().err
  assert "stopped: non-finite loss" in err and "last checkpoint: step 4" in err
  assert "Traceback" not in err


def test_keys_an_older_config_lacks_are_no_change_at_their_default(tmp_path):
  c = tiny_config()
  workdir_lib.write_config(c, str(tmp_path), 0)
  saved = json.load(open(tmp_path / "config.json"))
  del saved["amt"]["interval_epochs"]                 # as if written before the key existed
  saved["a_key_since_removed"] = 1
  json.dump(saved, open(tmp_path / "config.json", "w"))
  assert workdir_lib.check_resume(c, str(tmp_path), 4) == []
  c.amt.interval_epochs = 20.0                        # not the default: a change
  with pytest.raises(errors.WorkdirError, match=r"amt.interval_epochs: 40.0 -> 20.0"):
    workdir_lib.check_resume(c, str(tmp_path), 4)
  # A key whose default changed after it was added: a saved config without it ran as before.
  c.amt.interval_epochs = 40.0
  del saved["data"]["pipeline"]
  json.dump(saved, open(tmp_path / "config.json", "w"))
  c.data.pipeline = "python"
  assert workdir_lib.check_resume(c, str(tmp_path), 4) == []
  c.data.pipeline = "tf"
  with pytest.raises(errors.WorkdirError, match=r"data.pipeline: 'python' -> 'tf'(.|\n)*"
                                                r"give its old value \(--config.data.pipeline="
                                                r"python\)"):
    workdir_lib.check_resume(c, str(tmp_path), 4)


def test_stderr_filter_drops_only_closed_loop_tracebacks():
  import io
  from mim_jax.core.library_noise import DropClosedLoopTracebacks
  noise = ['Traceback (most recent call last):',
           '  File "/x/asyncio/base_events.py", line 806, in call_soon_threadsafe',
           '    self._check_closed()',
           '  File "/x/asyncio/base_events.py", line 519, in _check_closed',
           "    raise RuntimeError('Event loop is closed')",
           'RuntimeError: Event loop is closed']
  other = ['Traceback (most recent call last):', '  File "/y.py", line 1, in f', 'ValueError: boom']
  out = io.StringIO()
  stream = DropClosedLoopTracebacks(out)
  # Two noisy tracebacks interleaved line by line (two threads), then a real one, then a line
  # without its newline.
  interleaved = [line for pair in zip(noise, noise) for line in pair]
  stream.write("before\n" + "\n".join(interleaved + other) + "\nafter")
  stream.release()
  assert out.getvalue() == "before\n" + "\n".join(other) + "\nafter"
