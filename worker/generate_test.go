package main

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
	"github.com/gantry-ml/gantry/pkg/train"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

// smokeRun trains the cpu-smoke preset (32x32, one channel) for a few steps on synthetic
// reals and saves a checkpoint into the store at uri under checkpoints/, as worker train
// does. It returns the checkpoint's directory key.
func smokeRun(t *testing.T, uri string, cfg store.Config) string {
	t.Helper()
	ctx := context.Background()
	s, err := spec.Preset("cpu-smoke")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := train.OptionsFromSpec(s, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := kernels.Open(kernels.Config{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	tr, err := train.New(dev, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for i := 0; i < 3; i++ {
		p := tr.Plan()
		r := p.State.Resolution
		data := make([]float32, p.N*r*r)
		for j := range data {
			data[j] = float32(math.Sin(float64(j*7+i) * 0.37))
		}
		if _, err := tr.Step(ctx, train.Batch{Data: data, N: p.N, C: 1, H: r, W: r}, train.Local{}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := store.Open(ctx, uri, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := tr.Manifest(s)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := tr.Objects()
	if err != nil {
		t.Fatal(err)
	}
	dir := checkpoint.DirName(trainloop.CheckpointPrefix, tr.C.Images)
	if err := checkpoint.Save(ctx, st, dir, m, objs); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run makes a run root holding one checkpoint; it returns the root and the checkpoint's
// directory.
func run(t *testing.T) (root, ckptDir string) {
	t.Helper()
	root = t.TempDir()
	return root, filepath.Join(root, smokeRun(t, root, store.Config{}))
}

// generate runs `worker generate` with args through cobra, as the binary does.
func generate(t *testing.T, args ...string) error {
	t.Helper()
	cmd := newGenerateCmd()
	cmd.SetArgs(append(args, "--log-level", "error", "--threads", "2"))
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	return cmd.ExecuteContext(context.Background())
}

func mustGenerate(t *testing.T, args ...string) {
	t.Helper()
	if err := generate(t, args...); err != nil {
		t.Fatalf("generate %v: %v", args, err)
	}
}

func decode(t *testing.T, p string) image.Image {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	im, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return im
}

func checkSize(t *testing.T, im image.Image, w, h int) {
	t.Helper()
	if b := im.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Fatalf("image is %dx%d, want %dx%d", b.Dx(), b.Dy(), w, h)
	}
}

// cellEqual reports whether the size x size cell of a grid at (x0, y0) equals img.
func cellEqual(g image.Image, x0, y0 int, img image.Image, size int) bool {
	for y := 0; y < size; y++ {
		for x := 0; x < size; x++ {
			a := color.NRGBAModel.Convert(g.At(x0+x, y0+y))
			b := color.NRGBAModel.Convert(img.At(x, y))
			if a != b {
				return false
			}
		}
	}
	return true
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const res, pad = 32, 1

func TestGenerateGridAndSeeds(t *testing.T) {
	root, _ := run(t)
	out := t.TempDir()
	gridPath, dir := filepath.Join(out, "grid.png"), filepath.Join(out, "seeds")
	mustGenerate(t, "--checkpoint", root, "--seeds", "0-5", "--cols", "3", "--lod", "0", "--out", gridPath, "--out-dir", dir)
	g := decode(t, gridPath)
	checkSize(t, g, 3*(res+pad)+pad, 2*(res+pad)+pad)
	for i := 0; i < 6; i++ {
		one := decode(t, filepath.Join(dir, "seed000"+string(rune('0'+i))+".png"))
		checkSize(t, one, res, res)
		if !cellEqual(g, pad+(i%3)*(res+pad), pad+(i/3)*(res+pad), one, res) {
			t.Fatalf("grid cell %d is not seed %d's image", i, i)
		}
	}
	// A seed renders the same pixels whatever else is asked for, and in every call.
	want := readFile(t, filepath.Join(dir, "seed0003.png"))
	for _, seeds := range []string{"3", "9,3", "0-5"} {
		d := t.TempDir()
		mustGenerate(t, "--checkpoint", root, "--seeds", seeds, "--lod", "0", "--out-dir", d)
		if !bytes.Equal(readFile(t, filepath.Join(d, "seed0003.png")), want) {
			t.Fatalf("--seeds %s: seed 3 renders differently", seeds)
		}
	}
	if bytes.Equal(readFile(t, filepath.Join(dir, "seed0002.png")), want) {
		t.Fatal("seeds 2 and 3 render the same image")
	}
	// The default grid has about sqrt(n) columns: 16 seeds, 4 x 4.
	mustGenerate(t, "--checkpoint", root, "--out", gridPath)
	checkSize(t, decode(t, gridPath), 4*(res+pad)+pad, 4*(res+pad)+pad)
}

// TestGenerateDefaultLOD renders at the level the checkpoint was training at: the smoke run
// is still at 4x4, so every image is made of 8x8 blocks of one colour.
func TestGenerateDefaultLOD(t *testing.T) {
	root, ckpt := run(t)
	m, err := checkpoint.ReadManifest(context.Background(), mustOpen(t, ckpt), ".")
	if err != nil {
		t.Fatal(err)
	}
	if m.LOD != 3 {
		t.Fatalf("smoke checkpoint at lod %v, want 3 (4x4)", m.LOD)
	}
	dir := t.TempDir()
	mustGenerate(t, "--checkpoint", root, "--seeds", "1,2", "--out-dir", dir)
	for _, f := range []string{"seed0001.png", "seed0002.png"} {
		im := decode(t, filepath.Join(dir, f))
		checkSize(t, im, res, res)
		for y := 0; y < res; y++ {
			for x := 0; x < res; x++ {
				if im.At(x, y) != im.At(x/8*8, y/8*8) {
					t.Fatalf("%s: pixel (%d,%d) differs from its 8x8 block: not rendered at 4x4", f, x, y)
				}
			}
		}
	}
	// At lod 0 the same seed is a 32x32 image, not blocks.
	mustGenerate(t, "--checkpoint", root, "--seeds", "1", "--lod", "0", "--out-dir", dir)
	im := decode(t, filepath.Join(dir, "seed0001.png"))
	blocky := true
	for y := 0; y < res && blocky; y++ {
		for x := 0; x < res; x++ {
			if im.At(x, y) != im.At(x/8*8, y/8*8) {
				blocky = false
				break
			}
		}
	}
	if blocky {
		t.Fatal("--lod 0 rendered 8x8 blocks")
	}
}

func mustOpen(t *testing.T, uri string) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), uri, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestGenerateTruncation(t *testing.T) {
	root, _ := run(t)
	files := func(args ...string) [][]byte {
		d := t.TempDir()
		mustGenerate(t, append([]string{"--checkpoint", root, "--seeds", "0-3", "--lod", "0", "--out-dir", d}, args...)...)
		var out [][]byte
		for _, f := range []string{"seed0000.png", "seed0001.png", "seed0002.png", "seed0003.png"} {
			out = append(out, readFile(t, filepath.Join(d, f)))
		}
		return out
	}
	// psi 0 on every layer and no noise: every seed is the image of w_avg.
	same := files("--psi", "0", "--truncation-cutoff", "8", "--noise", "none")
	for i := 1; i < len(same); i++ {
		if !bytes.Equal(same[0], same[i]) {
			t.Fatalf("psi 0, all layers, no noise: seed %d differs from seed 0", i)
		}
	}
	// psi 0 on the 4 coarse layers only: the fine layers still differ.
	part := files("--psi", "0", "--truncation-cutoff", "4", "--noise", "none")
	if bytes.Equal(part[0], part[1]) {
		t.Fatal("psi 0 on 4 of 8 layers: seeds 0 and 1 render the same image")
	}
	// psi 1 (no truncation) and G instead of Gs render other images again.
	plain := files("--psi", "1", "--noise", "none")
	if bytes.Equal(plain[0], plain[1]) || bytes.Equal(plain[0], part[0]) {
		t.Fatal("psi 1: images equal across seeds or equal to the truncated ones")
	}
	useG := files("--psi", "1", "--noise", "none", "--use-g")
	if bytes.Equal(plain[0], useG[0]) {
		t.Fatal("--use-g renders the same image as Gs")
	}
}

func TestGenerateMixingFigure(t *testing.T) {
	root, _ := run(t)
	out := t.TempDir()
	fig, seeds := filepath.Join(out, "mix.png"), filepath.Join(out, "seeds")
	mustGenerate(t, "--checkpoint", root, "--lod", "0", "--mix-rows", "1-2", "--mix-cols", "3-5", "--crossover", "2",
		"--mixing-out", fig, "--seeds", "1-5", "--out-dir", seeds)
	g := decode(t, fig)
	checkSize(t, g, 4*(res+pad)+pad, 3*(res+pad)+pad)
	at := func(r, c int) (int, int) { return pad + c*(res+pad), pad + r*(res+pad) }
	seed := func(s int) image.Image {
		return decode(t, filepath.Join(seeds, "seed000"+string(rune('0'+s))+".png"))
	}
	// The blank corner, the column sources on top, the row sources on the left.
	white := image.NewUniform(color.NRGBA{255, 255, 255, 255})
	if x, y := at(0, 0); !cellEqual(g, x, y, white, res) {
		t.Fatal("the corner is not blank")
	}
	for j, s := range []int{3, 4, 5} {
		if x, y := at(0, j+1); !cellEqual(g, x, y, seed(s), res) {
			t.Fatalf("top row, column %d is not seed %d", j+1, s)
		}
	}
	for i, s := range []int{1, 2} {
		if x, y := at(i+1, 0); !cellEqual(g, x, y, seed(s), res) {
			t.Fatalf("left column, row %d is not seed %d", i+1, s)
		}
		for j, c := range []int{3, 4, 5} {
			x, y := at(i+1, j+1)
			if cellEqual(g, x, y, seed(s), res) || cellEqual(g, x, y, seed(c), res) {
				t.Fatalf("mix (%d,%d) equals a source image", i, j)
			}
		}
	}
	// Crossover 8 (every style from the row seed): each row repeats its source.
	mustGenerate(t, "--checkpoint", root, "--lod", "0", "--mix-rows", "1-2", "--mix-cols", "3-5", "--crossover", "8", "--mixing-out", fig)
	g = decode(t, fig)
	for i, s := range []int{1, 2} {
		for j := 1; j <= 3; j++ {
			if x, y := at(i+1, j); !cellEqual(g, x, y, seed(s), res) {
				t.Fatalf("crossover 8: cell (%d,%d) is not row seed %d", i+1, j, s)
			}
		}
	}
}

func TestGenerateInterpolation(t *testing.T) {
	root, _ := run(t)
	out := t.TempDir()
	strip, seeds := filepath.Join(out, "strip.png"), filepath.Join(out, "seeds")
	mustGenerate(t, "--checkpoint", root, "--lod", "0", "--from", "2", "--to", "7", "--steps", "5",
		"--interp-out", strip, "--seeds", "2,7", "--out-dir", seeds)
	g := decode(t, strip)
	checkSize(t, g, 5*(res+pad)+pad, res+2*pad)
	if !cellEqual(g, pad, pad, decode(t, filepath.Join(seeds, "seed0002.png")), res) {
		t.Fatal("the strip does not start at seed 2's image")
	}
	if !cellEqual(g, pad+4*(res+pad), pad, decode(t, filepath.Join(seeds, "seed0007.png")), res) {
		t.Fatal("the strip does not end at seed 7's image")
	}
	if cellEqual(g, pad+2*(res+pad), pad, decode(t, filepath.Join(seeds, "seed0002.png")), res) {
		t.Fatal("the middle of the strip is seed 2's image")
	}
}

// TestGenerateCheckpointURIs: a run root, the checkpoint directory, file:// URIs and the
// manifest itself name the same checkpoint.
func TestGenerateCheckpointURIs(t *testing.T) {
	root, ckpt := run(t)
	var want []byte
	for i, uri := range []string{root, ckpt, "file://" + root, "file://" + ckpt + "/", filepath.Join(ckpt, "manifest.json"), filepath.Join(root, "checkpoints")} {
		p := filepath.Join(t.TempDir(), "g.png")
		mustGenerate(t, "--checkpoint", uri, "--seeds", "0-3", "--out", p)
		got := readFile(t, p)
		if i == 0 {
			want = got
		} else if !bytes.Equal(got, want) {
			t.Fatalf("--checkpoint %s renders another grid than %s", uri, root)
		}
	}
	// Relative paths, from inside the checkpoints folder and the checkpoint itself.
	p := filepath.Join(t.TempDir(), "g.png")
	t.Chdir(filepath.Dir(ckpt))
	for _, uri := range []string{filepath.Base(ckpt), filepath.Join(filepath.Base(ckpt), "manifest.json"), "."} {
		mustGenerate(t, "--checkpoint", uri, "--seeds", "0-3", "--out", p)
		if !bytes.Equal(readFile(t, p), want) {
			t.Fatalf("--checkpoint %s renders another grid than %s", uri, root)
		}
	}
	t.Chdir(ckpt)
	mustGenerate(t, "--checkpoint", "manifest.json", "--seeds", "0-3", "--out", p)
	if !bytes.Equal(readFile(t, p), want) {
		t.Fatal("--checkpoint manifest.json renders another grid")
	}
}

func TestParentURI(t *testing.T) {
	for in, want := range map[string]string{
		"ckpt-000000000001":           ".",
		"/ckpt-000000000001":          "/",
		"run/ckpt-000000000001":       "run",
		"file:///ckpt-000000000001":   "file:///",
		"file:///r/ckpt-000000000001": "file:///r",
		"s3://b/p/ckpt-000000000001":  "s3://b/p",
	} {
		if got := parentURI(in); got != want {
			t.Errorf("parentURI(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGenerateFromS3(t *testing.T) {
	if testing.Short() {
		t.Skip("starts MinIO; skipped with -short")
	}
	root, _ := run(t)
	m := storetest.StartMinIO(t)
	cfg := store.Config{Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: m.SecretKey, Region: "us-east-1"}
	uri := m.Bucket(t) + "/run"
	dir := smokeRun(t, uri, cfg)
	s3 := []string{"--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey, "--s3-secret-key", m.SecretKey, "--s3-region", "us-east-1"}
	local := filepath.Join(t.TempDir(), "local.png")
	mustGenerate(t, "--checkpoint", root, "--seeds", "0-3", "--out", local)
	for _, u := range []string{uri, uri + "/" + dir} {
		p := filepath.Join(t.TempDir(), "s3.png")
		mustGenerate(t, append([]string{"--checkpoint", u, "--seeds", "0-3", "--out", p}, s3...)...)
		if !bytes.Equal(readFile(t, p), readFile(t, local)) {
			t.Fatalf("%s renders another grid than the same checkpoint on disk", u)
		}
	}
	err := generate(t, append([]string{"--checkpoint", m.Bucket(t) + "/nothing", "--out", local}, s3...)...)
	if err == nil || !strings.Contains(err.Error(), "/nothing: no committed checkpoint") {
		t.Fatalf("empty S3 prefix: %v", err)
	}
}

func TestGenerateErrors(t *testing.T) {
	root, ckpt := run(t)
	out := filepath.Join(t.TempDir(), "g.png")
	missing := filepath.Join(t.TempDir(), "no-such-run")
	empty := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--checkpoint", root, "--seeds", "0-x", "--out", out}, `bad seed "0-x"`},
		{[]string{"--checkpoint", root, "--seeds", "1,,2", "--out", out}, `bad seed ""`},
		{[]string{"--checkpoint", root, "--seeds", "9-2", "--out", out}, `bad seed "9-2": range runs backwards`},
		{[]string{"--checkpoint", root, "--seeds", "-3", "--out", out}, `bad seed "-3"`},
		{[]string{"--checkpoint", root, "--seeds", "0-99999999", "--out", out}, "more than 100000 seeds"},
		{[]string{"--checkpoint", root, "--mix-rows", "a", "--mixing-out", out}, `--mix-rows "a": bad seed "a"`},
		{[]string{"--checkpoint", missing, "--out", out}, "checkpoint " + missing + ": no such directory"},
		{[]string{"--checkpoint", empty, "--out", out}, "checkpoint " + empty + ": no committed checkpoint there"},
		{[]string{"--checkpoint", filepath.Join(root, "checkpoints", "ckpt-000000000099"), "--out", out}, "no such directory"},
		{[]string{"--out", out}, "--checkpoint is required"},
		{[]string{"--checkpoint", root}, "nothing to write"},
		{[]string{"--checkpoint", root, "--noise", "loud", "--out", out}, `--noise "loud"`},
		{[]string{"--checkpoint", root, "--lod", "4", "--out", out}, "--lod 4: this 32x32 network has levels 0 (full) to 3"},
		{[]string{"--checkpoint", root, "--lod", "0", "--crossover", "9", "--mixing-out", out}, "--crossover 9: the network has 8 style layers at 32x32"},
		{[]string{"--checkpoint", root, "--steps", "1", "--interp-out", out}, "--steps 1"},
		{[]string{"--checkpoint", root, "--out", filepath.Join(empty, "no", "dir", "g.png")}, "no such file or directory"},
	} {
		err := generate(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error spans lines: %q", tc.args, err)
		}
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("a missing checkpoint directory was created")
	}

	// A checkpoint with a flipped byte is refused, naming the object.
	bad := filepath.Join(t.TempDir(), "ckpt-000000000001")
	if err := os.CopyFS(bad, os.DirFS(ckpt)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(bad, "Gs.safetensors")
	raw := readFile(t, p)
	raw[len(raw)-5] ^= 0x10
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	err := generate(t, "--checkpoint", bad, "--out", out)
	if err == nil || !strings.Contains(err.Error(), "Gs.safetensors") || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("flipped byte: %v, want an error naming Gs.safetensors", err)
	}
	t.Logf("flipped byte: %v", err)
	// A checkpoint directory without its manifest was never committed.
	if err := os.Remove(filepath.Join(bad, checkpoint.ManifestKey)); err != nil {
		t.Fatal(err)
	}
	err = generate(t, "--checkpoint", bad, "--out", out)
	if err == nil || !strings.Contains(err.Error(), "ckpt-000000000001") || !strings.Contains(err.Error(), "never committed") {
		t.Fatalf("no manifest: %v", err)
	}
}
