//go:build !cuda

#include "cpu/elementwise.c"
