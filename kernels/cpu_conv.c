//go:build !cuda

#include "cpu/conv.c"
