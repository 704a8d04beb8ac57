package train

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/gantry-ml/gantry/pkg/model"
	"github.com/gantry-ml/gantry/pkg/schedule"
)

// BenchmarkStepS32Small times one full training step (D step with R1, G step, EMA) at the
// S32-small config of `make bench-train` (hack/benchtrain is the same step as a program,
// beside its PyTorch twin). Run: go test -run '^$' -bench StepS32Small -benchtime 3x ./pkg/train
func BenchmarkStepS32Small(b *testing.B) {
	const batch = 32
	mc := model.Config{Resolution: 32, Channels: 3, ZDim: 128, WDim: 128, MappingLayers: 8,
		MappingLRMul: 0.01, FmapBase: 1024, FmapDecay: 1, FmapMax: 128, MbstdGroup: 4,
		MbstdFeatures: 1, FusedScaleMin: 128, UseNoise: true, Blur: []float64{1, 2, 1}}
	sc := schedule.Default()
	sc.FixedResolution = true
	sc.MinibatchBase = batch
	sc.Minibatch = nil
	sched, err := schedule.New(sc, mc.Resolution)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := New(newDevice(b), Options{
		Model: mc, Schedule: sched, R1Gamma: 10, R1Interval: 1, StyleMixing: 0.9, WAvgBeta: 0.995,
		EMAHalfLife: 10, Beta1: 0, Beta2: 0.99, Epsilon: 1e-8, ResetAdam: true, Seed: 1, World: 1,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	rng := rand.New(rand.NewPCG(7, 11))
	data := make([]float32, batch*mc.Channels*mc.Resolution*mc.Resolution)
	for i := range data {
		data[i] = rng.Float32()*2 - 1
	}
	reals := Batch{Data: data, N: batch, C: mc.Channels, H: mc.Resolution, W: mc.Resolution}
	ctx := context.Background()
	if _, err := tr.Step(ctx, reals, Local{}); err != nil { // warm-up: first allocations
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := tr.Step(ctx, reals, Local{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "img/s")
}
