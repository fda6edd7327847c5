#!/usr/bin/env bash
# One device window (15 minutes of a lent GPU, start-up included): the feed benchmark on the GPU,
# then as much of the Fashion-MNIST league's long GPU profile as the time left allows.
#
#   BUDGET_S=540 bash benchmarks/device_window.sh        # on the device machine, repository root
#
# What it needs beside the working tree (the device image has jax but no TensorFlow; pass these
# as the device tool's `carry`, both kept out of git by .gitignore):
#   .devdata/  Fashion-MNIST's IDX files (train-images-idx3-ubyte.gz ... t10k-labels-idx1-ubyte.gz,
#              ~30 MB: Debian's dataset-fashion-mnist, README "Data")
#   .whl/      wheels of the Python packages the image lacks (e.g. `pip download --no-deps -d .whl
#              ml_collections==1.1.0`); installed offline when an import fails
# Environment: BUDGET_S (seconds this script may take, default 540), OUT (where results go;
# the device tool sets it), LEAGUE_ARG (default scale=50,pipeline=python,device,k=32),
# BENCH (0 skips the benchmark), BENCH_ARGS (its arguments: batches 256 / 1024 / 4096, K 8 and
# 32), SEEDS (--seeds of the league, default: the config's).
#
# Resumable across windows: the league's ledger (results/league_fashion_mnist_x50.json at the
# default scale: each scale its own, gathered by `python -m mim_jax.league --config
# configs/league_fashion_mnist.py --budget`) comes back in $OUT; commit it, and the next window
# skips the cells it holds. --hours stops the
# league between row groups before the budget runs out, so no cell is left half done.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-540}
OUT=${OUT:-/tmp/device_out}
LEAGUE_ARG=${LEAGUE_ARG:-scale=50,pipeline=python,device,k=32}
BENCH_ARGS=${BENCH_ARGS:---batch_size 256 --batch_size 1024 --batch_size 4096 --steps_per_call 8 --steps_per_call 32 --steps 512 --rounds 2}
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_window.log") 2>&1

if ! python3 -c "import flax, optax, orbax.checkpoint, ml_collections, PIL, sklearn" 2>/dev/null; then
  echo "installing the missing packages from .whl/"
  python3 -m pip install -q --no-index --find-links .whl ml_collections 2>&1 | tail -2 || true
fi
python3 -c "import jax; print('devices:', jax.devices())"

DATA=/tmp/fashion_mnist
if [ ! -d "$DATA" ]; then
  python3 -m mim_jax.data.idx --src .devdata --out "$DATA" --names fashion_mnist
fi

if [ "${BENCH:-1}" != 0 ]; then
  echo "== feed benchmark ($(left) s left)"
  # shellcheck disable=SC2086
  timeout $(( $(left) / 3 )) python3 -m benchmarks.feed --data "folder:$DATA" --host memory \
      $BENCH_ARGS | tee "$OUT/feed.jsonl" || echo "benchmark stopped"
fi

echo "== league ($(left) s left)"
NAME=$(python3 -c "from mim_jax.league.runner import default_name as n; print(n('configs/league_fashion_mnist.py', '$LEAGUE_ARG'))")
HOURS=$(python3 -c "print(max(0.0, ($(left) - 60) / 3600 / 1.5))")
timeout $(( $(left) - 20 )) python3 -m mim_jax.league --config configs/league_fashion_mnist.py \
    --dataset "folder:$DATA" --arg "$LEAGUE_ARG" --workdir "/tmp/league_$NAME" \
    --hours "$HOURS" ${SEEDS:+--seeds "$SEEDS"} || echo "league stopped"
cp results/league_"$NAME"* "$OUT/" 2>/dev/null || true
echo "done in $(( $(date +%s) - START )) s"
