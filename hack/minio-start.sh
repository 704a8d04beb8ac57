#!/usr/bin/env bash
# Starts a MinIO server on loopback with generated credentials, for benchmarks and manual
# use (the Go tests start their own through pkg/store/storetest). Installs MinIO first when
# missing (hack/install-minio.sh). Usage:
#
#   eval "$(bash hack/minio-start.sh DATA_DIR [BUCKET...])"
#   ... use s3://BUCKET with the exported AWS_* variables ...
#   kill "$MINIO_PID"
#
# It prints the export lines on stdout and progress on stderr; buckets named after the data
# directory are created once the server is healthy.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 DATA_DIR [BUCKET...]" >&2; exit 2; }
data=$1; shift
bash hack/install-minio.sh >&2
mkdir -p "$data"

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
port=$(free_port); cport=$(free_port)
user="gantry-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
pass="$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"

MINIO_ROOT_USER=$user MINIO_ROOT_PASSWORD=$pass MINIO_BROWSER=off MINIO_UPDATE=off \
  setsid .cache/bin/minio server --quiet --address "127.0.0.1:$port" --console-address "127.0.0.1:$cport" "$data" \
  >"$data.log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/minio/health/live" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "minio: exited at start-up; see $data.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/minio/health/live" >/dev/null || { kill "$pid"; echo "minio: not healthy after 60s; see $data.log" >&2; exit 1; }
for b in "$@"; do
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$user:$pass" -X PUT "http://127.0.0.1:$port/$b" >/dev/null \
    || { kill "$pid"; echo "minio: cannot create bucket $b" >&2; exit 1; }
done
echo "minio: serving $data on http://127.0.0.1:$port (pid $pid, buckets: ${*:-none})" >&2
cat <<OUT
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$user
export AWS_SECRET_ACCESS_KEY=$pass
export MINIO_PID=$pid
OUT
