package swd

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

// shapes draws n images of c channels at res px: a few soft-edged rectangles and blobs on a
// dark background, in [-1, 1]; a stand-in for a dataset with structure at several scales.
func shapes(seed uint64, n, c, res int) Images {
	rng := rand.New(rand.NewPCG(seed, 1))
	im := Images{N: n, C: c, H: res, W: res, Data: make([]float32, n*c*res*res)}
	for i := 0; i < n; i++ {
		for k := 0; k < 3; k++ {
			x0, y0 := rng.Float64()*float64(res), rng.Float64()*float64(res)
			w, h := (0.2+0.5*rng.Float64())*float64(res), (0.2+0.5*rng.Float64())*float64(res)
			col := make([]float64, c)
			for ch := range col {
				col[ch] = rng.Float64()
			}
			blob := rng.IntN(2) == 0
			for y := 0; y < res; y++ {
				for x := 0; x < res; x++ {
					dx, dy := (float64(x)-x0)/w, (float64(y)-y0)/h
					var v float64
					if blob {
						v = math.Exp(-4 * (dx*dx + dy*dy))
					} else if math.Abs(dx) < 0.5 && math.Abs(dy) < 0.5 {
						v = 1
					}
					for ch := 0; ch < c; ch++ {
						p := &im.Data[((i*c+ch)*res+y)*res+x]
						*p = float32(math.Max(float64(*p), v*col[ch]))
					}
				}
			}
		}
	}
	for j := range im.Data {
		im.Data[j] = 2*im.Data[j] - 1
	}
	return im
}

func noise(seed uint64, n, c, res int) Images {
	rng := rand.New(rand.NewPCG(seed, 2))
	im := Images{N: n, C: c, H: res, W: res, Data: make([]float32, n*c*res*res)}
	for j := range im.Data {
		im.Data[j] = float32(2*rng.Float64() - 1)
	}
	return im
}

// blur returns a copy with each plane filtered by a 3x3 box (clamped edges).
func blur(in Images) Images {
	out := in
	out.Data = make([]float32, len(in.Data))
	r := in.H
	for p := 0; p < in.N*in.C; p++ {
		src, dst := in.Data[p*r*r:(p+1)*r*r], out.Data[p*r*r:(p+1)*r*r]
		for y := 0; y < r; y++ {
			for x := 0; x < r; x++ {
				var s float32
				for dy := -1; dy <= 1; dy++ {
					for dx := -1; dx <= 1; dx++ {
						yy, xx := min(max(y+dy, 0), r-1), min(max(x+dx, 0), r-1)
						s += src[yy*r+xx]
					}
				}
				dst[y*r+x] = s / 9
			}
		}
	}
	return out
}

func mustDistance(t *testing.T, a, b Images, opt Options) Result {
	t.Helper()
	r, err := Distance(a, b, opt)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestOrdering(t *testing.T) {
	const n = 64
	real := shapes(1, n, 1, 32)
	opt := Options{Seed: 5, Repeats: 1}
	same := mustDistance(t, real, real, opt)
	if same.Average != 0 || len(same.PerLevel) != 2 || same.Resolutions[0] != 32 || same.Resolutions[1] != 16 {
		t.Fatalf("identical sets: %+v", same)
	}
	blurred := mustDistance(t, real, blur(real), opt)
	noisy := mustDistance(t, real, noise(3, n, 1, 32), opt)
	t.Logf("blurred %.1f %v, noise %.1f %v", blurred.Average, blurred.PerLevel, noisy.Average, noisy.PerLevel)
	if !(0 < blurred.Average && 3*blurred.Average < noisy.Average) {
		t.Errorf("want 0 < blurred %.2f < noise %.2f / 3", blurred.Average, noisy.Average)
	}
	// Blur removes fine detail: the finest level moves most.
	if blurred.PerLevel[0] <= blurred.PerLevel[1] {
		t.Errorf("blur: finest level %.2f not above coarse %.2f", blurred.PerLevel[0], blurred.PerLevel[1])
	}
	// A generator that learned the coarse layout but not the detail scores between the two:
	// coarse structure of the real set with noise added.
	half := real
	half.Data = make([]float32, len(real.Data))
	nz := noise(4, n, 1, 32)
	for i, v := range blur(real).Data {
		half.Data[i] = v + 0.3*nz.Data[i]
	}
	mid := mustDistance(t, real, half, opt)
	t.Logf("blurred plus noise %.1f", mid.Average)
	if !(blurred.Average < mid.Average && mid.Average < noisy.Average) {
		t.Errorf("blurred %.2f < blurred+noise %.2f < noise %.2f does not hold", blurred.Average, mid.Average, noisy.Average)
	}
}

func TestSymmetryAndDeterminism(t *testing.T) {
	a, b := shapes(1, 32, 3, 32), blur(shapes(1, 32, 3, 32))
	opt := Options{Seed: 11, Workers: 3, Repeats: 2, DirsPerRepeat: 32}
	ab := mustDistance(t, a, b, opt)
	ba := mustDistance(t, b, a, opt)
	again := mustDistance(t, a, b, Options{Seed: 11, Workers: 1, Repeats: 2, DirsPerRepeat: 32})
	for i := range ab.PerLevel {
		if ab.PerLevel[i] != ba.PerLevel[i] || ab.PerLevel[i] != again.PerLevel[i] {
			t.Errorf("level %d: ab %v ba %v again (1 worker) %v", i, ab.PerLevel[i], ba.PerLevel[i], again.PerLevel[i])
		}
	}
	other := mustDistance(t, a, b, Options{Seed: 12, Repeats: 2, DirsPerRepeat: 32})
	if other.Average == ab.Average {
		t.Errorf("a different seed gave the identical value %v", ab.Average)
	}
	if math.Abs(other.Average-ab.Average) > 0.3*ab.Average {
		t.Errorf("seed changes the value too much: %v vs %v", other.Average, ab.Average)
	}
}

func TestPreparedSetsMatch(t *testing.T) {
	a, b := shapes(1, 16, 1, 16), noise(2, 16, 1, 16)
	opt := Options{Seed: 4, DirsPerRepeat: 32}
	direct := mustDistance(t, a, b, opt)
	sa, err := Prepare(a, opt)
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := Prepare(b, opt)
	viaSets, err := sa.Distance(sb)
	if err != nil || viaSets.Average != direct.Average || len(viaSets.PerLevel) != 1 {
		t.Errorf("prepared %+v %v, direct %+v", viaSets, err, direct)
	}
	sc, _ := Prepare(b, Options{Seed: 5, DirsPerRepeat: 32})
	if _, err := sa.Distance(sc); err == nil {
		t.Errorf("sets with different seeds compared")
	}
}

func TestMatMulHook(t *testing.T) {
	naive := func(m, n, k int, a, b, c []float32) error {
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				var s float64
				for p := 0; p < k; p++ {
					s += float64(a[i*k+p]) * float64(b[p*n+j])
				}
				c[i*n+j] = float32(s)
			}
		}
		return nil
	}
	a, b := shapes(1, 16, 3, 32), noise(2, 16, 3, 32)
	builtin := mustDistance(t, a, b, Options{Seed: 1, DirsPerRepeat: 16})
	hooked := mustDistance(t, a, b, Options{Seed: 1, DirsPerRepeat: 16, MatMul: naive})
	for i := range builtin.PerLevel {
		if d := math.Abs(builtin.PerLevel[i] - hooked.PerLevel[i]); d > 1e-3*builtin.PerLevel[i] {
			t.Errorf("level %d: built-in %v, hook %v", i, builtin.PerLevel[i], hooked.PerLevel[i])
		}
	}
	failing := func(m, n, k int, a, b, c []float32) error { return errors.New("device lost") }
	if _, err := Distance(a, b, Options{Seed: 1, DirsPerRepeat: 16, MatMul: failing}); err == nil ||
		!strings.Contains(err.Error(), "swd: projection: device lost") {
		t.Errorf("failing hook: %v", err)
	}
}

func TestSmallImages(t *testing.T) {
	// The 4x4 and 8x8 stages of progressive growing: one level; 3x3 patches at 4x4.
	for _, res := range []int{4, 8} {
		a, b := shapes(1, 32, 1, res), noise(2, 32, 1, res)
		r := mustDistance(t, a, b, Options{Seed: 1})
		if len(r.PerLevel) != 1 || r.Resolutions[0] != res || !(r.Average > 0) || r.Average != r.PerLevel[0] {
			t.Errorf("%dx%d: %+v", res, res, r)
		}
		if z := mustDistance(t, a, a, Options{Seed: 1}); z.Average != 0 {
			t.Errorf("%dx%d identical: %v", res, res, z.Average)
		}
	}
	if got := Resolutions(128, 16); len(got) != 4 || got[3] != 16 {
		t.Errorf("Resolutions(128, 16) = %v", got)
	}
}

func TestUint8AndConstant(t *testing.T) {
	data := make([]uint8, 8*1*16*16)
	for i := range data {
		data[i] = uint8(i * 7)
	}
	a := FromUint8(8, 1, 16, 16, data)
	if a.Data[3] != 21 {
		t.Fatalf("FromUint8: %v", a.Data[:4])
	}
	// Scale and offset do not matter: descriptors are normalised per set.
	b := a
	b.Data = make([]float32, len(a.Data))
	for i, v := range a.Data {
		b.Data[i] = v/127.5 - 1
	}
	if r := mustDistance(t, a, b, Options{Seed: 2}); r.Average > 1e-3 {
		t.Errorf("affine copy: %v", r.Average)
	}
	// A constant set has no variance to normalise; it must not produce NaN.
	c := Images{N: 8, C: 1, H: 16, W: 16, Data: make([]float32, 8*16*16)}
	if r := mustDistance(t, a, c, Options{Seed: 2}); math.IsNaN(r.Average) || r.Average <= 0 {
		t.Errorf("constant set: %v", r.Average)
	}
}

func TestErrors(t *testing.T) {
	good := shapes(1, 4, 1, 16)
	cases := []struct {
		a, b Images
		opt  Options
		want string
	}{
		{good, shapes(1, 5, 1, 16), Options{}, "differ in shape"},
		{Images{N: 1, C: 1, H: 8, W: 4, Data: make([]float32, 32)}, Images{N: 1, C: 1, H: 8, W: 4, Data: make([]float32, 32)}, Options{}, "square"},
		{Images{N: 1, C: 1, H: 4, W: 4, Data: make([]float32, 3)}, Images{N: 1, C: 1, H: 4, W: 4, Data: make([]float32, 3)}, Options{}, "needs 16 values"},
		{Images{}, Images{}, Options{}, "empty"},
		{good, good, Options{PatchSize: 4}, "odd"},
	}
	nan := shapes(1, 4, 1, 16)
	nan.Data[40] = float32(math.NaN())
	cases = append(cases, struct {
		a, b Images
		opt  Options
		want string
	}{good, nan, Options{}, "non-finite"})
	for _, c := range cases {
		_, err := Distance(c.a, c.b, c.opt)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "swd: ") {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
}

func TestProjectKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, sz := range [][3]int{{5, 7, 3}, {4, 16, 49}, {1, 1, 1}, {3, 5, 147}} {
		m, n, k := sz[0], sz[1], sz[2]
		a, b := make([]float32, m*k), make([]float32, k*n)
		for i := range a {
			a[i] = float32(rng.NormFloat64())
		}
		for i := range b {
			b[i] = float32(rng.NormFloat64())
		}
		keys := make([]uint32, m*n)
		projectKeys(m, n, k, a, b, keys)
		for r := 0; r < m; r++ {
			for j := 0; j < n; j++ {
				var s float64
				for i := 0; i < k; i++ {
					s += float64(a[r*k+i]) * float64(b[i*n+j])
				}
				if got := fromKey(keys[j*m+r]); math.Abs(float64(got)-s) > 1e-4*(1+math.Abs(s)) {
					t.Fatalf("%v: (%d,%d) = %v, want %v", sz, r, j, got, s)
				}
			}
		}
	}
}

func TestRadixSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 17, 5000} {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(20)-10)))
		}
		if n > 4 {
			v[0], v[1], v[2], v[3] = float32(math.Copysign(0, -1)), 0, float32(math.Inf(1)), float32(math.Inf(-1))
		}
		keys := make([]uint32, n)
		for i, x := range v {
			keys[i] = sortKey(x)
		}
		radixSort(keys, make([]uint32, n))
		want := append([]float32(nil), v...)
		sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
		for i := range keys {
			if got := fromKey(keys[i]); got != want[i] {
				t.Fatalf("n=%d: position %d: %v, want %v", n, i, got, want[i])
			}
		}
	}
	// All keys sharing digits (passes skipped) still sort.
	keys := []uint32{sortKey(3), sortKey(1), sortKey(2)}
	radixSort(keys, make([]uint32, 3))
	if fromKey(keys[0]) != 1 || fromKey(keys[2]) != 3 {
		t.Errorf("small values: %v", keys)
	}
}

func TestMirror(t *testing.T) {
	n := 5
	want := map[int]int{-2: 2, -1: 1, 0: 0, 4: 4, 5: 3, 6: 2}
	for i, w := range want {
		if got := mirror(i, n); got != w {
			t.Errorf("mirror(%d, 5) = %d, want %d", i, got, w)
		}
	}
	if mirror(-3, 1) != 0 || mirror(-1, 2) != 1 || mirror(2, 2) != 0 {
		t.Errorf("mirror on tiny sizes")
	}
}

// TestPyramid checks pyrDown against a direct 5x5 convolution with mirrored edges, that a
// constant plane has no detail, and that the pyramid collapses back to the image.
func TestPyramid(t *testing.T) {
	const n = 16
	rng := rand.New(rand.NewPCG(3, 4))
	img := make([]float32, n*n)
	for i := range img {
		img[i] = float32(rng.Float64())
	}
	down := make([]float32, n*n/4)
	pyrDown(img, n, down, make([]float32, n*n/2))
	for y := 0; y < n/2; y++ {
		for x := 0; x < n/2; x++ {
			var s float64
			for dy := -2; dy <= 2; dy++ {
				for dx := -2; dx <= 2; dx++ {
					w := float64(binomial[dy+2]) * float64(binomial[dx+2])
					s += w * float64(img[mirror(2*y+dy, n)*n+mirror(2*x+dx, n)])
				}
			}
			if d := math.Abs(s - float64(down[y*(n/2)+x])); d > 1e-5 {
				t.Fatalf("pyrDown at (%d,%d): %v, want %v", y, x, down[y*(n/2)+x], s)
			}
		}
	}
	// pyrUp against the zero-inserted grid filtered directly.
	up := make([]float32, n*n)
	pyrUp(down, n/2, up, make([]float32, n*n/2))
	z := func(yy, xx int) float64 {
		if yy%2 != 0 || xx%2 != 0 {
			return 0
		}
		return float64(down[(yy/2)*(n/2)+xx/2])
	}
	for y := 0; y < n; y++ {
		for x := 0; x < n; x++ {
			var s float64
			for dy := -2; dy <= 2; dy++ {
				for dx := -2; dx <= 2; dx++ {
					s += 4 * float64(binomial[dy+2]) * float64(binomial[dx+2]) * z(mirror(y+dy, n), mirror(x+dx, n))
				}
			}
			if d := math.Abs(s - float64(up[y*n+x])); d > 1e-5 {
				t.Fatalf("pyrUp at (%d,%d): %v, want %v", y, x, up[y*n+x], s)
			}
		}
	}
	// Constant plane: detail 0, low-pass constant.
	cst := make([]float32, 2*32*32)
	for i := range cst {
		cst[i] = 0.25
	}
	pyr := make([][]float32, 2)
	laplacian(cst, 2, 32, 2, pyr)
	for i, v := range pyr[0] {
		if math.Abs(float64(v)) > 1e-6 {
			t.Fatalf("constant image: detail %v at %d", v, i)
		}
	}
	for _, v := range pyr[1] {
		if math.Abs(float64(v)-0.25) > 1e-6 {
			t.Fatalf("constant image: low-pass %v", v)
		}
	}
	// Collapse: image = detail + up(low-pass).
	img32 := shapes(9, 1, 1, 32).Data
	pyr = make([][]float32, 3)
	laplacian(img32, 1, 32, 3, pyr)
	rec16 := make([]float32, 16*16)
	pyrUp(pyr[2], 8, rec16, make([]float32, 8*16))
	for i := range rec16 {
		rec16[i] += pyr[1][i]
	}
	rec32 := make([]float32, 32*32)
	pyrUp(rec16, 16, rec32, make([]float32, 16*32))
	for i := range rec32 {
		if d := math.Abs(float64(rec32[i] + pyr[0][i] - img32[i])); d > 1e-5 {
			t.Fatalf("collapse at %d: off by %v", i, d)
		}
	}
}

// BenchmarkDistance1000 is the size Gantry uses at snapshots on Fashion-MNIST: 1000 generated
// against 1000 real 32x32 grayscale images.
func BenchmarkDistance1000x1x32(b *testing.B) {
	a, c := shapes(1, 1000, 1, 32), noise(2, 1000, 1, 32)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Distance(a, c, Options{Seed: 1}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDistance2000x3x32(b *testing.B) {
	a, c := shapes(1, 2000, 3, 32), noise(2, 2000, 3, 32)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Distance(a, c, Options{Seed: 1}); err != nil {
			b.Fatal(err)
		}
	}
}
