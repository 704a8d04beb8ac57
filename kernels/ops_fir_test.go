package kernels

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// refFIR is the float64 upfirdn2d: build the zero-inserted, padded plane explicitly,
// correlate with the 2-D filter outer(f, f)*gain, keep every down-th sample.
func refFIR(x []float32, n, c, h, w int, taps []float32, p FIRParams) ([]float64, int, int) {
	p = p.norm()
	cx0, cx1 := p.colPads()
	nt := len(taps)
	f := make([]float64, nt)
	for j := range taps {
		if p.Flip {
			f[j] = float64(taps[nt-1-j])
		} else {
			f[j] = float64(taps[j])
		}
	}
	ph, pw := h*p.Up+p.Pad0+p.Pad1, w*p.Up+cx0+cx1
	ho, wo := (ph-nt)/p.Down+1, (pw-nt)/p.Down+1
	out := make([]float64, n*c*ho*wo)
	padded := make([]float64, ph*pw)
	for pl := 0; pl < n*c; pl++ {
		for i := range padded {
			padded[i] = 0
		}
		for iy := 0; iy < h; iy++ {
			for ix := 0; ix < w; ix++ {
				py, px := iy*p.Up+p.Pad0, ix*p.Up+cx0
				if py >= 0 && py < ph && px >= 0 && px < pw {
					padded[py*pw+px] = float64(x[(pl*h+iy)*w+ix])
				}
			}
		}
		for oy := 0; oy < ho; oy++ {
			for ox := 0; ox < wo; ox++ {
				s := 0.0
				for a := 0; a < nt; a++ {
					for b := 0; b < nt; b++ {
						s += f[a] * f[b] * padded[(oy*p.Down+a)*pw+ox*p.Down+b]
					}
				}
				out[(pl*ho+oy)*wo+ox] = s * float64(p.Gain)
			}
		}
	}
	return out, ho, wo
}

type firCase struct {
	name string
	taps []float32
	p    FIRParams
}

func firCases() []firCase {
	blur := []float32{0.25, 0.5, 0.25}
	return []firCase{
		{"blur", blur, FIRParams{Pad0: 1, Pad1: 1, Gain: 1}},
		{"up2_blur", blur, FIRParams{Up: 2, Pad0: 2, Pad1: 0, Gain: 4}},
		{"blur_down2", blur, FIRParams{Down: 2, Pad0: 1, Pad1: 0, Gain: 1}},
		{"nearest_up2", []float32{1, 1}, FIRParams{Up: 2, Pad0: 1, Pad1: 0, Gain: 1}},
		{"box_down2", []float32{0.5, 0.5}, FIRParams{Down: 2, Gain: 1}},
		{"flip_asym_crop", []float32{0.1, 0.3, 0.4, 0.2}, FIRParams{Up: 2, Down: 3, Pad0: -1, Pad1: 3, Flip: true, Gain: 2}},
		{"colpad", []float32{1, 2, 3}, FIRParams{Down: 2, Pad0: 1, Pad1: 1, Gain: 0.5, ColPad: &[2]int{2, -1}}},
	}
}

func TestFIRMatchesReference(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(21, 22))
	for _, fc := range firCases() {
		for _, s := range [][4]int{{2, 3, 7, 5}, {1, 1, 1, 1}, {1, 2, 8, 8}, {3, 5, 6, 9}} {
			n, c, h, w := s[0], s[1], s[2], s[3]
			ho, wo, err := FIROutSize(h, w, len(fc.taps), fc.p)
			if err != nil {
				continue // the plane is shorter than the filter: checked in the error test
			}
			t.Run(fmt.Sprintf("%s_%dx%dx%dx%d", fc.name, n, c, h, w), func(t *testing.T) {
				xh := randn(rng, n*c*h*w)
				x := upload(t, d, xh, n, c, h, w)
				y := zeros(t, d, n, c, ho, wo)
				if err := d.FIR(x, y, fc.taps, fc.p); err != nil {
					t.Fatal(err)
				}
				want, rho, rwo := refFIR(xh, n, c, h, w, fc.taps, fc.p)
				if rho != ho || rwo != wo {
					t.Fatalf("FIROutSize %dx%d, reference %dx%d", ho, wo, rho, rwo)
				}
				assertClose(t, "fir", download(t, y), want, 1e-5, 1e-5)
			})
		}
	}
	// Nearest 2x up copies, box 2x down averages: check the meaning, not just the formula.
	x := upload(t, d, []float32{1, 2, 3, 4}, 1, 1, 2, 2)
	up := zeros(t, d, 1, 1, 4, 4)
	if err := d.FIR(x, up, []float32{1, 1}, FIRParams{Up: 2, Pad0: 1, Gain: 1}); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "nearest", download(t, up), []float64{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}, 0, 0)
	down := zeros(t, d, 1, 1, 1, 1)
	if err := d.FIR(x, down, []float32{0.5, 0.5}, FIRParams{Down: 2, Gain: 1}); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "box", download(t, down), []float64{2.5}, 1e-7, 0)
}

// TestFIRGradIsAdjoint checks <dy, FIR(x)> = <FIR_grad(dy), x> with FIRGradParams on odd and
// non-square planes, and that the gradient comes back to the input's size.
func TestFIRGradIsAdjoint(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(23, 24))
	for _, fc := range firCases() {
		for _, s := range [][2]int{{7, 7}, {5, 6}, {9, 4}, {3, 3}} {
			h, w := s[0], s[1]
			ho, wo, err := FIROutSize(h, w, len(fc.taps), fc.p)
			if err != nil {
				continue
			}
			t.Run(fmt.Sprintf("%s_%dx%d", fc.name, h, w), func(t *testing.T) {
				n, c := 2, 3
				g, err := FIRGradParams(h, w, len(fc.taps), fc.p)
				if err != nil {
					t.Fatal(err)
				}
				gh, gw, err := FIROutSize(ho, wo, len(fc.taps), g)
				if err != nil || gh != h || gw != w {
					t.Fatalf("gradient params %+v map %dx%d to %dx%d (%v), want %dx%d", g, ho, wo, gh, gw, err, h, w)
				}
				xh, dyh := randn(rng, n*c*h*w), randn(rng, n*c*ho*wo)
				x, dy := upload(t, d, xh, n, c, h, w), upload(t, d, dyh, n, c, ho, wo)
				y, dx := zeros(t, d, n, c, ho, wo), zeros(t, d, n, c, h, w)
				if err := d.FIR(x, y, fc.taps, fc.p); err != nil {
					t.Fatal(err)
				}
				if err := d.FIR(dy, dx, fc.taps, g); err != nil {
					t.Fatal(err)
				}
				a, b := convDot(dyh, download(t, y)), convDot(download(t, dx), xh)
				if math.Abs(a-b) > 1e-5*(1+math.Abs(a)) {
					t.Fatalf("<dy, FIR(x)> = %.8g but <FIR_grad(dy), x> = %.8g", a, b)
				}
			})
		}
	}
}

func TestFIRBadArgumentsNameOpAndShapes(t *testing.T) {
	d := newDevice(t)
	x := zeros(t, d, 2, 3, 5, 5)
	y := zeros(t, d, 2, 3, 4, 5)
	blur := []float32{0.25, 0.5, 0.25}
	cases := []struct {
		name string
		err  error
		want []string
	}{
		{"output shape", d.FIR(x, y, blur, FIRParams{Pad0: 1, Pad1: 1, Gain: 1}), []string{"fir", "[2,3,4,5]", "[2,3,5,5]"}},
		{"no taps", d.FIR(x, y, nil, FIRParams{Gain: 1}), []string{"fir", "taps", "[2,3,5,5]"}},
		{"negative up", d.FIR(x, y, blur, FIRParams{Up: -1, Gain: 1}), []string{"fir", "up -1"}},
		{"too short", d.FIR(x, y, blur, FIRParams{Pad0: -2, Pad1: -2, Gain: 1}), []string{"fir", "[2,3,5,5]", "shorter"}},
		{"too many taps", d.FIR(x, y, make([]float32, 65), FIRParams{Gain: 1}), []string{"fir", "taps"}},
		{"3-D", d.FIR(View{Buf: x.Buf, Shape: []int{6, 5, 5}, Stride: []int{25, 5, 1}}, y, blur, FIRParams{Gain: 1}), []string{"fir", "4-D"}},
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
	if _, _, err := FIROutSize(1, 1, 3, FIRParams{}); err == nil {
		t.Error("FIROutSize of a 1x1 plane with 3 taps and no padding gave no error")
	}
}
