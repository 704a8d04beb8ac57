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
