//go:build !cuda

#include "cpu/adain.c"
