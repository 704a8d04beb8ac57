package train

import (
	"context"
	"math"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/gradcheck"
	"github.com/gantry-ml/gantry/pkg/model"
	"github.com/gantry-ml/gantry/pkg/schedule"
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

func tinyOptions(t testing.TB, world, rank int) Options {
	t.Helper()
	sc := schedule.Default()
	sc.InitialResolution = 4
	sc.LODTrainingKimg = 0.032
	sc.LODTransitionKimg = 0.032
	sc.TotalKimg = 1
	sc.MinibatchBase = 8
	sc.Minibatch = nil
	s, err := schedule.New(sc, 16)
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Model: model.Config{Resolution: 16, Channels: 1, ZDim: 16, WDim: 16, MappingLayers: 2, MappingLRMul: 0.01,
			FmapBase: 64, FmapDecay: 1, FmapMax: 16, MbstdGroup: 4, MbstdFeatures: 1, FusedScaleMin: 128,
			UseNoise: true, Blur: []float64{1, 2, 1}},
		Schedule: s, R1Gamma: 1, R1Interval: 1, StyleMixing: 0.9, WAvgBeta: 0.995, EMAHalfLife: 0.1,
		Beta1: 0, Beta2: 0.99, Epsilon: 1e-8, ResetAdam: true, Seed: 42, Rank: rank, World: world,
	}
}

// reals makes a deterministic batch at the plan's resolution for global samples
// [start, start+n).
func reals(p Plan, c int) Batch {
	r := p.State.Resolution
	per := c * r * r
	data := make([]float32, 0, p.N*per)
	for i := 0; i < p.N; i++ {
		v := gradcheck.Randn(uint64(1000+p.Start+i), per)
		for j := range v {
			v[j] = float32(math.Tanh(float64(v[j])))
		}
		data = append(data, v...)
	}
	return Batch{Data: data, N: p.N, C: c, H: r, W: r}
}

func TestTrainingStepsGrowAndStayFinite(t *testing.T) {
	d := newDevice(t)
	tr, err := New(d, tinyOptions(t, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	seen := map[string]bool{}
	for i := 0; i < 40; i++ {
		p := tr.Plan()
		st, err := tr.Step(ctx, reals(p, 1), Local{})
		if err != nil {
			t.Fatal(err)
		}
		seen[st.State.Stage()] = true
		for _, v := range []float64{st.LossD, st.LossG, st.R1} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("step %d: non-finite loss %+v", i, st)
			}
		}
	}
	t.Logf("stages: %v, counters %+v", seen, tr.C)
	if !seen["16x16 stable"] || !seen["8x8 fading in"] {
		t.Fatalf("did not grow to 16x16: %v", seen)
	}
	img, shape, err := tr.Generate([]uint64{1, 2, 3}, GenOptions{Psi: 0.7, Cutoff: 8, NoiseMode: "const"})
	if err != nil {
		t.Fatal(err)
	}
	if shape[0] != 3 || shape[1] != 1 || shape[2] != 16 || len(img) != 3*256 {
		t.Fatalf("generated shape %v", shape)
	}
}
