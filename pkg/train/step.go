package train

import (
	"context"
	"fmt"
	"math"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/model"
	"github.com/gantry-ml/gantry/pkg/schedule"
)

// Batch is this worker's share of the real images of a step: float32 NCHW in [-1, 1] at
// the resolution of the schedule's current lod.
type Batch struct {
	Data []float32
	N    int
	C    int
	H    int
	W    int
}

// Plan is what a step needs to know before it runs: the schedule state and this worker's
// share of the global minibatch.
type Plan struct {
	State schedule.State
	Start int // first global sample index of this worker
	N     int // samples of this worker
}

// Plan returns the schedule state of the next step and this worker's share.
func (t *Trainer) Plan() Plan {
	st := t.State()
	start, n := LocalShare(st.Minibatch, t.opts.Rank, t.opts.World)
	return Plan{State: st, Start: start, N: n}
}

// Step runs one training step (D then G) on this worker's reals and advances the counters
// by the global minibatch. Every worker must call Step with the same counters and its own
// share; red sums gradients over the workers.
func (t *Trainer) Step(ctx context.Context, reals Batch, red Reducer) (Stats, error) {
	plan := t.Plan()
	st := plan.State
	res := st.Resolution
	if reals.N != plan.N || reals.C != t.opts.Model.Channels || reals.H != res || reals.W != res || len(reals.Data) != reals.N*reals.C*res*res {
		return Stats{}, fmt.Errorf("%w: got %d x %dx%dx%d (%d values), step %d wants %d x %dx%dx%d",
			ErrBatch, reals.N, reals.C, reals.H, reals.W, len(reals.Data), t.C.Step, plan.N, t.opts.Model.Channels, res, res)
	}
	stats := Stats{State: st}
	if t.opts.ResetAdam && t.C.Step > 0 {
		if t.opts.Schedule.ResetOptimizer(float64(t.C.PrevImages)/1000, st.Kimg) {
			if err := t.ResetAdam(); err != nil {
				return stats, err
			}
			t.C.ResetCount++
			stats.Reset = true
		}
	}
	// Each worker's losses are means over its share; weighting them by share/global makes
	// the all-reduced sum the global mean, whatever the split.
	weight := float32(plan.N) / float32(st.Minibatch)
	lossD, r1, err := t.stepD(ctx, reals, plan, weight, red)
	if err != nil {
		return stats, fmt.Errorf("train: D step %d: %w", t.C.Step, err)
	}
	stats.LossD, stats.R1 = lossD, r1
	stats.SkippedD = t.C.SkippedD > 0 && t.lastSkipD
	lossG, err := t.stepG(ctx, plan, weight, red)
	if err != nil {
		return stats, fmt.Errorf("train: G step %d: %w", t.C.Step, err)
	}
	stats.LossG = lossG
	stats.SkippedG = t.lastSkipG
	if err := t.updateEMA(st.Minibatch); err != nil {
		return stats, err
	}
	t.C.PrevImages = t.C.Images
	t.C.Images += int64(st.Minibatch)
	t.C.Step++
	return stats, nil
}

// stepD computes D's gradients on fakes and reals (and R1), reduces and applies them.
func (t *Trainer) stepD(ctx context.Context, reals Batch, plan Plan, weight float32, red Reducer) (loss, r1 float64, err error) {
	tp := t.tp
	tp.Reset()
	lod := plan.State.LOD
	pd := t.D.Params.Bind(tp, true)
	var fakes *autograd.Tensor
	tp.NoGrad(func() {
		pg := t.G.Params.Bind(tp, false)
		fakes, _ = t.generate(pg, t.C.Step, 0, plan.Start, plan.N, lod)
	})
	x := t.fadeReals(tp.FromHost(reals.Data, reals.N, reals.C, reals.H, reals.W), lod)
	doR1 := t.opts.R1Gamma > 0 && t.C.Step%int64(t.opts.R1Interval) == 0
	if doR1 {
		x = tp.RequireGrad(x)
	}
	dFake := t.D.Forward(tp, pd, fakes, lod)
	dReal := t.D.Forward(tp, pd, x, lod)
	// softplus(D(fake)) + softplus(-D(real)): the non-saturating logistic loss of D.
	lossT := tp.Add(tp.Mean(tp.Softplus(dFake)), tp.Mean(tp.Softplus(tp.Scale(dReal, -1, 0))))
	total := lossT
	var r1T *autograd.Tensor
	if doR1 {
		gx, err := tp.Grad(tp.Sum(dReal), []*autograd.Tensor{x}, nil, true)
		if err != nil {
			return 0, 0, err
		}
		// R1 = gamma/2 * mean ||dD/dx||^2, scaled by the interval when applied lazily.
		r1T = tp.Scale(tp.Mean(tp.SumSq(gx[0], 1, 2, 3)), float32(t.opts.R1Gamma/2), 0)
		total = tp.Add(total, tp.Scale(r1T, float32(t.opts.R1Interval), 0))
	}
	grads, err := tp.Grad(total, pd.Tensors(), nil, false)
	if err != nil {
		return 0, 0, err
	}
	if err := pd.StoreGrads(tp, grads); err != nil {
		return 0, 0, err
	}
	scal := []*autograd.Tensor{lossT}
	if r1T != nil {
		scal = append(scal, tp.Reshape(r1T, 1, 1))
	}
	vals, err := t.reduce(ctx, t.D.Params, weight, red, scal...)
	if err != nil {
		return 0, 0, err
	}
	skip, err := t.apply(t.D.Params, t.mD, t.vD, &t.C.AdamStepD, plan.State.DLR)
	if err != nil {
		return 0, 0, err
	}
	t.lastSkipD = skip
	if skip {
		t.C.SkippedD++
	}
	if len(vals) > 1 {
		r1 = vals[1]
	}
	return vals[0], r1, nil
}

// stepG computes G's gradients through D on fresh fakes, reduces and applies them, and
// updates the running average of w.
func (t *Trainer) stepG(ctx context.Context, plan Plan, weight float32, red Reducer) (float64, error) {
	tp := t.tp
	tp.Reset()
	lod := plan.State.LOD
	pg := t.G.Params.Bind(tp, true)
	pd := t.D.Params.Bind(tp, false)
	fakes, w := t.generate(pg, t.C.Step, 1, plan.Start, plan.N, lod)
	// softplus(-D(G(z))): the non-saturating logistic loss of G.
	lossT := tp.Mean(tp.Softplus(tp.Scale(t.D.Forward(tp, pd, fakes, lod), -1, 0)))
	grads, err := tp.Grad(lossT, pg.Tensors(), nil, false)
	if err != nil {
		return 0, err
	}
	if err := pg.StoreGrads(tp, grads); err != nil {
		return 0, err
	}
	// The batch mean of w rides along with the gradients so that every worker updates the
	// same average.
	wMean := tp.Reshape(tp.Mean(tp.Detach(w), 0), 1, t.opts.Model.WDim)
	vals, err := t.reduce(ctx, t.G.Params, weight, red, lossT, wMean)
	if err != nil {
		return 0, err
	}
	skip, err := t.apply(t.G.Params, t.mG, t.vG, &t.C.AdamStepG, plan.State.GLR)
	if err != nil {
		return 0, err
	}
	t.lastSkipG = skip
	if skip {
		t.C.SkippedG++
	}
	// w_avg = lerp(mean w, w_avg, beta)
	wd := t.opts.Model.WDim
	mean := t.host[len(t.host)-wd:]
	tmp := tp.FromHost(mean, wd)
	if err := tp.Err(); err != nil {
		return 0, err
	}
	av := t.WAvg.View(wd)
	if err := t.dev.Lerp(tmp.V, av, av, float32(t.opts.WAvgBeta)); err != nil {
		return 0, err
	}
	return vals[0], nil
}

// reduce scales the flat gradient (and the extra values) by weight, sums them over the
// workers, and returns the reduced scalars (the first element of each extra tensor).
// After it, t.host holds [gradients..., extras...] as reduced.
func (t *Trainer) reduce(ctx context.Context, ps *model.ParamSet, weight float32, red Reducer, extra ...*autograd.Tensor) ([]float64, error) {
	tp := t.tp
	n := ps.Len()
	size := n
	hostExtra := make([][]float32, len(extra))
	for i, e := range extra {
		v, err := tp.ToHost(e)
		if err != nil {
			return nil, err
		}
		hostExtra[i] = v
		size += len(v)
	}
	if cap(t.host) < size {
		t.host = make([]float32, size)
	}
	t.host = t.host[:size]
	if err := t.dev.Unary(kernels.Identity, ps.FlatGrad(), ps.FlatGrad(), weight, 0); err != nil {
		return nil, err
	}
	if err := ps.Grads.Read(0, t.host[:n]); err != nil {
		return nil, err
	}
	off := n
	for _, v := range hostExtra {
		for j, x := range v {
			t.host[off+j] = x * weight
		}
		off += len(v)
	}
	if err := red.AllReduceSum(ctx, t.host); err != nil {
		return nil, fmt.Errorf("all-reduce: %w", err)
	}
	if err := ps.Grads.Write(0, t.host[:n]); err != nil {
		return nil, err
	}
	out := make([]float64, len(extra))
	off = n
	for i, v := range hostExtra {
		out[i] = float64(t.host[off])
		off += len(v)
	}
	return out, nil
}

// apply runs Adam on a network unless its reduced gradient holds non-finite values, which
// skip the update (SG) or are sanitised first (ADA). It reports a skipped update.
func (t *Trainer) apply(ps *model.ParamSet, m, v *kernels.Buffer, step *int64, lr float64) (bool, error) {
	bad, err := t.dev.Sanitize(ps.FlatGrad(), 1e5)
	if err != nil {
		return false, err
	}
	if bad > 0 {
		t.C.NonFinite += bad
		if !t.opts.Sanitize {
			return true, nil
		}
	}
	*step++
	b1, b2 := t.opts.Beta1, t.opts.Beta2
	ap := kernels.AdamParams{
		LR: float32(lr), Beta1: float32(b1), Beta2: float32(b2), Eps: float32(t.opts.Epsilon),
		BC1: float32(1 - math.Pow(b1, float64(*step))), BC2: float32(1 - math.Pow(b2, float64(*step))),
	}
	if ap.BC1 == 0 {
		ap.BC1 = 1
	}
	n := ps.Len()
	return false, t.dev.Adam(ps.Flat(), ps.FlatGrad(), m.View(n), v.View(n), ap)
}

// updateEMA moves Gs towards G: Gs = G + beta (Gs - G), beta = 0.5^(minibatch/halflife).
func (t *Trainer) updateEMA(minibatch int) error {
	beta := schedule.EMABeta(minibatch, t.opts.EMAHalfLife)
	g, gs := t.G.Params.Flat(), t.Gs.Params.Flat()
	return t.dev.Lerp(g, gs, gs, float32(beta))
}

// GenOptions configure Generate.
type GenOptions struct {
	Psi        float32 // truncation psi (1: none)
	Cutoff     int     // layers truncated
	NoiseMode  string  // "random" (per seed), "const" (seed 0 for every image) or "none"
	LOD        float64 // level of detail to render at (0: full resolution)
	UseAverage bool    // render with Gs (true) or G (false)
}

// Generate renders one image per seed with Gs (or G) in one batch and returns
// [len(seeds), C, r, r] float32 in about [-1, 1]. A seed's z and noise do not depend on the
// batch; its pixels do, by float32 rounding (about 1e-6), because GEMMs of other sizes sum
// in another order: GenerateEach renders seed by seed where that matters.
func (t *Trainer) Generate(seeds []uint64, o GenOptions) ([]float32, []int, error) {
	if err := checkNoiseMode(o.NoiseMode); err != nil {
		return nil, nil, err
	}
	tp := t.tp
	tp.Reset()
	g := t.Gs
	if !o.UseAverage {
		g = t.G
	}
	var img *autograd.Tensor
	tp.NoGrad(func() {
		p := g.Params.Bind(tp, false)
		zs := make([]*autograd.Tensor, len(seeds))
		for i, s := range seeds {
			zs[i] = t.randn(s, 0, 1, t.opts.Model.ZDim)
		}
		w := g.Mapping(tp, p, tp.Concat(0, zs...))
		ws := t.truncate(g, g.Styles(w, nil, 0), o)
		img = g.Synthesis(tp, p, ws, o.LOD, t.noiseFor(seeds, o.NoiseMode))
	})
	out, err := tp.ToHost(img)
	if err != nil {
		return nil, nil, err
	}
	return out, img.Shape(), nil
}

// randn returns a tensor of standard normal values from key and counter offset.
func (t *Trainer) randn(key, offset uint64, shape ...int) *autograd.Tensor {
	z := t.tp.Full(0, shape...)
	if t.tp.Err() == nil {
		if err := t.dev.Randn(z.V, key, offset, 0, 1); err != nil {
			return t.tp.Fail(err)
		}
	}
	return z
}
