package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestNoiseAndWeightGradient(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(31, 32))
	for _, shape := range [][]int{{1, 1, 1, 1}, {2, 3, 5, 7}, {3, 9, 4, 4}, {4, 32, 16, 16}} {
		n, c, hw := shape[0], shape[1], shape[2]*shape[3]
		what := "noise " + ShapeString(shape)
		xh, nh, wh, dyh := randn(rng, n*c*hw), randn(rng, n*hw), randn(rng, c), randn(rng, n*c*hw)
		x, nz, w := upload(t, d, xh, shape...), upload(t, d, nh, n, 1, shape[2], shape[3]), upload(t, d, wh, c)
		y := zeros(t, d, shape...)
		if err := d.Noise(x, nz, w, y); err != nil {
			t.Fatal(err)
		}
		fwd := func(wv []float64) []float64 {
			out := make([]float64, n*c*hw)
			for i := range out {
				s, ch, k := i/(c*hw), (i/hw)%c, i%hw
				out[i] = float64(xh[i]) + wv[ch]*float64(nh[s*hw+k])
			}
			return out
		}
		w64 := to64(wh)
		assertClose(t, what, download(t, y), fwd(w64), 1e-6, 1e-6)
		// dw = 0.5 * sum dy*noise + 2 * dw_old.
		oldh := randn(rng, c)
		dw := upload(t, d, oldh, c)
		if err := d.NoiseBwdWeight(upload(t, d, dyh, shape...), nz, dw, 0.5, 2); err != nil {
			t.Fatal(err)
		}
		want := make([]float64, c)
		for i, g := range dyh {
			s, ch, k := i/(c*hw), (i/hw)%c, i%hw
			want[ch] += 0.5 * float64(g) * float64(nh[s*hw+k])
		}
		for ch := range want {
			want[ch] += 2 * float64(oldh[ch])
		}
		got := download(t, dw)
		assertClose(t, what+" dw", got, want, 1e-4, 1e-5)
		// Finite differences of 0.5 <dy, y(w)> match the alpha part of dw.
		dy64 := to64(dyh)
		alphaPart := make([]float32, c)
		for ch := range alphaPart {
			alphaPart[ch] = got[ch] - 2*oldh[ch]
		}
		fdCheck(t, what+" fd dw", rng, func(wv []float64) float64 {
			yv := fwd(wv)
			s := 0.0
			for i := range yv {
				s += 0.5 * yv[i] * dy64[i]
			}
			return s
		}, w64, alphaPart, 8, nil, 1e-3, 1e-3)
	}
	// In place, and bad shapes.
	x := upload(t, d, []float32{1, 2, 3, 4}, 1, 1, 2, 2)
	nz := upload(t, d, []float32{1, 1, 1, 1}, 1, 1, 2, 2)
	w := upload(t, d, []float32{0.5}, 1)
	if err := d.Noise(x, nz, w, x); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "noise in place", download(t, x), []float64{1.5, 2.5, 3.5, 4.5}, 0, 0)
	badNoise := zeros(t, d, 1, 2, 2, 2)
	wantError(t, "noise channels", d.Noise(x, badNoise, w, x), "noise", "[1,2,2,2]", "[1,1,2,2]")
	badW := zeros(t, d, 3)
	wantError(t, "weight length", d.NoiseBwdWeight(x, nz, badW, 1, 0), "noise_bwd_weight", "[3]")
}

func refPixelNorm(x []float64, n, c, hw int, eps float64) []float64 {
	y := make([]float64, len(x))
	for i := 0; i < n; i++ {
		for k := 0; k < hw; k++ {
			ss := 0.0
			for ch := 0; ch < c; ch++ {
				v := x[(i*c+ch)*hw+k]
				ss += v * v
			}
			r := 1 / math.Sqrt(ss/float64(c)+eps)
			for ch := 0; ch < c; ch++ {
				y[(i*c+ch)*hw+k] = x[(i*c+ch)*hw+k] * r
			}
		}
	}
	return y
}

func TestPixelNormForwardAndGradient(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(41, 42))
	const eps = 1e-8
	for _, shape := range [][]int{{1, 1}, {3, 13}, {1, 1, 1, 1}, {2, 3, 5, 7}, {2, 5, 17, 17}, {4, 512}, {4, 32, 16, 16}} {
		n, c := shape[0], shape[1]
		hw := Numel(shape) / (n * c)
		what := "pixel_norm " + ShapeString(shape)
		xh, dyh := randn(rng, Numel(shape)), randn(rng, Numel(shape))
		x, dy := upload(t, d, xh, shape...), upload(t, d, dyh, shape...)
		y, dx := zeros(t, d, shape...), zeros(t, d, shape...)
		if err := d.PixelNorm(x, y, eps); err != nil {
			t.Fatal(err)
		}
		x64, dy64 := to64(xh), to64(dyh)
		assertClose(t, what, download(t, y), refPixelNorm(x64, n, c, hw, eps), 1e-5, 1e-5)
		if err := d.PixelNormBwd(dy, x, dx, eps); err != nil {
			t.Fatal(err)
		}
		got := download(t, dx)
		want := make([]float64, len(x64))
		for i := 0; i < n; i++ {
			for k := 0; k < hw; k++ {
				ss, sd := 0.0, 0.0
				for ch := 0; ch < c; ch++ {
					j := (i*c+ch)*hw + k
					ss += x64[j] * x64[j]
					sd += x64[j] * dy64[j]
				}
				r := 1 / math.Sqrt(ss/float64(c)+eps)
				for ch := 0; ch < c; ch++ {
					j := (i*c+ch)*hw + k
					want[j] = r*dy64[j] - r*r*r*x64[j]*sd/float64(c)
				}
			}
		}
		assertClose(t, what+" dx", got, want, 1e-4, 1e-4)
		fdCheck(t, what+" fd", rng, func(xv []float64) float64 {
			yv := refPixelNorm(xv, n, c, hw, eps)
			s := 0.0
			for i := range yv {
				s += yv[i] * dy64[i]
			}
			return s
		}, x64, got, 16, nil, 1e-3, 1e-3)
	}
	x := zeros(t, d, 2, 3, 4)
	wantError(t, "3-D", d.PixelNorm(x, x, 1e-8), "pixel_norm", "[2,3,4]")
	y := zeros(t, d, 2, 4)
	x2 := zeros(t, d, 2, 3)
	wantError(t, "bwd shapes", d.PixelNormBwd(x2, x2, y, 1e-8), "pixel_norm_bwd", "[2,4]")
}

// refMbstd follows SG's minibatch_stddev_layer literally: reshape to [G,M,F,C/F,H,W],
// variance over G, sqrt(+eps), mean over (C/F,H,W), tile over G and pixels, concat.
func refMbstd(x []float64, n, c, h, w, group, f int, eps float64) []float64 {
	g := min(group, n)
	m, cf, hw := n/g, c/f, h*w
	y := make([]float64, n*(c+f)*hw)
	for i := 0; i < n; i++ {
		copy(y[i*(c+f)*hw:], x[i*c*hw:(i+1)*c*hw])
	}
	for mi := 0; mi < m; mi++ {
		for fi := 0; fi < f; fi++ {
			acc := 0.0
			for ch := fi * cf; ch < (fi+1)*cf; ch++ {
				for k := 0; k < hw; k++ {
					mu, vr := 0.0, 0.0
					for gi := 0; gi < g; gi++ {
						mu += x[((gi*m+mi)*c+ch)*hw+k]
					}
					mu /= float64(g)
					for gi := 0; gi < g; gi++ {
						dv := x[((gi*m+mi)*c+ch)*hw+k] - mu
						vr += dv * dv
					}
					acc += math.Sqrt(vr/float64(g) + eps)
				}
			}
			stat := acc / float64(cf*hw)
			for gi := 0; gi < g; gi++ {
				for k := 0; k < hw; k++ {
					y[((gi*m+mi)*(c+f)+c+fi)*hw+k] = stat
				}
			}
		}
	}
	return y
}

func TestMinibatchStddevForwardAndGradient(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(51, 52))
	const eps = 1e-8
	cases := []struct{ n, c, h, w, group, f int }{
		{1, 3, 2, 2, 4, 1},   // N=1: group 1, the stat is sqrt(eps)
		{8, 6, 3, 3, 4, 2},   // two groups, two features
		{8, 5, 1, 1, 4, 1},   // 1x1 images, odd channels
		{6, 3, 2, 3, 2, 3},   // three groups of two, one channel per feature
		{4, 9, 4, 4, 4, 1},   // the whole batch is one group
		{32, 64, 4, 4, 4, 1}, // StyleGAN's 4x4 block at batch 32 (parallel path)
	}
	for _, cs := range cases {
		shape := []int{cs.n, cs.c, cs.h, cs.w}
		yshape := []int{cs.n, cs.c + cs.f, cs.h, cs.w}
		what := "mbstd " + ShapeString(shape)
		xh, dyh := randn(rng, Numel(shape)), randn(rng, Numel(yshape))
		x, dy := upload(t, d, xh, shape...), upload(t, d, dyh, yshape...)
		y, dx := zeros(t, d, yshape...), zeros(t, d, shape...)
		if err := d.MinibatchStddev(x, y, cs.group, cs.f, eps); err != nil {
			t.Fatal(err)
		}
		x64, dy64 := to64(xh), to64(dyh)
		wantY := refMbstd(x64, cs.n, cs.c, cs.h, cs.w, cs.group, cs.f, eps)
		assertClose(t, what, download(t, y), wantY, 1e-5, 1e-5)
		if cs.n == 1 && math.Abs(wantY[len(wantY)-1]-math.Sqrt(eps)) > 1e-12 {
			t.Fatalf("%s: a group of one has stat %g, want sqrt(eps)", what, wantY[len(wantY)-1])
		}
		if err := d.MinibatchStddevBwd(dy, x, dx, cs.group, cs.f, eps); err != nil {
			t.Fatal(err)
		}
		got := download(t, dx)
		// float64 reference of the gradient.
		g := min(cs.group, cs.n)
		m, cf, hw, cy := cs.n/g, cs.c/cs.f, cs.h*cs.w, cs.c+cs.f
		want := make([]float64, len(x64))
		for i := 0; i < cs.n; i++ {
			for ch := 0; ch < cs.c; ch++ {
				for k := 0; k < hw; k++ {
					want[(i*cs.c+ch)*hw+k] = dy64[(i*cy+ch)*hw+k]
				}
			}
		}
		for mi := 0; mi < m; mi++ {
			for ch := 0; ch < cs.c; ch++ {
				fi := ch / cf
				ds := 0.0
				for gi := 0; gi < g; gi++ {
					for k := 0; k < hw; k++ {
						ds += dy64[((gi*m+mi)*cy+cs.c+fi)*hw+k]
					}
				}
				ds /= float64(cf * hw)
				for k := 0; k < hw; k++ {
					mu, vr := 0.0, 0.0
					for gi := 0; gi < g; gi++ {
						mu += x64[((gi*m+mi)*cs.c+ch)*hw+k]
					}
					mu /= float64(g)
					for gi := 0; gi < g; gi++ {
						dv := x64[((gi*m+mi)*cs.c+ch)*hw+k] - mu
						vr += dv * dv
					}
					sd := math.Sqrt(vr/float64(g) + eps)
					for gi := 0; gi < g; gi++ {
						j := ((gi*m+mi)*cs.c+ch)*hw + k
						want[j] += ds * (x64[j] - mu) / (float64(g) * sd)
					}
				}
			}
		}
		assertClose(t, what+" dx", got, want, 1e-5, 1e-4)
		fdCheck(t, what+" fd", rng, func(xv []float64) float64 {
			yv := refMbstd(xv, cs.n, cs.c, cs.h, cs.w, cs.group, cs.f, eps)
			s := 0.0
			for i := range yv {
				s += yv[i] * dy64[i]
			}
			return s
		}, x64, got, 16, nil, 1e-4, 1e-3)
	}
}

func TestMinibatchStddevErrors(t *testing.T) {
	d := newDevice(t)
	x := zeros(t, d, 6, 4, 2, 2)
	y := zeros(t, d, 6, 5, 2, 2)
	// SG requires the group size to divide the batch: 4 does not divide 6.
	wantError(t, "group 4 of 6", d.MinibatchStddev(x, y, 4, 1, 1e-8), "mbstd", "group size 4", "[6,4,2,2]")
	wantError(t, "bwd group 4 of 6", d.MinibatchStddevBwd(y, x, x, 4, 1, 1e-8), "mbstd_bwd", "group size 4")
	wantError(t, "features", d.MinibatchStddev(x, zeros(t, d, 6, 7, 2, 2), 2, 3, 1e-8), "mbstd", "features 3")
	wantError(t, "y channels", d.MinibatchStddev(x, y, 2, 2, 1e-8), "mbstd", "[6,5,2,2]", "[N,C+2,H,W]")
	wantError(t, "group 0", d.MinibatchStddev(x, y, 0, 1, 1e-8), "mbstd", "group size 0")
	if err := d.MinibatchStddev(x, y, 3, 1, 1e-8); err != nil {
		t.Fatalf("group 3 of 6: %v", err)
	}
}

// TestFusedOpsDoNotDependOnThreads runs every reducing op on devices with one and two threads
// at sizes that take the threaded paths, and requires identical bits: data-parallel replicas
// and resumed runs rely on it.
func TestFusedOpsDoNotDependOnThreads(t *testing.T) {
	rng := rand.New(rand.NewPCG(71, 72))
	shape := []int{8, 32, 16, 16}
	n, c, hw := shape[0], shape[1], shape[2]*shape[3]
	xh, dyh, nh := randn(rng, n*c*hw), randn(rng, n*c*hw), randn(rng, n*hw)
	sh, bh := randn(rng, n*c), randn(rng, n*c)
	run := func(threads int) [][]float32 {
		d, err := Open(Config{Threads: threads})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close) // after the buffers' cleanups, which run first
		x, dy := upload(t, d, xh, shape...), upload(t, d, dyh, shape...)
		s, b := upload(t, d, sh, n, c), upload(t, d, bh, n, c)
		nz := upload(t, d, nh, n, 1, shape[2], shape[3])
		y, xn, rstd := zeros(t, d, shape...), zeros(t, d, shape...), zeros(t, d, n, c)
		dx, ds, db, dw := zeros(t, d, shape...), zeros(t, d, n, c), zeros(t, d, n, c), zeros(t, d, c)
		pn, pdx := zeros(t, d, shape...), zeros(t, d, shape...)
		ym, dxm := zeros(t, d, n, c+1, shape[2], shape[3]), zeros(t, d, shape...)
		dym := upload(t, d, randn(rand.New(rand.NewPCG(1, 2)), n*(c+1)*hw), n, c+1, shape[2], shape[3])
		for _, err := range []error{
			d.AdaIN(x, s, b, y, xn, rstd, 1e-8),
			d.AdaINBwd(dy, xn, rstd, s, dx, ds, db),
			d.NoiseBwdWeight(dy, nz, dw, 1, 0),
			d.PixelNorm(x, pn, 1e-8),
			d.PixelNormBwd(dy, x, pdx, 1e-8),
			d.MinibatchStddev(x, ym, 4, 1, 1e-8),
			d.MinibatchStddevBwd(dym, x, dxm, 4, 1, 1e-8),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		var out [][]float32
		for _, v := range []View{y, xn, rstd, dx, ds, db, dw, pn, pdx, ym, dxm} {
			out = append(out, download(t, v))
		}
		return out
	}
	one, two := run(1), run(2)
	for k := range one {
		for i := range one[k] {
			if one[k][i] != two[k][i] {
				t.Fatalf("output %d element %d: %g with one thread, %g with two", k, i, one[k][i], two[k][i])
			}
		}
	}
}
