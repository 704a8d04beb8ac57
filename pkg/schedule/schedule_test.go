package schedule

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func mustNew(t *testing.T, cfg Config, res int) *Schedule {
	t.Helper()
	s, err := New(cfg, res)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// TestSG1024 reproduces SG's FFHQ schedule: R=1024, initial 8, 600/600 kimg, reaching lod 0 at
// 8400 kimg, with SG's 8-GPU minibatch dict and learning-rate dict.
func TestSG1024(t *testing.T) {
	s := mustNew(t, Default(), 1024)
	cases := []struct {
		kimg  float64
		lod   float64
		res   int
		mb    int
		glr   float64
		tick  float64
		stage string
	}{
		{0, 7, 8, 256, 0.001, 140, "8x8 stable"},
		{300, 7, 8, 256, 0.001, 140, "8x8 stable"},
		{600, 7, 8, 256, 0.001, 140, "8x8 stable"},
		{900, 6.5, 16, 128, 0.001, 120, "16x16 fading in"},
		{1200, 6, 16, 128, 0.001, 120, "16x16 stable"},
		{1800, 6, 16, 128, 0.001, 120, "16x16 stable"},
		{2100, 5.5, 32, 64, 0.001, 100, "32x32 fading in"},
		{2400, 5, 32, 64, 0.001, 100, "32x32 stable"},
		{3000, 5, 32, 64, 0.001, 100, "32x32 stable"},
		{3300, 4.5, 64, 32, 0.001, 80, "64x64 fading in"},
		{3600, 4, 64, 32, 0.001, 80, "64x64 stable"},
		{4500, 3.5, 128, 32, 0.0015, 60, "128x128 fading in"},
		{4800, 3, 128, 32, 0.0015, 60, "128x128 stable"},
		{6000, 2, 256, 32, 0.002, 40, "256x256 stable"},
		{6900, 1.5, 512, 32, 0.003, 30, "512x512 fading in"},
		{7200, 1, 512, 32, 0.003, 30, "512x512 stable"},
		{7800, 1, 512, 32, 0.003, 30, "512x512 stable"},
		{8100, 0.5, 1024, 32, 0.003, 20, "1024x1024 fading in"},
		{8400, 0, 1024, 32, 0.003, 20, "1024x1024 stable"},
		{9000, 0, 1024, 32, 0.003, 20, "1024x1024 stable"},
		{25000, 0, 1024, 32, 0.003, 20, "1024x1024 stable"},
	}
	for _, c := range cases {
		st := s.At(c.kimg, 0)
		if math.Abs(st.LOD-c.lod) > 1e-12 || st.Resolution != c.res || st.Minibatch != c.mb ||
			st.GLR != c.glr || st.DLR != c.glr || st.TickKimg != c.tick || st.Stage() != c.stage {
			t.Errorf("kimg %v: got lod %v res %d mb %d glr %v dlr %v tick %v %q; want lod %v res %d mb %d lr %v tick %v %q",
				c.kimg, st.LOD, st.Resolution, st.Minibatch, st.GLR, st.DLR, st.TickKimg, st.Stage(),
				c.lod, c.res, c.mb, c.glr, c.tick, c.stage)
		}
	}
	if got := s.FullResolutionKimg(); got != 8400 {
		t.Errorf("FullResolutionKimg = %v, want 8400", got)
	}
	if s.At(8399.999, 0).LOD <= 0 {
		t.Errorf("lod reached 0 before 8400 kimg")
	}
	if !s.At(25000, 0).Done || s.At(24999.9, 0).Done {
		t.Errorf("Done flag wrong around total_kimg 25000")
	}
	// Before the first fade: 4x4 uses the minibatch dict's 512 when training starts at 4.
	cfg := Default()
	cfg.InitialResolution = 4
	s4 := mustNew(t, cfg, 1024)
	if st := s4.At(0, 0); st.LOD != 8 || st.Resolution != 4 || st.Minibatch != 512 || st.TickKimg != 160 {
		t.Errorf("initial 4: got %+v", st)
	}
	if got := s4.FullResolutionKimg(); got != 9600 {
		t.Errorf("initial 4: FullResolutionKimg = %v, want 9600", got)
	}
}

func TestAlphaAndFading(t *testing.T) {
	s := mustNew(t, Default(), 1024)
	st := s.At(750, 0) // a quarter into the 16x16 fade
	if !st.Fading || math.Abs(st.LOD-6.75) > 1e-12 || math.Abs(st.Alpha-0.25) > 1e-12 {
		t.Errorf("kimg 750: got lod %v alpha %v fading %v", st.LOD, st.Alpha, st.Fading)
	}
	if st := s.At(1200, 0); st.Fading || st.Alpha != 1 {
		t.Errorf("kimg 1200: got alpha %v fading %v, want stable", st.Alpha, st.Fading)
	}
	// Images and kimg agree.
	if a, b := s.AtImages(900_000, 0), s.At(900, 0); a != b {
		t.Errorf("AtImages(900000) = %+v, At(900) = %+v", a, b)
	}
}

func TestMinibatchWorkers(t *testing.T) {
	s := mustNew(t, Default(), 1024)
	cases := []struct {
		kimg    float64
		workers int
		want    int
	}{
		{0, 0, 256},
		{0, 1, 256},
		{0, 3, 255},
		{0, 7, 252},
		{3600, 5, 30},  // 32 at 64x64 -> 30
		{3600, 64, 64}, // never below one image per worker
		{8400, 8, 32},
	}
	for _, c := range cases {
		if got := s.At(c.kimg, c.workers).Minibatch; got != c.want {
			t.Errorf("kimg %v workers %d: minibatch %d, want %d", c.kimg, c.workers, got, c.want)
		}
	}
}

func TestResetOptimizer(t *testing.T) {
	s := mustNew(t, Default(), 1024)
	cases := []struct {
		a, b float64
		want bool
	}{
		{0, 1, false},       // 8x8 stable
		{599, 600, false},   // still stable
		{600, 600.5, true},  // fade starts: floor 7 -> 6
		{700, 800, false},   // inside the fade
		{1199, 1200, true},  // fade ends: ceil 7 -> 6
		{1200, 1300, false}, // 16x16 stable
		{8300, 8400, true},  // last fade ends
		{8400, 9000, false}, // full resolution
		{0, 8400, true},
	}
	for _, c := range cases {
		if got := s.ResetOptimizer(c.a, c.b); got != c.want {
			t.Errorf("ResetOptimizer(%v, %v) = %v, want %v (lod %v -> %v)", c.a, c.b, got, c.want,
				s.LOD(c.a), s.LOD(c.b))
		}
	}
}

func TestFixedResolution(t *testing.T) {
	cfg := Default()
	cfg.FixedResolution = true
	cfg.InitialResolution = 0 // ignored in fixed mode
	s := mustNew(t, cfg, 256)
	for _, kimg := range []float64{0, 600, 900, 5000} {
		st := s.At(kimg, 0)
		if st.LOD != 0 || st.Resolution != 256 || st.Fading || st.GLR != 0.002 || st.Minibatch != 32 {
			t.Errorf("fixed, kimg %v: got %+v", kimg, st)
		}
		if s.ResetOptimizer(0, kimg) {
			t.Errorf("fixed: optimizer reset between 0 and %v", kimg)
		}
	}
	if s.FullResolutionKimg() != 0 {
		t.Errorf("fixed: FullResolutionKimg = %v", s.FullResolutionKimg())
	}
	// Initial resolution equal to the dataset resolution is the same as fixed.
	cfg = Default()
	cfg.InitialResolution = 32
	s = mustNew(t, cfg, 32)
	if st := s.At(1000, 0); st.LOD != 0 || st.Resolution != 32 {
		t.Errorf("initial = R: got %+v", st)
	}
}

func TestNoTransition(t *testing.T) {
	cfg := Default()
	cfg.LODTransitionKimg = 0
	s := mustNew(t, cfg, 32) // 8 -> 16 -> 32 in 600-kimg steps without fades
	for kimg, want := range map[float64]float64{0: 2, 599: 2, 600: 1, 1199: 1, 1200: 0, 5000: 0} {
		if got := s.LOD(kimg); got != want {
			t.Errorf("no transition: lod(%v) = %v, want %v", kimg, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		res    int
		mutate func(*Config)
		want   string
	}{
		{"resolution", 48, func(c *Config) {}, "dataset.resolution = 48"},
		{"initial too big", 16, func(c *Config) { c.InitialResolution = 32 }, "schedule.initial_resolution = 32"},
		{"initial not pow2", 64, func(c *Config) { c.InitialResolution = 12 }, "schedule.initial_resolution = 12"},
		{"negative training", 64, func(c *Config) { c.LODTrainingKimg = -1 }, "schedule.lod_training_kimg = -1"},
		{"nan transition", 64, func(c *Config) { c.LODTransitionKimg = math.NaN() }, "schedule.lod_transition_kimg = NaN"},
		{"zero phase", 64, func(c *Config) { c.LODTrainingKimg, c.LODTransitionKimg = 0, 0 }, "schedule.lod_training_kimg = 0"},
		{"total", 64, func(c *Config) { c.TotalKimg = 0 }, "schedule.total_kimg = 0"},
		{"minibatch base", 64, func(c *Config) { c.MinibatchBase = 0 }, "schedule.minibatch_base = 0"},
		{"minibatch key", 64, func(c *Config) { c.Minibatch[12] = 4 }, "key 12 is not a resolution"},
		{"minibatch value", 64, func(c *Config) { c.Minibatch[8] = 0 }, "minibatch at 8 must be >= 1"},
		{"g lr", 64, func(c *Config) { c.GLRBase = 0 }, "schedule.g_lr_base = 0"},
		{"d lr dict", 64, func(c *Config) { c.DLR[256] = -1 }, "schedule.d_lr = "},
		{"tick", 64, func(c *Config) { c.TickKimg[4] = 0 }, "tick length at 4 must be > 0"},
	}
	for _, c := range cases {
		cfg := Default()
		c.mutate(&cfg)
		_, err := New(cfg, c.res)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got error %v, want one line containing %q", c.name, err, c.want)
		}
	}
}

func TestDicts(t *testing.T) {
	d, err := ParseIntDict("4=512, 8:256,16=128")
	if err != nil || len(d) != 3 || d[8] != 256 {
		t.Fatalf("ParseIntDict: %v %v", d, err)
	}
	if d.String() != "4=512,8=256,16=128" {
		t.Errorf("String = %q", d.String())
	}
	f, err := ParseFloatDict("{128: 0.0015, 256: 0.002}")
	if err != nil || f[128] != 0.0015 || f.String() != "128=0.0015,256=0.002" {
		t.Errorf("ParseFloatDict: %v %v %q", f, err, f.String())
	}
	if e, err := ParseIntDict(" "); err != nil || len(e) != 0 {
		t.Errorf("empty dict: %v %v", e, err)
	}
	for _, bad := range []string{"4", "x=1", "4=y", "4=1,4=2"} {
		if _, err := ParseIntDict(bad); err == nil {
			t.Errorf("ParseIntDict(%q) accepted", bad)
		}
	}
	// JSON decoding replaces the dict instead of merging into it.
	cfg := Default()
	if err := json.Unmarshal([]byte(`{"minibatch":{"8":16},"g_lr":{"4":0.01}}`), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Minibatch) != 1 || cfg.Minibatch[8] != 16 || len(cfg.GLR) != 1 || cfg.GLR[4] != 0.01 {
		t.Errorf("decoded dicts merged: %v %v", cfg.Minibatch, cfg.GLR)
	}
	// Clone is deep.
	a := Default()
	b := a.Clone()
	b.Minibatch[4] = 1
	if a.Minibatch[4] != 512 {
		t.Errorf("Clone shares the minibatch dict")
	}
}

func TestEMABeta(t *testing.T) {
	if got := EMABeta(32, 10); math.Abs(got-math.Pow(0.5, 32.0/10000)) > 1e-15 {
		t.Errorf("EMABeta(32, 10) = %v", got)
	}
	// After half_life worth of images the weight of the old average is one half.
	b := EMABeta(50, 1)
	if got := math.Pow(b, 1000.0/50); math.Abs(got-0.5) > 1e-12 {
		t.Errorf("beta^(1000/50) = %v, want 0.5", got)
	}
	if EMABeta(32, 0) != 0 {
		t.Errorf("half-life 0 should give beta 0")
	}
}
