package train

import (
	"strings"
	"testing"
)

// trainedTiny returns a tiny trainer after a few steps, so that G, Gs and w_avg differ from
// their initial values.
func trainedTiny(t *testing.T) *Trainer {
	t.Helper()
	tr, err := New(newDevice(t), tinyOptions(t, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	runSteps(t, tr, 4)
	return tr
}

// images splits a batch [N, C, r, r] into its images.
func images(t *testing.T, data []float32, shape []int) [][]float32 {
	t.Helper()
	per := shape[1] * shape[2] * shape[3]
	if len(data) != shape[0]*per {
		t.Fatalf("%d values for shape %v", len(data), shape)
	}
	out := make([][]float32, shape[0])
	for i := range out {
		out[i] = data[i*per : (i+1)*per]
	}
	return out
}

// gen renders seeds one at a time (GenerateEach).
func gen(t *testing.T, tr *Trainer, seeds []uint64, o GenOptions) [][]float32 {
	t.Helper()
	data, shape, err := tr.GenerateEach(seeds, o)
	if err != nil {
		t.Fatal(err)
	}
	return images(t, data, shape)
}

func equal(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestGenerateSeedIndependentOfBatch(t *testing.T) {
	tr := trainedTiny(t)
	for _, noise := range []string{"random", "const", "none"} {
		o := GenOptions{Psi: 0.7, Cutoff: 8, NoiseMode: noise, UseAverage: true}
		all := gen(t, tr, []uint64{1, 2, 3, 4, 5}, o)
		alone := gen(t, tr, []uint64{3}, o)
		swapped := gen(t, tr, []uint64{5, 3}, o)
		again := gen(t, tr, []uint64{1, 2, 3, 4, 5}, o)
		if !equal(all[2], alone[0]) || !equal(all[2], swapped[1]) {
			t.Fatalf("noise %s: seed 3 renders differently in another batch", noise)
		}
		if !equal(all[4], swapped[0]) {
			t.Fatalf("noise %s: seed 5 renders differently in another batch", noise)
		}
		for i := range all {
			if !equal(all[i], again[i]) {
				t.Fatalf("noise %s: image %d differs between two identical calls", noise, i)
			}
		}
		if equal(all[0], all[1]) {
			t.Fatalf("noise %s: seeds 1 and 2 render the same image", noise)
		}
		// GenerateEach is Generate one seed at a time.
		data, shape, err := tr.Generate([]uint64{3}, o)
		if err != nil {
			t.Fatal(err)
		}
		if !equal(images(t, data, shape)[0], alone[0]) {
			t.Fatalf("noise %s: GenerateEach and Generate differ for one seed", noise)
		}
	}
}

func TestTruncationPsiZero(t *testing.T) {
	tr := trainedTiny(t)
	layers := tr.NumStyleLayers(0)
	if layers != 6 {
		t.Fatalf("16 px: %d style layers, want 6", layers)
	}
	// Every layer pulled all the way to w_avg and no noise: every seed is the same image.
	o := GenOptions{Psi: 0, Cutoff: layers, NoiseMode: "none", UseAverage: true}
	im := gen(t, tr, []uint64{0, 7, 99}, o)
	if !equal(im[0], im[1]) || !equal(im[0], im[2]) {
		t.Fatal("psi 0 on every layer without noise: seeds render different images")
	}
	// Only the coarse layers truncated: the fine layers still tell the seeds apart.
	o.Cutoff = 2
	im = gen(t, tr, []uint64{0, 7}, o)
	if equal(im[0], im[1]) {
		t.Fatal("psi 0 on 2 of 6 layers: seeds render the same image")
	}
	// G and Gs are different networks after training.
	o = GenOptions{Psi: 1, NoiseMode: "none", UseAverage: true}
	gs := gen(t, tr, []uint64{4}, o)
	o.UseAverage = false
	g := gen(t, tr, []uint64{4}, o)
	if equal(gs[0], g[0]) {
		t.Fatal("G and Gs render the same image")
	}
}

func TestGenerateMixed(t *testing.T) {
	tr := trainedTiny(t)
	rows, cols := []uint64{10, 11}, []uint64{20, 21, 22}
	for _, noise := range []string{"random", "none"} {
		o := GenOptions{Psi: 0.7, Cutoff: 8, NoiseMode: noise, UseAverage: true}
		data, shape, err := tr.GenerateMixed(rows, cols, 3, o)
		if err != nil {
			t.Fatal(err)
		}
		if shape[0] != 6 || shape[1] != 1 || shape[2] != 16 || shape[3] != 16 {
			t.Fatalf("mixed shape %v, want [6 1 16 16]", shape)
		}
		mixed := images(t, data, shape)
		rowIm := gen(t, tr, rows, o)
		colIm := gen(t, tr, cols, o)
		for i := range rows {
			for j := range cols {
				m := mixed[i*len(cols)+j]
				if equal(m, rowIm[i]) || equal(m, colIm[j]) {
					t.Fatalf("noise %s: mix (%d,%d) equals a source", noise, i, j)
				}
			}
		}
		// Crossover past the last layer: the row seed's image.
		data, shape, err = tr.GenerateMixed(rows, cols, 100, o)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range images(t, data, shape) {
			if !equal(m, rowIm[i/len(cols)]) {
				t.Fatalf("noise %s: crossover 100, cell %d is not its row seed's image", noise, i)
			}
		}
		if noise == "none" {
			// Crossover 0: every style from the column seed (noise is the row's, so only
			// without noise is it the column seed's image).
			data, shape, err = tr.GenerateMixed(rows, cols, 0, o)
			if err != nil {
				t.Fatal(err)
			}
			for i, m := range images(t, data, shape) {
				if !equal(m, colIm[i%len(cols)]) {
					t.Fatalf("crossover 0, cell %d is not its column seed's image", i)
				}
			}
		}
	}
	if _, _, err := tr.GenerateMixed(nil, cols, 3, GenOptions{Psi: 1, NoiseMode: "none"}); err == nil {
		t.Fatal("no row seeds: no error")
	}
	if _, _, err := tr.GenerateMixed(rows, cols, 3, GenOptions{Psi: 1, NoiseMode: "loud"}); err == nil || !strings.Contains(err.Error(), `"loud"`) {
		t.Fatalf("bad noise mode: %v", err)
	}
}

func TestInterpolate(t *testing.T) {
	tr := trainedTiny(t)
	for _, noise := range []string{"random", "const", "none"} {
		o := GenOptions{Psi: 0.7, Cutoff: 8, NoiseMode: noise, UseAverage: true}
		data, shape, err := tr.Interpolate(3, 8, 5, o)
		if err != nil {
			t.Fatal(err)
		}
		if shape[0] != 5 || shape[2] != 16 {
			t.Fatalf("strip shape %v", shape)
		}
		strip := images(t, data, shape)
		ends := gen(t, tr, []uint64{3, 8}, o)
		if !equal(strip[0], ends[0]) || !equal(strip[4], ends[1]) {
			t.Fatalf("noise %s: the strip's ends are not seeds 3 and 8", noise)
		}
		for k := 1; k < 4; k++ {
			if equal(strip[k], strip[k-1]) {
				t.Fatalf("noise %s: frames %d and %d are equal", noise, k-1, k)
			}
		}
	}
	if _, _, err := tr.Interpolate(3, 8, 1, GenOptions{Psi: 1, NoiseMode: "none"}); err == nil {
		t.Fatal("one step: no error")
	}
}

// BenchmarkGenerate compares rendering 16 seeds in one batch (Generate) with one pass per
// seed (GenerateEach, what worker generate uses), on the tiny 16x16 config.
func BenchmarkGenerate(b *testing.B) {
	tr, err := New(newDevice(b), tinyOptions(b, 1, 0))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	seeds := make([]uint64, 16)
	for i := range seeds {
		seeds[i] = uint64(i)
	}
	o := GenOptions{Psi: 0.7, Cutoff: 8, NoiseMode: "random", UseAverage: true}
	for _, c := range []struct {
		name string
		f    func([]uint64, GenOptions) ([]float32, []int, error)
	}{{"batch16", tr.Generate}, {"each16", tr.GenerateEach}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := c.f(seeds, o); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(seeds))/b.Elapsed().Seconds(), "img/s")
		})
	}
}
