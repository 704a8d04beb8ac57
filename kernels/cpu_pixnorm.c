//go:build !cuda

#include "cpu/pixnorm.c"
