package train

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
)

func runSteps(t *testing.T, tr *Trainer, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := tr.Step(context.Background(), reals(tr.Plan(), 1), Local{}); err != nil {
			t.Fatal(err)
		}
	}
}

func snapshot(t *testing.T, tr *Trainer) map[string][]float32 {
	t.Helper()
	objs, err := tr.Objects()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]float32{}
	for _, o := range objs {
		for _, tn := range o.Tensors {
			v, err := tn.Float32()
			if err != nil {
				t.Fatal(err)
			}
			out[o.Name+"/"+tn.Name] = v
		}
	}
	return out
}

// TestExactResume trains K steps straight and K/2 + save + restore + K/2, across growth
// stages and Adam resets, and requires bit-identical state.
func TestExactResume(t *testing.T) {
	const k = 16
	d := newDevice(t)
	ctx := context.Background()
	st, err := store.Open(ctx, t.TempDir(), store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	job := spec.Defaults()

	straight, err := New(d, tinyOptions(t, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer straight.Close()
	runSteps(t, straight, k)

	first, err := New(d, tinyOptions(t, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	runSteps(t, first, k/2)
	m, err := first.Manifest(job)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := first.Objects()
	if err != nil {
		t.Fatal(err)
	}
	dir := checkpoint.DirName("ckpt", first.C.Images)
	if err := checkpoint.Save(ctx, st, dir, m, objs); err != nil {
		t.Fatal(err)
	}
	first.Close()

	resumed, err := New(d, tinyOptions(t, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	c, err := checkpoint.Load(ctx, st, dir, job)
	if err != nil {
		t.Fatal(err)
	}
	if err := resumed.Restore(c); err != nil {
		t.Fatal(err)
	}
	runSteps(t, resumed, k-k/2)

	if straight.C != resumed.C {
		t.Fatalf("counters differ: straight %+v resumed %+v", straight.C, resumed.C)
	}
	if straight.C.ResetCount == 0 {
		t.Fatalf("the run must cross an Adam reset to test it: %+v", straight.C)
	}
	a, b := snapshot(t, straight), snapshot(t, resumed)
	for name, va := range a {
		vb := b[name]
		for i := range va {
			if va[i] != vb[i] {
				t.Fatalf("%s[%d]: straight %v, resumed %v", name, i, va[i], vb[i])
			}
		}
	}
	t.Logf("%d tensors bit-identical after %d steps (%d images, %d Adam resets)", len(a), k, straight.C.Images, straight.C.ResetCount)

	// A flipped byte in an object is refused, naming the object.
	root := strings.TrimPrefix(st.URI(), "file://")
	path := filepath.Join(root, dir, "D.safetensors")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-3] ^= 0x01
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = checkpoint.Load(ctx, st, dir, job)
	if err == nil || !strings.Contains(err.Error(), "D.safetensors") {
		t.Fatalf("flipped byte: got %v, want an error naming D.safetensors", err)
	}
	t.Logf("flipped byte refused: %v", err)
}
