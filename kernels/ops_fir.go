package kernels

/*
#include "gantry_kernels.h"
*/
import "C"

import "fmt"

// FIRParams configures FIR (upfirdn2d): zero-insert upsampling by Up, zero padding (Pad0
// before and Pad1 after, negative values crop), a separable filter (the outer product of
// the taps with themselves, times Gain; correlation, or convolution when Flip), then
// keeping every Down-th sample. Up and Down of 0 mean 1; Gain is taken as given (0 gives
// zeros): 1 for blur and box filters whose taps sum to 1, Up*Up after a zero-insert
// upsample.
type FIRParams struct {
	Up, Down   int
	Pad0, Pad1 int
	Flip       bool
	Gain       float32
	// ColPad, when non-nil, gives the padding of the W axis (before, after) and Pad0/Pad1
	// apply to H only. FIRGradParams sets it when a non-square plane needs different
	// trailing pads per axis; callers rarely need it.
	ColPad *[2]int
}

func (p FIRParams) norm() FIRParams {
	if p.Up == 0 {
		p.Up = 1
	}
	if p.Down == 0 {
		p.Down = 1
	}
	return p
}

func (p FIRParams) colPads() (int, int) {
	if p.ColPad != nil {
		return p.ColPad[0], p.ColPad[1]
	}
	return p.Pad0, p.Pad1
}

func firOut(in, up, down, pad0, pad1, ntaps int) int {
	n := in*up + pad0 + pad1 - ntaps
	if n < 0 {
		return -1
	}
	return n/down + 1
}

// FIROutSize returns the output plane size (Ho, Wo) of FIR on an H x W plane with ntaps
// taps: ((H*Up + Pad0 + Pad1 - ntaps) / Down) + 1 per axis.
func FIROutSize(h, w, ntaps int, p FIRParams) (int, int, error) {
	p = p.norm()
	if p.Up < 1 || p.Down < 1 || ntaps < 1 || h < 0 || w < 0 {
		return 0, 0, fmt.Errorf("kernels: fir: plane %dx%d, %d taps, up %d, down %d out of range", h, w, ntaps, p.Up, p.Down)
	}
	cx0, cx1 := p.colPads()
	ho := firOut(h, p.Up, p.Down, p.Pad0, p.Pad1, ntaps)
	wo := firOut(w, p.Up, p.Down, cx0, cx1, ntaps)
	if ho < 1 || wo < 1 {
		return 0, 0, fmt.Errorf("kernels: fir: plane %dx%d upsampled by %d and padded by (%d,%d)/(%d,%d) is shorter than %d taps",
			h, w, p.Up, p.Pad0, p.Pad1, cx0, cx1, ntaps)
	}
	return ho, wo, nil
}

// FIRGradParams returns the parameters of the FIR call that computes the gradient of FIR
// with parameters p on an H x W plane with ntaps taps: applied to dy (the shape of the
// forward output) with the same taps, it yields dx of shape H x W, and it is exactly the
// adjoint of the forward op (<dy, FIR(x)> = <FIR_grad(dy), x>). Up and down swap, the
// filter flips, the leading pad becomes ntaps-1-pad0 and the trailing pad is whatever
// brings the output back to the input size.
func FIRGradParams(h, w, ntaps int, p FIRParams) (FIRParams, error) {
	p = p.norm()
	ho, wo, err := FIROutSize(h, w, ntaps, p)
	if err != nil {
		return FIRParams{}, err
	}
	cx0, _ := p.colPads()
	g := FIRParams{Up: p.Down, Down: p.Up, Flip: !p.Flip, Gain: p.Gain}
	g.Pad0 = ntaps - 1 - p.Pad0
	g.Pad1 = h*p.Up + p.Pad0 - ho*p.Down
	x0 := ntaps - 1 - cx0
	x1 := w*p.Up + cx0 - wo*p.Down
	if x0 != g.Pad0 || x1 != g.Pad1 {
		g.ColPad = &[2]int{x0, x1}
	}
	return g, nil
}

// FIR resamples every (n, c) plane of x [N,C,H,W] into y [N,C,Ho,Wo] (see FIRParams and
// FIROutSize) with a separable filter given by taps (host memory, at most 64).
func (d *Device) FIR(x, y View, taps []float32, p FIRParams) error {
	p = p.norm()
	if len(taps) == 0 {
		return &Error{Op: "fir", Status: StatusArg, Msg: fmt.Sprintf("fir: no filter taps (x %s, y %s)", x, y)}
	}
	cx0, cx1 := p.colPads()
	cp := C.gk_fir_params{
		up: C.int32_t(p.Up), down: C.int32_t(p.Down),
		pad0: C.int32_t(p.Pad0), pad1: C.int32_t(p.Pad1),
		pad_x0: C.int32_t(cx0), pad_x1: C.int32_t(cx1),
		gain: C.float(p.Gain),
	}
	if p.Flip {
		cp.flip = 1
	}
	return d.run("fir", []operand{in("x", x), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_fir(c, t[0], t[1], (*C.float)(&taps[0]), C.int32_t(len(taps)), &cp)
	})
}
