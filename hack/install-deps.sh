#!/usr/bin/env bash
# Installs the Debian packages Gantry's build, tests and demo need, when they are missing.
# Safe to run repeatedly: it only calls apt-get for packages dpkg does not report installed.
set -euo pipefail

pkgs=(
  build-essential      # gcc for cgo
  pkg-config
  libopenblas-dev      # cblas sgemm for the CPU kernels
  python3-torch        # PyTorch (CPU) for parity tests and side-by-side benchmarks
  python3-numpy
  python3-pil          # PIL for the dataset benchmark's Python peer
  dataset-fashion-mnist
  ca-certificates
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all Debian packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "deps: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "deps: done"
