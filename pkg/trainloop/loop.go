// Package trainloop is one worker's training run: it streams this rank's dataset shards at
// the schedule's resolution, steps the trainer, and at each tick reports progress, renders
// sample grids, measures SWD and writes checkpoints. `worker train` runs it in one process;
// `worker join` runs it on every rank of a distributed job with the all-reduce as reducer.
package trainloop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/dataset"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/swd"
	"github.com/gantry-ml/gantry/pkg/train"
)

// CheckpointPrefix is where checkpoints live in the output store.
const CheckpointPrefix = "checkpoints"

// Config is one worker's run.
type Config struct {
	Spec    *spec.Spec
	Data    store.Store // the dataset
	Out     store.Store // checkpoints
	RunDir  string      // local directory for grids and metrics ("" for none)
	Cluster Cluster     // nil: Solo (one process)
	Device  *kernels.Device
	Logger  hclog.Logger
	// StopKimg ends the run early at this many kimg (0: the spec's total).
	StopKimg float64
	// CacheDir caches dataset shards locally ("" for none).
	CacheDir string
	// OnTick, when set, is called after each tick's work (every rank).
	OnTick func(Tick)
}

// Tick is the progress report of one tick.
type Tick struct {
	Tick     int64   `json:"tick"`
	Kimg     float64 `json:"kimg"`
	LOD      float64 `json:"lod"`
	Stage    string  `json:"stage"`
	LossD    float64 `json:"loss_d"`
	LossG    float64 `json:"loss_g"`
	R1       float64 `json:"r1"`
	ImgPerS  float64 `json:"img_per_s"`
	SecTick  float64 `json:"sec_per_tick"`
	ETA      float64 `json:"eta_s"`
	SWD      float64 `json:"swd,omitempty"` // x1000 average at the dataset resolution; 0: not measured
	Grid     string  `json:"grid,omitempty"`
	Ckpt     string  `json:"checkpoint,omitempty"`
	Skipped  int64   `json:"skipped_updates"`
	Resets   int64   `json:"adam_resets"`
	Finished bool    `json:"finished"`
}

// Summary is what a run returns.
type Summary struct {
	Ticks      []Tick  `json:"ticks"`
	Kimg       float64 `json:"kimg"`
	ResumedAt  float64 `json:"resumed_at_kimg"`
	Checkpoint string  `json:"last_checkpoint"`
}

// extra is the loop's own resume state, saved in the manifest.
type extra struct {
	Tick          int64            `json:"tick"`
	TickStartNimg int64            `json:"tick_start_nimg"`
	Cursors       []dataset.Cursor `json:"cursors"`
	Seq           int64            `json:"seq"`
	// DealEpoch is the epoch every rank started its shards at when they were last dealt;
	// the next deal starts at DealEpoch+1 (absent in checkpoints of earlier versions).
	DealEpoch *int `json:"deal_epoch,omitempty"`
}

// Run trains until the schedule's total (or StopKimg), ctx is cancelled, or an error. It
// resumes from the last committed checkpoint in Out when there is one.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	lg := cfg.Logger
	if lg == nil {
		lg = hclog.NewNullLogger()
	}
	if cfg.Cluster == nil {
		cfg.Cluster = Solo{}
	}
	s := cfg.Spec
	if b := kernels.Backend(); s.Device != b {
		return nil, fmt.Errorf("trainloop: device = %q: this worker was built with the %s backend", s.Device, b)
	}
	if cfg.Data != nil {
		// Before building the networks: a missing dataset or one of another shape fails at
		// once, naming both shapes (the first minibatch would fail on its size).
		if err := CheckDataset(ctx, cfg.Data, s); err != nil {
			return nil, err
		}
	}
	opts, err := train.OptionsFromSpec(s, 0, 1)
	if err != nil {
		return nil, err
	}
	tr, err := train.New(cfg.Device, opts)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	l := &loop{cfg: cfg, lg: lg, tr: tr, spec: s, ckptNimg: -1, ckptStep: -1, runCtx: ctx}
	if err := l.resume(ctx); err != nil {
		return nil, err
	}
	defer l.closeLoader()
	defer func() {
		if err := l.awaitCommit(); err != nil && ctx.Err() == nil {
			lg.Warn("checkpoint not committed", "error", err)
		}
	}()
	if cfg.RunDir != "" {
		if err := os.MkdirAll(filepath.Join(cfg.RunDir, "grids"), 0o755); err != nil {
			return nil, fmt.Errorf("trainloop: run directory: %w", err)
		}
	}
	return l.run(ctx)
}

// CheckDataset reads the dataset's manifest and checks that its images have the job's
// resolution and channel count.
func CheckDataset(ctx context.Context, data store.Store, s *spec.Spec) error {
	m, err := dataset.OpenManifest(ctx, data)
	if err != nil {
		return err
	}
	if m.Resolution != s.Dataset.Resolution || m.Channels != s.Dataset.Channels {
		return fmt.Errorf("trainloop: dataset %s holds %dx%d images with %d channel(s); the job has dataset.resolution %d and dataset.channels %d",
			data.URI(), m.Resolution, m.Resolution, m.Channels, s.Dataset.Resolution, s.Dataset.Channels)
	}
	return nil
}

type loop struct {
	cfg  Config
	lg   hclog.Logger
	tr   *train.Trainer
	spec *spec.Spec

	group    Group
	entered  bool
	stepping bool // a step is in flight (a failure rolls it back)
	red      train.Reducer

	loader             *dataset.Loader
	loaderLOD, loaderN int
	cursor             dataset.Cursor
	ckptCursors        []dataset.Cursor // cursors of the checkpoint resumed from
	ckptStep           int64            // step of the checkpoint resumed from (-1: none)
	dealEpoch          int              // the epoch the current shard deal started at
	dealt              bool             // a generation was entered (its cursors set)

	tick          int64
	tickStartNimg int64
	ckptNimg      int64 // images at the last checkpoint written or resumed from (-1: none)
	seq           int64
	pending       *pendingCommit  // rank 0's checkpoint commit in flight
	runCtx        context.Context // the run's context, for the commits that outlive a generation
	sum           Summary
	realSWD       map[int]*swd.Set // prepared reals per resolution (rank 0)
}

// resume restores the trainer and the loop from the latest committed checkpoint.
func (l *loop) resume(ctx context.Context) error {
	dir, err := l.resumeDir(ctx)
	if errors.Is(err, checkpoint.ErrNone) {
		l.lg.Info("starting fresh", "kimg", 0)
		return nil
	}
	if err != nil {
		return err
	}
	c, err := checkpoint.Load(ctx, l.cfg.Out, dir, l.spec)
	if err != nil {
		return err
	}
	if err := l.tr.Restore(c); err != nil {
		return err
	}
	var ex extra
	if raw, ok := c.Manifest.Extra["loop"]; ok {
		if err := json.Unmarshal(raw, &ex); err != nil {
			return fmt.Errorf("trainloop: %s: loop state: %w", dir, err)
		}
	}
	l.tick, l.tickStartNimg, l.seq = ex.Tick, ex.TickStartNimg, ex.Seq
	l.ckptCursors = ex.Cursors
	l.ckptStep = l.tr.C.Step
	switch {
	case ex.DealEpoch != nil:
		l.dealEpoch = *ex.DealEpoch
	case len(ex.Cursors) > 0:
		l.dealEpoch = ex.Cursors[0].Epoch // an earlier version: rank 0's epoch
	}
	l.ckptNimg = l.tr.C.Images
	l.sum.ResumedAt = l.tr.Kimg()
	l.sum.Checkpoint = dir
	l.lg.Info("resumed", "checkpoint", dir, "kimg", l.tr.Kimg(), "step", l.tr.C.Step)
	return nil
}

func (l *loop) closeLoader() {
	if l.loader != nil {
		l.loader.Close()
		l.loader = nil
	}
}

// batch returns this rank's reals for the next step, reopening the loader when the
// resolution or the share changes.
func (l *loop) batch(ctx context.Context, plan train.Plan) (train.Batch, error) {
	lod := bits.TrailingZeros(uint(l.spec.Dataset.Resolution)) - bits.TrailingZeros(uint(plan.State.Resolution))
	if l.loader == nil || l.loaderLOD != lod || l.loaderN != plan.N {
		l.closeLoader()
		ld, err := dataset.NewLoader(ctx, dataset.LoaderConfig{
			Store: l.cfg.Data, Shards: l.group.Shards, Batch: plan.N, LOD: lod,
			Seed: uint64(l.spec.Seed), Mirror: l.spec.Dataset.Mirror, Cursor: l.cursor,
			CacheDir: l.cfg.CacheDir, Logger: l.lg.Named("loader"),
		})
		if err != nil {
			return train.Batch{}, err
		}
		l.loader, l.loaderLOD, l.loaderN = ld, lod, plan.N
	}
	b, err := l.loader.Next(ctx)
	if err != nil {
		return train.Batch{}, err
	}
	l.cursor = b.Cursor
	return train.Batch{Data: b.Data, N: b.N, C: b.C, H: b.H, W: b.W}, nil
}

func (l *loop) stopNimg() int64 {
	k := l.spec.Schedule.TotalKimg
	if l.cfg.StopKimg > 0 && l.cfg.StopKimg < k {
		k = l.cfg.StopKimg
	}
	return int64(k * 1000)
}

func (l *loop) run(ctx context.Context) (*Summary, error) {
	tr := l.tr
	tickStart := time.Now()
	var last train.Stats
	stage := ""
	for {
		if err := ctx.Err(); err != nil {
			return &l.sum, err
		}
		if !l.entered || changed(l.group) {
			if err := l.enter(ctx); err != nil {
				if ctx.Err() != nil {
					return &l.sum, ctx.Err()
				}
				if errors.Is(err, ErrGenerationChanged) || changed(l.group) {
					continue
				}
				return &l.sum, err
			}
		}
		gctx, cancel := genContext(ctx, l.group)
		err := l.iterate(gctx, &last, &stage, &tickStart)
		cancel()
		if err == nil {
			continue
		}
		if errors.Is(err, errFinished) {
			l.sum.Kimg = tr.Kimg()
			return &l.sum, nil
		}
		if ctx.Err() != nil {
			return &l.sum, ctx.Err()
		}
		if changed(l.group) || l.awaitChange(ctx, l.group, err) {
			// A peer left or joined in the middle of the step: undo it; the next
			// generation continues from rank 0's last completed step. An error from a
			// tick's work (after the step completed) has nothing to undo.
			if l.stepping {
				l.lg.Info("step aborted by a membership change; rolling back", "step", tr.C.Step, "error", err)
				if rerr := tr.Rollback(); rerr != nil {
					return &l.sum, rerr
				}
			} else {
				l.lg.Info("tick work aborted by a membership change", "step", tr.C.Step, "error", err)
			}
			l.stepping = false
			continue
		}
		return &l.sum, err
	}
}

var errFinished = errors.New("trainloop: finished")

// iterate does one tick's end when due, then one step.
func (l *loop) iterate(ctx context.Context, last *train.Stats, stage *string, tickStart *time.Time) error {
	tr := l.tr
	done := tr.C.Images >= l.stopNimg()
	st := tr.State()
	tickLen := int64(st.TickKimg * 1000)
	if done || tr.C.Images >= l.tickStartNimg+tickLen {
		if tr.C.Images > l.tickStartNimg || done {
			if err := l.endTick(ctx, *last, time.Since(*tickStart), done); err != nil {
				return err
			}
		}
		*tickStart = time.Now()
		if done {
			return errFinished
		}
	}
	plan := tr.Plan()
	if plan.N < 1 {
		return fmt.Errorf("trainloop: minibatch %d is smaller than the %d workers", plan.State.Minibatch, l.group.World)
	}
	if s := plan.State.Stage(); s != *stage && l.group.Rank == 0 {
		l.lg.Info("stage", "stage", s, "kimg", round(plan.State.Kimg), "minibatch", plan.State.Minibatch)
		*stage = s
	}
	b, err := l.batch(ctx, plan)
	if err != nil {
		return err
	}
	if _, solo := l.cfg.Cluster.(Solo); !solo {
		// Even a world of 1 can see its generation end mid-step (a worker joins).
		if err := tr.Snapshot(); err != nil {
			return err
		}
	}
	l.stepping = true
	*last, err = tr.Step(ctx, b, l.red)
	if err != nil {
		return err
	}
	l.stepping = false
	l.lg.Debug("step", "step", tr.C.Step, "kimg", tr.Kimg(), "loss_d", last.LossD, "loss_g", last.LossG, "r1", last.R1)
	return nil
}

func round(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }
