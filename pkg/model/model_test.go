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
	t.Logf("G %d D %d layers %d", g.Params.Len(), dd.Params.Len(), cfg.NumLayers())
}
