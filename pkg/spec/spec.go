// Package spec is the job spec: one YAML file that holds everything a training job is made of
// (dataset, StyleGAN architecture, losses, optimizer, EMA, progressive-growing schedule,
// snapshots, checkpoint retention, workers, device). Its defaults are SG's FFHQ defaults.
//
// A spec is built in layers, each overriding the one before it:
//
//	defaults < preset < job file < command-line flags
//
// Every field is also a flag named after its path ("schedule.lod_training_kimg" is
// --schedule-lod-training-kimg); see RegisterFlags. Unknown fields in a file are an error naming
// the field and the file. Validate reports the first bad field in one line.
//
// Diff lists the fields two specs disagree on and marks those that must match for a checkpoint
// to be resumed (Architecture fields); CheckResume turns that into an error naming them.
package spec

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strings"

	"github.com/gantry-ml/gantry/pkg/schedule"
)

// ErrIncompatible is returned (wrapped, with the differing fields) by CheckResume.
var ErrIncompatible = errors.New("spec: checkpoint incompatible with the job spec, fields differ")

// Spec is a training job.
type Spec struct {
	// Preset names the preset the spec was built on ("" for the plain defaults). A file may
	// name one; the --preset flag overrides it.
	Preset   string          `json:"preset,omitempty" help:"preset the spec starts from"`
	Name     string          `json:"name" help:"job name"`
	Dataset  Dataset         `json:"dataset"`
	Model    Model           `json:"model"`
	Loss     Loss            `json:"loss"`
	Adam     Adam            `json:"adam"`
	EMA      EMA             `json:"ema"`
	Schedule schedule.Config `json:"schedule"`
	Snapshot Snapshot        `json:"snapshot"`
	Metrics  Metrics         `json:"metrics"`
	Seed     int64           `json:"seed" help:"random seed of parameters, latents, noise and data order"`
	Workers  Workers         `json:"workers"`
	Device   string          `json:"device" help:"compute device: cpu or cuda"`
	Threads  int             `json:"threads" help:"CPU threads per worker for the kernels (0: all cores)"`
}

// Dataset says where the training images are and what they look like.
type Dataset struct {
	URI        string `json:"uri" help:"dataset URI (s3://bucket/prefix, file:///dir or a path)"`
	Resolution int    `json:"resolution" help:"image resolution (power of 2 from 4 to 16384), the final resolution of G and D"`
	Channels   int    `json:"channels" help:"image channels: 1, 3 or 4"`
	Mirror     bool   `json:"mirror" help:"flip images left-right at random (mirror augmentation)"`
}

// Model is the StyleGAN architecture (generator and discriminator).
type Model struct {
	ZDim                    int       `json:"z_dim" help:"latent z width"`
	WDim                    int       `json:"w_dim" help:"intermediate latent w width (also the mapping network's width)"`
	MappingLayers           int       `json:"mapping_layers" help:"dense layers in the mapping network"`
	MappingLRMul            float64   `json:"mapping_lrmul" help:"learning-rate multiplier of the mapping network"`
	FmapBase                int       `json:"fmap_base" help:"channel count numerator: nf(stage) = min(fmap_base / 2^(stage*fmap_decay), fmap_max)"`
	FmapDecay               float64   `json:"fmap_decay" help:"channel count decay per stage"`
	FmapMax                 int       `json:"fmap_max" help:"channel count cap"`
	UseNoise                bool      `json:"use_noise" help:"per-pixel noise inputs in the synthesis network"`
	BlurFilter              []float64 `json:"blur_filter" help:"1-D blur filter (normalised) after upsampling in G and before downsampling in D; empty: no blur"`
	FusedScaleMinResolution int       `json:"fused_scale_min_resolution" help:"resolution from which up/downsampling is fused into the conv (transposed/strided)"`
	StyleMixingProb         float64   `json:"style_mixing_prob" help:"probability of style mixing in training"`
	TruncationPsi           float64   `json:"truncation_psi" help:"truncation psi at generation time (1: none)"`
	TruncationCutoff        int       `json:"truncation_cutoff" help:"number of style layers truncated at generation time"`
	WAvgBeta                float64   `json:"w_avg_beta" help:"decay of the running average of w used by truncation"`
	MbstdGroupSize          int       `json:"mbstd_group_size" help:"minibatch stddev group size in D (0: off)"`
	MbstdFeatures           int       `json:"mbstd_features" help:"minibatch stddev feature maps in D"`
}

// Loss holds the GAN loss and its regularisation.
type Loss struct {
	R1Gamma    float64 `json:"r1_gamma" help:"R1 penalty weight on reals (SG: 10 at 1024 px; ADA: 0.0002*res^2/minibatch)"`
	R1Interval int     `json:"r1_interval" help:"apply R1 every this many D steps (1: every step, as SG)"`
	R2Gamma    float64 `json:"r2_gamma" help:"R2 penalty weight on fakes (0: off)"`
	NonFinite  string  `json:"nonfinite" help:"non-finite gradients: skip (SG: skip the update, count it) or sanitize (ADA: NaN to 0, Inf clamped)"`
}

// Adam holds the optimizer settings; the learning rates live in the schedule.
type Adam struct {
	Beta1            float64 `json:"beta1" help:"Adam beta1"`
	Beta2            float64 `json:"beta2" help:"Adam beta2"`
	Epsilon          float64 `json:"epsilon" help:"Adam epsilon"`
	ResetOnLODChange bool    `json:"reset_on_lod_change" help:"reset Adam state when floor(lod) or ceil(lod) changes (SG)"`
}

// EMA is the generator's moving average (Gs).
type EMA struct {
	HalfLifeKimg float64 `json:"half_life_kimg" help:"half-life of the G moving average in kimg (0: Gs = G)"`
}

// Snapshot says when images and checkpoints are written and which checkpoints are kept.
type Snapshot struct {
	ImageTicks      int     `json:"image_ticks" help:"write a sample grid every this many ticks (0: never)"`
	CheckpointTicks int     `json:"checkpoint_ticks" help:"write a checkpoint every this many ticks (0: only at the end)"`
	CheckpointKimg  float64 `json:"checkpoint_kimg" help:"when > 0, write a checkpoint every this many kimg instead of by ticks"`
	KeepLast        int     `json:"keep_last" help:"checkpoints kept: the last K"`
	KeepEvery       int     `json:"keep_every" help:"checkpoints kept in addition: every M-th (0: none)"`
}

// Metrics are computed at snapshots.
type Metrics struct {
	SWDImages int `json:"swd_images" help:"images per set for the sliced Wasserstein distance (0: off)"`
	SWDTicks  int `json:"swd_ticks" help:"compute SWD every this many ticks (0: never)"`
}

// Workers bounds the job's world size.
type Workers struct {
	Min int `json:"min" help:"minimum workers; below it the job pauses"`
	Max int `json:"max" help:"maximum workers (0: no limit)"`
}

// Defaults returns SG's defaults: FFHQ at 1024x1024, 3 channels, the 8-GPU schedule.
func Defaults() *Spec {
	return &Spec{
		Name: "stylegan",
		Dataset: Dataset{
			Resolution: 1024,
			Channels:   3,
			Mirror:     true,
		},
		Model: Model{
			ZDim:                    512,
			WDim:                    512,
			MappingLayers:           8,
			MappingLRMul:            0.01,
			FmapBase:                8192,
			FmapDecay:               1,
			FmapMax:                 512,
			UseNoise:                true,
			BlurFilter:              []float64{1, 2, 1},
			FusedScaleMinResolution: 128,
			StyleMixingProb:         0.9,
			TruncationPsi:           0.7,
			TruncationCutoff:        8,
			WAvgBeta:                0.995,
			MbstdGroupSize:          4,
			MbstdFeatures:           1,
		},
		Loss:     Loss{R1Gamma: 10, R1Interval: 1, NonFinite: NonFiniteSkip},
		Adam:     Adam{Beta1: 0, Beta2: 0.99, Epsilon: 1e-8, ResetOnLODChange: true},
		EMA:      EMA{HalfLifeKimg: 10},
		Schedule: schedule.Default(),
		Snapshot: Snapshot{ImageTicks: 1, CheckpointTicks: 10, KeepLast: 5, KeepEvery: 10},
		Metrics:  Metrics{SWDImages: 2048, SWDTicks: 10},
		Seed:     1000,
		Workers:  Workers{Min: 1},
		Device:   DeviceCPU,
	}
}

// MaxThreads bounds the kernel threads a worker may ask for: far more than any machine has
// cores, and far fewer than would make the OpenMP runtime abort when it cannot create them.
const MaxThreads = 1024

// Values of Loss.NonFinite and Spec.Device.
const (
	NonFiniteSkip     = "skip"
	NonFiniteSanitize = "sanitize"
	DeviceCPU         = "cpu"
	DeviceCUDA        = "cuda"
)

// Clone returns a deep copy of s.
func (s *Spec) Clone() *Spec {
	c := *s
	c.Model.BlurFilter = append([]float64(nil), s.Model.BlurFilter...)
	c.Schedule = s.Schedule.Clone()
	return &c
}

// NumLayers returns the number of style inputs of the synthesis network: 2*log2(resolution)-2.
func (s *Spec) NumLayers() int { return 2*log2(s.Dataset.Resolution) - 2 }

// Channels returns nf(stage) = min(fmap_base / 2^(stage*fmap_decay), fmap_max), the channel
// count of a stage (stage 1 is 4x4, stage log2(R)-1 is the full resolution).
func (s *Spec) Channels(stage int) int {
	m := s.Model
	n := int(float64(m.FmapBase) / math.Pow(2, float64(stage)*m.FmapDecay))
	return min(n, m.FmapMax)
}

// NewSchedule returns the schedule of this spec's dataset resolution.
func (s *Spec) NewSchedule() (*schedule.Schedule, error) {
	sc, err := schedule.New(s.Schedule, s.Dataset.Resolution)
	if err != nil {
		return nil, fieldErr(err)
	}
	return sc, nil
}

// Validate checks every field and returns the first problem as one line naming the field and
// the bad value.
func (s *Spec) Validate() error {
	bad := func(field string, v any, want string) error {
		return fmt.Errorf("spec: %s = %v: %s", field, v, want)
	}
	if s.Preset != "" {
		if _, ok := presets[s.Preset]; !ok {
			return bad("preset", quote(s.Preset), "unknown preset; known: "+strings.Join(PresetNames(), ", "))
		}
	}
	d, m := s.Dataset, s.Model
	if !isPow2(d.Resolution) || d.Resolution < 4 || d.Resolution > 16384 {
		return bad("dataset.resolution", d.Resolution, "must be a power of 2 from 4 to 16384")
	}
	if d.Channels != 1 && d.Channels != 3 && d.Channels != 4 {
		return bad("dataset.channels", d.Channels, "must be 1, 3 or 4")
	}
	positive := []struct {
		field string
		v     int
	}{
		{"model.z_dim", m.ZDim}, {"model.w_dim", m.WDim}, {"model.mapping_layers", m.MappingLayers},
		{"model.fmap_base", m.FmapBase}, {"model.fmap_max", m.FmapMax},
		{"loss.r1_interval", s.Loss.R1Interval}, {"workers.min", s.Workers.Min},
	}
	for _, p := range positive {
		if p.v < 1 {
			return bad(p.field, p.v, "must be >= 1")
		}
	}
	nonNegInt := []struct {
		field string
		v     int
	}{
		{"model.fused_scale_min_resolution", m.FusedScaleMinResolution},
		{"model.truncation_cutoff", m.TruncationCutoff},
		{"model.mbstd_group_size", m.MbstdGroupSize}, {"model.mbstd_features", m.MbstdFeatures},
		{"snapshot.image_ticks", s.Snapshot.ImageTicks},
		{"snapshot.checkpoint_ticks", s.Snapshot.CheckpointTicks},
		{"snapshot.keep_every", s.Snapshot.KeepEvery},
		{"metrics.swd_images", s.Metrics.SWDImages}, {"metrics.swd_ticks", s.Metrics.SWDTicks},
		{"workers.max", s.Workers.Max}, {"threads", s.Threads},
	}
	for _, p := range nonNegInt {
		if p.v < 0 {
			return bad(p.field, p.v, "must be >= 0")
		}
	}
	if s.Threads > MaxThreads {
		return bad("threads", s.Threads, fmt.Sprintf("must be at most %d (0: all cores)", MaxThreads))
	}
	if !finite(m.MappingLRMul) || m.MappingLRMul <= 0 {
		return bad("model.mapping_lrmul", m.MappingLRMul, "must be > 0")
	}
	if !finite(m.FmapDecay) || m.FmapDecay < 0 {
		return bad("model.fmap_decay", m.FmapDecay, "must be >= 0")
	}
	for stage := 1; stage < log2(d.Resolution); stage++ {
		if s.Channels(stage) < 1 {
			r := 1 << (stage + 1)
			return bad("model.fmap_base", m.FmapBase, fmt.Sprintf("leaves %dx%d with no channels (fmap_base / 2^(stage*fmap_decay) < 1 at stage %d); raise it or lower model.fmap_decay", r, r, stage))
		}
	}
	if m.MbstdGroupSize > 0 && m.MbstdFeatures < 1 {
		return bad("model.mbstd_features", m.MbstdFeatures, "must be >= 1 when mbstd_group_size > 0")
	}
	if m.FusedScaleMinResolution != 0 && !isPow2(m.FusedScaleMinResolution) {
		return bad("model.fused_scale_min_resolution", m.FusedScaleMinResolution, "must be a power of 2 (or 0: always fused)")
	}
	sum := 0.0
	for _, f := range m.BlurFilter {
		if !finite(f) {
			return bad("model.blur_filter", floatsString(m.BlurFilter), "taps must be finite")
		}
		sum += f
	}
	if len(m.BlurFilter) > 0 && sum == 0 {
		return bad("model.blur_filter", floatsString(m.BlurFilter), "taps must not sum to 0")
	}
	probs := []struct {
		field string
		v     float64
	}{
		{"model.style_mixing_prob", m.StyleMixingProb}, {"model.w_avg_beta", m.WAvgBeta},
	}
	for _, p := range probs {
		if !finite(p.v) || p.v < 0 || p.v > 1 {
			return bad(p.field, p.v, "must be in [0, 1]")
		}
	}
	if !finite(m.TruncationPsi) {
		return bad("model.truncation_psi", m.TruncationPsi, "must be finite")
	}
	nonNeg := []struct {
		field string
		v     float64
	}{
		{"loss.r1_gamma", s.Loss.R1Gamma}, {"loss.r2_gamma", s.Loss.R2Gamma},
		{"ema.half_life_kimg", s.EMA.HalfLifeKimg}, {"snapshot.checkpoint_kimg", s.Snapshot.CheckpointKimg},
	}
	for _, p := range nonNeg {
		if !finite(p.v) || p.v < 0 {
			return bad(p.field, p.v, "must be >= 0")
		}
	}
	if s.Loss.NonFinite != NonFiniteSkip && s.Loss.NonFinite != NonFiniteSanitize {
		return bad("loss.nonfinite", quote(s.Loss.NonFinite), "must be skip or sanitize")
	}
	a := s.Adam
	if !finite(a.Beta1) || a.Beta1 < 0 || a.Beta1 >= 1 {
		return bad("adam.beta1", a.Beta1, "must be in [0, 1)")
	}
	if !finite(a.Beta2) || a.Beta2 < 0 || a.Beta2 >= 1 {
		return bad("adam.beta2", a.Beta2, "must be in [0, 1)")
	}
	if !finite(a.Epsilon) || a.Epsilon <= 0 {
		return bad("adam.epsilon", a.Epsilon, "must be > 0")
	}
	if err := s.Schedule.Validate(d.Resolution); err != nil {
		return fieldErr(err)
	}
	if s.Snapshot.KeepLast < 1 {
		return bad("snapshot.keep_last", s.Snapshot.KeepLast, "must be >= 1")
	}
	if s.Workers.Max != 0 && s.Workers.Max < s.Workers.Min {
		return bad("workers.max", s.Workers.Max, fmt.Sprintf("must be 0 (no limit) or >= workers.min (%d)", s.Workers.Min))
	}
	if s.Device != DeviceCPU && s.Device != DeviceCUDA {
		return bad("device", quote(s.Device), "must be cpu or cuda")
	}
	return nil
}

// fieldErr rewrites a schedule validation error in this package's words.
func fieldErr(err error) error {
	var fe *schedule.FieldError
	if errors.As(err, &fe) {
		return fmt.Errorf("spec: %s = %s: %s", fe.Field, fe.Value, fe.Reason)
	}
	return fmt.Errorf("spec: %w", err)
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

func log2(n int) int { return bits.Len(uint(n)) - 1 }

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
