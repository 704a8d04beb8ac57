package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Test helpers shared by every op test of this package: a device per test, uploads and
// downloads of host slices, and tolerance checks against float64 references.

func newDevice(t testing.TB) *Device {
	t.Helper()
	d, err := Open(Config{Threads: 2})
	if err != nil {
		t.Fatalf("open device: %v", err)
	}
	t.Cleanup(d.Close)
	return d
}

// upload allocates a dense buffer holding data with the given shape.
func upload(t testing.TB, d *Device, data []float32, shape ...int) View {
	t.Helper()
	if len(data) != Numel(shape) {
		t.Fatalf("upload: %d values for shape %v", len(data), shape)
	}
	b, err := d.Alloc(len(data))
	if err != nil {
		t.Fatalf("alloc: %v", err)
	}
	t.Cleanup(b.Free)
	if err := b.Write(0, data); err != nil {
		t.Fatalf("write: %v", err)
	}
	return b.View(shape...)
}

// zeros allocates a dense buffer of the given shape filled with a NaN sentinel, so that a
// kernel that forgets to write an element is caught.
func zeros(t testing.TB, d *Device, shape ...int) View {
	t.Helper()
	data := make([]float32, Numel(shape))
	for i := range data {
		data[i] = float32(math.NaN())
	}
	return upload(t, d, data, shape...)
}

// download reads a dense view back.
func download(t testing.TB, v View) []float32 {
	t.Helper()
	if !v.IsDense() {
		t.Fatalf("download: view %v is not dense", v)
	}
	out := make([]float32, v.Numel())
	if err := v.Buf.Read(v.Off, out); err != nil {
		t.Fatalf("read: %v", err)
	}
	return out
}

func randn(rng *rand.Rand, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64())
	}
	return out
}

func to64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// assertClose checks |got-want| <= atol + rtol*|want| elementwise.
func assertClose(t testing.TB, what string, got []float32, want []float64, atol, rtol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		g := float64(got[i])
		if math.IsNaN(g) || math.Abs(g-want[i]) > atol+rtol*math.Abs(want[i]) {
			t.Fatalf("%s: element %d = %g, want %g (atol %g rtol %g)", what, i, g, want[i], atol, rtol)
		}
	}
}
