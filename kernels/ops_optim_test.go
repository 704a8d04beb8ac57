package kernels

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"testing"
)

func TestAdamMatchesFloat64Steps(t *testing.T) {
	d := newDevice(t)
	rng := rand.New(rand.NewPCG(61, 62))
	for _, n := range []int{1, 7, 100003} {
		for _, b1 := range []float64{0, 0.9} { // StyleGAN uses beta1 0
			ph, mh, vh := randn(rng, n), make([]float32, n), make([]float32, n)
			p, m, v := upload(t, d, ph, n), upload(t, d, mh, n), upload(t, d, vh, n)
			p64, m64, v64 := to64(ph), make([]float64, n), make([]float64, n)
			const lr, b2, eps = 0.01, 0.99, 1e-8
			for step := 1; step <= 4; step++ {
				gh := randn(rng, n)
				gh[0] *= 1e-3 // a small gradient, where eps matters less than sqrt(v)
				bc1, bc2 := 1-math.Pow(b1, float64(step)), 1-math.Pow(b2, float64(step))
				ap := AdamParams{LR: lr, Beta1: float32(b1), Beta2: b2, Eps: eps, BC1: float32(bc1), BC2: float32(bc2)}
				if err := d.Adam(p, upload(t, d, gh, n), m, v, ap); err != nil {
					t.Fatal(err)
				}
				for i := range p64 {
					g := float64(gh[i])
					m64[i] = b1*m64[i] + (1-b1)*g
					v64[i] = b2*v64[i] + (1-b2)*g*g
					p64[i] -= lr * (m64[i] / bc1) / (math.Sqrt(v64[i]/bc2) + eps)
				}
			}
			assertClose(t, "adam p", download(t, p), p64, 1e-5, 1e-5)
			assertClose(t, "adam m", download(t, m), m64, 1e-6, 1e-5)
			assertClose(t, "adam v", download(t, v), v64, 1e-6, 1e-5)
		}
	}
	x := zeros(t, d, 4)
	wantError(t, "length", d.Adam(x, zeros(t, d, 5), x, x, AdamParams{LR: 1, BC1: 1, BC2: 1}), "adam", "g", "[5]", "[4]")
	wantError(t, "beta", d.Adam(x, x, x, x, AdamParams{LR: 1, Beta2: 1, BC1: 1, BC2: 1}), "adam", "beta2 1")
	wantError(t, "bias correction", d.Adam(x, x, x, x, AdamParams{LR: 1}), "adam", "bc1 0")
}

func TestSanitizeCountsAndReplaces(t *testing.T) {
	d := newDevice(t)
	inf, nan := float32(math.Inf(1)), float32(math.NaN())
	x := upload(t, d, []float32{1, nan, inf, -inf, -2, 0, float32(math.MaxFloat32)}, 7)
	n, err := d.Sanitize(x, 1e5)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("sanitize counted %d non-finite values, want 3", n)
	}
	assertClose(t, "sanitize", download(t, x), []float64{1, 0, 1e5, -1e5, -2, 0, math.MaxFloat32}, 0, 0)
	// A large buffer (threaded path) with scattered non-finite values.
	rng := rand.New(rand.NewPCG(63, 64))
	big := randn(rng, 1<<18)
	want := 0
	for i := 0; i < len(big); i += 997 {
		big[i] = []float32{nan, inf, -inf}[want%3]
		want++
	}
	bv := upload(t, d, big, len(big))
	if n, err = d.Sanitize(bv, 7); err != nil || n != int64(want) {
		t.Fatalf("sanitize big: %d, %v; want %d", n, err, want)
	}
	if n, err = d.Sanitize(bv, 7); err != nil || n != 0 {
		t.Fatalf("sanitize twice: %d, %v; want 0", n, err)
	}
	got := download(t, bv)
	for i := 0; i < len(big); i += 997 {
		if w := []float32{0, 7, -7}[(i/997)%3]; got[i] != w {
			t.Fatalf("element %d = %g, want %g", i, got[i], w)
		}
	}
	_, err = d.Sanitize(bv, float32(math.NaN()))
	wantError(t, "nan limit", err, "sanitize", "limit")
}

// philox is a Go reference of Philox4x32-10.
func philox(ctr [4]uint32, k0, k1 uint32) [4]uint32 {
	for r := 0; r < 10; r++ {
		hi0, lo0 := bits.Mul32(0xD2511F53, ctr[0])
		hi1, lo1 := bits.Mul32(0xCD9E8D57, ctr[2])
		ctr = [4]uint32{hi1 ^ ctr[1] ^ k0, lo1, hi0 ^ ctr[3] ^ k1, lo0}
		k0 += 0x9E3779B9
		k1 += 0xBB67AE85
	}
	return ctr
}

// refNormal is the documented sample for counter c of stream seed.
func refNormal(seed, c uint64) float64 {
	o := philox([4]uint32{uint32(c), uint32(c >> 32), 0, 0}, uint32(seed), uint32(seed>>32))
	a := (uint64(o[0])<<32 | uint64(o[1])) >> 11
	b := (uint64(o[2])<<32 | uint64(o[3])) >> 11
	u1, u2 := (float64(a)+1)/(1<<53), float64(b)/(1<<53)
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
}

func TestPhiloxKnownAnswers(t *testing.T) {
	// Known-answer vectors of the Random123 distribution for philox4x32, 10 rounds.
	cases := []struct {
		ctr    [4]uint32
		k0, k1 uint32
		want   [4]uint32
	}{
		{[4]uint32{0, 0, 0, 0}, 0, 0, [4]uint32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
		{[4]uint32{^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0)}, ^uint32(0), ^uint32(0), [4]uint32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
		{[4]uint32{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, 0xa4093822, 0x299f31d0, [4]uint32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
	}
	for _, c := range cases {
		if got := philox(c.ctr, c.k0, c.k1); got != c.want {
			t.Fatalf("philox(%x, %x %x) = %x, want %x", c.ctr, c.k0, c.k1, got, c.want)
		}
	}
}

func TestRandnStatisticsDeterminismAndOffsets(t *testing.T) {
	d1 := newDevice(t)
	d2, err := Open(Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	const n = 1 << 20
	const seed = 0x5eed_1234_abcd
	y := zeros(t, d1, n)
	if err := d1.Randn(y, seed, 0, 0, 1); err != nil {
		t.Fatal(err)
	}
	got := download(t, y)
	// The kernel produces exactly the documented generator's samples.
	for _, i := range []int{0, 1, 2, 12345, n - 1} {
		if want := refNormal(seed, uint64(i)); math.Abs(float64(got[i])-want) > 1e-6*(1+math.Abs(want)) {
			t.Fatalf("randn[%d] = %g, reference %g", i, got[i], want)
		}
	}
	// Moments and shape of the distribution: standard errors are about 1e-3.
	var s, s2, s4 float64
	within1 := 0
	for _, v := range got {
		x := float64(v)
		s += x
		s2 += x * x
		s4 += x * x * x * x
		if math.Abs(x) < 1 {
			within1++
		}
	}
	mean := s / n
	std := math.Sqrt(s2/n - mean*mean)
	kurt := s4 / n / (std * std * std * std)
	frac := float64(within1) / n
	if math.Abs(mean) > 0.005 || math.Abs(std-1) > 0.005 || math.Abs(kurt-3) > 0.05 || math.Abs(frac-0.682689) > 0.003 {
		t.Fatalf("randn statistics: mean %g std %g kurtosis %g P(|x|<1) %g", mean, std, kurt, frac)
	}
	// The same bits with one thread.
	b, err := d2.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	if err := d2.Randn(b.View(n), seed, 0, 0, 1); err != nil {
		t.Fatal(err)
	}
	one := make([]float32, n)
	if err := b.Read(0, one); err != nil {
		t.Fatal(err)
	}
	for i := range one {
		if one[i] != got[i] {
			t.Fatalf("randn differs between 1 and 2 threads at %d: %g vs %g", i, one[i], got[i])
		}
	}
	// An offset continues the stream; mean and std scale it.
	const k = 777
	tail := zeros(t, d1, 1000)
	if err := d1.Randn(tail, seed, k, 3, 0.5); err != nil {
		t.Fatal(err)
	}
	want := make([]float64, 1000)
	for i := range want {
		want[i] = 3 + 0.5*float64(got[k+i])
	}
	assertClose(t, "randn offset", download(t, tail), want, 1e-6, 1e-6)
	// Another seed gives another stream.
	other := zeros(t, d1, 1000)
	if err := d1.Randn(other, seed+1, 0, 0, 1); err != nil {
		t.Fatal(err)
	}
	same := 0
	for i, v := range download(t, other) {
		if v == got[i] {
			same++
		}
	}
	if same > 1 {
		t.Fatalf("seeds %d and %d share %d of 1000 samples", uint64(seed), uint64(seed+1), same)
	}
	wantError(t, "negative std", d1.Randn(other, 1, 0, 0, -1), "randn", "std -1")
	tr := View{Buf: y.Buf, Shape: []int{2, 2}, Stride: []int{1, 2}}
	wantError(t, "strided", d1.Randn(tr, 1, 0, 0, 1), "randn", "dense")
}
