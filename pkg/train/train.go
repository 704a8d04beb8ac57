// Package train is one StyleGAN training step, synchronous data parallel: the D step
// (non-saturating logistic loss on fakes and reals, R1 on reals through the exact double
// backward), the G step, Adam, the generator's moving average (Gs) and the running average
// of w, all driven by the schedule as a pure function of the images shown.
//
// Randomness is counter-based (Philox on the device, keyed by seed, step and global sample
// index), so a Trainer's state is its parameters, optimizer moments and counters: saving
// them and loading them back continues the same trajectory bit for bit.
package train

import (
	"context"
	"errors"
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/model"
	"github.com/gantry-ml/gantry/pkg/schedule"
)

// Reducer sums a buffer over all workers in place (identically on every worker). A single
// process uses Local.
type Reducer interface {
	AllReduceSum(ctx context.Context, buf []float32) error
}

// Local is the Reducer of a single worker: the sum over one worker is the buffer itself.
type Local struct{}

// AllReduceSum does nothing.
func (Local) AllReduceSum(context.Context, []float32) error { return nil }

// Options configure a Trainer.
type Options struct {
	Model       model.Config
	Schedule    *schedule.Schedule
	R1Gamma     float64
	R1Interval  int
	StyleMixing float64 // probability of style mixing
	WAvgBeta    float64
	EMAHalfLife float64 // kimg
	Beta1       float64
	Beta2       float64
	Epsilon     float64
	ResetAdam   bool // reset Adam when floor(lod) or ceil(lod) changes
	Sanitize    bool // replace non-finite gradients (ADA) instead of skipping the update (SG)
	Seed        uint64
	Rank        int // this worker's rank
	World       int // number of workers
}

// Counters are the trainer's progress, saved in checkpoints.
type Counters struct {
	Images     int64 `json:"images"`      // images shown (global), kimg = Images/1000
	Step       int64 `json:"step"`        // training steps done
	PrevImages int64 `json:"prev_images"` // Images at the start of the previous step
	AdamStepG  int64 `json:"adam_step_g"` // Adam steps since the last reset (bias correction)
	AdamStepD  int64 `json:"adam_step_d"`
	SkippedG   int64 `json:"skipped_g"` // updates skipped for non-finite gradients
	SkippedD   int64 `json:"skipped_d"`
	NonFinite  int64 `json:"nonfinite"` // non-finite gradient values seen
	ResetCount int64 `json:"adam_resets"`
}

// Stats describe one step.
type Stats struct {
	State    schedule.State
	LossD    float64 // logistic loss of D (global mean)
	LossG    float64
	R1       float64 // R1 penalty (global mean), 0 on steps without R1
	SkippedD bool
	SkippedG bool
	Reset    bool // the Adam state was reset before this step
}

// Trainer owns the networks, Gs, the optimizer state and the counters of one worker.
type Trainer struct {
	opts Options
	dev  *kernels.Device
	tp   *autograd.Tape

	G  *model.Generator
	D  *model.Discriminator
	Gs *model.Generator // moving average of G, what generation uses

	mG, vG, mD, vD *kernels.Buffer
	WAvg           *kernels.Buffer // running average of w [WDim]

	C Counters

	host []float32 // staging for the all-reduce

	lastSkipD, lastSkipG bool

	shadow  []*kernels.Buffer // Snapshot's copy of stateBuffers
	shadowC Counters
}

// ErrBatch is returned when the reals given to Step do not fit the schedule.
var ErrBatch = errors.New("train: minibatch does not fit the schedule")

// New builds the networks on dev and initialises them from opts.Seed.
func New(dev *kernels.Device, opts Options) (*Trainer, error) {
	if opts.World < 1 || opts.Rank < 0 || opts.Rank >= opts.World {
		return nil, fmt.Errorf("train: rank %d of world %d", opts.Rank, opts.World)
	}
	if opts.R1Interval < 1 {
		opts.R1Interval = 1
	}
	t := &Trainer{opts: opts, dev: dev, tp: autograd.NewTape(dev)}
	var err error
	fail := func(e error) (*Trainer, error) {
		t.Close()
		return nil, e
	}
	if t.G, err = model.NewGenerator(dev, opts.Model); err != nil {
		return fail(err)
	}
	if t.D, err = model.NewDiscriminator(dev, opts.Model); err != nil {
		return fail(err)
	}
	if t.Gs, err = model.NewGenerator(dev, opts.Model); err != nil {
		return fail(err)
	}
	if err = t.G.Params.Init(opts.Seed); err != nil {
		return fail(err)
	}
	if err = t.D.Params.Init(opts.Seed + 1); err != nil {
		return fail(err)
	}
	if err = dev.Copy(t.G.Params.Flat(), t.Gs.Params.Flat()); err != nil {
		return fail(err)
	}
	for _, b := range []**kernels.Buffer{&t.mG, &t.vG} {
		if *b, err = dev.Alloc(t.G.Params.Len()); err != nil {
			return fail(err)
		}
	}
	for _, b := range []**kernels.Buffer{&t.mD, &t.vD} {
		if *b, err = dev.Alloc(t.D.Params.Len()); err != nil {
			return fail(err)
		}
	}
	if t.WAvg, err = dev.Alloc(opts.Model.WDim); err != nil {
		return fail(err)
	}
	if err = t.ResetAdam(); err != nil {
		return fail(err)
	}
	if err = dev.Fill(t.WAvg.View(opts.Model.WDim), 0); err != nil {
		return fail(err)
	}
	return t, nil
}

// Close frees everything the trainer holds.
func (t *Trainer) Close() {
	for _, g := range []*model.Generator{t.G, t.Gs} {
		if g != nil {
			g.Params.Free()
		}
	}
	if t.D != nil {
		t.D.Params.Free()
	}
	for _, b := range []*kernels.Buffer{t.mG, t.vG, t.mD, t.vD, t.WAvg} {
		b.Free()
	}
	t.freeShadow()
	t.tp.Close()
}

// Tape is the trainer's tape (for generation and metrics between steps).
func (t *Trainer) Tape() *autograd.Tape { return t.tp }

// Options returns the trainer's options.
func (t *Trainer) Options() Options { return t.opts }

// Kimg is the thousands of images shown.
func (t *Trainer) Kimg() float64 { return float64(t.C.Images) / 1000 }

// State is the schedule's state at the current position. The global minibatch does not
// depend on the world size (LocalShare splits it, remainder included), so kimg advances
// the same whatever the number of workers.
func (t *Trainer) State() schedule.State {
	return t.opts.Schedule.AtImages(t.C.Images, 0)
}

// SetGroup changes this worker's rank and the world size (after a membership change).
func (t *Trainer) SetGroup(rank, world int) error {
	if world < 1 || rank < 0 || rank >= world {
		return fmt.Errorf("train: rank %d of world %d", rank, world)
	}
	t.opts.Rank, t.opts.World = rank, world
	return nil
}

// ResetAdam zeroes both optimizers' moments and step counts.
func (t *Trainer) ResetAdam() error {
	for _, b := range []*kernels.Buffer{t.mG, t.vG, t.mD, t.vD} {
		if err := t.dev.Fill(b.View(b.Len()), 0); err != nil {
			return err
		}
	}
	t.C.AdamStepG, t.C.AdamStepD = 0, 0
	return nil
}

// LocalShare returns this worker's slice [start, start+n) of a global minibatch: the
// remainder goes to the lowest ranks, so every image is used once whatever the world size.
func LocalShare(global, rank, world int) (start, n int) {
	base, rem := global/world, global%world
	n = base
	if rank < rem {
		n++
	}
	start = rank*base + min(rank, rem)
	return start, n
}

// Streams of the counter-based generator.
const (
	streamZ1 = iota + 1
	streamZ2
	streamNoise
	streamMix
)

// key derives the Philox key of a stream at a step.
func (t *Trainer) key(stream int, step int64, phase int) uint64 {
	x := t.opts.Seed*0x9e3779b97f4a7c15 ^ uint64(stream)<<56 ^ uint64(phase)<<48 ^ uint64(step)
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	return x
}

// latents draws z [n, ZDim] for global samples [start, start+n) of a stream.
func (t *Trainer) latents(stream int, step int64, phase, start, n int) *autograd.Tensor {
	zd := t.opts.Model.ZDim
	return t.randn(t.key(stream, step, phase), uint64(start*zd), n, zd)
}

// noise returns the per-layer noise source of a step.
func (t *Trainer) noise(step int64, phase, start int) model.NoiseFunc {
	return func(layer int, shape []int) *autograd.Tensor {
		per := shape[1] * shape[2] * shape[3]
		return t.randn(t.key(streamNoise, step, phase*64+layer), uint64(start*per), shape...)
	}
}

// mixCutoff decides SG's style mixing for a step: with probability p, a crossover layer
// uniform in [1, layers at this lod); otherwise no mixing (0).
func (t *Trainer) mixCutoff(step int64, phase int, lod float64) int {
	if t.opts.StyleMixing <= 0 {
		return 0
	}
	cur, _ := t.opts.Model.LevelAt(lod)
	layers := 2*cur - 2
	if layers < 2 {
		return 0
	}
	r := t.key(streamMix, step, phase)
	u := float64(r>>11) / (1 << 53)
	if u >= t.opts.StyleMixing {
		return 0
	}
	r2 := t.key(streamMix, step, phase+8)
	return 1 + int(r2%uint64(layers-1))
}

// generate renders fakes for global samples [start, start+n) of a step with style mixing.
// It returns the images and the unmixed w (for the w average).
func (t *Trainer) generate(p *model.Bound, step int64, phase, start, n int, lod float64) (img, w *autograd.Tensor) {
	tp := t.tp
	w1 := t.G.Mapping(tp, p, t.latents(streamZ1, step, phase, start, n))
	var w2 *autograd.Tensor
	cutoff := t.mixCutoff(step, phase, lod)
	if cutoff > 0 {
		w2 = t.G.Mapping(tp, p, t.latents(streamZ2, step, phase, start, n))
	}
	img = t.G.Synthesis(tp, p, t.G.Styles(w1, w2, cutoff), lod, t.noise(step, phase, start))
	return img, w1
}

// fadeReals blends reals with their 2x box-down-then-nearest-up copy by the fade fraction,
// as SG fades the real images in step with G and D.
func (t *Trainer) fadeReals(x *autograd.Tensor, lod float64) *autograd.Tensor {
	_, fade := t.opts.Model.LevelAt(lod)
	if fade == 0 || x.Shape()[2] < 8 {
		return x
	}
	return t.tp.Lerp(x, model.Upsample2x(t.tp, model.Downsample2x(t.tp, x)), fade)
}
