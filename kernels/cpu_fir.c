//go:build !cuda

#include "cpu/fir.c"
