#!/usr/bin/env bash
# Installs the MinIO server the S3 tests and benchmarks run against, when it is missing.
# MinIO ships as source only, so this builds it from its Go module at a pinned version with
# `go install` into the project-local .cache/bin (gitignored). The first build downloads the
# module graph and compiles for a few minutes; afterwards the script returns at once.
# Override the pin with MINIO_VERSION=<module version>.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the newest commit on the module proxy when this was written (MinIO tags releases as
# RELEASE.<date>, which Go sees only as pseudo-versions).
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
bindir="$PWD/.cache/bin"
bin="$bindir/minio"
stamp="$bindir/minio.version"

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$MINIO_VERSION" ]; then
  echo "minio: $bin present ($MINIO_VERSION)"
  exit 0
fi

mkdir -p "$bindir"
echo "minio: building github.com/minio/minio@$MINIO_VERSION into $bindir (one-time, a few minutes)"
start=$(date +%s)
# GOFLAGS from the Makefile (-mod=mod) applies to this module, not to `go install pkg@version`.
GOFLAGS="" GOBIN="$bindir" CGO_ENABLED=0 go install -trimpath "github.com/minio/minio@$MINIO_VERSION"
echo "$MINIO_VERSION" > "$stamp"
echo "minio: installed $bin in $(( $(date +%s) - start ))s"
