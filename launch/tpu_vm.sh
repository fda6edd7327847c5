#!/usr/bin/env bash
# Cloud TPU VM through gcloud: create a TPU VM (a slice with one or more worker hosts), copy the
# code to every worker and install it, run the trainer on all workers at once, delete it again.
#
# Usage (from any directory; gcloud must be installed and logged in):
#   launch/tpu_vm.sh [--dry-run] create
#   launch/tpu_vm.sh [--dry-run] sync
#   launch/tpu_vm.sh [--dry-run] run CONFIG[:ARGS] WORKDIR [--config.key=value ...]
#   launch/tpu_vm.sh [--dry-run] delete
#
#   create  creates the TPU VM, then does what sync does and installs the package (pinned by
#           constraints.txt) plus jax[tpu] on every worker
#   sync    copies mim_jax/, configs/ and the packaging files (pyproject.toml, constraints.txt,
#           README.md) of this checkout to every worker
#           (again, e.g. after editing the code)
#   run     starts the same trainer command on every worker with
#           --config.distributed.enabled=True; jax.distributed.initialize() finds the other
#           workers by itself. WORKDIR must be a location every worker can write to, such as a
#           gs:// bucket (or a disk all workers mount): each worker writes its own checkpoint
#           shards there, worker 0 the metrics and images. A local path would leave the pieces
#           scattered over the workers. The training lives as long as this gcloud ssh session,
#           so start it inside tmux/screen or from a machine that stays connected.
#   delete  deletes the TPU VM (without asking)
#
# --dry-run (first argument) prints every gcloud command, one shell-quoted line each, instead of
# running it.
#
# Environment (defaults in brackets):
#   TPU_NAME     name of the TPU VM [mim-jax]
#   ZONE         zone [us-central2-b]
#   ACCELERATOR  accelerator type, i.e. the slice [v4-32]
#   VERSION      TPU VM software version [tpu-ubuntu2204-base]
#   PROJECT      Google Cloud project [unset: gcloud's configured project]
#   REMOTE_DIR   directory on the workers, relative to the home directory [mim_jax]
#   PYTHON       interpreter on the workers [python3]
set -euo pipefail

TPU_NAME=${TPU_NAME:-mim-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}
REMOTE_DIR=${REMOTE_DIR:-mim_jax}
PYTHON=${PYTHON:-python3}
JAX_TPU='jax[tpu]==0.10.2'

usage() {
  echo "usage: $0 [--dry-run] create | sync | delete"
  echo "       $0 [--dry-run] run CONFIG[:ARGS] WORKDIR [--config.key=value ...]"
}

# Prints its arguments as one shell-quoted line (no trailing blank).
show() {
  local line
  line=$(printf '%q ' "$@")
  printf '%s\n' "${line% }"
}

dry_run=0
if [ "${1:-}" = --dry-run ]; then
  dry_run=1
  shift
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
where=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then
  where+=(--project="$PROJECT")
fi

# gcloud compute tpus tpu-vm ARGS..., or its printout under --dry-run.
tpu_vm() {
  if [ "$dry_run" = 1 ]; then
    show gcloud compute tpus tpu-vm "$@"
  else
    gcloud compute tpus tpu-vm "$@"
  fi
}

# Runs a shell command line on all workers at once.
on_workers() {
  tpu_vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}

sync_code() {
  on_workers "$(show mkdir -p "$REMOTE_DIR")"
  tpu_vm scp --recurse "$repo/mim_jax" "$repo/configs" "$repo/pyproject.toml" \
    "$repo/constraints.txt" "$repo/README.md" \
    "$TPU_NAME:$REMOTE_DIR" "${where[@]}" --worker=all
}

subcommand=${1:-}
if [ $# -gt 0 ]; then
  shift
fi
case "$subcommand" in
  create)
    if [ $# -ne 0 ]; then
      usage >&2
      exit 2
    fi
    tpu_vm create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$VERSION"
    sync_code
    on_workers "$(show cd "$REMOTE_DIR") && $(show "$PYTHON" -m pip install -e . -c constraints.txt "$JAX_TPU")"
    ;;
  sync)
    if [ $# -ne 0 ]; then
      usage >&2
      exit 2
    fi
    sync_code
    ;;
  run)
    if [ $# -lt 2 ]; then
      usage >&2
      exit 2
    fi
    config=$1
    workdir=$2
    shift 2
    on_workers "$(show cd "$REMOTE_DIR") && $(show "$PYTHON" -m mim_jax.main --config "$config" \
      --workdir "$workdir" --config.distributed.enabled=True "$@")"
    ;;
  delete)
    if [ $# -ne 0 ]; then
      usage >&2
      exit 2
    fi
    tpu_vm delete "$TPU_NAME" "${where[@]}" --quiet
    ;;
  -h | --help)
    usage
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
