#!/usr/bin/env bash
# Train on one host with all of its accelerators. jax sees every local GPU (or TPU chip) and the
# trainer splits the global batch (config.batch_size) over them; there is no distributed setup.
#
# Usage (from the repository root):
#   launch/local.sh [--dry-run] CONFIG[:ARGS] WORKDIR [--config.key=value ...]
#   launch/local.sh configs/mae_imagenet.py:variant=B/16 runs/mae_b16 --config.total_epochs=400
#   launch/local.sh --dry-run configs/mae_digits.py runs/mae_digits
#
# --dry-run prints the command on one line, shell-quoted, and exits; otherwise the script execs
# it. DRY_RUN=1 in the environment does the same as --dry-run.
#
# Environment:
#   PYTHON   interpreter to run (default: python)
#   DRY_RUN  1 = same as --dry-run
set -euo pipefail

usage() {
  echo "usage: $0 [--dry-run] CONFIG[:ARGS] WORKDIR [--config.key=value ...]"
}

# Prints its arguments as one shell-quoted line (no trailing blank).
show() {
  local line
  line=$(printf '%q ' "$@")
  printf '%s\n' "${line% }"
}

dry_run=${DRY_RUN:-0}
case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  --dry-run)
    dry_run=1
    shift
    ;;
esac
if [ $# -lt 2 ]; then
  usage >&2
  exit 2
fi

config=$1
workdir=$2
shift 2
cmd=("${PYTHON:-python}" -m mim_jax.main --config "$config" --workdir "$workdir" "$@")
if [ "$dry_run" = 1 ]; then
  show "${cmd[@]}"
else
  exec "${cmd[@]}"
fi
