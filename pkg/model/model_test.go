package model

import (
	"testing"

	"github.com/gantry-ml/gantry/kernels"
)

func newDevice(t testing.TB) *kernels.Device {
	t.Helper()
	d, err := kernels.Open(kernels.Config{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// newNetworks lays out G and D for cfg, initialised from seed (G) and seed+1 (D) unless
// seed is 0, and frees them when the test ends.
func newNetworks(t testing.TB, d *kernels.Device, cfg Config, seed uint64) (*Generator, *Discriminator) {
	t.Helper()
	g, err := NewGenerator(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Params.Free)
	dd, err := NewDiscriminator(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dd.Params.Free)
	if seed != 0 {
		if err := g.Params.Init(seed); err != nil {
			t.Fatal(err)
		}
		if err := dd.Params.Init(seed + 1); err != nil {
			t.Fatal(err)
		}
	}
	return g, dd
}

func TestSG1024ParameterCounts(t *testing.T) {
	g, dd := newNetworks(t, newDevice(t), SG1024(), 0)
	// SG's printed network summaries for FFHQ 1024: G (= Gs) 26,219,627 and D 23,087,249.
	if n := g.Params.Len(); n != 26219627 {
		t.Errorf("G parameters: %d, want 26219627", n)
	}
	if n := dd.Params.Len(); n != 23087249 {
		t.Errorf("D parameters: %d, want 23087249", n)
	}
}
