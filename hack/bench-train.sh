#!/usr/bin/env bash
# make bench-train: img/s of one full StyleGAN training step (D step with R1 on every step,
# G step, EMA) at the S32-small config (32x32x3, z = w = 128, 8 mapping layers, fmap_base
# 1024, fmap_max 128, batch 32) for Gantry (hack/benchtrain) and for the same architecture
# and step in PyTorch (hack/bench_train_torch.py), both on THREADS threads, in one run. The
# two alternate single steps (PyTorch runs as a server process) so that both see the same
# machine load. Environment: THREADS (2), STEPS timed steps of each (6), WARMUP (1), BINDIR
# (bin: where the benchtrain binary is built).
# Extra arguments go to hack/benchtrain (e.g. -torch-blur groups, -cpuprofile FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}" STEPS="${STEPS:-6}" WARMUP="${WARMUP:-1}"
export OPENBLAS_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
PY="${GANTRY_PYTHON:-/usr/bin/python3}"
pyarg=(-python "$PY")
if ! "$PY" -c 'import torch' 2>/dev/null; then
	echo "bench-train: $PY cannot import torch (Debian: python3-torch, see hack/install-deps.sh); measuring Gantry only" >&2
	pyarg=()
fi
BINDIR="${BINDIR:-bin}"
mkdir -p "$BINDIR"
go build -o "$BINDIR/benchtrain" ./hack/benchtrain
echo "bench-train: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), THREADS=$THREADS STEPS=$STEPS WARMUP=$WARMUP"
"$BINDIR/benchtrain" -threads "$THREADS" -warmup "$WARMUP" -steps "$STEPS" "${pyarg[@]}" "$@"
# On a loaded machine PyTorch's OpenMP threads lose far more than Gantry's (0.87x idle read as
# 2.6-4x at load 10 on 2 CPUs), so say when the numbers came from a busy machine.
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	echo "bench-train: WARNING: load average $load on $(nproc) CPUs; the ratio is only meaningful on an otherwise idle machine" >&2
fi
