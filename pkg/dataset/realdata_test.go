package dataset

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

const fashionDir = "/usr/share/datasets/fashion-mnist"

func fashion(t testing.TB) (images, labels string) {
	t.Helper()
	images, labels = fashionDir+"/t10k-images-idx3-ubyte.gz", fashionDir+"/t10k-labels-idx1-ubyte.gz"
	if _, err := os.Stat(images); err != nil {
		t.Skipf("Fashion-MNIST not found at %s; install the Debian package dataset-fashion-mnist", fashionDir)
	}
	return images, labels
}

// TestFashionMNISTBitExact imports Fashion-MNIST's test set without resampling (28x28
// centre-padded to 32x32) and reads every image, label and level back exactly.
func TestFashionMNISTBitExact(t *testing.T) {
	images, labels := fashion(t)
	st := dirStore(t)
	n, shardSize := 10000, 3000
	if raceEnabled {
		n, shardSize = 1000, 300
	}
	m, rep, err := create(t, st, Options{Source: images, Labels: labels, Resolution: 32, Filter: "none", Background: "000000", ShardSize: shardSize, MaxImages: n})
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, rep, fmt.Sprintf("all %d images: 28x28 centre-padded to 32x32 without resampling (--filter none)", n))
	if m.Count != int64(n) || m.Channels != 1 || len(m.Shards) != 4 || m.Labels == nil || m.Labels.Classes != 10 {
		t.Fatalf("manifest: count %d channels %d shards %d labels %+v", m.Count, m.Channels, len(m.Shards), m.Labels)
	}
	ix, _ := ReadIDXFile(images)
	lx, _ := ReadIDXFile(labels)
	for si := range m.Shards {
		s, err := ReadShard(context.Background(), st, m, si)
		if err != nil {
			t.Fatal(err)
		}
		for k := range s.Count() {
			i := int(s.First) + k
			if s.Labels[k] != int32(lx.Data[i]) {
				t.Fatalf("image %d: label %d, want %d", i, s.Labels[k], lx.Data[i])
			}
			want := make([]byte, 32*32)
			for y := range 28 {
				copy(want[(y+2)*32+2:], ix.Data[i*784+y*28:i*784+(y+1)*28])
			}
			ref := refPyramid(want, 1, 32)
			for l := range ref {
				if !bytes.Equal(s.Image(l, k), ref[l]) {
					t.Fatalf("image %d level %d differs from the source", i, l)
				}
			}
		}
	}
}

// emojiDir returns the folder of 64x64 emoji PNGs, fetching it with hack/fetch-emoji.sh
// (npm) when missing.
func emojiDir(t testing.TB) string {
	t.Helper()
	root, err := storetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, ".cache", "emoji", "google-64")
	if _, err := os.Stat(dir + ".version"); err == nil {
		return dir
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm not found: it fetches the emoji-datasource-google package (hack/fetch-emoji.sh)")
	}
	out, err := exec.Command("bash", filepath.Join(root, "hack", "fetch-emoji.sh")).CombinedOutput()
	if err != nil {
		t.Skipf("emoji-datasource-google could not be fetched from the npm registry (hack/fetch-emoji.sh): %v\n%s", err, out)
	}
	return dir
}

// TestEmojiRGBABitExact imports the emoji PNGs as RGBA at their own size and compares every
// pixel with the decoded file.
func TestEmojiRGBABitExact(t *testing.T) {
	dir := emojiDir(t)
	files, _ := filepath.Glob(dir + "/*.png")
	max := 0
	if testing.Short() || raceEnabled {
		max = 300
		files = files[:max]
	}
	st := dirStore(t)
	m, rep, err := create(t, st, Options{Source: dir, Resolution: 64, Filter: "none", Channels: "rgba", MaxImages: max})
	if err != nil {
		t.Fatal(err)
	}
	if m.Channels != 4 || m.Count != int64(len(files)) || m.Report.Skipped != 0 {
		t.Fatalf("channels %d, count %d of %d files, skipped %d\n%s", m.Channels, m.Count, len(files), m.Report.Skipped, rep)
	}
	var shard *Shard
	for i, f := range files {
		si := i / m.ShardSize
		if shard == nil || shard.First != m.Shards[si].First {
			if shard, err = ReadShard(context.Background(), st, m, si); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := os.ReadFile(f)
		img, err := decodeImage(b, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		got := shard.Image(0, i-int(shard.First))
		for y := range 64 {
			for x := range 64 {
				// Straight (non-premultiplied) samples, as the file stores them.
				var v [4]uint16
				switch im := img.(type) {
				case *image.NRGBA:
					c := im.NRGBAAt(x, y)
					v = [4]uint16{uint16(c.R) * 257, uint16(c.G) * 257, uint16(c.B) * 257, uint16(c.A) * 257}
				case *image.NRGBA64:
					c := im.NRGBA64At(x, y)
					v = [4]uint16{c.R, c.G, c.B, c.A}
				case *image.Paletted:
					switch c := im.Palette[im.ColorIndexAt(x, y)].(type) {
					case color.NRGBA:
						v = [4]uint16{uint16(c.R) * 257, uint16(c.G) * 257, uint16(c.B) * 257, uint16(c.A) * 257}
					case color.RGBA:
						if c.A != 255 {
							t.Fatalf("%s: premultiplied palette entry %v", f, c)
						}
						v = [4]uint16{uint16(c.R) * 257, uint16(c.G) * 257, uint16(c.B) * 257, 255 * 257}
					}
				default:
					t.Fatalf("%s decodes as %T; the test expects straight-alpha PNGs", f, img)
				}
				for ch, s := range v {
					if want := byte((uint32(s) + 128) / 257); got[ch*4096+y*64+x] != want {
						t.Fatalf("%s pixel (%d,%d) channel %d = %d, want %d", f, x, y, ch, got[ch*4096+y*64+x], want)
					}
				}
			}
		}
	}
}

func TestKillMidwayThenResume(t *testing.T) {
	images, labels := fashion(t)
	opts := Options{Source: images, Labels: labels, Resolution: 16, ShardSize: 250, MaxImages: 3000}
	if out := os.Getenv("GANTRY_DATASET_KILL_CHILD"); out != "" {
		testAfterShard = func(int) { time.Sleep(100 * time.Millisecond) }
		st, _ := store.Open(context.Background(), out, store.Config{})
		Create(context.Background(), st, opts, nil, nil)
		os.Exit(0)
	}
	out := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillMidwayThenResume$")
	cmd.Env = append(os.Environ(), "GANTRY_DATASET_KILL_CHILD="+out)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(out, partialKey(3))); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("child import wrote no 4th shard in 60s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	st, _ := store.Open(context.Background(), out, store.Config{})
	if _, err := os.Stat(filepath.Join(out, ManifestKey)); err == nil {
		t.Fatal("killed import left a manifest")
	}
	if _, err := OpenManifest(context.Background(), st); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("open killed import: %v, want ErrIncomplete", err)
	}
	if _, err := NewLoader(context.Background(), LoaderConfig{Store: st, Batch: 4}); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("loader on killed import: %v, want ErrIncomplete", err)
	}
	// Other options do not mix with the partial import.
	other := opts
	other.Filter = "box"
	if _, _, err := create(t, st, other); err == nil || !strings.Contains(err.Error(), "partial import made with other options") {
		t.Fatalf("resume with other options: %v", err)
	}
	resumed, _, err := create(t, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	fresh, _, err := create(t, dirStore(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(resumed.Shards) != 12 || len(fresh.Shards) != 12 {
		t.Fatalf("shards: resumed %d, fresh %d, want 12", len(resumed.Shards), len(fresh.Shards))
	}
	for i := range fresh.Shards {
		if resumed.Shards[i] != fresh.Shards[i] {
			t.Fatalf("shard %d: resumed %+v, fresh %+v", i, resumed.Shards[i], fresh.Shards[i])
		}
	}
	if resumed.Report.Seen != 3000 || resumed.Report.Imported != 3000 {
		t.Fatalf("resumed summary %+v", resumed.Report)
	}
	if left, _ := st.List(context.Background(), "partial/"); len(left) != 0 {
		t.Fatalf("partial records left after finishing: %v", left)
	}
	if _, err := os.Stat(filepath.Join(out, "partial")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the emptied partial/ directory is still there (%v)", err)
	}
}

// TestCreateAndLoadOnMinIO imports into a real MinIO and streams it back through the loader
// with a local cache.
func TestCreateAndLoadOnMinIO(t *testing.T) {
	mi := storetest.StartMinIO(t)
	ctx := context.Background()
	st, err := store.Open(ctx, mi.Bucket(t)+"/datasets/tiny", mi.Config())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for i := range 20 {
		img := solid(8+i%3, 8, color.NRGBA{byte(10 * i), 0, 0, 255}, "rgb")
		writeFile(t, filepath.Join(dir, string(rune('a'+i))+".png"), pngBytes(t, img))
	}
	m, _, err := create(t, st, Options{Source: dir, Resolution: 8, ShardSize: 6, Channels: "rgb"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Shards) != 4 {
		t.Fatalf("%d shards, want 4", len(m.Shards))
	}
	l, err := NewLoader(ctx, LoaderConfig{Store: st, Batch: 5, Seed: 3, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := map[int64]bool{}
	for range 4 {
		b, err := l.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for k, idx := range b.Indices {
			seen[idx] = true
			if want := float32(10*idx)*(1/127.5) - 1; b.Data[k*3*64] != want {
				t.Fatalf("image %d red = %v, want %v", idx, b.Data[k*3*64], want)
			}
		}
	}
	if len(seen) != 20 {
		t.Fatalf("one epoch covered %d of 20 images", len(seen))
	}
}
