package main

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

// runDataset runs `coordinator dataset args...` in-process and returns stdout and stderr.
func runDataset(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newDatasetCmd()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestDatasetCreateInspectFashionMNIST(t *testing.T) {
	src := "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
	if _, err := os.Stat(src); err != nil {
		t.Skip("Fashion-MNIST not found; install the Debian package dataset-fashion-mnist")
	}
	out := t.TempDir() + "/fm"
	_, stderr, err := runDataset(t, "create", "--source", src, "--labels", strings.Replace(src, "images-idx3", "labels-idx1", 1),
		"--out", out, "--resolution", "32", "--max-images", "500", "--shard-size", "128", "--log-level", "error")
	if err != nil {
		t.Fatalf("create: %v\n%s", err, stderr)
	}
	for _, want := range []string{"all 500 images: 28x28 resampled to 32x32 (lanczos)", "wrote 500 images in 4 shards", "stopped after --max-images 500; 9500 inputs not read"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("create output lacks %q:\n%s", want, stderr)
		}
	}
	grid := t.TempDir() + "/grid.png"
	stdout, _, err := runDataset(t, "inspect", out, "--verify", "--grid", grid, "--grid-count", "16", "--lod", "1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"images    500 in 4 shards of up to 128", "shape     1 channel(s) x 32 x 32; levels 32 16 8 4",
		"labels    10 classes from idx", "verified  4 shards", "grid      " + grid} {
		if !strings.Contains(stdout, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, stdout)
		}
	}
	f, err := os.Open(grid)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() != 64 || img.Bounds().Dy() != 64 {
		t.Fatalf("grid: %v, bounds %v; want 4x4 tiles of 16x16", err, img.Bounds())
	}
	if stdout, _, err := runDataset(t, "inspect", out, "--json"); err != nil || !strings.Contains(stdout, `"format": "gantry-dataset"`) {
		t.Fatalf("inspect --json: %v\n%s", err, stdout)
	}
}

func TestDatasetCreateInspectEmojiOnMinIO(t *testing.T) {
	root, err := storetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, ".cache", "emoji", "google-64")
	if _, err := os.Stat(dir + ".version"); err != nil {
		if _, err := exec.LookPath("npm"); err != nil {
			t.Skip("npm not found: it fetches the emoji-datasource-google package (hack/fetch-emoji.sh)")
		}
		if out, err := exec.Command("bash", filepath.Join(root, "hack", "fetch-emoji.sh")).CombinedOutput(); err != nil {
			t.Skipf("emoji-datasource-google could not be fetched (hack/fetch-emoji.sh): %v\n%s", err, out)
		}
	}
	m := storetest.StartMinIO(t)
	uri := m.Bucket(t) + "/emoji"
	s3 := []string{"--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey, "--s3-secret-key", m.SecretKey, "--s3-region", "us-east-1"}
	args := append([]string{"create", "--source", dir, "--out", uri, "--resolution", "32", "--channels", "rgb",
		"--background", "ffffff", "--max-images", "100", "--log-level", "error"}, s3...)
	_, stderr, err := runDataset(t, args...)
	if err != nil {
		t.Fatalf("create: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "alpha composited onto #ffffff") || !strings.Contains(stderr, "64x64 resampled to 32x32 (lanczos)") {
		t.Errorf("create output lacks the policy lines:\n%s", stderr)
	}
	stdout, _, err := runDataset(t, append([]string{"inspect", uri, "--verify"}, s3...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"dataset   " + uri, "images    100 in 1 shards", "3 channel(s) x 32 x 32", "verified  1 shards"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, stdout)
		}
	}
	// A second create to the same place is refused.
	if _, _, err := runDataset(t, args...); err == nil || !strings.Contains(err.Error(), "already holds a complete dataset") {
		t.Fatalf("second create: %v", err)
	}
}

func TestDatasetCommandErrors(t *testing.T) {
	empty := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"create", "--source", empty, "--resolution", "32"}, "--out is required"},
		{[]string{"create", "--source", empty, "--out", t.TempDir(), "--resolution", "48"}, "resolution 48 is not a power of two"},
		{[]string{"create", "--source", empty, "--out", t.TempDir(), "--resolution", "32"}, "no images in"},
		{[]string{"inspect", empty}, "no dataset at"},
		{[]string{"inspect", "s3://b/x", "--s3-endpoint", "127.0.0.1:1", "--s3-insecure"}, "Bucket name cannot be shorter"},
	} {
		if _, _, err := runDataset(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// TestDatasetCreateFailureLeavesNoDirectory checks that an import refused before writing
// anything (a missing source, a bad resolution) removes the --out directories it created, and
// that inspect does not create the directory it is pointed at.
func TestDatasetCreateFailureLeavesNoDirectory(t *testing.T) {
	base := t.TempDir()
	for _, args := range [][]string{
		{"--source", filepath.Join(base, "missing"), "--resolution", "32"},
		{"--source", base, "--resolution", "33"},
	} {
		out := filepath.Join(base, "out", "nested")
		_, _, err := runDataset(t, append([]string{"create", "--out", out, "--log-level", "error"}, args...)...)
		if err == nil {
			t.Fatalf("create %v succeeded", args)
		}
		if _, err := os.Stat(filepath.Join(base, "out")); !os.IsNotExist(err) {
			t.Errorf("create %v left %s behind (stat: %v)", args, filepath.Join(base, "out"), err)
		}
	}
	if _, _, err := runDataset(t, "inspect", base, "--grid", filepath.Join(base, "g.png"), "--grid-count", "0"); err == nil || !strings.Contains(err.Error(), "--grid-count 0") {
		t.Errorf("inspect --grid-count 0: %v", err)
	}
	if _, _, err := runDataset(t, "inspect", filepath.Join(base, "nothing")); err == nil || !strings.Contains(err.Error(), "no such directory") {
		t.Errorf("inspect of a missing directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "nothing")); !os.IsNotExist(err) {
		t.Errorf("inspect created %s", filepath.Join(base, "nothing"))
	}
}
