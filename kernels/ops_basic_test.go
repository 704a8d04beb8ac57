package kernels

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestGemmMatchesReference(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct{ m, n, k int }{{1, 1, 1}, {3, 5, 7}, {17, 9, 33}, {64, 1, 13}} {
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				ashape := []int{c.m, c.k}
				if ta {
					ashape = []int{c.k, c.m}
				}
				bshape := []int{c.k, c.n}
				if tb {
					bshape = []int{c.n, c.k}
				}
				ah, bh, ch := randn(rng, c.m*c.k), randn(rng, c.k*c.n), randn(rng, c.m*c.n)
				a, b, cc := upload(t, d, ah, ashape...), upload(t, d, bh, bshape...), upload(t, d, ch, c.m, c.n)
				if err := d.Gemm(ta, tb, 0.5, a, b, 2, cc); err != nil {
					t.Fatal(err)
				}
				want := make([]float64, c.m*c.n)
				for i := 0; i < c.m; i++ {
					for j := 0; j < c.n; j++ {
						s := 0.0
						for p := 0; p < c.k; p++ {
							av := ah[i*c.k+p]
							if ta {
								av = ah[p*c.m+i]
							}
							bv := bh[p*c.n+j]
							if tb {
								bv = bh[j*c.k+p]
							}
							s += float64(av) * float64(bv)
						}
						want[i*c.n+j] = 0.5*s + 2*float64(ch[i*c.n+j])
					}
				}
				assertClose(t, "gemm", download(t, cc), want, 1e-4, 1e-4)
			}
		}
	}
}

func TestBinaryBroadcastAndReduce(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(3, 4))
	shape := []int{3, 5, 1, 7} // odd sizes, a 1-sized dim
	ah := randn(rng, 3*5*7)
	bh := randn(rng, 5) // per-channel, broadcast over n, h, w
	a := upload(t, d, ah, shape...)
	b := upload(t, d, bh, 1, 5, 1, 1)
	bb, err := b.Broadcast(shape...)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []BinaryOp{Add, Sub, Mul, Div, Maximum, Minimum} {
		y := zeros(t, d, shape...)
		if err := d.Binary(op, a, bb, y, 2, 0); err != nil {
			t.Fatal(err)
		}
		want := make([]float64, len(ah))
		for i := range ah {
			x, c := float64(ah[i]), float64(bh[(i/7)%5])
			var r float64
			switch op {
			case Add:
				r = x + c
			case Sub:
				r = x - c
			case Mul:
				r = x * c
			case Div:
				r = x / c
			case Maximum:
				r = math.Max(x, c)
			case Minimum:
				r = math.Min(x, c)
			}
			want[i] = 2 * r
		}
		assertClose(t, "binary", download(t, y), want, 1e-5, 1e-5)
	}
	// Sum of squares per sample, and a channel sum, against float64.
	persample := zeros(t, d, 3, 1, 1, 1)
	if err := d.Reduce(ReduceSumSq, a, persample, 1); err != nil {
		t.Fatal(err)
	}
	chsum := zeros(t, d, 1, 5, 1, 1)
	if err := d.Reduce(ReduceSum, a, chsum, 0.5); err != nil {
		t.Fatal(err)
	}
	ws, wc := make([]float64, 3), make([]float64, 5)
	for i, v := range ah {
		ws[i/35] += float64(v) * float64(v)
		wc[(i/7)%5] += 0.5 * float64(v)
	}
	assertClose(t, "sumsq", download(t, persample), ws, 1e-4, 1e-5)
	assertClose(t, "chsum", download(t, chsum), wc, 1e-4, 1e-5)
}

func TestUnaryLerpCopy(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(5, 6))
	xh := randn(rng, 2*3*4)
	x := upload(t, d, xh, 2, 3, 4)
	fns := map[UnaryOp]func(float64) float64{
		Identity: func(v float64) float64 { return v },
		Square:   func(v float64) float64 { return v * v },
		Exp:      math.Exp,
		Softplus: func(v float64) float64 { return math.Log1p(math.Exp(v)) },
		Sigmoid:  func(v float64) float64 { return 1 / (1 + math.Exp(-v)) },
		Abs:      math.Abs,
	}
	for op, f := range fns {
		y := zeros(t, d, 2, 3, 4)
		if err := d.Unary(op, x, y, 3, 1); err != nil {
			t.Fatal(err)
		}
		want := make([]float64, len(xh))
		for i, v := range xh {
			want[i] = 3*f(float64(v)) + 1
		}
		assertClose(t, "unary", download(t, y), want, 1e-5, 1e-5)
	}
	// Lerp.
	bh := randn(rng, len(xh))
	b := upload(t, d, bh, 2, 3, 4)
	y := zeros(t, d, 2, 3, 4)
	if err := d.Lerp(x, b, y, 0.25); err != nil {
		t.Fatal(err)
	}
	want := make([]float64, len(xh))
	for i := range xh {
		want[i] = float64(xh[i]) + 0.25*(float64(bh[i])-float64(xh[i]))
	}
	assertClose(t, "lerp", download(t, y), want, 1e-6, 1e-6)
	// A transposing copy (permute) into a dense view.
	p, err := x.Permute(2, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	yt := zeros(t, d, 4, 2, 3)
	if err := d.Copy(p, yt); err != nil {
		t.Fatal(err)
	}
	got := download(t, yt)
	for i := 0; i < 4; i++ {
		for j := 0; j < 2; j++ {
			for k := 0; k < 3; k++ {
				if got[(i*2+j)*3+k] != xh[(j*3+k)*4+i] {
					t.Fatalf("permuted copy wrong at %d,%d,%d", i, j, k)
				}
			}
		}
	}
}

// TestFlipCopy copies views with reversed dims (negative strides) into dense buffers and
// back into a reversed destination.
func TestFlipCopy(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(3, 4))
	xh := randn(rng, 2*3*4*5)
	x := upload(t, d, xh, 2, 3, 4, 5)
	at := func(v []float32, i, j, k, l int) float32 { return v[((i*3+j)*4+k)*5+l] }
	for _, dims := range [][]int{{3}, {2, 3}, {0, 2}, {0, 1, 2, 3}, {}} {
		f, err := x.Flip(dims...)
		if err != nil {
			t.Fatal(err)
		}
		rev := [4]bool{}
		for _, dd := range dims {
			rev[dd] = true
		}
		idx := func(i, n int, r bool) int {
			if r {
				return n - 1 - i
			}
			return i
		}
		y := zeros(t, d, 2, 3, 4, 5)
		if err := d.Copy(f, y); err != nil {
			t.Fatalf("flip %v: %v", dims, err)
		}
		got := download(t, y)
		for i := 0; i < 2; i++ {
			for j := 0; j < 3; j++ {
				for k := 0; k < 4; k++ {
					for l := 0; l < 5; l++ {
						want := at(xh, idx(i, 2, rev[0]), idx(j, 3, rev[1]), idx(k, 4, rev[2]), idx(l, 5, rev[3]))
						if g := at(got, i, j, k, l); g != want {
							t.Fatalf("flip %v at %d,%d,%d,%d: %g, want %g", dims, i, j, k, l, g, want)
						}
					}
				}
			}
		}
		// Copying into a flipped destination undoes the flip.
		z := zeros(t, d, 2, 3, 4, 5)
		zf, _ := z.Flip(dims...)
		if err := d.Copy(y, zf); err != nil {
			t.Fatalf("copy into flip %v: %v", dims, err)
		}
		back := download(t, z)
		for i := range xh {
			if back[i] != xh[i] {
				t.Fatalf("flip %v twice: element %d is %g, want %g", dims, i, back[i], xh[i])
			}
		}
	}
	if _, err := x.Flip(4); err == nil || !strings.Contains(err.Error(), "flip") {
		t.Errorf("flip of dim 4 of a 4-D view: %v, want an error naming flip", err)
	}
	if _, err := x.Flip(1, 1); err == nil {
		t.Error("flip of a repeated dim: no error")
	}
}

func TestBadOperandsGiveNamedErrors(t *testing.T) {
	d := newDevice(t)
	a := upload(t, d, make([]float32, 6), 2, 3)
	b := upload(t, d, make([]float32, 6), 3, 2)
	c := upload(t, d, make([]float32, 4), 2, 2)
	cases := []struct {
		name string
		err  error
		want []string
	}{
		{"gemm inner mismatch", d.Gemm(false, false, 1, a, a, 0, c), []string{"gemm", "[2,3]", "[2,2]"}},
		{"binary shape", d.Binary(Add, a, b, a, 1, 0), []string{"binary", "[3,2]", "[2,3]"}},
		{"view outside buffer", d.Fill(View{Buf: a.Buf, Off: 4, Shape: []int{2, 3}, Stride: []int{3, 1}}, 0), []string{"fill", "outside"}},
		{"too many dims", d.Fill(View{Buf: a.Buf, Shape: []int{1, 1, 1, 1, 6}, Stride: []int{6, 6, 6, 6, 1}}, 0), []string{"fill", "dims"}},
		{"reduce bad shape", d.Reduce(ReduceSum, a, b, 1), []string{"reduce", "[2,3]", "[3,2]"}},
	}
	for _, c := range cases {
		var ke *Error
		if !errors.As(c.err, &ke) {
			t.Fatalf("%s: got %v, want *kernels.Error", c.name, c.err)
		}
		for _, w := range c.want {
			if !strings.Contains(c.err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, c.err, w)
			}
		}
	}
	freed, _ := d.Alloc(4)
	freed.Free()
	if err := d.Fill(freed.View(4), 0); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Errorf("fill on a freed buffer: got %v", err)
	}
}

func TestArenaSteadyStateAllocatesNothing(t *testing.T) {
	d := newDevice(t)
	a := NewArena(d)
	defer a.Close()
	step := func() {
		for _, n := range []int{10, 20, 10, 7} {
			if _, err := a.Get(n); err != nil {
				t.Fatal(err)
			}
		}
		a.Reset()
	}
	step()
	first := a.Allocs()
	before := d.BytesInUse()
	for i := 0; i < 100; i++ {
		step()
	}
	if a.Allocs() != first || d.BytesInUse() != before {
		t.Fatalf("arena grew: allocs %d -> %d, bytes %d -> %d", first, a.Allocs(), before, d.BytesInUse())
	}
	a.Close()
	if got := d.BytesInUse(); got != 0 {
		t.Fatalf("bytes in use after close: %d", got)
	}
}
