//go:build !cuda

#include "cpu/bias_act.c"
