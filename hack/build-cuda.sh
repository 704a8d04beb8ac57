#!/usr/bin/env bash
# make cuda: builds the CUDA backend (kernels/cuda, behind the `cuda` build tag).
# The backend is not written yet: this says so instead of failing on a missing file.
echo "cuda: the CUDA backend (kernels/cuda) is not written yet; only the CPU backend builds (make build)" >&2
exit 1
