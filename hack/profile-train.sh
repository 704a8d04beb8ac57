#!/usr/bin/env bash
# Wall time of Gantry's S32-small training step by kernel op and shape, from uprobes on the
# C entry points of the kernels (perf probe; needs root and perf). Time between kernel calls
# is Go-side work (tape, allocation, cgo transitions). Usage: hack/profile-train.sh [STEPS]
# (default 3; the first step is dropped as warm-up). BINDIR (bin) is where the binary goes.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-3}" THREADS="${THREADS:-2}"
export OPENBLAS_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
command -v perf >/dev/null || { echo "profile-train: perf is missing (Debian: linux-perf)" >&2; exit 1; }
BINDIR="${BINDIR:-bin}"
mkdir -p "$BINDIR"
bin=$(cd "$BINDIR" && pwd)/benchtrainprof
go build -o "$bin" ./hack/benchtrain
ev=probe_benchtrainprof
perf probe -q -d "$ev:*" 2>/dev/null || true
trap 'perf probe -q -d "$ev:*" 2>/dev/null || true' EXIT
add() { perf probe -q -x "$bin" --add "$1"; }
T='+24(%si):s64 c=+32(%si):s64 h=+40(%si):s64'
add "conv_fwd=gk_conv2d n=$T co=+24(%dx):s64 k=+40(%dx):s64 s=+0(%r8):s32"
add "conv_bwd_data=gk_conv2d_bwd_data n=+24(%cx):s64 c=+32(%cx):s64 h=+40(%cx):s64 co=+24(%dx):s64 k=+40(%dx):s64 s=+0(%r8):s32"
add "conv_bwd_filter=gk_conv2d_bwd_filter n=$T co=+24(%cx):s64 k=+40(%cx):s64 s=+0(%r8):s32"
add "fir=gk_fir n=$T up=+0(%r9):s32 down=+4(%r9):s32"
ops="conv_fwd:gk_conv2d conv_bwd_data:gk_conv2d_bwd_data conv_bwd_filter:gk_conv2d_bwd_filter fir:gk_fir"
for f in gk_adain gk_adain_bwd gk_adam gk_bias_act gk_bias_act_grad gk_binary gk_copy gk_fill gk_gemm \
	gk_lerp gk_mbstd gk_mbstd_bwd gk_noise gk_noise_bwd_weight gk_pixel_norm gk_pixel_norm_bwd gk_randn \
	gk_reduce gk_sanitize gk_unary gk_buf_alloc gk_buf_free gk_buf_read gk_buf_write; do
	add "${f#gk_}=$f"
	ops="$ops ${f#gk_}:$f"
done
for o in $ops; do add "${o%%:*}_ret=${o#*:}%return"; done
perf record -q -o /tmp/profile-train.perf -e "$ev:*" -- "$bin" -threads "$THREADS" -warmup 0 -steps "$STEPS"
perf script -i /tmp/profile-train.perf -F tid,time,event,trace 2>/dev/null | "${GANTRY_PYTHON:-/usr/bin/python3}" hack/profile_train.py
