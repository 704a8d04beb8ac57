//go:build !cuda

#include "cpu/noise.c"
