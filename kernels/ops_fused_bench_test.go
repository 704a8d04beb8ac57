package kernels

import (
	"math/rand/v2"
	"testing"
)

// Benchmarks of the memory-bound fused ops at StyleGAN shapes (batch 32, 128 channels at
// 32x32). SetBytes counts the bytes each call must move, so the reported MB/s is the
// achieved memory bandwidth.

func benchInputs(b *testing.B, shape ...int) (*Device, View, View, View) {
	d := newDevice(b)
	rng := rand.New(rand.NewPCG(1, 1))
	n := Numel(shape)
	return d, upload(b, d, randn(rng, n), shape...), upload(b, d, randn(rng, n), shape...), zeros(b, d, shape...)
}

func BenchmarkBiasActLReLU(b *testing.B) {
	d, x, _, y := benchInputs(b, 32, 128, 32, 32)
	bias := upload(b, d, make([]float32, 128), 128)
	p := ActParams{Act: ActLReLU, Alpha: 0.2, Gain: 1.4142135}
	b.SetBytes(int64(8 * x.Numel()))
	for b.Loop() {
		if err := d.BiasAct(x, bias, y, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBiasActGrad(b *testing.B) {
	d, dy, y, dx := benchInputs(b, 32, 128, 32, 32)
	p := ActParams{Act: ActLReLU, Alpha: 0.2, Gain: 1.4142135}
	b.SetBytes(int64(12 * y.Numel()))
	for b.Loop() {
		if err := d.BiasActGrad(dy, y, dx, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAdaIN(b *testing.B) {
	d, x, _, y := benchInputs(b, 32, 128, 32, 32)
	xn, rstd := zeros(b, d, 32, 128, 32, 32), zeros(b, d, 32, 128)
	s, bb := zeros(b, d, 32, 128), zeros(b, d, 32, 128)
	if err := d.Fill(s, 0.1); err != nil {
		b.Fatal(err)
	}
	if err := d.Fill(bb, 0.1); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(12 * x.Numel())) // read x, write y and xn
	for b.Loop() {
		if err := d.AdaIN(x, s, bb, y, xn, rstd, 1e-8); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAdaINBwd(b *testing.B) {
	d, dy, xn, dx := benchInputs(b, 32, 128, 32, 32)
	rstd, s, ds, db := zeros(b, d, 32, 128), zeros(b, d, 32, 128), zeros(b, d, 32, 128), zeros(b, d, 32, 128)
	for _, v := range []View{rstd, s} {
		if err := d.Fill(v, 1); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(12 * dy.Numel())) // read dy and xn, write dx
	for b.Loop() {
		if err := d.AdaINBwd(dy, xn, rstd, s, dx, ds, db); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPixelNorm(b *testing.B) {
	d, x, _, y := benchInputs(b, 32, 128, 32, 32)
	b.SetBytes(int64(8 * x.Numel()))
	for b.Loop() {
		if err := d.PixelNorm(x, y, 1e-8); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRandn(b *testing.B) {
	d, _, _, y := benchInputs(b, 1<<20)
	b.SetBytes(int64(4 * y.Numel()))
	for b.Loop() {
		if err := d.Randn(y, 1, 0, 0, 1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAdam(b *testing.B) {
	d, p, g, m := benchInputs(b, 1<<22)
	v := zeros(b, d, 1<<22)
	if err := d.Fill(v, 1); err != nil {
		b.Fatal(err)
	}
	ap := AdamParams{LR: 1e-3, Beta2: 0.99, Eps: 1e-8, BC1: 1, BC2: 1}
	b.SetBytes(int64(28 * p.Numel())) // read p g m v, write p m v
	for b.Loop() {
		if err := d.Adam(p, g, m, v, ap); err != nil {
			b.Fatal(err)
		}
	}
}
