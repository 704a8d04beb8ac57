# Gantry — build, demo, test, bench.
# Every target installs what it needs first (Debian packages, Go modules, MinIO), so a fresh
# Debian machine needs nothing but `make demo` or `make test`.

SHELL := /bin/bash
GO ?= go
BIN := bin
THREADS ?= 2
export GOFLAGS ?= -mod=mod
export OPENBLAS_NUM_THREADS ?= $(THREADS)
# The CPU kernels live in kernels/cpu/ and reach the cgo build through one-line #include
# wrappers, which Go's build cache does not look through: a hash of the C sources in
# CGO_CFLAGS makes every change to them rebuild the package.
export CGO_CFLAGS := -O2 -g -DGK_SRC_HASH=$(shell cat kernels/cpu/*.[ch] kernels/include/*.h 2>/dev/null | sha1sum | cut -c1-16)
# PyTorch comes from Debian's python3-torch, which installs for /usr/bin/python3 only.
export GANTRY_PYTHON ?= /usr/bin/python3

.PHONY: all deps minio build test test-short demo bench bench-kernels bench-train \
        bench-dataset bench-allreduce lint cuda clean

all: build

deps:
	@bash hack/install-deps.sh
	@echo "deps: downloading Go modules"; $(GO) mod download

minio: deps
	@bash hack/install-minio.sh

build: deps
	@echo "build: coordinator and worker -> $(BIN)/"
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./coordinator ./worker

test: build minio
	@bash hack/test.sh

demo: build
	$(BIN)/coordinator dev --data fashion-mnist --workers 2 --run-dir runs/demo

bench: bench-kernels bench-train bench-dataset bench-allreduce

bench-kernels: deps
	@bash hack/bench-kernels.sh

bench-train: build
	@bash hack/bench-train.sh

bench-dataset: build minio
	@bash hack/bench-dataset.sh

bench-allreduce: build
	@bash hack/bench-allreduce.sh

lint: deps
	$(GO) vet ./...
	@bash hack/check-boundaries.sh

cuda: deps
	@bash hack/build-cuda.sh

clean:
	rm -rf $(BIN)
