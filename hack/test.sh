#!/usr/bin/env bash
# The test suite CI runs: vet, import boundaries, then every package's tests.
# Packages that run goroutines get -race; the numeric packages run without it (race slows
# their finite-difference checks tenfold and they share no memory between goroutines in Go).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test: go vet"
go vet ./...
bash hack/check-boundaries.sh
echo "test: go test ./... (timeout 40m)"
go test -count=1 -timeout 40m ./...
echo "test: go test -race (all-reduce, natsembed, control plane)"
go test -count=1 -race -timeout 10m ./pkg/allreduce/... ./pkg/natsembed/... \
    ./pkg/control/... ./pkg/etcdembed/...
