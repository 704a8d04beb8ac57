#!/usr/bin/env bash
# Import boundaries the design fixes: only kernels/ imports "C"; pkg/ never imports the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
c=$(git ls-files '*.go' | grep -v '^kernels/' | xargs -r grep -l '^import "C"' || true)
if [ -n "$c" ]; then echo "boundaries: only kernels/ may import \"C\"; found in: $c" >&2; fail=1; fi
p=$(git ls-files 'pkg/*.go' | xargs -r grep -lE '"github.com/gantry-ml/gantry/(coordinator|worker)' || true)
if [ -n "$p" ]; then echo "boundaries: pkg/ must not import coordinator/ or worker/: $p" >&2; fail=1; fi
[ $fail -eq 0 ] && echo "boundaries: ok"
exit $fail
