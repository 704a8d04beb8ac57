package kernels

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

type convCase struct {
	n, cin, h, w, cout, k, s, p int
}

func (c convCase) String() string {
	return fmt.Sprintf("n%d_cin%d_%dx%d_cout%d_k%d_s%d_p%d", c.n, c.cin, c.h, c.w, c.cout, c.k, c.s, c.p)
}

func (c convCase) out() (int, int) {
	return (c.h+2*c.p-c.k)/c.s + 1, (c.w+2*c.p-c.k)/c.s + 1
}

// convCases covers batch 1, 1x1 images, pointwise convs to few channels (toRGB) and to
// many, channel counts that are not multiples of 8, k 1/3/4, stride 1/2, pads larger than
// k-1 (the col2im path at stride 1), batched GEMM chunks with a remainder (16x16: 8 samples
// per chunk, 11 per thread), and same-size convs of a wide image (48x48: one sample per
// GEMM, shifted GEMMs forward and for the data gradient).
var convCases = []convCase{
	{1, 1, 1, 1, 1, 1, 1, 0},
	{2, 3, 5, 7, 5, 3, 1, 1},
	{3, 9, 8, 8, 6, 4, 2, 1},
	{1, 5, 7, 6, 3, 3, 2, 1},
	{2, 10, 1, 1, 4, 3, 1, 1},
	{5, 12, 4, 4, 7, 1, 1, 0},
	{2, 3, 5, 5, 2, 1, 2, 0},
	{2, 3, 3, 4, 2, 1, 1, 1},
	{22, 3, 16, 16, 4, 3, 1, 1}, // 2 threads x 11 samples in chunks of 8 + 3
	{2, 2, 48, 48, 3, 3, 1, 1},
	{2, 4, 9, 9, 3, 4, 2, 1},
	{3, 5, 6, 6, 10, 1, 1, 0},  // pointwise through BLAS (more than 8 outputs)
	{40, 4, 3, 3, 12, 1, 1, 0}, // ... with 20 samples in one GEMM per thread
	{2, 16, 5, 3, 3, 1, 1, 0},  // pointwise to few channels (toRGB loops)
	// 3x3 stride-1 pad-1 with >= 16 channels: Winograd F(2x2,3x3), odd sizes (a ragged
	// last tile), 1-pixel rows and columns, several chunks per thread (5 samples at 16x16
	// in chunks of 8 tiles... of 64: 8 samples) and a thread without samples' share.
	{3, 17, 7, 5, 19, 3, 1, 1},
	{2, 16, 1, 3, 16, 3, 1, 1},
	{4, 20, 6, 1, 16, 3, 1, 1},
	{21, 16, 16, 16, 18, 3, 1, 1},
	{2, 16, 32, 32, 24, 3, 1, 1},
	// 4x4 stride-2 pad-1 with >= 16 channels and even sizes: polyphase Winograd F(2x2,2x2),
	// an odd number of output rows/columns (a half-used last tile), a 2x2 input, several
	// chunks per thread.
	{3, 17, 6, 10, 19, 4, 2, 1},
	{2, 16, 2, 2, 16, 4, 2, 1},
	{4, 16, 8, 4, 20, 4, 2, 1},
	{19, 16, 16, 16, 16, 4, 2, 1},
}

// refConv is the float64 forward: alpha*conv(x, w) + beta*y0.
func refConv(c convCase, x, w, y0 []float32, alpha, beta float64) []float64 {
	ho, wo := c.out()
	y := make([]float64, c.n*c.cout*ho*wo)
	for n := 0; n < c.n; n++ {
		for co := 0; co < c.cout; co++ {
			for oy := 0; oy < ho; oy++ {
				for ox := 0; ox < wo; ox++ {
					s := 0.0
					for ci := 0; ci < c.cin; ci++ {
						for ky := 0; ky < c.k; ky++ {
							iy := oy*c.s - c.p + ky
							if iy < 0 || iy >= c.h {
								continue
							}
							for kx := 0; kx < c.k; kx++ {
								ix := ox*c.s - c.p + kx
								if ix < 0 || ix >= c.w {
									continue
								}
								s += float64(w[((co*c.cin+ci)*c.k+ky)*c.k+kx]) * float64(x[((n*c.cin+ci)*c.h+iy)*c.w+ix])
							}
						}
					}
					i := ((n*c.cout+co)*ho+oy)*wo + ox
					y[i] = alpha * s
					if beta != 0 {
						y[i] += beta * float64(y0[i])
					}
				}
			}
		}
	}
	return y
}

// refConvGrads returns the float64 gradients of sum(dy * conv(x, w)) with respect to x and
// w, scaled by alpha, plus beta times the old contents.
func refConvGrads(c convCase, x, w, dy, dx0, dw0 []float32, alpha, beta float64) (dx, dw []float64) {
	ho, wo := c.out()
	dx = make([]float64, len(x))
	dw = make([]float64, len(w))
	for n := 0; n < c.n; n++ {
		for co := 0; co < c.cout; co++ {
			for oy := 0; oy < ho; oy++ {
				for ox := 0; ox < wo; ox++ {
					g := float64(dy[((n*c.cout+co)*ho+oy)*wo+ox])
					for ci := 0; ci < c.cin; ci++ {
						for ky := 0; ky < c.k; ky++ {
							iy := oy*c.s - c.p + ky
							if iy < 0 || iy >= c.h {
								continue
							}
							for kx := 0; kx < c.k; kx++ {
								ix := ox*c.s - c.p + kx
								if ix < 0 || ix >= c.w {
									continue
								}
								wi := ((co*c.cin+ci)*c.k+ky)*c.k + kx
								xi := ((n*c.cin+ci)*c.h+iy)*c.w + ix
								dx[xi] += g * float64(w[wi])
								dw[wi] += g * float64(x[xi])
							}
						}
					}
				}
			}
		}
	}
	for i := range dx {
		dx[i] *= alpha
		if beta != 0 {
			dx[i] += beta * float64(dx0[i])
		}
	}
	for i := range dw {
		dw[i] *= alpha
		if beta != 0 {
			dw[i] += beta * float64(dw0[i])
		}
	}
	return dx, dw
}

func TestConvMatchesReference(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(11, 12))
	for i, c := range convCases {
		t.Run(c.String(), func(t *testing.T) {
			ho, wo := c.out()
			alpha, beta := float32(0.7), float32(0)
			if i%2 == 1 {
				beta = 0.5
			}
			xh := randn(rng, c.n*c.cin*c.h*c.w)
			wh := randn(rng, c.cout*c.cin*c.k*c.k)
			dyh := randn(rng, c.n*c.cout*ho*wo)
			y0, dx0, dw0 := randn(rng, len(dyh)), randn(rng, len(xh)), randn(rng, len(wh))
			x := upload(t, d, xh, c.n, c.cin, c.h, c.w)
			w := upload(t, d, wh, c.cout, c.cin, c.k, c.k)
			dy := upload(t, d, dyh, c.n, c.cout, ho, wo)
			var y, dx, dw View
			if beta == 0 { // NaN-filled outputs: beta 0 must ignore old contents
				y, dx, dw = zeros(t, d, c.n, c.cout, ho, wo), zeros(t, d, c.n, c.cin, c.h, c.w), zeros(t, d, c.cout, c.cin, c.k, c.k)
			} else {
				y, dx, dw = upload(t, d, y0, c.n, c.cout, ho, wo), upload(t, d, dx0, c.n, c.cin, c.h, c.w), upload(t, d, dw0, c.cout, c.cin, c.k, c.k)
			}
			p := ConvParams{Stride: c.s, Pad: c.p, Alpha: alpha, Beta: beta}
			if err := d.Conv2d(x, w, y, p); err != nil {
				t.Fatal(err)
			}
			if err := d.Conv2dBwdData(dy, w, dx, p); err != nil {
				t.Fatal(err)
			}
			if err := d.Conv2dBwdFilter(x, dy, dw, p); err != nil {
				t.Fatal(err)
			}
			wantDx, wantDw := refConvGrads(c, xh, wh, dyh, dx0, dw0, float64(alpha), float64(beta))
			assertClose(t, "conv2d", download(t, y), refConv(c, xh, wh, y0, float64(alpha), float64(beta)), 1e-4, 1e-4)
			assertClose(t, "conv2d_bwd_data", download(t, dx), wantDx, 1e-4, 1e-4)
			assertClose(t, "conv2d_bwd_filter", download(t, dw), wantDw, 2e-4, 1e-4)
		})
	}
}

// TestConvLargeImageInRowBlocks covers one image whose column matrix exceeds the scratch
// bound (9 x 1028 x 1018 floats), so that im2col and the GEMMs run over blocks of output
// rows in all three passes, with a non-square plane. Pad 0 keeps it off the shifted-GEMM
// path that same-size convs of wide images take (covered by the 48x48 case).
func TestConvLargeImageInRowBlocks(t *testing.T) {
	if testing.Short() {
		t.Skip("large image: skipped in -short")
	}
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(15, 16))
	c := convCase{2, 1, 1030, 1020, 2, 3, 1, 0}
	ho, wo := c.out()
	xh, wh := randn(rng, c.n*c.cin*c.h*c.w), randn(rng, c.cout*c.cin*c.k*c.k)
	dyh := randn(rng, c.n*c.cout*ho*wo)
	x, w, dy := upload(t, d, xh, c.n, c.cin, c.h, c.w), upload(t, d, wh, c.cout, c.cin, c.k, c.k), upload(t, d, dyh, c.n, c.cout, ho, wo)
	y, dx, dw := zeros(t, d, c.n, c.cout, ho, wo), zeros(t, d, c.n, c.cin, c.h, c.w), zeros(t, d, c.cout, c.cin, c.k, c.k)
	p := ConvParams{Stride: 1, Pad: 0, Alpha: 1}
	if err := d.Conv2d(x, w, y, p); err != nil {
		t.Fatal(err)
	}
	if err := d.Conv2dBwdData(dy, w, dx, p); err != nil {
		t.Fatal(err)
	}
	if err := d.Conv2dBwdFilter(x, dy, dw, p); err != nil {
		t.Fatal(err)
	}
	wantDx, wantDw := refConvGrads(c, xh, wh, dyh, nil, nil, 1, 0)
	assertClose(t, "conv2d", download(t, y), refConv(c, xh, wh, nil, 1, 0), 1e-4, 1e-4)
	assertClose(t, "conv2d_bwd_data", download(t, dx), wantDx, 1e-4, 1e-4)
	assertClose(t, "conv2d_bwd_filter", download(t, dw), wantDw, 5e-2, 1e-4)
}

// TestConvGradsMatchFiniteDifferences checks both gradients against central differences of
// the backend's own forward: L(x, w) = sum(g * conv(x, w)) at a sample of entries, and the
// adjoint identity <g, conv(x, w)> = <bwd_data(g), x> = <bwd_filter(x, g), w> on all of them.
func TestConvGradsMatchFiniteDifferences(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(13, 14))
	for _, c := range []convCase{{2, 3, 5, 6, 4, 3, 1, 1}, {1, 3, 6, 7, 2, 4, 2, 1}, {2, 5, 3, 3, 3, 1, 1, 0}, {1, 2, 5, 5, 3, 3, 2, 1}} {
		t.Run(c.String(), func(t *testing.T) {
			ho, wo := c.out()
			xh := randn(rng, c.n*c.cin*c.h*c.w)
			wh := randn(rng, c.cout*c.cin*c.k*c.k)
			gh := randn(rng, c.n*c.cout*ho*wo)
			x := upload(t, d, xh, c.n, c.cin, c.h, c.w)
			w := upload(t, d, wh, c.cout, c.cin, c.k, c.k)
			g := upload(t, d, gh, c.n, c.cout, ho, wo)
			y := zeros(t, d, c.n, c.cout, ho, wo)
			dx := zeros(t, d, c.n, c.cin, c.h, c.w)
			dw := zeros(t, d, c.cout, c.cin, c.k, c.k)
			p := ConvParams{Stride: c.s, Pad: c.p, Alpha: 1.3}
			if err := d.Conv2dBwdData(g, w, dx, p); err != nil {
				t.Fatal(err)
			}
			if err := d.Conv2dBwdFilter(x, g, dw, p); err != nil {
				t.Fatal(err)
			}
			dxh, dwh := download(t, dx), download(t, dw)
			loss := func() float64 {
				if err := d.Conv2d(x, w, y, p); err != nil {
					t.Fatal(err)
				}
				return convDot(gh, download(t, y))
			}
			l0 := loss()
			if a, b := convDot(dxh, xh), convDot(dwh, wh); math.Abs(a-l0) > 1e-4*(1+math.Abs(l0)) || math.Abs(b-l0) > 1e-4*(1+math.Abs(l0)) {
				t.Fatalf("adjoint identity: <g,conv> %g, <dx,x> %g, <dw,w> %g", l0, a, b)
			}
			const eps = 1e-2
			fd := func(buf View, host []float32, i int) float64 {
				orig := host[i]
				set := func(v float32) {
					if err := buf.Buf.Write(i, []float32{v}); err != nil {
						t.Fatal(err)
					}
				}
				set(orig + eps)
				lp := loss()
				set(orig - eps)
				lm := loss()
				set(orig)
				return (lp - lm) / (2 * eps)
			}
			for trial := 0; trial < 6; trial++ {
				i := rng.IntN(len(xh))
				if got, want := float64(dxh[i]), fd(x, xh, i); math.Abs(got-want) > 2e-2*(1+math.Abs(want)) {
					t.Errorf("dx[%d] = %g, finite difference %g", i, got, want)
				}
				j := rng.IntN(len(wh))
				if got, want := float64(dwh[j]), fd(w, wh, j); math.Abs(got-want) > 2e-2*(1+math.Abs(want)) {
					t.Errorf("dw[%d] = %g, finite difference %g", j, got, want)
				}
			}
		})
	}
}

func convDot(a, b []float32) float64 {
	s := 0.0
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func TestConvBadShapesNameOpAndShapes(t *testing.T) {
	d := newDevice(t)
	x := zeros(t, d, 2, 3, 8, 8)
	w := zeros(t, d, 4, 3, 3, 3)
	wBad := zeros(t, d, 4, 5, 3, 3)
	wRect := zeros(t, d, 4, 3, 3, 2)
	y := zeros(t, d, 2, 4, 8, 8)
	yBad := zeros(t, d, 2, 4, 7, 8)
	tiny := zeros(t, d, 1, 3, 1, 1)
	yTiny := zeros(t, d, 1, 4, 1, 1)
	xT, _ := x.Permute(0, 1, 3, 2)
	p := ConvParams{Stride: 1, Pad: 1, Alpha: 1}
	cases := []struct {
		name string
		err  error
		want []string
	}{
		{"channels", d.Conv2d(x, wBad, y, p), []string{"conv2d", "[2,3,8,8]", "[4,5,3,3]"}},
		{"output", d.Conv2d(x, w, yBad, p), []string{"conv2d", "[2,4,7,8]", "[2,4,8,8]"}},
		{"rect kernel", d.Conv2d(x, wRect, y, p), []string{"conv2d", "[4,3,3,2]"}},
		{"stride", d.Conv2d(x, w, y, ConvParams{Stride: 3, Pad: 1, Alpha: 1}), []string{"conv2d", "stride 3"}},
		{"negative pad", d.Conv2d(x, w, y, ConvParams{Stride: 1, Pad: -1, Alpha: 1}), []string{"conv2d", "pad"}},
		{"kernel too big", d.Conv2d(tiny, w, yTiny, ConvParams{Stride: 1, Alpha: 1}), []string{"conv2d", "[1,3,1,1]", "[4,3,3,3]"}},
		{"not dense", d.Conv2d(xT, w, y, p), []string{"conv2d", "dense"}},
		{"bwd data", d.Conv2dBwdData(yBad, w, x, p), []string{"conv2d_bwd_data", "[2,4,7,8]", "[2,3,8,8]"}},
		{"bwd filter", d.Conv2dBwdFilter(x, y, wBad, p), []string{"conv2d_bwd_filter", "[4,5,3,3]", "[2,3,8,8]"}},
		{"3-D", d.Conv2d(View{Buf: x.Buf, Shape: []int{6, 8, 8}, Stride: []int{64, 8, 1}}, w, y, p), []string{"conv2d", "4-D"}},
	}
	for _, c := range cases {
		var ke *Error
		if !errors.As(c.err, &ke) {
			t.Fatalf("%s: got %v, want *kernels.Error", c.name, c.err)
		}
		for _, s := range c.want {
			if !strings.Contains(c.err.Error(), s) {
				t.Errorf("%s: error %q does not mention %q", c.name, c.err, s)
			}
		}
	}
	if _, err := ConvOutSize(1, 3, 1, 0); err == nil {
		t.Error("ConvOutSize(1, k 3, pad 0) gave no error")
	}
	if n, err := ConvOutSize(8, 4, 2, 1); err != nil || n != 4 {
		t.Errorf("ConvOutSize(8, k 4, s 2, p 1) = %d, %v; want 4", n, err)
	}
}
