package autograd

import (
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
)

// creating reports whether ops run now are being recorded: inside a create-graph backward
// pass this is what decides between a fused backward kernel and a differentiable composite.
func (tp *Tape) creating() bool { return tp.noGrad == 0 }

// ConvParams configures Conv2d: stride 1 or 2, symmetric zero padding, and Alpha, the
// runtime weight scale of the equalised learning rate.
type ConvParams struct {
	Stride int
	Pad    int
	Alpha  float32
}

func (p ConvParams) k() kernels.ConvParams {
	return kernels.ConvParams{Stride: p.Stride, Pad: p.Pad, Alpha: p.Alpha}
}

// Conv2d returns alpha * conv2d(x, w): x [N,Cin,H,W], w [Cout,Cin,k,k].
func (tp *Tape) Conv2d(x, w *Tensor, p ConvParams) *Tensor {
	if !tp.live("conv2d", x, w) {
		return tp.dead
	}
	x, w = tp.contiguous(x), tp.contiguous(w)
	xs, ws := x.Shape(), w.Shape()
	if len(xs) != 4 || len(ws) != 4 || xs[1] != ws[1] || ws[2] != ws[3] || p.Stride < 1 {
		return tp.fail(fmt.Errorf("autograd: conv2d: x %s and w %s do not fit (stride %d pad %d)", x, w, p.Stride, p.Pad))
	}
	ho := (xs[2]+2*p.Pad-ws[2])/p.Stride + 1
	wo := (xs[3]+2*p.Pad-ws[3])/p.Stride + 1
	if ho < 1 || wo < 1 {
		return tp.fail(fmt.Errorf("autograd: conv2d: x %s with w %s gives an empty output", x, w))
	}
	y := tp.alloc(xs[0], ws[0], ho, wo)
	if tp.err != nil || !tp.check(tp.dev.Conv2d(x.V, w.V, y.V, p.k())) {
		return tp.dead
	}
	return tp.record("conv2d", y, func(g *Tensor, needs []bool) []*Tensor {
		var gx, gw *Tensor
		if needs[0] {
			gx = tp.ConvTranspose2d(g, w, xs, p)
		}
		if needs[1] {
			gw = tp.conv2dFilterGrad(x, g, ws, p)
		}
		return []*Tensor{gx, gw}
	}, x, w)
}

// ConvTranspose2d returns alpha * conv2d^T(dy, w) with output shape outShape: the gradient
// of Conv2d with respect to its input, and the fractionally strided convolution of SG's
// fused upsampling (w is [Cin_of_dy, Cout, k, k] read as the forward conv's [Cout, Cin]).
func (tp *Tape) ConvTranspose2d(dy, w *Tensor, outShape []int, p ConvParams) *Tensor {
	if !tp.live("conv_transpose2d", dy, w) {
		return tp.dead
	}
	dy, w = tp.contiguous(dy), tp.contiguous(w)
	if len(outShape) != 4 {
		return tp.fail(fmt.Errorf("autograd: conv_transpose2d: output shape %v is not NCHW", outShape))
	}
	dx := tp.alloc(outShape...)
	if tp.err != nil || !tp.check(tp.dev.Conv2dBwdData(dy.V, w.V, dx.V, p.k())) {
		return tp.dead
	}
	ws := w.Shape()
	return tp.record("conv_transpose2d", dx, func(g *Tensor, needs []bool) []*Tensor {
		var gdy, gw *Tensor
		if needs[0] {
			gdy = tp.Conv2d(g, w, p)
		}
		if needs[1] {
			gw = tp.conv2dFilterGrad(g, dy, ws, p)
		}
		return []*Tensor{gdy, gw}
	}, dy, w)
}

// conv2dFilterGrad returns alpha * d<conv2d(x, w), dy>/dw, of shape wShape.
func (tp *Tape) conv2dFilterGrad(x, dy *Tensor, wShape []int, p ConvParams) *Tensor {
	if !tp.live("conv2d_filter_grad", x, dy) {
		return tp.dead
	}
	x, dy = tp.contiguous(x), tp.contiguous(dy)
	dw := tp.alloc(wShape...)
	if tp.err != nil || !tp.check(tp.dev.Conv2dBwdFilter(x.V, dy.V, dw.V, p.k())) {
		return tp.dead
	}
	xs := x.Shape()
	return tp.record("conv2d_filter_grad", dw, func(g *Tensor, needs []bool) []*Tensor {
		var gx, gdy *Tensor
		if needs[0] {
			gx = tp.ConvTranspose2d(dy, g, xs, p)
		}
		if needs[1] {
			gdy = tp.Conv2d(x, g, p)
		}
		return []*Tensor{gx, gdy}
	}, x, dy)
}

// FIR resamples every (n, c) plane: zero-insert upsampling, padding, a separable filter
// (taps, outer product times gain) and downsampling, in one op. Its gradient is a FIR with
// up and down swapped and the filter flipped.
func (tp *Tape) FIR(x *Tensor, taps []float32, p kernels.FIRParams) *Tensor {
	if !tp.live("fir", x) {
		return tp.dead
	}
	x = tp.contiguous(x)
	xs := x.Shape()
	if len(xs) != 4 {
		return tp.fail(fmt.Errorf("autograd: fir: x %s is not NCHW", x))
	}
	ho, wo, err := kernels.FIROutSize(xs[2], xs[3], len(taps), p)
	if err != nil {
		return tp.fail(fmt.Errorf("autograd: fir: x %s: %w", x, err))
	}
	gp, err := kernels.FIRGradParams(xs[2], xs[3], len(taps), p)
	if err != nil {
		return tp.fail(fmt.Errorf("autograd: fir: x %s: %w", x, err))
	}
	y := tp.alloc(xs[0], xs[1], ho, wo)
	if tp.err != nil || !tp.check(tp.dev.FIR(x.V, y.V, taps, p)) {
		return tp.dead
	}
	return tp.record("fir", y, func(g *Tensor, _ []bool) []*Tensor {
		return []*Tensor{tp.FIR(g, taps, gp)}
	}, x)
}

// BiasAct returns clamp(act(x + b) * gain): the fused bias and activation of every layer.
// b ([C], along dim 1) may be nil. Its gradient is a BiasActGrad, which is its own
// second-order gradient.
func (tp *Tape) BiasAct(x, b *Tensor, p kernels.ActParams) *Tensor {
	if !tp.live("bias_act", x) || (b != nil && !tp.live("bias_act", b)) {
		return tp.dead
	}
	x = tp.contiguous(x)
	var bv kernels.View
	inputs := []*Tensor{x}
	if b != nil {
		b = tp.contiguous(b)
		bv = b.V
		inputs = append(inputs, b)
	}
	y := tp.alloc(x.Shape()...)
	if tp.err != nil || !tp.check(tp.dev.BiasAct(x.V, bv, y.V, p)) {
		return tp.dead
	}
	return tp.record("bias_act", y, func(g *Tensor, needs []bool) []*Tensor {
		gx := tp.biasActGrad(g, y, p)
		out := []*Tensor{gx}
		if b != nil {
			var gb *Tensor
			if needs[1] {
				axes := []int{0}
				for i := 2; i < len(x.Shape()); i++ {
					axes = append(axes, i)
				}
				gb = tp.Reshape(tp.Sum(gx, axes...), b.Shape()...)
			}
			out = append(out, gb)
		}
		return out
	}, inputs...)
}

// biasActGrad returns dy * act'(y) * gain; linear in dy, and constant in y almost
// everywhere, so its own gradient is itself and nothing flows to y.
func (tp *Tape) biasActGrad(dy, y *Tensor, p kernels.ActParams) *Tensor {
	if !tp.live("bias_act_grad", dy, y) {
		return tp.dead
	}
	dy, y = tp.contiguous(dy), tp.contiguous(y)
	dx := tp.alloc(y.Shape()...)
	if tp.err != nil || !tp.check(tp.dev.BiasActGrad(dy.V, y.V, dx.V, p)) {
		return tp.dead
	}
	return tp.record("bias_act_grad", dx, func(g *Tensor, needs []bool) []*Tensor {
		return []*Tensor{tp.biasActGrad(g, y, p), nil}
	}, dy, y)
}

// Dense returns act(x w^T * gain/sqrt(in) * lrmul + b * lrmul): the equalised-learning-rate
// fully connected layer, x [N,in], w [out,in], b [out] (nil for none).
func (tp *Tape) Dense(x, w, b *Tensor, weightScale, lrmul float32, act kernels.ActParams) *Tensor {
	if !tp.live("dense", x, w) {
		return tp.dead
	}
	y := tp.MatMul(x, w, false, true, weightScale)
	if b != nil && lrmul != 1 {
		b = tp.Scale(b, lrmul, 0)
	}
	return tp.BiasAct(y, b, act)
}

// AdaIN returns instance_norm(x) * (1 + s) + b with styles s, b [N,C] (either may be nil).
// Its backward uses the fused kernel; a second-order gradient through AdaIN is not
// provided (R1 differentiates D, which has none) and asking for one is an error.
func (tp *Tape) AdaIN(x, s, b *Tensor, eps float32) *Tensor {
	if !tp.live("adain", x) {
		return tp.dead
	}
	x = tp.contiguous(x)
	xs := x.Shape()
	if len(xs) != 4 {
		return tp.fail(fmt.Errorf("autograd: adain: x %s is not NCHW", x))
	}
	inputs := []*Tensor{x}
	var sv, bv kernels.View
	for _, st := range []*Tensor{s, b} {
		if st != nil {
			if !tp.live("adain", st) {
				return tp.dead
			}
		}
	}
	if s != nil {
		s = tp.contiguous(s)
		sv = s.V
	}
	if b != nil {
		b = tp.contiguous(b)
		bv = b.V
	}
	inputs = append(inputs, s, b)
	y := tp.alloc(xs...)
	xn := tp.alloc(xs...)
	rstd := tp.alloc(xs[0], xs[1])
	if tp.err != nil || !tp.check(tp.dev.AdaIN(x.V, sv, bv, y.V, xn.V, rstd.V, eps)) {
		return tp.dead
	}
	return tp.record("adain", y, func(g *Tensor, needs []bool) []*Tensor {
		if tp.creating() {
			tp.fail(fmt.Errorf("autograd: adain: second-order gradient is not implemented"))
			return []*Tensor{nil, nil, nil}
		}
		g = tp.contiguous(g)
		dx := tp.alloc(xs...)
		var ds, db *Tensor
		var dsv, dbv kernels.View
		if s != nil && needs[1] {
			ds = tp.alloc(s.Shape()...)
			dsv = ds.V
		}
		if b != nil && needs[2] {
			db = tp.alloc(b.Shape()...)
			dbv = db.V
		}
		if tp.err != nil {
			return []*Tensor{nil, nil, nil}
		}
		tp.check(tp.dev.AdaINBwd(g.V, xn.V, rstd.V, sv, dx.V, dsv, dbv))
		return []*Tensor{dx, ds, db}
	}, inputs...)
}

// Noise returns x + w[c] * noise[n,0,h,w]: per-pixel noise with a learned per-channel
// weight. noise is a constant input.
func (tp *Tape) Noise(x, noise, w *Tensor) *Tensor {
	if !tp.live("noise", x, noise, w) {
		return tp.dead
	}
	x, noise, w = tp.contiguous(x), tp.contiguous(noise), tp.contiguous(w)
	y := tp.alloc(x.Shape()...)
	if tp.err != nil || !tp.check(tp.dev.Noise(x.V, noise.V, w.V, y.V)) {
		return tp.dead
	}
	return tp.record("noise", y, func(g *Tensor, needs []bool) []*Tensor {
		var gw *Tensor
		if needs[2] {
			if tp.creating() {
				c := x.Shape()[1]
				gw = tp.Reshape(tp.Sum(tp.Mul(g, noise), 0, 2, 3), c)
			} else {
				g = tp.contiguous(g)
				gw = tp.alloc(w.Shape()...)
				if tp.err == nil {
					tp.check(tp.dev.NoiseBwdWeight(g.V, noise.V, gw.V, 1, 0))
				}
			}
		}
		return []*Tensor{g, nil, gw}
	}, x, noise, w)
}

// PixelNorm returns x / sqrt(mean_c x^2 + eps) over dim 1.
func (tp *Tape) PixelNorm(x *Tensor, eps float32) *Tensor {
	if !tp.live("pixel_norm", x) {
		return tp.dead
	}
	x = tp.contiguous(x)
	y := tp.alloc(x.Shape()...)
	if tp.err != nil || !tp.check(tp.dev.PixelNorm(x.V, y.V, eps)) {
		return tp.dead
	}
	return tp.record("pixel_norm", y, func(g *Tensor, _ []bool) []*Tensor {
		if tp.creating() {
			// Differentiable composite: y = x * r, r = (mean x^2 + eps)^-1/2;
			// dx = r*g - x * r^3 * mean(g*x).
			r := tp.Div(tp.Full(1, 1), tp.Sqrt(tp.Scale(tp.Mean(tp.Square(x), 1), 1, eps)))
			gx := tp.Mul(tp.Mean(tp.Mul(g, x), 1), tp.Mul(r, tp.Square(r)))
			return []*Tensor{tp.Sub(tp.Mul(g, r), tp.Mul(x, gx))}
		}
		g = tp.contiguous(g)
		dx := tp.alloc(x.Shape()...)
		if tp.err == nil {
			tp.check(tp.dev.PixelNormBwd(g.V, x.V, dx.V, eps))
		}
		return []*Tensor{dx}
	}, x)
}

// MinibatchStddev appends features channels holding the mean standard deviation of x over
// groups of min(group, N) samples (SG's minibatch_stddev_layer).
func (tp *Tape) MinibatchStddev(x *Tensor, group, features int, eps float32) *Tensor {
	if !tp.live("mbstd", x) {
		return tp.dead
	}
	x = tp.contiguous(x)
	xs := x.Shape()
	if len(xs) != 4 || group < 1 || features < 1 {
		return tp.fail(fmt.Errorf("autograd: mbstd: x %s group %d features %d", x, group, features))
	}
	y := tp.alloc(xs[0], xs[1]+features, xs[2], xs[3])
	if tp.err != nil || !tp.check(tp.dev.MinibatchStddev(x.V, y.V, group, features, eps)) {
		return tp.dead
	}
	return tp.record("mbstd", y, func(g *Tensor, _ []bool) []*Tensor {
		if tp.creating() {
			return []*Tensor{tp.mbstdGradComposite(g, x, group, features, eps)}
		}
		g = tp.contiguous(g)
		dx := tp.alloc(xs...)
		if tp.err == nil {
			tp.check(tp.dev.MinibatchStddevBwd(g.V, x.V, dx.V, group, features, eps))
		}
		return []*Tensor{dx}
	}, x)
}

// mbstdGradComposite is mbstd's vector-Jacobian product written with differentiable ops,
// used when the backward pass is itself recorded (R1's double backward).
func (tp *Tape) mbstdGradComposite(gy, x *Tensor, group, features int, eps float32) *Tensor {
	xs := x.Shape()
	n, c, h, w := xs[0], xs[1], xs[2], xs[3]
	gsz := min(group, n)
	m := n / gsz
	f := features
	k := c / f * h * w
	xr := tp.Reshape(x, gsz, m, f, k)
	d := tp.Sub(xr, tp.Mean(xr, 0))
	s := tp.Sqrt(tp.Scale(tp.Mean(tp.Square(d), 0), 1, eps)) // [1,M,F,K]
	// Upstream gradient of the appended channels, summed over the group and the pixels.
	ge := tp.Sum(tp.Slice(gy, 1, c, c+f), 2, 3)  // [N,F,1,1]
	ge = tp.Sum(tp.Reshape(ge, gsz, m, f, 1), 0) // [1,M,F,1]
	gs := tp.Scale(tp.Div(tp.Expand(ge, 1, m, f, k), s), 1/float32(2*k), 0)
	gd := tp.Scale(tp.Mul(tp.Expand(gs, gsz, m, f, k), d), 2/float32(gsz), 0)
	gx := tp.Sub(gd, tp.Mean(gd, 0))
	return tp.Add(tp.Slice(gy, 1, 0, c), tp.Reshape(gx, n, c, h, w))
}

// Pad places x into zeros with before/after elements added along dim.
func (tp *Tape) Pad(x *Tensor, dim, before, after int) *Tensor {
	if !tp.live("pad", x) {
		return tp.dead
	}
	shape := append([]int(nil), x.Shape()...)
	if dim < 0 || dim >= len(shape) || before < 0 || after < 0 {
		return tp.fail(fmt.Errorf("autograd: pad: dim %d (%d, %d) of %s", dim, before, after, x))
	}
	shape[dim] += before + after
	return tp.unslice(x, shape, dim, before)
}

// Permute reorders dimensions (a view, no copy): out.Shape[i] = x.Shape[perm[i]].
func (tp *Tape) Permute(x *Tensor, perm ...int) *Tensor {
	if !tp.live("permute", x) {
		return tp.dead
	}
	v, err := x.V.Permute(perm...)
	if err != nil {
		return tp.fail(err)
	}
	inv := make([]int, len(perm))
	for i, p := range perm {
		inv[p] = i
	}
	y := &Tensor{V: v, tape: tp}
	return tp.record("permute", y, func(g *Tensor, _ []bool) []*Tensor {
		return []*Tensor{tp.Permute(g, inv...)}
	}, x)
}

// Flip reverses the listed dimensions (a view with negative strides, no copy); its
// gradient is the same flip of the incoming gradient.
func (tp *Tape) Flip(x *Tensor, dims ...int) *Tensor {
	if !tp.live("flip", x) {
		return tp.dead
	}
	v, err := x.V.Flip(dims...)
	if err != nil {
		return tp.fail(fmt.Errorf("autograd: %w", err))
	}
	y := &Tensor{V: v, tape: tp}
	return tp.record("flip", y, func(g *Tensor, _ []bool) []*Tensor {
		return []*Tensor{tp.Flip(g, dims...)}
	}, x)
}
