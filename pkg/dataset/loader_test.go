package dataset

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/pkg/store"
)

// gradientDataset builds n 8x8 gray images where pixel (x, y) of image i is 2*i + 10*x (mod
// 256) and the label is i % 10, in shards of 16, and returns its store and manifest.
func gradientDataset(t testing.TB, n int) (store.Store, *Manifest) {
	t.Helper()
	data := make([]byte, n*64)
	lbl := make([]byte, n)
	for i := range n {
		lbl[i] = byte(i % 10)
		for y := range 8 {
			for x := range 8 {
				data[i*64+y*8+x] = byte(2*i + 10*x)
			}
		}
	}
	dir := t.TempDir()
	writeFile(t, dir+"/images.idx", idxBytes([]int{n, 8, 8}, data))
	writeFile(t, dir+"/labels.idx", idxBytes([]int{n}, lbl))
	st := dirStore(t)
	m, _, err := create(t, st, Options{Source: dir + "/images.idx", Labels: dir + "/labels.idx", Resolution: 8, ShardSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	return st, m
}

func newLoader(t testing.TB, cfg LoaderConfig) *Loader {
	t.Helper()
	l, err := NewLoader(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func next(t testing.TB, l *Loader) Batch {
	t.Helper()
	b, err := l.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkImage verifies one batch image against the gradient formula at level 0.
func checkImage(t testing.TB, b Batch, k int) {
	t.Helper()
	idx := b.Indices[k]
	for x := range 8 {
		sx := x
		if b.Mirrored[k] {
			sx = 7 - x
		}
		want := float32(byte(2*idx+int64(10*sx)))*(1/127.5) - 1
		if got := b.Data[k*64+3*8+x]; got != want {
			t.Fatalf("image %d (mirrored %v) x=%d: %v, want %v", idx, b.Mirrored[k], x, got, want)
		}
	}
	if b.Labels[k] != int32(idx%10) {
		t.Fatalf("image %d: label %d", idx, b.Labels[k])
	}
}

func TestLoaderEpochsAndContent(t *testing.T) {
	st, m := gradientDataset(t, 100)
	for _, window := range []int{0, 2} {
		l := newLoader(t, LoaderConfig{Store: st, Manifest: m, Batch: 10, Seed: 7, Mirror: true, Window: window})
		for epoch := range 2 {
			seen := map[int64]bool{}
			mirrored := 0
			for range 10 {
				b := next(t, l)
				if b.N != 10 || b.C != 1 || b.H != 8 || b.W != 8 || len(b.Data) != 640 {
					t.Fatalf("batch shape %d %d %d %d, %d floats", b.N, b.C, b.H, b.W, len(b.Data))
				}
				for k, idx := range b.Indices {
					seen[idx] = true
					checkImage(t, b, k)
					if b.Mirrored[k] {
						mirrored++
					}
				}
			}
			if len(seen) != 100 {
				t.Fatalf("window %d epoch %d covered %d of 100 images", window, epoch, len(seen))
			}
			if mirrored < 25 || mirrored > 75 {
				t.Fatalf("epoch %d mirrored %d of 100 images", epoch, mirrored)
			}
			if c := l.Cursor(); c.Epoch != epoch+1 || c.Position != 0 {
				t.Fatalf("cursor after epoch %d: %+v", epoch, c)
			}
		}
	}
}

func TestLoaderDeterministicAndResumable(t *testing.T) {
	st, m := gradientDataset(t, 100)
	cfg := LoaderConfig{Store: st, Manifest: m, Batch: 7, Seed: 42, Mirror: true}
	a := newLoader(t, cfg)
	var stream []Batch
	for range 40 { // crosses two epoch boundaries mid-batch
		stream = append(stream, next(t, a))
	}
	b := newLoader(t, cfg)
	for i := range 40 {
		if got := next(t, b); !reflect.DeepEqual(got, stream[i]) {
			t.Fatalf("batch %d differs between two loaders with the same seed", i)
		}
	}
	other := cfg
	other.Seed = 43
	if got := next(t, newLoader(t, other)); reflect.DeepEqual(got.Indices, stream[0].Indices) {
		t.Fatal("a different seed gave the same first batch")
	}
	// Save the cursor after batch 16 as JSON, restore it, continue identically.
	js, err := json.Marshal(stream[16].Cursor)
	if err != nil {
		t.Fatal(err)
	}
	var cur Cursor
	if err := json.Unmarshal(js, &cur); err != nil || cur != stream[16].Cursor {
		t.Fatalf("cursor JSON %s round trip: %+v, %v", js, cur, err)
	}
	if !strings.Contains(string(js), `"epoch":1`) {
		t.Fatalf("cursor JSON %s", js)
	}
	resumed := cfg
	resumed.Cursor = cur
	r := newLoader(t, resumed)
	for i := 17; i < 40; i++ {
		if got := next(t, r); !reflect.DeepEqual(got, stream[i]) {
			t.Fatalf("batch %d after restoring the cursor differs", i)
		}
	}
}

func TestLoaderShardsLODAndCache(t *testing.T) {
	ctx := context.Background()
	st, m := gradientDataset(t, 100)
	cache := t.TempDir()
	l := newLoader(t, LoaderConfig{Store: st, Manifest: m, Shards: []int{1, 3}, Batch: 8, LOD: 1, CacheDir: cache, Window: 1})
	if l.Images() != 32 {
		t.Fatalf("shards 1 and 3 hold %d images, want 32", l.Images())
	}
	for range 8 {
		b := next(t, l)
		if b.H != 4 || b.W != 4 || len(b.Data) != 8*16 {
			t.Fatalf("lod 1 batch is %dx%d with %d floats", b.H, b.W, len(b.Data))
		}
		for k, idx := range b.Indices {
			if idx < 16 || (idx >= 32 && idx < 48) || idx >= 64 {
				t.Fatalf("image %d is not in shards 1 or 3", idx)
			}
			// Level 1 pixel x averages source columns 2x and 2x+1: 2i + 20x + 5.
			want := float32(byte(2*idx+int64(20*2+5)))*(1/127.5) - 1
			if got := b.Data[k*16+1*4+2]; got != want {
				t.Fatalf("image %d lod 1 pixel (2,1) = %v, want %v", idx, got, want)
			}
		}
	}
	// Switching level continues from the cursor.
	cur := l.Cursor()
	if err := l.SetLOD(0); err != nil {
		t.Fatal(err)
	}
	if b := next(t, l); b.H != 8 || l.Cursor().Position != cur.Position+8 {
		t.Fatalf("after SetLOD(0): %dx%d, cursor %+v from %+v", b.H, b.W, l.Cursor(), cur)
	}
	if err := l.SetLOD(5); err == nil {
		t.Fatal("SetLOD(5) accepted for an 8x8 dataset")
	}
	// The shards are cached by content hash; with the store's copies gone, a new loader still runs.
	files, _ := filepath.Glob(filepath.Join(cache, "*.shard"))
	if len(files) != 2 {
		t.Fatalf("cache holds %d shards, want 2", len(files))
	}
	for _, i := range []int{1, 3} {
		if err := st.Delete(ctx, m.Shards[i].Key); err != nil {
			t.Fatal(err)
		}
	}
	c := newLoader(t, LoaderConfig{Store: st, Manifest: m, Shards: []int{3, 1}, Batch: 32, CacheDir: cache})
	if b := next(t, c); len(b.Indices) != 32 {
		t.Fatal("cached loader returned a short batch")
	}
	// A corrupt cache entry is refetched; with the store copy gone that fails clearly.
	os.WriteFile(files[0], []byte("garbage"), 0o644)
	d := newLoader(t, LoaderConfig{Store: st, Manifest: m, Shards: []int{1, 3}, Batch: 32, CacheDir: cache})
	if _, err := d.Next(ctx); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("corrupt cache and missing object: %v", err)
	}
}

func TestLoaderRejectsCorruptShardAndBadConfig(t *testing.T) {
	ctx := context.Background()
	st, m := gradientDataset(t, 40)
	b, _ := store.ReadAll(ctx, st, m.Shards[0].Key)
	b[100] ^= 1
	st.Put(ctx, m.Shards[0].Key, strings.NewReader(string(b)), int64(len(b)))
	l := newLoader(t, LoaderConfig{Store: st, Manifest: m, Shards: []int{0}, Batch: 4})
	if _, err := l.Next(ctx); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("corrupt shard: %v, want a sha256 mismatch", err)
	}
	for _, cfg := range []LoaderConfig{
		{Store: st, Manifest: m, Batch: 0},
		{Store: st, Manifest: m, Batch: 4, LOD: 2},
		{Store: st, Manifest: m, Batch: 4, Shards: []int{9}},
		{Store: st, Manifest: m, Batch: 4, Shards: []int{1, 1}},
		{Store: st, Manifest: m, Batch: 4, Cursor: Cursor{Position: 40}},
	} {
		if _, err := NewLoader(ctx, cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

func BenchmarkLoader32(b *testing.B) {
	images, labels := fashion(b)
	st := dirStore(b)
	if _, _, err := create(b, st, Options{Source: images, Labels: labels, Resolution: 32}); err != nil {
		b.Fatal(err)
	}
	l := newLoader(b, LoaderConfig{Store: st, Batch: 64, Mirror: true, Prefetch: 4})
	b.ResetTimer()
	for range b.N {
		l.Release(next(b, l))
	}
	b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "images/s")
}
