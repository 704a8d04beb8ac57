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

func TestSG1024ParameterCounts(t *testing.T) {
	d := newDevice(t)
	cfg := SG1024()
	g, err := NewGenerator(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Params.Free()
	dd, err := NewDiscriminator(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dd.Params.Free()
	// SG's printed network summaries for FFHQ 1024: G (= Gs) 26,219,627 and D 23,087,249.
	if n := g.Params.Len(); n != 26219627 {
		t.Errorf("G parameters: %d, want 26219627", n)
	}
	if n := dd.Params.Len(); n != 23087249 {
		t.Errorf("D parameters: %d, want 23087249", n)
	}
}
