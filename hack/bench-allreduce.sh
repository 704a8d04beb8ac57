#!/usr/bin/env bash
# Ring all-reduce over NATS beside the broker's own bound, N = 2, 3, 4 member processes,
# buffers of 1, 8 and 64 MiB, one NATS server (embedded in the driver process).
# Extra arguments go to `allreduce-bench run` (e.g. -n 2 -sizes-mib 8).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/allreduce-bench ./test/cmd/allreduce-bench
echo "bench-allreduce: $(nproc) CPU cores shared by the server and all members"
bin/allreduce-bench run "$@"
