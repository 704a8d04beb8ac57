//go:build !cuda

#include "cpu/winograd.c"
