//go:build !cuda

#include "cpu/gemm.c"
