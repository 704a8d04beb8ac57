package kernels

/*
#include "gantry_kernels.h"
*/
import "C"

import "fmt"

// ConvParams configures Conv2d and its gradients: square kernels, stride 1 or 2, the same
// zero padding on every side. Alpha scales the result (the equalised learning rate's
// run-time weight scale); Beta accumulates into the output (0 overwrites it).
type ConvParams struct {
	Stride, Pad int
	Alpha, Beta float32
}

func (p ConvParams) c() C.gk_conv_params {
	return C.gk_conv_params{stride: C.int32_t(p.Stride), pad: C.int32_t(p.Pad), alpha: C.float(p.Alpha), beta: C.float(p.Beta)}
}

// ConvOutSize is the output length of one spatial axis of length in for a k-tap kernel:
// (in + 2*pad - k)/stride + 1. It returns an error when the padded input is shorter than the
// kernel or the arguments are out of range.
func ConvOutSize(in, k, stride, pad int) (int, error) {
	if k < 1 || stride < 1 || pad < 0 || in < 0 {
		return 0, fmt.Errorf("kernels: conv2d: size %d, kernel %d, stride %d, pad %d out of range", in, k, stride, pad)
	}
	if in+2*pad < k {
		return 0, fmt.Errorf("kernels: conv2d: size %d padded by %d is smaller than kernel %d", in, pad, k)
	}
	return (in+2*pad-k)/stride + 1, nil
}

// Conv2d computes y = Alpha * conv2d(x, w) + Beta * y (cross-correlation, as in every deep
// learning framework) for x [N,Cin,H,W], w [Cout,Cin,k,k] and y [N,Cout,Ho,Wo], all dense.
func (d *Device) Conv2d(x, w, y View, p ConvParams) error {
	cp := p.c()
	return d.run("conv2d", []operand{in("x", x), in("w", w), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_conv2d(c, t[0], t[1], t[2], &cp)
	})
}

// Conv2dBwdData computes dx = Alpha * conv2d^T(dy, w) + Beta * dx: the gradient of Conv2d
// with respect to x, and also the transposed (fractionally strided) convolution used for
// fused upsampling. Shapes are those of the forward call (dx like x, dy like y).
func (d *Device) Conv2dBwdData(dy, w, dx View, p ConvParams) error {
	cp := p.c()
	return d.run("conv2d_bwd_data", []operand{in("dy", dy), in("w", w), in("dx", dx)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_conv2d_bwd_data(c, t[0], t[1], t[2], &cp)
	})
}

// Conv2dBwdFilter computes dw = Alpha * (gradient of Conv2d with respect to w, contracted
// with dy) + Beta * dw.
func (d *Device) Conv2dBwdFilter(x, dy, dw View, p ConvParams) error {
	cp := p.c()
	return d.run("conv2d_bwd_filter", []operand{in("x", x), in("dy", dy), in("dw", dw)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_conv2d_bwd_filter(c, t[0], t[1], t[2], &cp)
	})
}
