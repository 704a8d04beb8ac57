//go:build !cuda

#include "cpu/optim.c"
