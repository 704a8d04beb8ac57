package kernels

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// cpuSeconds is the process's CPU time. Benchmarks report work per CPU-second times the
// thread count next to the wall-clock rate: on a loaded machine it does not charge the time
// other processes take, while time spent spinning still counts.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// measure runs f b.N times and reports work/s by wall and by CPU clock in unit.
func measure(b *testing.B, d *Device, work float64, unit string, f func() error) {
	c0 := cpuSeconds()
	for b.Loop() {
		if err := f(); err != nil {
			b.Fatal(err)
		}
	}
	cpu := cpuSeconds() - c0
	b.ReportMetric(work*float64(b.N)/b.Elapsed().Seconds()/1e9, unit)
	b.ReportMetric(work*float64(b.N)/(cpu/float64(d.Threads()))/1e9, "cpu-"+unit)
}

// Benchmarks of the convolution and FIR ops on StyleGAN shapes (batch 32, 2 threads),
// one per pass so that a regression shows which pass it is in. `make bench-kernels` prints
// the comparison with PyTorch; these are for profiling (go test -bench Conv -cpuprofile).

func BenchmarkConv(b *testing.B) {
	for _, c := range []struct{ cin, cout, hw, k, s int }{{128, 128, 32, 3, 1}, {256, 256, 16, 3, 1}, {256, 256, 8, 3, 1}, {128, 3, 32, 1, 1}, {128, 128, 32, 4, 2}} {
		d := newDevice(b)
		rng := rand.New(rand.NewPCG(1, 2))
		n := 32
		x := upload(b, d, randn(rng, n*c.cin*c.hw*c.hw), n, c.cin, c.hw, c.hw)
		w := upload(b, d, randn(rng, c.cout*c.cin*c.k*c.k), c.cout, c.cin, c.k, c.k)
		pad := c.k / 2
		if c.s == 2 {
			pad = 1 // StyleGAN's fused 4x4 stride-2 down conv; its data gradient is the fused up
		}
		ho := (c.hw+2*pad-c.k)/c.s + 1
		y := upload(b, d, randn(rng, n*c.cout*ho*ho), n, c.cout, ho, ho)
		p := ConvParams{Stride: c.s, Pad: pad, Alpha: 1}
		flops := 2 * float64(n*c.cout*c.cin*c.k*c.k*ho*ho)
		name := fmt.Sprintf("%d-%d@%d/k%ds%d", c.cin, c.cout, c.hw, c.k, c.s)
		for _, pass := range []struct {
			name string
			f    func() error
		}{
			{"fwd", func() error { return d.Conv2d(x, w, y, p) }},
			{"bwd_data", func() error { return d.Conv2dBwdData(y, w, x, p) }},
			{"bwd_filter", func() error { return d.Conv2dBwdFilter(x, y, w, p) }},
		} {
			b.Run(name+"/"+pass.name, func(b *testing.B) { measure(b, d, flops, "GFLOP/s", pass.f) })
		}
	}
}

func BenchmarkFIR(b *testing.B) {
	d := newDevice(b)
	rng := rand.New(rand.NewPCG(3, 4))
	n, c, hw := 32, 128, 32
	taps := []float32{0.25, 0.5, 0.25}
	x := upload(b, d, randn(rng, n*c*hw*hw), n, c, hw, hw)
	for _, fc := range []struct {
		name string
		p    FIRParams
	}{
		{"blur", FIRParams{Pad0: 1, Pad1: 1, Gain: 1}},
		{"blur_down2", FIRParams{Down: 2, Pad0: 1, Gain: 1}},
		{"up2_blur", FIRParams{Up: 2, Pad0: 2, Gain: 4}},
	} {
		ho, wo, err := FIROutSize(hw, hw, len(taps), fc.p)
		if err != nil {
			b.Fatal(err)
		}
		y := zeros(b, d, n, c, ho, wo)
		g, _ := FIRGradParams(hw, hw, len(taps), fc.p)
		bytes := 4 * float64(n*c*(hw*hw+ho*wo))
		b.Run(fc.name+"/fwd", func(b *testing.B) {
			measure(b, d, bytes, "GB/s", func() error { return d.FIR(x, y, taps, fc.p) })
		})
		b.Run(fc.name+"/grad", func(b *testing.B) {
			measure(b, d, bytes, "GB/s", func() error { return d.FIR(y, x, taps, g) })
		})
	}
}

// BenchmarkConvS32 covers the convolutions of the S32-small training step (hack/benchtrain,
// batch 32): the 3x3 convs of G and D at 32, 16 and 8 px and the 4x4 stride-2 convs of D's
// down-convs, whose data gradient is also G's up-conv (a transposed conv).
func BenchmarkConvS32(b *testing.B) {
	for _, c := range []struct{ cin, cout, hw, k, s int }{
		{64, 64, 32, 3, 1}, {128, 64, 32, 3, 1}, {128, 128, 16, 3, 1}, {128, 128, 8, 3, 1},
		{64, 128, 32, 4, 2}, {128, 128, 16, 4, 2}, {128, 128, 8, 4, 2},
	} {
		d := newDevice(b)
		rng := rand.New(rand.NewPCG(1, 2))
		n := 32
		x := upload(b, d, randn(rng, n*c.cin*c.hw*c.hw), n, c.cin, c.hw, c.hw)
		w := upload(b, d, randn(rng, c.cout*c.cin*c.k*c.k), c.cout, c.cin, c.k, c.k)
		pad := 1
		ho := (c.hw+2*pad-c.k)/c.s + 1
		y := upload(b, d, randn(rng, n*c.cout*ho*ho), n, c.cout, ho, ho)
		p := ConvParams{Stride: c.s, Pad: pad, Alpha: 1}
		flops := 2 * float64(n*c.cout*c.cin*c.k*c.k*ho*ho)
		name := fmt.Sprintf("%d-%d@%d/k%ds%d", c.cin, c.cout, c.hw, c.k, c.s)
		for _, pass := range []struct {
			name string
			f    func() error
		}{
			{"fwd", func() error { return d.Conv2d(x, w, y, p) }},
			{"bwd_data", func() error { return d.Conv2dBwdData(y, w, x, p) }},
			{"bwd_filter", func() error { return d.Conv2dBwdFilter(x, y, w, p) }},
		} {
			b.Run(name+"/"+pass.name, func(b *testing.B) { measure(b, d, flops, "GFLOP/s", pass.f) })
		}
	}
}
