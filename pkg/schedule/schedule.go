// Package schedule is StyleGAN's progressive-growing training schedule as a pure function of
// training progress. Given the number of images shown so far (nimg, or kimg = nimg/1000), it
// says which level of detail (lod) the networks are at, the resolution being trained, the
// global minibatch, the G and D learning rates and the tick length. Every worker evaluates it
// on the same image count, so all of them agree without exchanging a message.
//
// The formula is the original one: a phase is lod_training_kimg of stable training followed by
// lod_transition_kimg of fading the next resolution in, and
//
//	i   = floor(kimg / phase)
//	k   = kimg - i*phase
//	lod = log2(R) - log2(initial) - i - max(k - training, 0) / transition,  floored at 0
//
// The resolution trained is 2^(log2(R) - floor(lod)): while lod is fractional, the new (higher)
// resolution is being faded in by 1 - (lod - floor(lod)). In fixed-resolution mode lod is 0
// from the start.
package schedule

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"sort"
	"strconv"
	"strings"
)

// IntDict maps a resolution (4, 8, ...) to an integer such as a minibatch size. Decoding JSON
// into a dict replaces its contents instead of merging, so a value from a job file overrides a
// preset's dict as a whole.
type IntDict map[int]int

// FloatDict maps a resolution to a number such as a learning rate or tick length in kimg. It
// decodes like IntDict.
type FloatDict map[int]float64

// UnmarshalJSON replaces d with the decoded object.
func (d *IntDict) UnmarshalJSON(b []byte) error {
	var m map[int]int
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*d = m
	return nil
}

// UnmarshalJSON replaces d with the decoded object.
func (d *FloatDict) UnmarshalJSON(b []byte) error {
	var m map[int]float64
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*d = m
	return nil
}

// String renders the dict as "4=512,8=256" in ascending key order; ParseIntDict reads it back.
func (d IntDict) String() string {
	keys := sortedKeys(d)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = strconv.Itoa(k) + "=" + strconv.Itoa(d[k])
	}
	return strings.Join(parts, ",")
}

// String renders the dict as "128=0.0015,256=0.002"; ParseFloatDict reads it back.
func (d FloatDict) String() string {
	keys := sortedKeys(d)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = strconv.Itoa(k) + "=" + strconv.FormatFloat(d[k], 'g', -1, 64)
	}
	return strings.Join(parts, ",")
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// ParseIntDict reads "4=512,8=256" (":" works as well as "="); an empty string is an empty
// dict.
func ParseIntDict(s string) (IntDict, error) {
	d := IntDict{}
	err := parseDict(s, func(k int, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("value %q of key %d is not an integer", v, k)
		}
		d[k] = n
		return nil
	})
	return d, err
}

// ParseFloatDict reads "128=0.0015,256=0.002" (":" works as well as "=").
func ParseFloatDict(s string) (FloatDict, error) {
	d := FloatDict{}
	err := parseDict(s, func(k int, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("value %q of key %d is not a number", v, k)
		}
		d[k] = f
		return nil
	})
	return d, err
}

func parseDict(s string, set func(k int, v string) error) error {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	if strings.TrimSpace(s) == "" {
		return nil
	}
	seen := map[int]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		kv := strings.SplitN(item, "=", 2)
		if len(kv) != 2 {
			kv = strings.SplitN(item, ":", 2)
		}
		if len(kv) != 2 {
			return fmt.Errorf("entry %q is not resolution=value", item)
		}
		k, err := strconv.Atoi(strings.TrimSpace(kv[0]))
		if err != nil {
			return fmt.Errorf("key %q is not a resolution", kv[0])
		}
		if seen[k] {
			return fmt.Errorf("resolution %d given twice", k)
		}
		seen[k] = true
		if err := set(k, strings.TrimSpace(kv[1])); err != nil {
			return err
		}
	}
	return nil
}

// Config is the schedule section of a job spec. The zero value is not useful; start from
// Default.
type Config struct {
	InitialResolution int     `json:"initial_resolution" help:"resolution training starts at (lod_initial_resolution)"`
	LODTrainingKimg   float64 `json:"lod_training_kimg" help:"kimg of stable training per resolution"`
	LODTransitionKimg float64 `json:"lod_transition_kimg" help:"kimg of fading in each new resolution"`
	TotalKimg         float64 `json:"total_kimg" help:"length of training in thousands of images shown"`
	FixedResolution   bool    `json:"fixed_resolution" help:"train at the full resolution from the start (no progressive growing)"`

	MinibatchBase int       `json:"minibatch_base" help:"global minibatch at resolutions missing from the minibatch dict"`
	Minibatch     IntDict   `json:"minibatch" help:"global minibatch per resolution, e.g. 4=512,8=256"`
	GLRBase       float64   `json:"g_lr_base" help:"G learning rate at resolutions missing from the g_lr dict"`
	GLR           FloatDict `json:"g_lr" help:"G learning rate per resolution, e.g. 128=0.0015"`
	DLRBase       float64   `json:"d_lr_base" help:"D learning rate at resolutions missing from the d_lr dict"`
	DLR           FloatDict `json:"d_lr" help:"D learning rate per resolution"`
	TickKimgBase  float64   `json:"tick_kimg_base" help:"tick length in kimg at resolutions missing from the tick_kimg dict"`
	TickKimg      FloatDict `json:"tick_kimg" help:"tick length in kimg per resolution"`
}

// Default returns SG's FFHQ schedule (8 GPUs): start at 8x8, 600 kimg stable plus 600 kimg
// fading per resolution, 25000 kimg in all, and SG's minibatch, learning-rate and tick dicts.
func Default() Config {
	return Config{
		InitialResolution: 8,
		LODTrainingKimg:   600,
		LODTransitionKimg: 600,
		TotalKimg:         25000,
		MinibatchBase:     32,
		Minibatch:         IntDict{4: 512, 8: 256, 16: 128, 32: 64, 64: 32},
		GLRBase:           0.001,
		GLR:               FloatDict{128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
		DLRBase:           0.001,
		DLR:               FloatDict{128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
		TickKimgBase:      160,
		TickKimg: FloatDict{4: 160, 8: 140, 16: 120, 32: 100, 64: 80, 128: 60,
			256: 40, 512: 30, 1024: 20},
	}
}

// Clone returns a deep copy of c (the dicts are copied).
func (c Config) Clone() Config {
	c.Minibatch = cloneDict(c.Minibatch)
	c.GLR = cloneDict(c.GLR)
	c.DLR = cloneDict(c.DLR)
	c.TickKimg = cloneDict(c.TickKimg)
	return c
}

func cloneDict[D ~map[int]V, V any](d D) D {
	if d == nil {
		return nil
	}
	out := make(D, len(d))
	for k, v := range d {
		out[k] = v
	}
	return out
}

// FieldError is a validation error naming the job-spec field ("schedule.total_kimg"), its bad
// value and what was expected.
type FieldError struct {
	Field  string
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("schedule: %s = %s: %s", e.Field, e.Value, e.Reason)
}

// Schedule evaluates a Config for a dataset resolution. It is immutable and safe for
// concurrent use.
type Schedule struct {
	cfg        Config
	resolution int
	maxLOD     float64 // log2(resolution) - log2(initial resolution)
}

// New checks cfg against the dataset resolution and returns the schedule. Errors name the
// field (as in the job spec) and the bad value.
func New(cfg Config, resolution int) (*Schedule, error) {
	if err := cfg.Validate(resolution); err != nil {
		return nil, err
	}
	s := &Schedule{cfg: cfg.Clone(), resolution: resolution}
	if !cfg.FixedResolution {
		s.maxLOD = float64(log2(resolution) - log2(cfg.InitialResolution))
	}
	return s, nil
}

// Validate checks cfg for a dataset of the given resolution.
func (c Config) Validate(resolution int) error {
	bad := func(field string, v any, want string) error {
		return &FieldError{Field: field, Value: fmt.Sprint(v), Reason: want}
	}
	if !isPow2(resolution) || resolution < 4 {
		return bad("dataset.resolution", resolution, "must be a power of 2 >= 4")
	}
	if !c.FixedResolution {
		if !isPow2(c.InitialResolution) || c.InitialResolution < 4 || c.InitialResolution > resolution {
			return bad("schedule.initial_resolution", c.InitialResolution,
				fmt.Sprintf("must be a power of 2 in [4, %d]", resolution))
		}
	}
	if !finite(c.LODTrainingKimg) || c.LODTrainingKimg < 0 {
		return bad("schedule.lod_training_kimg", c.LODTrainingKimg, "must be >= 0")
	}
	if !finite(c.LODTransitionKimg) || c.LODTransitionKimg < 0 {
		return bad("schedule.lod_transition_kimg", c.LODTransitionKimg, "must be >= 0")
	}
	if !c.FixedResolution && c.LODTrainingKimg+c.LODTransitionKimg <= 0 && c.InitialResolution < resolution {
		return bad("schedule.lod_training_kimg", c.LODTrainingKimg,
			"lod_training_kimg + lod_transition_kimg must be > 0 when growing")
	}
	if !finite(c.TotalKimg) || c.TotalKimg <= 0 {
		return bad("schedule.total_kimg", c.TotalKimg, "must be > 0")
	}
	if c.MinibatchBase < 1 {
		return bad("schedule.minibatch_base", c.MinibatchBase, "must be >= 1")
	}
	for _, k := range sortedKeys(c.Minibatch) {
		if !isPow2(k) || k < 4 {
			return bad("schedule.minibatch", c.Minibatch.String(), fmt.Sprintf("key %d is not a resolution (power of 2 >= 4)", k))
		}
		if c.Minibatch[k] < 1 {
			return bad("schedule.minibatch", c.Minibatch.String(), fmt.Sprintf("minibatch at %d must be >= 1", k))
		}
	}
	checkRates := func(field string, base float64, d FloatDict, what string) error {
		if !finite(base) || base <= 0 {
			return bad(field+"_base", base, "must be > 0")
		}
		for _, k := range sortedKeys(d) {
			if !isPow2(k) || k < 4 {
				return bad(field, d.String(), fmt.Sprintf("key %d is not a resolution (power of 2 >= 4)", k))
			}
			if !finite(d[k]) || d[k] <= 0 {
				return bad(field, d.String(), fmt.Sprintf("%s at %d must be > 0", what, k))
			}
		}
		return nil
	}
	if err := checkRates("schedule.g_lr", c.GLRBase, c.GLR, "learning rate"); err != nil {
		return err
	}
	if err := checkRates("schedule.d_lr", c.DLRBase, c.DLR, "learning rate"); err != nil {
		return err
	}
	return checkRates("schedule.tick_kimg", c.TickKimgBase, c.TickKimg, "tick length")
}

// Config returns a copy of the configuration the schedule was built from.
func (s *Schedule) Config() Config { return s.cfg.Clone() }

// Resolution returns the dataset (final) resolution.
func (s *Schedule) Resolution() int { return s.resolution }

// MaxLOD returns the lod training starts at: log2(resolution) - log2(initial resolution), or 0
// in fixed-resolution mode.
func (s *Schedule) MaxLOD() float64 { return s.maxLOD }

// State is the schedule's answer at one point of training.
type State struct {
	Kimg       float64 // images shown so far / 1000
	LOD        float64 // level of detail: 0 is the full resolution; fractional while fading
	Resolution int     // resolution trained: 2^(log2(R) - floor(LOD))
	Minibatch  int     // global minibatch (a multiple of the worker count when one was given)
	GLR        float64 // generator learning rate
	DLR        float64 // discriminator learning rate
	TickKimg   float64 // tick length in kimg
	Fading     bool    // true while Resolution is being faded in (LOD is fractional)
	Alpha      float64 // weight of the new resolution while fading (1 - frac(LOD)); 1 when stable
	Done       bool    // Kimg >= total_kimg
}

// Stage describes the state the way a person reads it: "16x16 fading in" or "32x32 stable".
func (st State) Stage() string {
	if st.Fading {
		return fmt.Sprintf("%dx%d fading in", st.Resolution, st.Resolution)
	}
	return fmt.Sprintf("%dx%d stable", st.Resolution, st.Resolution)
}

// LOD returns the level of detail after kimg thousand images.
func (s *Schedule) LOD(kimg float64) float64 {
	if s.cfg.FixedResolution || s.maxLOD == 0 {
		return 0
	}
	if kimg < 0 {
		kimg = 0
	}
	c := s.cfg
	phase := c.LODTrainingKimg + c.LODTransitionKimg
	i := math.Floor(kimg / phase)
	k := kimg - i*phase
	lod := s.maxLOD - i
	if c.LODTransitionKimg > 0 {
		lod -= math.Max(k-c.LODTrainingKimg, 0) / c.LODTransitionKimg
	}
	return math.Max(lod, 0)
}

// At returns the state after kimg thousand images. workers > 0 rounds the minibatch down to a
// multiple of the worker count (never below one image per worker); workers <= 0 leaves it as
// the dicts say.
func (s *Schedule) At(kimg float64, workers int) State {
	lod := s.LOD(kimg)
	fl := math.Floor(lod)
	res := s.resolution >> int(fl)
	c := s.cfg
	mb, ok := c.Minibatch[res]
	if !ok {
		mb = c.MinibatchBase
	}
	if workers > 0 {
		mb -= mb % workers
		if mb < workers {
			mb = workers
		}
	}
	st := State{
		Kimg:       kimg,
		LOD:        lod,
		Resolution: res,
		Minibatch:  mb,
		GLR:        lookup(c.GLR, res, c.GLRBase),
		DLR:        lookup(c.DLR, res, c.DLRBase),
		TickKimg:   lookup(c.TickKimg, res, c.TickKimgBase),
		Fading:     lod != fl,
		Alpha:      1 - (lod - fl),
		Done:       kimg >= c.TotalKimg,
	}
	return st
}

// AtImages is At for a count of images shown.
func (s *Schedule) AtImages(nimg int64, workers int) State {
	return s.At(float64(nimg)/1000, workers)
}

// ResetOptimizer reports whether the Adam state must be reset between two points of training:
// SG resets it whenever floor(lod) or ceil(lod) changes, that is when a fade starts and when it
// ends.
func (s *Schedule) ResetOptimizer(prevKimg, kimg float64) bool {
	a, b := s.LOD(prevKimg), s.LOD(kimg)
	return math.Floor(a) != math.Floor(b) || math.Ceil(a) != math.Ceil(b)
}

// FullResolutionKimg returns the kimg at which lod first reaches 0 (0 in fixed-resolution
// mode).
func (s *Schedule) FullResolutionKimg() float64 {
	if s.maxLOD == 0 {
		return 0
	}
	c := s.cfg
	return s.maxLOD * (c.LODTrainingKimg + c.LODTransitionKimg)
}

// EMABeta returns the per-step decay of the generator's moving average for a minibatch and a
// half-life in kimg: 0.5^(minibatch / (half_life_kimg * 1000)). A half-life of 0 returns 0
// (no averaging: Gs follows G).
func EMABeta(minibatch int, halfLifeKimg float64) float64 {
	if halfLifeKimg <= 0 {
		return 0
	}
	return math.Pow(0.5, float64(minibatch)/(halfLifeKimg*1000))
}

func lookup(d FloatDict, res int, base float64) float64 {
	if v, ok := d[res]; ok {
		return v
	}
	return base
}

func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

func log2(n int) int { return bits.Len(uint(n)) - 1 }

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
