package train

import (
	"math"
	"testing"
)

func maxDiff(a, b []float32) float64 {
	m := 0.0
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i]-b[i])))
	}
	return m
}

func TestZZDiag(t *testing.T) {
	tr := trainedTiny(t)
	o := GenOptions{Psi: 0, Cutoff: 6, NoiseMode: "none", UseAverage: true}
	im := gen(t, tr, []uint64{0, 7, 99}, o)
	t.Logf("psi0 diffs %g %g", maxDiff(im[0], im[1]), maxDiff(im[0], im[2]))
	o = GenOptions{Psi: 1, NoiseMode: "none", UseAverage: true}
	all := gen(t, tr, []uint64{1, 2, 3, 4, 5}, o)
	alone := gen(t, tr, []uint64{3}, o)
	t.Logf("batch diffs %g", maxDiff(all[2], alone[0]))
	// mapping only
	tp := tr.tp
	tp.Reset()
	p := tr.Gs.Params.Bind(tp, false)
	w5, _ := tp.ToHost(tr.seedW(tr.Gs, p, []uint64{1, 2, 3, 4, 5}))
	w1, _ := tp.ToHost(tr.seedW(tr.Gs, p, []uint64{3}))
	t.Logf("w diffs %g", maxDiff(w5[32:48], w1))
}
