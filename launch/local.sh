#!/usr/bin/env bash
# One host, all its accelerators: jax sees every local GPU/TPU chip and the trainer splits the
# global batch over them. Usage:
#   launch/local.sh configs/mae_imagenet.py:variant=B/16 runs/mae_b16 [--config.key=value ...]
#   DRY_RUN=1 launch/local.sh ...   # print the command instead of running it
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:ARGS] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
cmd=(python -m mim_jax.main --config "$config" --workdir "$workdir" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
