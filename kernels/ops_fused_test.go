package kernels

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// fdCheck compares analytic gradients got[i] (float32, from a kernel) with central finite
// differences of the float64 scalar loss f at up to max randomly chosen indices of x.
// skip reports indices where f is not smooth within h (kinks of lrelu, clamp edges).
func fdCheck(t *testing.T, what string, rng *rand.Rand, f func([]float64) float64, x []float64,
	got []float32, max int, skip func(i int) bool, atol, rtol float64) {
	t.Helper()
	const h = 1e-4
	idx := rng.Perm(len(x))
	if len(idx) > max {
		idx = idx[:max]
	}
	xp := append([]float64(nil), x...)
	for _, i := range idx {
		if skip != nil && skip(i) {
			continue
		}
		xp[i] = x[i] + h
		fp := f(xp)
		xp[i] = x[i] - h
		fm := f(xp)
		xp[i] = x[i]
		want := (fp - fm) / (2 * h)
		if g := float64(got[i]); math.IsNaN(g) || math.Abs(g-want) > atol+rtol*math.Abs(want) {
			t.Fatalf("%s: d/dx[%d] = %g, finite difference %g", what, i, g, want)
		}
	}
}

// wantError checks that err is a *kernels.Error mentioning every string of want.
func wantError(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	var ke *Error
	if !errors.As(err, &ke) {
		t.Fatalf("%s: got %v, want *kernels.Error", what, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not mention %q", what, err, w)
		}
	}
}

// ---- bias + activation ----

func refAct(v float64, p ActParams) float64 {
	if p.Act == ActLReLU && v <= 0 {
		v *= float64(p.Alpha)
	}
	v *= float64(p.Gain)
	if c := float64(p.Clamp); c > 0 {
		v = math.Max(-c, math.Min(c, v))
	}
	return v
}

func refBiasAct(x, b []float64, c, hw int, p ActParams) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		if b != nil {
			v += b[(i/hw)%c]
		}
		y[i] = refAct(v, p)
	}
	return y
}

func TestBiasActForwardAndGradients(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(11, 12))
	shapes := [][]int{{1, 1, 1, 1}, {2, 3, 5, 7}, {3, 13}, {1, 9, 1, 1}, {4, 32, 16, 16}}
	params := []ActParams{
		{Act: ActLinear, Gain: 1},
		{Act: ActLReLU, Alpha: 0.2, Gain: float32(math.Sqrt2)},
		{Act: ActLReLU, Alpha: 0.2, Gain: float32(math.Sqrt2), Clamp: 0.7},
		{Act: ActLinear, Gain: 0.5, Clamp: 0.3},
		{Act: ActLReLU, Alpha: 0.1, Gain: -2},
	}
	for _, shape := range shapes {
		n := Numel(shape)
		c, hw := shape[1], n/(shape[0]*shape[1])
		for pi, p := range params {
			for _, withBias := range []bool{false, true} {
				xh, dyh := randn(rng, n), randn(rng, n)
				x, dy := upload(t, d, xh, shape...), upload(t, d, dyh, shape...)
				var b View
				var bh64 []float64
				if withBias {
					bh := randn(rng, c)
					b, bh64 = upload(t, d, bh, c), to64(bh)
				}
				y := zeros(t, d, shape...)
				if err := d.BiasAct(x, b, y, p); err != nil {
					t.Fatal(err)
				}
				want := refBiasAct(to64(xh), bh64, c, hw, p)
				what := "bias_act " + ShapeString(shape)
				assertClose(t, what, download(t, y), want, 1e-6, 1e-6)

				dx := zeros(t, d, shape...)
				if err := d.BiasActGrad(dy, y, dx, p); err != nil {
					t.Fatal(err)
				}
				dxh := download(t, dx)
				// float64 reference of the derivative, from the pre-activation.
				wantDx := make([]float64, n)
				for i := range wantDx {
					v := float64(xh[i])
					if bh64 != nil {
						v += bh64[(i/hw)%c]
					}
					g := float64(p.Gain)
					if p.Act == ActLReLU && v <= 0 {
						g *= float64(p.Alpha)
					}
					if cl := float64(p.Clamp); cl > 0 && math.Abs(refAct(v, p)) >= cl {
						g = 0
					}
					wantDx[i] = float64(dyh[i]) * g
				}
				assertClose(t, what+" grad", dxh, wantDx, 1e-6, 1e-6)
				// Central differences of L = <dy, f(x)>, away from kinks and clamp edges.
				pre := func(i int) float64 {
					v := float64(xh[i])
					if bh64 != nil {
						v += bh64[(i/hw)%c]
					}
					return v
				}
				skip := func(i int) bool {
					v := pre(i)
					if math.Abs(v) < 1e-3 {
						return true
					}
					cl := float64(p.Clamp)
					return cl > 0 && math.Abs(math.Abs(refAct(v, ActParams{Act: p.Act, Alpha: p.Alpha, Gain: p.Gain}))-cl) < 1e-2
				}
				dy64 := to64(dyh)
				loss := func(xv []float64) float64 {
					yv := refBiasAct(xv, bh64, c, hw, p)
					s := 0.0
					for i := range yv {
						s += yv[i] * dy64[i]
					}
					return s
				}
				fdCheck(t, what+" fd", rng, loss, to64(xh), dxh, 24, skip, 1e-4, 1e-3)
				// Second order: the gradient of <w, dx(dy)> with respect to dy is the op
				// applied to w (dx is linear in dy); check it against differences in dy.
				if pi == 2 && withBias {
					wh := randn(rng, n)
					w := upload(t, d, wh, shape...)
					gw := zeros(t, d, shape...)
					if err := d.BiasActGrad(w, y, gw, p); err != nil {
						t.Fatal(err)
					}
					w64 := to64(wh)
					inner := func(dyv []float64) float64 {
						s := 0.0
						for i := range dyv {
							s += w64[i] * dyv[i] * wantDx[i] / nonzero(float64(dyh[i]))
						}
						return s
					}
					fdCheck(t, what+" second order", rng, inner, dy64, download(t, gw), 24, nil, 1e-4, 1e-3)
				}
			}
		}
	}
}

func nonzero(v float64) float64 {
	if v == 0 {
		return 1
	}
	return v
}

func TestBiasActInPlaceAndErrors(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(13, 14))
	xh := randn(rng, 2*5*3*3)
	x := upload(t, d, xh, 2, 5, 3, 3)
	p := ActParams{Act: ActLReLU, Alpha: 0.2, Gain: 2}
	if err := d.BiasAct(x, View{}, x, p); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "bias_act in place", download(t, x), refBiasAct(to64(xh), nil, 5, 9, p), 1e-6, 1e-6)

	bad := upload(t, d, make([]float32, 4), 4)
	wantError(t, "bias of wrong length", d.BiasAct(x, bad, x, p), "bias_act", "[4]", "[2,5,3,3]")
	y3 := zeros(t, d, 2, 5, 9)
	wantError(t, "3-D x", d.BiasAct(y3, View{}, y3, p), "bias_act", "[2,5,9]")
	yOther := zeros(t, d, 2, 5, 3, 2)
	wantError(t, "y shape", d.BiasAct(x, View{}, yOther, p), "bias_act", "[2,5,3,3]", "[2,5,3,2]")
	wantError(t, "unknown act", d.BiasAct(x, View{}, x, ActParams{Act: 7, Gain: 1}), "bias_act", "activation")
	wantError(t, "negative slope", d.BiasAct(x, View{}, x, ActParams{Act: ActLReLU, Alpha: -1, Gain: 1}), "bias_act", "slope")
	wantError(t, "grad shapes", d.BiasActGrad(x, x, yOther, p), "bias_act_grad", "[2,5,3,2]")
	tr, _ := x.Permute(0, 1, 3, 2)
	if err := d.BiasAct(x, View{}, tr, p); err == nil || !strings.Contains(err.Error(), "dense") {
		t.Fatalf("strided y: got %v, want a layout error", err)
	}
}

// ---- AdaIN ----

func refAdaIN(x, s, b []float64, n, c, hw int, eps float64) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < n*c; r++ {
		row := x[r*hw : (r+1)*hw]
		m := 0.0
		for _, v := range row {
			m += v
		}
		m /= float64(hw)
		vr := 0.0
		for _, v := range row {
			vr += (v - m) * (v - m)
		}
		rs := 1 / math.Sqrt(vr/float64(hw)+eps)
		sc, bi := 1.0, 0.0
		if s != nil {
			sc += s[r]
		}
		if b != nil {
			bi = b[r]
		}
		for i, v := range row {
			y[r*hw+i] = (v-m)*rs*sc + bi
		}
	}
	return y
}

func TestAdaINForwardAndGradients(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(21, 22))
	const eps = 1e-8
	shapes := [][]int{{1, 1, 1, 1}, {2, 3, 5, 7}, {1, 9, 1, 2}, {3, 5, 4, 4}, {4, 16, 32, 32}}
	for _, shape := range shapes {
		n, c := shape[0], shape[1]
		hw := shape[2] * shape[3]
		for mode := 0; mode < 3; mode++ { // 0: s and b, 1: neither, 2: s only
			what := "adain " + ShapeString(shape)
			xh, dyh := randn(rng, n*c*hw), randn(rng, n*c*hw)
			for i := range xh { // an offset, so that a sloppy mean loses accuracy
				xh[i] = 3 + xh[i]
			}
			x, dy := upload(t, d, xh, shape...), upload(t, d, dyh, shape...)
			var s, b View
			var s64, b64 []float64
			if mode != 1 {
				sh := randn(rng, n*c)
				s, s64 = upload(t, d, sh, n, c), to64(sh)
			}
			if mode == 0 {
				bh := randn(rng, n*c)
				b, b64 = upload(t, d, bh, n, c), to64(bh)
			}
			y, xn, rstd := zeros(t, d, shape...), zeros(t, d, shape...), zeros(t, d, n, c)
			if err := d.AdaIN(x, s, b, y, xn, rstd, eps); err != nil {
				t.Fatal(err)
			}
			x64 := to64(xh)
			assertClose(t, what, download(t, y), refAdaIN(x64, s64, b64, n, c, hw, eps), 2e-5, 2e-5)
			assertClose(t, what+" xn", download(t, xn), refAdaIN(x64, nil, nil, n, c, hw, eps), 2e-5, 2e-5)

			dx := zeros(t, d, shape...)
			var ds, db View
			if mode != 1 {
				ds, db = zeros(t, d, n, c), zeros(t, d, n, c)
			}
			if err := d.AdaINBwd(dy, xn, rstd, s, dx, ds, db); err != nil {
				t.Fatal(err)
			}
			dy64 := to64(dyh)
			dxh := download(t, dx)
			// float64 reference gradient: dx = rstd (1+s) (dy - mean dy - xn mean(dy xn)).
			xn64 := refAdaIN(x64, nil, nil, n, c, hw, eps)
			wantDx, wantDs, wantDb := make([]float64, len(x64)), make([]float64, n*c), make([]float64, n*c)
			for r := 0; r < n*c; r++ {
				m, vr := 0.0, 0.0
				for i := 0; i < hw; i++ {
					m += x64[r*hw+i]
				}
				m /= float64(hw)
				for i := 0; i < hw; i++ {
					vr += (x64[r*hw+i] - m) * (x64[r*hw+i] - m)
				}
				rs := 1 / math.Sqrt(vr/float64(hw)+eps)
				sg, sgn := 0.0, 0.0
				for i := 0; i < hw; i++ {
					sg += dy64[r*hw+i]
					sgn += dy64[r*hw+i] * xn64[r*hw+i]
				}
				wantDs[r], wantDb[r] = sgn, sg
				sc := 1.0
				if s64 != nil {
					sc += s64[r]
				}
				for i := 0; i < hw; i++ {
					wantDx[r*hw+i] = rs * sc * (dy64[r*hw+i] - sg/float64(hw) - xn64[r*hw+i]*sgn/float64(hw))
				}
			}
			assertClose(t, what+" dx", dxh, wantDx, 1e-4, 1e-4)
			loss := func(xv, sv, bv []float64) float64 {
				yv := refAdaIN(xv, sv, bv, n, c, hw, eps)
				acc := 0.0
				for i := range yv {
					acc += yv[i] * dy64[i]
				}
				return acc
			}
			fdCheck(t, what+" fd dx", rng, func(v []float64) float64 { return loss(v, s64, b64) }, x64, dxh, 16, nil, 2e-3, 2e-3)
			if mode != 1 {
				dsh, dbh := download(t, ds), download(t, db)
				assertClose(t, what+" ds", dsh, wantDs, 1e-4, 1e-4)
				assertClose(t, what+" db", dbh, wantDb, 1e-4, 1e-4)
				fdCheck(t, what+" fd ds", rng, func(v []float64) float64 { return loss(x64, v, b64) }, s64, dsh, 8, nil, 1e-3, 1e-3)
				if mode == 0 {
					fdCheck(t, what+" fd db", rng, func(v []float64) float64 { return loss(x64, s64, v) }, b64, dbh, 8, nil, 1e-3, 1e-3)
				}
			}
		}
	}
}

func TestAdaINErrors(t *testing.T) {
	d := newDevice(t)
	x := upload(t, d, make([]float32, 2*3*4*4), 2, 3, 4, 4)
	y, xn := zeros(t, d, 2, 3, 4, 4), zeros(t, d, 2, 3, 4, 4)
	rstd := zeros(t, d, 2, 3)
	badS := zeros(t, d, 3, 2)
	wantError(t, "style shape", d.AdaIN(x, badS, View{}, y, xn, rstd, 1e-8), "adain", "s", "[3,2]", "[2,3,4,4]")
	wantError(t, "rstd missing", d.AdaIN(x, View{}, View{}, y, xn, View{}, 1e-8), "adain", "rstd")
	wantError(t, "negative eps", d.AdaIN(x, View{}, View{}, y, xn, rstd, -1), "adain", "eps")
	small := zeros(t, d, 2, 3, 2, 2)
	wantError(t, "dx shape", d.AdaINBwd(x, xn, rstd, View{}, small, View{}, View{}), "adain_bwd", "dx", "[2,3,2,2]")
	x2 := upload(t, d, make([]float32, 6), 2, 3)
	wantError(t, "2-D x", d.AdaIN(x2, View{}, View{}, x2, x2, rstd, 1e-8), "adain", "[2,3]", "[N,C,H,W]")
}
