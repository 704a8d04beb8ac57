#!/usr/bin/env bash
# make bench-dataset: images/s of `coordinator dataset create` on Fashion-MNIST (60000 images,
# 28x28 -> 32x32 Lanczos, levels 32..4) to a local directory and to a MinIO started here,
# loader throughput at 32x32, and beside them a PIL/numpy script doing the same work
# (hack/bench_dataset.py), with the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

SRC=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
LABELS=/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz
RES=32
PY=${GANTRY_PYTHON:-/usr/bin/python3}
[ -f "$SRC" ] || { echo "bench-dataset: $SRC missing; install the Debian package dataset-fashion-mnist" >&2; exit 1; }
N=$("$PY" -c "import gzip,sys; d=gzip.open(sys.argv[1]).read(8); print(int.from_bytes(d[4:8],'big'))" "$SRC")

work=$(mktemp -d)
minio_pid=""
cleanup() { [ -n "$minio_pid" ] && kill "$minio_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

bin=$work/coordinator
echo "bench-dataset: building coordinator"
go build -o "$bin" ./coordinator

secs() { "$PY" -c "import time; print(time.perf_counter())"; }
rate() { "$PY" -c "import sys; print(round(int(sys.argv[1])/(float(sys.argv[3])-float(sys.argv[2]))))" "$@"; }

echo "bench-dataset: dataset create -> local directory ($N images, resolution $RES)"
t0=$(secs)
"$bin" dataset create --source "$SRC" --labels "$LABELS" --out "$work/local" --resolution $RES --log-level warn 2>/dev/null
t1=$(secs)
local_ips=$(rate "$N" "$t0" "$t1")

echo "bench-dataset: starting MinIO on loopback"
eval "$(bash hack/minio-start.sh "$work/minio" bench)"
minio_pid=$MINIO_PID

echo "bench-dataset: dataset create -> MinIO"
t0=$(secs)
"$bin" dataset create --source "$SRC" --labels "$LABELS" --out s3://bench/fashion --resolution $RES --log-level warn 2>/dev/null
t1=$(secs)
minio_ips=$(rate "$N" "$t0" "$t1")

echo "bench-dataset: loader at 32x32 (go test -bench BenchmarkLoader32)"
loader_ips=$(go test -run '^$' -bench '^BenchmarkLoader32$' -benchtime 2000x ./pkg/dataset/ | awk '/BenchmarkLoader32/ { for (i = 1; i <= NF; i++) if ($(i+1) == "images/s") print int($i) }')

echo "bench-dataset: Python peer (PIL + numpy, $PY)"
py=$("$PY" hack/bench_dataset.py "$SRC" $RES)
py_import=$(echo "$py" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['import_images_per_s'])")
py_loader=$(echo "$py" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['loader_images_per_s_32'])")

ratio() { "$PY" -c "import sys; print('%.1fx' % (float(sys.argv[1])/float(sys.argv[2])))" "$1" "$2"; }
echo
printf '%-44s %12s %12s %8s\n' "Fashion-MNIST, $N images, R=$RES" "Gantry" "PIL/numpy" "ratio"
printf '%-44s %12s %12s %8s\n' "dataset create -> local dir (images/s)" "$local_ips" "$py_import" "$(ratio "$local_ips" "$py_import")"
printf '%-44s %12s %12s %8s\n' "dataset create -> MinIO (images/s)" "$minio_ips" "$py_import" "$(ratio "$minio_ips" "$py_import")"
printf '%-44s %12s %12s %8s\n' "loader, batch 64 at 32x32 (images/s)" "$loader_ips" "$py_loader" "$(ratio "$loader_ips" "$py_loader")"
echo "(the Python import writes to a local temp dir; its loader gathers from memory without a cache)"
