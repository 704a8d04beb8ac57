//go:build !cuda

#include "cpu/mbstd.c"
