package spec

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAndPresetsValid(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, name := range PresetNames() {
		s, err := Preset(name)
		if err != nil {
			t.Fatalf("Preset(%s): %v", name, err)
		}
		if err := s.Validate(); err != nil {
			t.Errorf("preset %s: %v", name, err)
		}
		if s.Preset != name {
			t.Errorf("preset %s: Preset field = %q", name, s.Preset)
		}
		if _, err := s.NewSchedule(); err != nil {
			t.Errorf("preset %s schedule: %v", name, err)
		}
	}
	if _, err := Preset("nope"); err == nil || !strings.Contains(err.Error(), "cpu-smoke") {
		t.Errorf("unknown preset: %v", err)
	}
}

// TestSGDefaults checks the defaults against REFERENCE.md's StyleGAN table.
func TestSGDefaults(t *testing.T) {
	s := Defaults()
	m := s.Model
	if m.ZDim != 512 || m.WDim != 512 || m.MappingLayers != 8 || m.MappingLRMul != 0.01 ||
		m.FmapBase != 8192 || m.FmapDecay != 1 || m.FmapMax != 512 || m.StyleMixingProb != 0.9 ||
		m.TruncationPsi != 0.7 || m.TruncationCutoff != 8 || m.WAvgBeta != 0.995 ||
		m.MbstdGroupSize != 4 || m.MbstdFeatures != 1 || !reflect.DeepEqual(m.BlurFilter, []float64{1, 2, 1}) ||
		m.FusedScaleMinResolution != 128 || !m.UseNoise {
		t.Errorf("model defaults: %+v", m)
	}
	if s.Loss.R1Gamma != 10 || s.Loss.R1Interval != 1 || s.Adam.Beta1 != 0 || s.Adam.Beta2 != 0.99 ||
		s.Adam.Epsilon != 1e-8 || s.EMA.HalfLifeKimg != 10 {
		t.Errorf("loss/adam/ema defaults: %+v %+v %+v", s.Loss, s.Adam, s.EMA)
	}
	sc := s.Schedule
	if sc.InitialResolution != 8 || sc.LODTrainingKimg != 600 || sc.LODTransitionKimg != 600 ||
		sc.TotalKimg != 25000 || sc.Minibatch[4] != 512 || sc.MinibatchBase != 32 || sc.GLR[512] != 0.003 ||
		sc.TickKimg[1024] != 20 {
		t.Errorf("schedule defaults: %+v", sc)
	}
	if s.NumLayers() != 18 {
		t.Errorf("NumLayers at 1024 = %d, want 18", s.NumLayers())
	}
	// nf(stage): 4x4 is stage 1 -> min(4096, 512) = 512; 1024 is stage 9 -> 16.
	if s.Channels(1) != 512 || s.Channels(5) != 256 || s.Channels(9) != 16 {
		t.Errorf("Channels: %d %d %d", s.Channels(1), s.Channels(5), s.Channels(9))
	}
	small, _ := Preset("s32-small")
	if small.Dataset.Resolution != 32 || small.Model.ZDim != 128 || small.Model.WDim != 128 ||
		small.Model.MappingLayers != 8 || small.Model.FmapBase != 1024 || small.Model.FmapMax != 128 ||
		small.Dataset.Channels != 3 || small.Loss.R1Interval != 1 {
		t.Errorf("s32-small: %+v", small)
	}
	sched, _ := small.NewSchedule()
	if st := sched.At(0, 0); st.Minibatch != 32 || st.Resolution != 32 {
		t.Errorf("s32-small schedule at 0: %+v", st)
	}
	demo, _ := Preset("fashion-mnist-demo")
	dsched, _ := demo.NewSchedule()
	if st := dsched.At(0, 0); st.Resolution != 4 || demo.Dataset.Channels != 1 || demo.Dataset.Resolution != 32 {
		t.Errorf("fashion-mnist-demo at 0: %+v", st)
	}
	if dsched.FullResolutionKimg() >= demo.Schedule.TotalKimg {
		t.Errorf("fashion-mnist-demo never reaches 32x32 before total_kimg")
	}
}

func TestDecodeFile(t *testing.T) {
	p := writeFile(t, `
preset: s32-small
name: my-job
dataset:
  uri: s3://bucket/ffhq
  channels: 1
model:
  blur_filter: [1, 3, 3, 1]
schedule:
  minibatch: {4: 64, 8: 48}
  lod_training_kimg: 12.5
`)
	s, err := LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if s.Preset != "s32-small" || s.Name != "my-job" || s.Dataset.URI != "s3://bucket/ffhq" ||
		s.Dataset.Channels != 1 || s.Dataset.Resolution != 32 || s.Model.ZDim != 128 {
		t.Errorf("decoded: %+v", s)
	}
	if !reflect.DeepEqual(s.Model.BlurFilter, []float64{1, 3, 3, 1}) {
		t.Errorf("blur filter %v", s.Model.BlurFilter)
	}
	if len(s.Schedule.Minibatch) != 2 || s.Schedule.Minibatch[8] != 48 || s.Schedule.LODTrainingKimg != 12.5 {
		t.Errorf("schedule: %+v", s.Schedule)
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"unknown top", "sed: 1\n", "unknown field sed (did you mean seed?)"},
		{"unknown nested", "schedule:\n  lod_trainig_kimg: 1\n", "unknown field schedule.lod_trainig_kimg (did you mean schedule.lod_training_kimg?)"},
		{"unknown far", "model:\n  wibble_wobble: 1\n", "unknown field model.wibble_wobble"},
		{"wrong type", "schedule:\n  total_kimg: lots\n", "field schedule.total_kimg: got a string, want a number"},
		{"float into int", "dataset:\n  resolution: 1.5\n", "dataset.resolution"},
		{"section not mapping", "model: 3\n", "field model: got a number, want a mapping of fields"},
		{"top list", "- a\n- b\n", "top level must be a mapping"},
		{"duplicate", "seed: 1\nseed: 2\n", "seed"},
		{"bad yaml", "model: [\n", "job.yaml"},
		{"unknown preset", "preset: huge\n", `preset "huge" is unknown`},
		{"invalid value", "dataset:\n  resolution: 48\n", "dataset.resolution = 48: must be a power of 2 from 4 to 16384"},
		{"dict key", "schedule:\n  minibatch: {x: 3}\n", "schedule.minibatch"},
	}
	for _, c := range cases {
		_, err := LoadFile(writeFile(t, c.body))
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "spec: ") {
			t.Errorf("%s: error %q, want one line containing %q", c.name, msg, c.want)
		}
		if c.name != "invalid value" && !strings.Contains(msg, "job.yaml") {
			t.Errorf("%s: error %q does not name the file", c.name, msg)
		}
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Errorf("missing file accepted")
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		mutate func(*Spec)
		want   string
	}{
		{func(s *Spec) { s.Dataset.Resolution = 2 }, "dataset.resolution = 2"},
		{func(s *Spec) { s.Dataset.Channels = 2 }, "dataset.channels = 2: must be 1, 3 or 4"},
		{func(s *Spec) { s.Model.ZDim = 0 }, "model.z_dim = 0"},
		{func(s *Spec) { s.Model.MappingLRMul = 0 }, "model.mapping_lrmul = 0"},
		{func(s *Spec) { s.Model.StyleMixingProb = 1.5 }, "model.style_mixing_prob = 1.5: must be in [0, 1]"},
		{func(s *Spec) { s.Model.WAvgBeta = -0.1 }, "model.w_avg_beta = -0.1"},
		{func(s *Spec) { s.Model.BlurFilter = []float64{1, -1} }, "model.blur_filter = 1,-1"},
		{func(s *Spec) { s.Model.MbstdFeatures = 0 }, "model.mbstd_features = 0"},
		{func(s *Spec) { s.Loss.R1Gamma = -1 }, "loss.r1_gamma = -1"},
		{func(s *Spec) { s.Loss.R1Interval = 0 }, "loss.r1_interval = 0"},
		{func(s *Spec) { s.Loss.NonFinite = "ignore" }, `loss.nonfinite = "ignore"`},
		{func(s *Spec) { s.Adam.Beta2 = 1 }, "adam.beta2 = 1"},
		{func(s *Spec) { s.Adam.Epsilon = 0 }, "adam.epsilon = 0"},
		{func(s *Spec) { s.Schedule.InitialResolution = 2048 }, "schedule.initial_resolution = 2048"},
		{func(s *Spec) { s.Schedule.TotalKimg = -5 }, "schedule.total_kimg = -5"},
		{func(s *Spec) { s.Snapshot.KeepLast = 0 }, "snapshot.keep_last = 0"},
		{func(s *Spec) { s.Workers.Min, s.Workers.Max = 4, 2 }, "workers.max = 2"},
		{func(s *Spec) { s.Device = "tpu" }, `device = "tpu": must be cpu or cuda`},
		{func(s *Spec) { s.Threads = -1 }, "threads = -1"},
		{func(s *Spec) { s.Threads = 100000 }, "threads = 100000: must be at most 1024"},
		{func(s *Spec) { s.Dataset.Resolution = 1 << 20 }, "dataset.resolution = 1048576: must be a power of 2 from 4 to 16384"},
		{func(s *Spec) { s.Model.FmapBase, s.Dataset.Resolution = 3, 32 }, "model.fmap_base = 3: leaves 8x8 with no channels"},
		{func(s *Spec) { s.Model.FmapDecay = 20 }, "model.fmap_base = 8192: leaves 4x4 with no channels"},
		{func(s *Spec) { s.Preset = "x" }, `preset = "x"`},
	}
	for _, c := range cases {
		s := Defaults()
		c.mutate(s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "spec: ") {
			t.Errorf("got %v, want error containing %q", err, c.want)
		}
	}
}

func TestFlagsPrecedence(t *testing.T) {
	// defaults < preset < file < flags, field by field.
	p := writeFile(t, `
preset: s32-small
seed: 7
schedule:
  total_kimg: 50
  g_lr: {32: 0.004}
`)
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fl := RegisterFlags(fs)
	err := fs.Parse([]string{
		"--schedule-total-kimg=80",
		"--schedule-minibatch", "4=64,32=16",
		"--schedule-fixed-resolution=false",
		"--dataset-mirror",
		"--model-blur-filter=1,1",
		"--threads=3",
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := fl.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if s.Schedule.TotalKimg != 80 { // flag over file
		t.Errorf("total_kimg = %v, want 80 (flag)", s.Schedule.TotalKimg)
	}
	if s.Seed != 7 { // file over preset/defaults
		t.Errorf("seed = %v, want 7 (file)", s.Seed)
	}
	if s.Model.FmapMax != 128 { // preset over defaults
		t.Errorf("fmap_max = %v, want 128 (preset)", s.Model.FmapMax)
	}
	if s.Model.MappingLRMul != 0.01 { // defaults
		t.Errorf("mapping_lrmul = %v", s.Model.MappingLRMul)
	}
	if s.Schedule.GLR[32] != 0.004 || len(s.Schedule.GLR) != 1 {
		t.Errorf("g_lr = %v, want the file's", s.Schedule.GLR)
	}
	if len(s.Schedule.Minibatch) != 2 || s.Schedule.Minibatch[32] != 16 {
		t.Errorf("minibatch = %v, want the flag's", s.Schedule.Minibatch)
	}
	if s.Schedule.FixedResolution || !s.Dataset.Mirror || s.Threads != 3 ||
		!reflect.DeepEqual(s.Model.BlurFilter, []float64{1, 1}) {
		t.Errorf("flags not applied: fixed %v mirror %v threads %v blur %v", s.Schedule.FixedResolution,
			s.Dataset.Mirror, s.Threads, s.Model.BlurFilter)
	}
	if s.Preset != "s32-small" {
		t.Errorf("preset = %q", s.Preset)
	}

	// --preset overrides the file's preset.
	fs = pflag.NewFlagSet("test", pflag.ContinueOnError)
	fl = RegisterFlags(fs)
	if err := fs.Parse([]string{"--preset=cpu-smoke"}); err != nil {
		t.Fatal(err)
	}
	s, err = fl.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if s.Preset != "cpu-smoke" || s.Model.FmapMax != 32 || s.Seed != 7 {
		t.Errorf("--preset: preset %q fmap_max %d seed %d", s.Preset, s.Model.FmapMax, s.Seed)
	}

	// No file: preset and flags only.
	fs = pflag.NewFlagSet("test", pflag.ContinueOnError)
	fl = RegisterFlags(fs)
	if err := fs.Parse([]string{"--preset", "fashion-mnist-demo", "--dataset-uri", "/data/fm"}); err != nil {
		t.Fatal(err)
	}
	s, err = fl.Load("")
	if err != nil || s.Dataset.URI != "/data/fm" || s.Dataset.Channels != 1 {
		t.Errorf("no file: %v %+v", err, s)
	}
}

func TestFlagErrors(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	RegisterFlags(fs)
	for _, args := range [][]string{
		{"--seed=abc"}, {"--schedule-minibatch=4"}, {"--schedule-total-kimg=x"}, {"--dataset-mirror=maybe"},
	} {
		if err := fs.Parse(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	fs = pflag.NewFlagSet("test", pflag.ContinueOnError)
	fl := RegisterFlags(fs)
	if err := fs.Parse([]string{"--dataset-channels=2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.Load(""); err == nil || !strings.Contains(err.Error(), "dataset.channels = 2") {
		t.Errorf("invalid flag value: %v", err)
	}
}

// TestEveryFieldHasAFlag checks that every leaf field is a flag with help and round-trips
// through its text form.
func TestEveryFieldHasAFlag(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	RegisterFlags(fs)
	want := []string{"schedule-lod-training-kimg", "dataset-uri", "seed", "workers-min", "workers-max",
		"device", "threads", "snapshot-keep-last", "snapshot-keep-every", "model-truncation-psi",
		"loss-r1-gamma", "adam-beta2", "ema-half-life-kimg", "schedule-g-lr", "schedule-tick-kimg", "preset"}
	for _, n := range want {
		if fs.Lookup(n) == nil {
			t.Errorf("no flag --%s", n)
		}
	}
	s, _ := Preset("fashion-mnist-demo")
	for _, f := range Fields() {
		if f.Help == "" {
			t.Errorf("field %s has no help", f.Path)
		}
		if f.Path != "preset" && fs.Lookup(f.Flag) == nil {
			t.Errorf("field %s has no flag --%s", f.Path, f.Flag)
		}
		c := Defaults()
		if err := f.Set(c, f.Get(s)); err != nil {
			t.Errorf("field %s: set %q: %v", f.Path, f.Get(s), err)
		}
		if f.Get(c) != f.Get(s) {
			t.Errorf("field %s: round trip %q -> %q", f.Path, f.Get(s), f.Get(c))
		}
	}
	for path := range archFields {
		if _, ok := FieldByPath(path); !ok {
			t.Errorf("architecture field %s does not exist", path)
		}
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	for _, name := range PresetNames() {
		s, _ := Preset(name)
		s.Dataset.URI = "file:///tmp/x"
		b, err := s.YAML()
		if err != nil {
			t.Fatal(err)
		}
		got, err := LoadFile(writeFile(t, string(b)))
		if err != nil {
			t.Fatalf("%s: reload: %v\n%s", name, err, b)
		}
		if d := Diff(s, got); len(d) != 0 || got.Preset != name {
			t.Errorf("%s: round trip differs: %v", name, d)
		}
	}
}

func TestDiffAndCheckResume(t *testing.T) {
	a := Defaults()
	b := a.Clone()
	if d := Diff(a, b); len(d) != 0 {
		t.Fatalf("clone differs: %v", d)
	}
	b.Schedule.TotalKimg = 30000
	b.Workers.Max = 16
	b.Snapshot.CheckpointTicks = 5
	b.Schedule.GLR[1024] = 0.002
	if err := CheckResume(a, b); err != nil {
		t.Errorf("free fields refused: %v", err)
	}
	d := Diff(a, b)
	if len(d) != 4 {
		t.Errorf("diff: %v", d)
	}
	for _, x := range d {
		if x.Arch {
			t.Errorf("%s marked architecture", x.Field)
		}
	}
	b.Model.FmapMax = 256
	b.Dataset.Channels = 1
	b.Model.BlurFilter[1] = 3 // Clone must be deep: a's filter stays
	err := CheckResume(a, b)
	if err == nil || !errors.Is(err, ErrIncompatible) {
		t.Fatalf("CheckResume: %v", err)
	}
	for _, want := range []string{"dataset.channels (checkpoint 3, job 1)", "model.fmap_max (checkpoint 512, job 256)",
		"model.blur_filter (checkpoint 1,2,1, job 1,3,1)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "total_kimg") {
		t.Errorf("error names a free field: %v", err)
	}
}

// FuzzDecode feeds arbitrary job files to the decoder: it must return an error or a spec, never
// panic, and errors are one line.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("preset: s32-small\nschedule:\n  minibatch: {4: 64}\n"))
	f.Add([]byte("model:\n  blur_filter: [1, 2, 1]\n"))
	f.Add([]byte("seed: 1\nseed: 2\n"))
	f.Add([]byte("- a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := Defaults()
		err := Decode(data, "fuzz.yaml", s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		if err := s.Validate(); err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line validation error: %q", err)
		}
	})
}

// TestDecodeRefusesLostContent checks the job files whose content the YAML-to-JSON step would
// drop or misreport: empty files, a second document, NaN and infinities. Each is one line
// naming the file (and the field and line where there is one).
func TestDecodeRefusesLostContent(t *testing.T) {
	for _, c := range []struct{ name, data, want string }{
		{"empty", "", "holds no fields"},
		{"comment", "# nothing\n", "holds no fields"},
		{"null", "~\n", "holds no fields"},
		{"second document", "preset: cpu-smoke\n---\npreset: sg-1024\n", "a second YAML document at line 2"},
		{"nan", "model: {truncation_psi: .nan}\n", "line 1: field model.truncation_psi = .nan: numbers must be finite"},
		{"inf in a list", "model:\n  blur_filter: [1, .inf, 1]\n", "line 2: field model.blur_filter = .inf"},
		{"negative inf", "schedule: {total_kimg: -.Inf}\n", "field schedule.total_kimg = -.Inf"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Decode([]byte(c.data), "job.yaml", Defaults())
			if err == nil {
				t.Fatalf("Decode(%q) accepted it", c.data)
			}
			if msg := err.Error(); !strings.Contains(msg, c.want) || !strings.Contains(msg, "job.yaml") || strings.Contains(msg, "\n") {
				t.Errorf("Decode(%q) = %q; want one line naming job.yaml with %q", c.data, msg, c.want)
			}
		})
	}
	// A leading document marker and a plain file still decode.
	s := Defaults()
	if err := Decode([]byte("---\nseed: 7\n"), "job.yaml", s); err != nil || s.Seed != 7 {
		t.Errorf("leading ---: seed %d, err %v", s.Seed, err)
	}
}
