package kernels

/*
#include "gantry_kernels.h"
*/
import "C"

// Activation selects the nonlinearity of BiasAct.
type Activation int

// Activations.
const (
	ActLinear Activation = C.GK_ACT_LINEAR
	ActLReLU  Activation = C.GK_ACT_LRELU
)

// ActParams configures BiasAct and BiasActGrad: y = clamp(act(x+b)*Gain, -Clamp, Clamp).
// Alpha is the lrelu slope (StyleGAN: 0.2, with Gain sqrt(2)); Clamp <= 0 disables clamping.
type ActParams struct {
	Act   Activation
	Alpha float32
	Gain  float32
	Clamp float32
}

func (p ActParams) c() C.gk_act_params {
	return C.gk_act_params{act: C.gk_act(p.Act), alpha: C.float(p.Alpha), gain: C.float(p.Gain), clamp: C.float(p.Clamp)}
}

// BiasAct computes y = clamp(act(x + b[c]) * gain) for x and y [N,C] or [N,C,H,W], dense.
// b is [C], or View{} for no bias. y may be x.
func (d *Device) BiasAct(x, b, y View, p ActParams) error {
	cp := p.c()
	return d.run("bias_act", []operand{in("x", x), opt("b", b), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_bias_act(c, t[0], t[1], t[2], &cp)
	})
}

// BiasActGrad computes dx = dy * act'(x+b) * gain, and 0 where the forward output y was
// clamped, reading the derivative from y. It is linear in dy with a coefficient that is
// piecewise constant in x, so it is also its own gradient with respect to dy (the
// second-order gradient R1 needs); its gradient with respect to y is zero.
func (d *Device) BiasActGrad(dy, y, dx View, p ActParams) error {
	cp := p.c()
	return d.run("bias_act_grad", []operand{in("dy", dy), in("y", y), in("dx", dx)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_bias_act_grad(c, t[0], t[1], t[2], &cp)
	})
}

// AdaIN normalises each (n, c) image of x [N,C,H,W] over H and W with eps and modulates it:
// y = xn*(1+s) + b, with s and b [N,C] (either View{} for none). It saves xn (like x) and
// rstd [N,C] = 1/sqrt(var+eps) for AdaINBwd. StyleGAN uses eps 1e-8.
func (d *Device) AdaIN(x, s, b, y, xn, rstd View, eps float32) error {
	return d.run("adain", []operand{in("x", x), opt("s", s), opt("b", b), in("y", y), in("xn", xn), in("rstd", rstd)},
		func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
			return C.gk_adain(c, t[0], t[1], t[2], t[3], t[4], t[5], C.float(eps))
		})
}

// AdaINBwd computes the gradients of AdaIN from dy and the saved xn and rstd: dx (required),
// ds and db ([N,C], either View{} when not needed). s is the forward's scale (View{} if none).
func (d *Device) AdaINBwd(dy, xn, rstd, s, dx, ds, db View) error {
	return d.run("adain_bwd", []operand{in("dy", dy), in("xn", xn), in("rstd", rstd), opt("s", s), in("dx", dx), opt("ds", ds), opt("db", db)},
		func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
			return C.gk_adain_bwd(c, t[0], t[1], t[2], t[3], t[4], t[5], t[6])
		})
}

// Noise adds per-pixel noise with a per-channel weight: y = x + w[c]*noise[n,0,h,w], with
// x and y [N,C,H,W], noise [N,1,H,W], w [C]. y may be x. The gradient with respect to x is
// dy itself; with respect to w it is NoiseBwdWeight.
func (d *Device) Noise(x, noise, w, y View) error {
	return d.run("noise", []operand{in("x", x), in("noise", noise), in("w", w), in("y", y)},
		func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
			return C.gk_noise(c, t[0], t[1], t[2], t[3])
		})
}

// NoiseBwdWeight computes dw[c] = alpha * sum_{n,h,w} dy*noise + beta*dw[c].
func (d *Device) NoiseBwdWeight(dy, noise, dw View, alpha, beta float32) error {
	return d.run("noise_bwd_weight", []operand{in("dy", dy), in("noise", noise), in("dw", dw)},
		func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
			return C.gk_noise_bwd_weight(c, t[0], t[1], t[2], C.float(alpha), C.float(beta))
		})
}

// PixelNorm computes y = x / sqrt(mean over dim 1 of x^2 + eps) for x [N,C] or [N,C,H,W].
// StyleGAN uses eps 1e-8.
func (d *Device) PixelNorm(x, y View, eps float32) error {
	return d.run("pixel_norm", []operand{in("x", x), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_pixel_norm(c, t[0], t[1], C.float(eps))
	})
}

// PixelNormBwd computes the gradient of PixelNorm with respect to x.
func (d *Device) PixelNormBwd(dy, x, dx View, eps float32) error {
	return d.run("pixel_norm_bwd", []operand{in("dy", dy), in("x", x), in("dx", dx)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_pixel_norm_bwd(c, t[0], t[1], t[2], C.float(eps))
	})
}

// MinibatchStddev appends to x [N,C,H,W] the minibatch standard deviation features of
// StyleGAN: y [N,C+features,H,W]. With G = min(group, N), which must divide N, sample n is
// in group n % (N/G); each of the features channel slices gets the mean over (C/features, H,
// W) of sqrt(var over the group + eps). StyleGAN uses group 4, features 1, eps 1e-8.
func (d *Device) MinibatchStddev(x, y View, group, features int, eps float32) error {
	return d.run("mbstd", []operand{in("x", x), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_mbstd(c, t[0], t[1], C.int32_t(group), C.int32_t(features), C.float(eps))
	})
}

// MinibatchStddevBwd computes dx from dy [N,C+features,H,W] and the forward input x.
func (d *Device) MinibatchStddevBwd(dy, x, dx View, group, features int, eps float32) error {
	return d.run("mbstd_bwd", []operand{in("dy", dy), in("x", x), in("dx", dx)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_mbstd_bwd(c, t[0], t[1], t[2], C.int32_t(group), C.int32_t(features), C.float(eps))
	})
}

// AdamParams configures one Adam step. BC1 = 1 - Beta1^t and BC2 = 1 - Beta2^t are the bias
// corrections of step t (1 disables them). StyleGAN: Beta1 0, Beta2 0.99, Eps 1e-8.
type AdamParams struct {
	LR, Beta1, Beta2, Eps, BC1, BC2 float32
}

// Adam performs one fused Adam step in place on the dense views p, m, v with gradient g,
// all of the same length:
//
//	m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m/bc1) / (sqrt(v/bc2) + eps)
func (d *Device) Adam(p, g, m, v View, ap AdamParams) error {
	cp := C.gk_adam_params{lr: C.float(ap.LR), beta1: C.float(ap.Beta1), beta2: C.float(ap.Beta2),
		eps: C.float(ap.Eps), bc1: C.float(ap.BC1), bc2: C.float(ap.BC2)}
	return d.run("adam", []operand{in("p", p), in("g", g), in("m", m), in("v", v)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_adam(c, t[0], t[1], t[2], t[3], &cp)
	})
}

// Sanitize replaces NaN by 0 and +-Inf by +-limit in place in the dense view x, and reports
// how many elements were not finite (ADA uses limit 1e5 on gradients).
func (d *Device) Sanitize(x View, limit float32) (nonfinite int64, err error) {
	var n C.int64_t
	err = d.run("sanitize", []operand{in("x", x)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_sanitize(c, t[0], C.float(limit), &n)
	})
	return int64(n), err
}

// Randn fills the dense view y with N(mean, std^2) samples. Element i is the sample for
// counter offset+i of stream seed (Philox4x32-10, Box-Muller), so the result depends on
// neither the thread count nor the backend, and a long sequence can be produced in pieces.
func (d *Device) Randn(y View, seed, offset uint64, mean, std float32) error {
	return d.run("randn", []operand{in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_randn(c, t[0], C.uint64_t(seed), C.uint64_t(offset), C.float(mean), C.float(std))
	})
}
