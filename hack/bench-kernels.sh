#!/usr/bin/env bash
# make bench-kernels: Gantry's CPU kernels against PyTorch on StyleGAN shapes (batch 32), in
# one run and one table. The two sides alternate case by case (PyTorch runs as a server
# process, hack/bench_kernels_torch.py) so that both see the same machine load; each side
# keeps its best time. Both use THREADS threads (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
export OPENBLAS_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
# Rebuild the kernels when their C sources change (the Makefile does the same).
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g -DGK_SRC_HASH=$(cat kernels/cpu/*.[ch] kernels/include/*.h | sha1sum | cut -c1-16)}"
PY="${GANTRY_PYTHON:-/usr/bin/python3}"
pyarg=(-python "$PY")
if ! "$PY" -c 'import torch' 2>/dev/null; then
	echo "bench-kernels: $PY cannot import torch (Debian: python3-torch, see hack/install-deps.sh); measuring Gantry only" >&2
	pyarg=()
fi
echo "bench-kernels: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS OMP_NUM_THREADS=$OMP_NUM_THREADS OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-default}"
# Extra flags: arguments, or BENCH_KERNELS_ARGS through make (e.g. -cpu-clock on a busy machine).
# shellcheck disable=SC2086
go run ./test/cmd/benchkernels -threads "$THREADS" "${pyarg[@]}" ${BENCH_KERNELS_ARGS:-} "$@"
