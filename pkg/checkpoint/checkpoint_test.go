package checkpoint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"path"
	"reflect"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/pkg/safetensors"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

// eachBackend runs f against a directory store and, when the minio binary is present, a MinIO
// bucket.
func eachBackend(t *testing.T, f func(t *testing.T, b store.Store)) {
	t.Run("dir", func(t *testing.T) {
		s, err := store.Open(context.Background(), t.TempDir(), store.Config{})
		if err != nil {
			t.Fatal(err)
		}
		f(t, s)
	})
	t.Run("s3", func(t *testing.T) {
		if testing.Short() {
			t.Skip("short mode: no MinIO")
		}
		m := storetest.StartMinIO(t)
		s, err := store.Open(context.Background(), m.Bucket(t)+"/run", m.Config())
		if err != nil {
			t.Fatal(err)
		}
		f(t, s)
	})
}

// state is what a trainer would save: odd float values included, whose bits must survive.
func state() []Object {
	nan := math.Float32frombits(0x7fc00123) // a NaN with a payload
	negZero := float32(math.Copysign(0, -1))
	g := make([]float32, 3*4*5)
	for i := range g {
		g[i] = float32(math.Sin(float64(i))) * 1e-3
	}
	return []Object{
		{Name: "G", Tensors: []safetensors.Tensor{
			safetensors.FromFloat32("synthesis.4x4.const", []int{3, 4, 5}, g),
			safetensors.FromFloat32("odd", []int{4}, []float32{nan, negZero, float32(math.Inf(-1)), math.SmallestNonzeroFloat32}),
		}},
		{Name: "Gs", Tensors: []safetensors.Tensor{safetensors.FromFloat32("synthesis.4x4.const", []int{3, 4, 5}, g)}},
		{Name: "opt_G", Tensors: []safetensors.Tensor{
			safetensors.FromFloat32("m/synthesis.4x4.const", []int{3, 4, 5}, g),
			safetensors.FromFloat32("v/synthesis.4x4.const", []int{3, 4, 5}, g),
		}, Metadata: map[string]string{"kind": "adam"}},
		{Name: "D", Tensors: []safetensors.Tensor{safetensors.FromFloat32("w", []int{2}, []float32{1, 2})}},
	}
}

func manifest(t *testing.T) *Manifest {
	t.Helper()
	s, err := spec.Preset("cpu-smoke")
	if err != nil {
		t.Fatal(err)
	}
	return &Manifest{
		Spec: s, Nimg: 123456, Kimg: 123.456, LOD: 1.5, Step: 7716, Tick: 12, Seq: 3, WorldSize: 2,
		RNG:        map[string][]byte{"latents": {1, 2, 3, 255}, "noise": {0}},
		Optimizers: map[string]Optimizer{"G": {Object: "opt_G", Step: 7716}},
		EMA:        "Gs",
		Loader:     json.RawMessage(`{"epoch":3,"cursor":[17,4]}`),
		Counters:   map[string]int64{"nonfinite_skipped": 2},
		Extra:      map[string]json.RawMessage{"metrics": json.RawMessage(`{"swd":[12.5,3]}`)},
	}
}

func TestRoundTrip(t *testing.T) {
	eachBackend(t, func(t *testing.T, b store.Store) {
		ctx := context.Background()
		m := manifest(t)
		dir := DirName("ckpts", m.Nimg)
		if dir != "ckpts/ckpt-000000123456" {
			t.Fatalf("DirName = %q", dir)
		}
		objs := state()
		if err := Save(ctx, b, dir, m, objs); err != nil {
			t.Fatal(err)
		}
		c, err := Load(ctx, b, dir, m.Spec)
		if err != nil {
			t.Fatal(err)
		}
		got := c.Manifest
		if got.Nimg != m.Nimg || got.Kimg != m.Kimg || got.LOD != m.LOD || got.Step != m.Step ||
			got.Tick != m.Tick || got.Seq != m.Seq || got.WorldSize != 2 || got.EMA != "Gs" ||
			!reflect.DeepEqual(got.RNG, m.RNG) || !reflect.DeepEqual(got.Optimizers, m.Optimizers) ||
			!reflect.DeepEqual(got.Counters, m.Counters) || string(got.Loader) != string(m.Loader) ||
			string(got.Extra["metrics"]) != string(m.Extra["metrics"]) ||
			!got.Created.Equal(m.Created) || got.FormatVersion != FormatVersion {
			t.Errorf("manifest: got %+v\nwant %+v", got, m)
		}
		if d := spec.Diff(got.Spec, m.Spec); len(d) != 0 || got.Spec.Preset != "cpu-smoke" {
			t.Errorf("spec changed: %v", d)
		}
		if len(got.Objects) != 4 || got.Objects[0].Name != "G" || len(got.Objects[0].SHA256) != 64 {
			t.Errorf("objects: %+v", got.Objects)
		}
		for _, o := range objs {
			f := c.Objects[o.Name]
			if f == nil || len(f.Tensors) != len(o.Tensors) {
				t.Fatalf("object %s missing or short", o.Name)
			}
			for i, want := range o.Tensors {
				g := f.Tensors[i]
				if g.Name != want.Name || !reflect.DeepEqual(g.Shape, want.Shape) || !bytes.Equal(g.Data, want.Data) {
					t.Errorf("object %s tensor %s differs", o.Name, want.Name)
				}
			}
		}
		odd, err := c.Float32("G", "odd", []int{4})
		if err != nil || math.Float32bits(odd[0]) != 0x7fc00123 || math.Float32bits(odd[1]) != 0x80000000 {
			t.Errorf("odd values: %v %v", odd, err)
		}
		if c.Objects["opt_G"].Metadata["kind"] != "adam" {
			t.Errorf("metadata lost")
		}
		// A compatible job (only free fields differ) may resume.
		job := m.Spec.Clone()
		job.Schedule.TotalKimg *= 2
		job.Workers.Max = 8
		if _, err := Load(ctx, b, dir, job); err != nil {
			t.Errorf("compatible spec refused: %v", err)
		}
		if _, err := Verify(ctx, b, dir); err != nil {
			t.Errorf("Verify: %v", err)
		}
		// A committed directory is never overwritten.
		if err := Save(ctx, b, dir, manifest(t), state()); !errors.Is(err, ErrExists) {
			t.Errorf("second save: %v, want ErrExists", err)
		}
	})
}

// rewrite replaces an object's bytes through the store, as corruption at rest would.
func rewrite(t *testing.T, b store.Store, key string, f func([]byte) []byte) {
	t.Helper()
	ctx := context.Background()
	data, err := store.ReadAll(ctx, b, key)
	if err != nil {
		t.Fatal(err)
	}
	data = f(data)
	if err := b.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func TestCorruption(t *testing.T) {
	eachBackend(t, func(t *testing.T, b store.Store) {
		ctx := context.Background()
		m := manifest(t)
		save := func(nimg int64) string {
			dir := DirName("c", nimg)
			if err := Save(ctx, b, dir, manifest(t), state()); err != nil {
				t.Fatal(err)
			}
			return dir
		}
		cases := []struct {
			name    string
			corrupt func(dir string)
			is      error
			want    string
		}{
			{"flipped byte", func(dir string) {
				rewrite(t, b, path.Join(dir, "Gs.safetensors"), func(d []byte) []byte { d[len(d)-3] ^= 0x01; return d })
			}, ErrCorrupt, "object Gs.safetensors has sha256"},
			{"flipped header byte", func(dir string) {
				rewrite(t, b, path.Join(dir, "G.safetensors"), func(d []byte) []byte { d[10] ^= 0x20; return d })
			}, ErrCorrupt, "object G.safetensors has sha256"},
			{"truncated", func(dir string) {
				rewrite(t, b, path.Join(dir, "opt_G.safetensors"), func(d []byte) []byte { return d[:len(d)/2] })
			}, ErrCorrupt, "object opt_G.safetensors is truncated"},
			{"extended", func(dir string) {
				rewrite(t, b, path.Join(dir, "D.safetensors"), func(d []byte) []byte { return append(d, 0) })
			}, ErrCorrupt, "object D.safetensors is longer than written"},
			{"missing object", func(dir string) {
				if err := b.Delete(ctx, path.Join(dir, "D.safetensors")); err != nil {
					t.Fatal(err)
				}
			}, ErrCorrupt, "object D.safetensors is missing"},
			{"missing manifest", func(dir string) {
				if err := b.Delete(ctx, path.Join(dir, ManifestKey)); err != nil {
					t.Fatal(err)
				}
			}, ErrIncomplete, "never committed"},
			{"garbled manifest", func(dir string) {
				rewrite(t, b, path.Join(dir, ManifestKey), func(d []byte) []byte { return d[:len(d)-2] })
			}, ErrCorrupt, "manifest"},
			{"manifest from the future", func(dir string) {
				rewrite(t, b, path.Join(dir, ManifestKey), func(d []byte) []byte {
					return bytes.Replace(d, []byte(`"format_version": 1`), []byte(`"format_version": 9`), 1)
				})
			}, ErrCorrupt, "format version 9"},
			{"manifest names a bad key", func(dir string) {
				rewrite(t, b, path.Join(dir, ManifestKey), func(d []byte) []byte {
					return bytes.Replace(d, []byte(`"key": "G.safetensors"`), []byte(`"key": "../G.safetensors"`), 1)
				})
			}, ErrCorrupt, `object "G" has key`},
		}
		for i, c := range cases {
			dir := save(int64(1000 * (i + 1)))
			c.corrupt(dir)
			_, err := Load(ctx, b, dir, m.Spec)
			t.Logf("%s: %v", c.name, err)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir) {
				t.Errorf("%s: Load error %v, want %v naming %q and %s", c.name, err, c.is, c.want, dir)
			}
			if c.is == ErrCorrupt && strings.Contains(c.want, "object") {
				if _, err := Verify(ctx, b, dir); !errors.Is(err, ErrCorrupt) {
					t.Errorf("%s: Verify error %v", c.name, err)
				}
			}
		}
	})
}

func TestIncompatibleSpec(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, t.TempDir(), store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	m := manifest(t)
	dir := DirName("", 5000)
	if err := Save(ctx, b, dir, m, state()); err != nil {
		t.Fatal(err)
	}
	job := m.Spec.Clone()
	job.Model.FmapMax = 64
	job.Dataset.Channels = 3
	_, err = Load(ctx, b, dir, job)
	if !errors.Is(err, spec.ErrIncompatible) {
		t.Fatalf("Load: %v, want spec.ErrIncompatible", err)
	}
	for _, want := range []string{dir, "dataset.channels (checkpoint 1, job 3)", "model.fmap_max (checkpoint 32, job 64)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestSaveErrors(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, t.TempDir(), store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		dir  string
		m    *Manifest
		objs []Object
		want string
	}{
		{"no spec", "a", &Manifest{}, nil, "without a spec"},
		{"bad dir", "../a", manifest(t), nil, "invalid key"},
		{"bad name", "b", manifest(t), []Object{{Name: "a/b"}}, `invalid object name "a/b"`},
		{"duplicate", "c", manifest(t), []Object{{Name: "G"}, {Name: "G"}}, `object "G" given twice`},
		{"bad tensor", "d", manifest(t), []Object{{Name: "G", Tensors: []safetensors.Tensor{{Name: "x", DType: "F32", Shape: []int{2}}}}}, "needs 8 bytes"},
		{"dangling optimizer", "e", manifest(t), []Object{{Name: "Gs"}}, `refers to missing object "opt_G"`},
	}
	for _, c := range cases {
		if err := Save(ctx, b, c.dir, c.m, c.objs); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// A failed save leaves no manifest: the directory is never read as a checkpoint.
	if _, err := Load(ctx, b, "e", nil); !errors.Is(err, ErrIncomplete) {
		t.Errorf("failed save readable: %v", err)
	}
}

func TestRetain(t *testing.T) {
	seqs := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	keep := Retain(seqs, 3, 5)
	var kept []int64
	for i, k := range keep {
		if k {
			kept = append(kept, seqs[i])
		}
	}
	if !reflect.DeepEqual(kept, []int64{5, 10, 11, 12}) {
		t.Errorf("Retain(1..12, 3, 5) kept %v", kept)
	}
	if k := Retain(seqs[:2], 5, 0); !k[0] || !k[1] {
		t.Errorf("fewer than keep_last: %v", k)
	}
}

func TestListLatestPrune(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(ctx, t.TempDir(), store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Latest(ctx, b, "run"); !errors.Is(err, ErrNone) {
		t.Fatalf("Latest on empty: %v", err)
	}
	for seq := int64(1); seq <= 7; seq++ {
		m := manifest(t)
		m.Seq, m.Nimg = seq, seq*4000
		if err := Save(ctx, b, DirName("run", m.Nimg), m, state()); err != nil {
			t.Fatal(err)
		}
	}
	// An interrupted save before the newest checkpoint, and one after it (maybe in progress).
	put := func(key string) {
		if err := b.Put(ctx, key, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
	}
	put(DirName("run", 2000) + "/G.safetensors")
	put(DirName("run", 99000) + "/G.safetensors")
	put("run/unrelated.txt")
	entries, err := List(ctx, b, "run")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 9 || entries[0].Nimg != 2000 || entries[0].Committed || !entries[1].Committed ||
		entries[8].Nimg != 99000 || entries[8].Committed {
		t.Fatalf("List: %+v", entries)
	}
	dir, m, err := Latest(ctx, b, "run")
	if err != nil || dir != DirName("run", 28000) || m.Seq != 7 {
		t.Fatalf("Latest: %s %v", dir, err)
	}
	removed, err := Prune(ctx, b, "run", 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{DirName("run", 2000), DirName("run", 4000), DirName("run", 8000),
		DirName("run", 16000), DirName("run", 20000)}
	if !reflect.DeepEqual(removed, want) {
		t.Errorf("Prune removed %v, want %v", removed, want)
	}
	entries, _ = List(ctx, b, "run")
	var left []int64
	for _, e := range entries {
		left = append(left, e.Nimg)
	}
	if !reflect.DeepEqual(left, []int64{12000, 24000, 28000, 99000}) {
		t.Errorf("left after prune: %v", left)
	}
	if _, err := Load(ctx, b, DirName("run", 12000), nil); err != nil {
		t.Errorf("kept checkpoint unreadable: %v", err)
	}
	if _, err := store.ReadAll(ctx, b, "run/unrelated.txt"); err != nil {
		t.Errorf("prune removed an unrelated object: %v", err)
	}
	if _, err := Prune(ctx, b, "run", 0, 0); err == nil {
		t.Errorf("keep_last 0 accepted")
	}
}

// FuzzManifest feeds arbitrary bytes to the manifest decoder: it must fail cleanly or return
// a manifest that passes its own checks and re-encodes.
func FuzzManifest(f *testing.F) {
	m := &Manifest{Spec: spec.Defaults(), FormatVersion: 1, EMA: "Gs",
		Objects: []ObjectInfo{{Name: "Gs", Key: "Gs.safetensors", Size: 3, SHA256: strings.Repeat("ab", 32)}}}
	good, _ := json.Marshal(m)
	f.Add(good)
	f.Add([]byte(`{"format_version":1,"objects":[]}`))
	f.Add([]byte(`{"format_version":1,"spec":{"model":{"z_dim":"x"}}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeManifest(data, "d")
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if m.Spec == nil {
			t.Fatalf("decoded manifest without a spec")
		}
		if _, err := json.Marshal(m); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}
