//go:build !cuda

#include "cpu/ctx.c"
