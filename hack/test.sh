#!/usr/bin/env bash
# The test suite CI runs: vet, import boundaries, then every package's tests.
# Packages that run goroutines get -race; the numeric packages run without it (race slows
# their finite-difference checks tenfold and they share no memory between goroutines in Go).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test: go vet"
go vet ./...
bash hack/check-boundaries.sh
# The end-to-end tests start real coordinator and worker processes and measure recovery
# times: they run after the package tests, alone, so that they get the machine's cores.
pkgs=$(go list ./... | grep -v '/test/e2e$')
echo "test: go test (packages; timeout 30m)"
go test -count=1 -timeout 30m $pkgs
echo "test: go test -race (all-reduce, natsembed, control plane)"
go test -count=1 -race -timeout 10m ./pkg/allreduce/... ./pkg/natsembed/... \
    ./pkg/control/... ./pkg/etcdembed/...
echo "test: go test ./test/e2e (end to end, real processes; timeout 20m)"
go test -count=1 -p 1 -timeout 20m ./test/e2e/...
