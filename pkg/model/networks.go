package model

import (
	"fmt"
	"math"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
)

const (
	lreluSlope = 0.2
	normEps    = 1e-8
)

var (
	sqrt2  = math.Sqrt2
	lrelu  = kernels.ActParams{Act: kernels.ActLReLU, Alpha: lreluSlope, Gain: 1}
	linear = kernels.ActParams{Act: kernels.ActLinear, Gain: 1}
	// Nearest 2x upsampling: zero insertion, then a [1,1] filter picks each sample twice.
	upTaps = []float32{1, 1}
	upFIR  = kernels.FIRParams{Up: 2, Down: 1, Pad0: 1, Pad1: 0, Gain: 1}
	// 2x box downsampling.
	downTaps = []float32{0.5, 0.5}
	downFIR  = kernels.FIRParams{Up: 1, Down: 2, Gain: 1}
)

// Upsample2x is nearest-neighbour 2x upsampling.
func Upsample2x(tp *autograd.Tape, x *autograd.Tensor) *autograd.Tensor {
	return tp.FIR(x, upTaps, upFIR)
}

// Downsample2x is 2x box (average) downsampling.
func Downsample2x(tp *autograd.Tape, x *autograd.Tensor) *autograd.Tensor {
	return tp.FIR(x, downTaps, downFIR)
}

// Blur filters x with the separable filter taps (odd length keeps the size), or returns x
// when taps is empty.
func Blur(tp *autograd.Tape, x *autograd.Tensor, taps []float32) *autograd.Tensor {
	if len(taps) == 0 {
		return x
	}
	p0 := (len(taps) - 1) / 2
	return tp.FIR(x, taps, kernels.FIRParams{Up: 1, Down: 1, Pad0: p0, Pad1: len(taps) - 1 - p0, Gain: 1})
}

// conv is a 3x3 (or 1x1) stride-1 convolution with the equalised-lr scale.
func conv(tp *autograd.Tape, x, w *autograd.Tensor, gain float64) *autograd.Tensor {
	ws := w.Shape()
	pad := ws[2] / 2
	return tp.Conv2d(x, w, autograd.ConvParams{Stride: 1, Pad: pad, Alpha: heScale(gain, ws[1]*ws[2]*ws[3], 1)})
}

// fusedKernel turns a 3x3 kernel into SG's 4x4 kernel for a stride-2 convolution: the sum
// of the kernel placed at the four offsets of a 4x4 window.
func fusedKernel(tp *autograd.Tape, w *autograd.Tensor) *autograd.Tensor {
	var sum *autograd.Tensor
	for a := 0; a < 2; a++ {
		for b := 0; b < 2; b++ {
			p := tp.Pad(tp.Pad(w, 2, a, 1-a), 3, b, 1-b)
			if sum == nil {
				sum = p
			} else {
				sum = tp.Add(sum, p)
			}
		}
	}
	return sum
}

// upConv is SG's upscale2d_conv2d: nearest 2x then a 3x3 conv, or, fused, SG's transposed
// 4x4 stride-2 conv. w is [Cout, Cin, 3, 3].
//
// The non-fused form is computed as a transposed conv too, with the fused kernel flipped in
// both spatial axes: per axis, nearest 2x then taps (w-1, w0, w1) gives
// y[2i] = x[i-1] w-1 + x[i] (w0 + w1) and y[2i+1] = x[i] (w-1 + w0) + x[i+1] w1, which is
// y[p] = sum_j x[j] K[p - 2j + 1] (stride 2, pad 1) with K = (w1, w0+w1, w-1+w0, w-1), the
// reversed fusedKernel. The same function with 2.25x fewer multiplies and no upsampled copy.
// SG's fused form uses the kernel unflipped (a different function of w, as in SG).
func upConv(tp *autograd.Tape, x, w *autograd.Tensor, gain float64, fused bool) *autograd.Tensor {
	ws := w.Shape()
	w4 := fusedKernel(tp, w)
	if !fused {
		w4 = tp.Flip(w4, 2, 3)
	}
	w4 = tp.Permute(w4, 1, 0, 2, 3) // [Cin, Cout, 4, 4] for the transpose
	xs := x.Shape()
	out := []int{xs[0], ws[0], 2 * xs[2], 2 * xs[3]}
	return tp.ConvTranspose2d(x, w4, out, autograd.ConvParams{Stride: 2, Pad: 1, Alpha: heScale(gain, ws[1]*9, 1)})
}

// downConv is SG's conv2d_downscale2d. A 3x3 conv followed by 2x averaging is exactly a
// 4x4 stride-2 conv whose kernel is the 3x3 one placed at the four offsets and averaged
// (SG's fused form), so this computes that at every resolution: 2.25x fewer multiplies and
// no separate averaging pass, the same function.
func downConv(tp *autograd.Tape, x, w *autograd.Tensor, gain float64) *autograd.Tensor {
	ws := w.Shape()
	w4 := fusedKernel(tp, w)
	return tp.Conv2d(x, w4, autograd.ConvParams{Stride: 2, Pad: 1, Alpha: 0.25 * heScale(gain, ws[1]*9, 1)})
}

func dense(tp *autograd.Tape, x, w, b *autograd.Tensor, gain, lrmul float64, act kernels.ActParams) *autograd.Tensor {
	return tp.Dense(x, w, b, heScale(gain, w.Shape()[1], lrmul), float32(lrmul), act)
}

func resName(res int) string { return fmt.Sprintf("%dx%d", 1<<res, 1<<res) }
