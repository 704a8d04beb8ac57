//go:build !cuda

#include "cpu/winograd_s2.c"
