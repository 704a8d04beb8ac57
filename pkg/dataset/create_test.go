package dataset

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/pkg/store"
)

func pngBytes(t testing.TB, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// solid returns a w x h image of one colour in the given model.
func solid(w, h int, c color.Color, model string) image.Image {
	r := image.Rect(0, 0, w, h)
	var img interface {
		image.Image
		Set(x, y int, c color.Color)
	}
	switch model {
	case "gray":
		img = image.NewGray(r)
	case "rgb":
		img = image.NewRGBA(r)
	default:
		img = image.NewNRGBA(r)
	}
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	return img
}

// hugePNGHeader is a PNG whose IHDR claims w x h pixels, with a tiny IDAT.
func hugePNGHeader(w, h uint32) []byte {
	chunk := func(typ string, data []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
		b = append(b, typ...)
		b = append(b, data...)
		return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(append([]byte(typ), data...)))
	}
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0)
	b := []byte("\x89PNG\r\n\x1a\n")
	b = append(b, chunk("IHDR", ihdr)...)
	b = append(b, chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})...)
	return append(b, chunk("IEND", nil)...)
}

func dirStore(t testing.TB) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir(), store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func create(t testing.TB, st store.Store, opts Options) (*Manifest, string, error) {
	t.Helper()
	var rep bytes.Buffer
	opts.ReportLimit = -1
	m, err := Create(context.Background(), st, opts, nil, &rep)
	return m, rep.String(), err
}

func mustContain(t testing.TB, report string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(report, l) {
			t.Errorf("report lacks %q; report:\n%s", l, report)
		}
	}
}

// image0 returns image i at level 0 of a created dataset.
func image0(t testing.TB, st store.Store, m *Manifest, i int) []byte {
	t.Helper()
	for si, info := range m.Shards {
		if int64(i) < info.First+int64(info.Count) {
			s, err := ReadShard(context.Background(), st, m, si)
			if err != nil {
				t.Fatal(err)
			}
			return s.Image(0, i-int(info.First))
		}
	}
	t.Fatalf("image %d not in dataset", i)
	return nil
}

func TestAwkwardFolder(t *testing.T) {
	dir := t.TempDir()
	good := pngBytes(t, solid(8, 8, color.NRGBA{200, 100, 50, 255}, "rgb"))
	writeFile(t, dir+"/a_rgb.png", good)
	writeFile(t, dir+"/b_gray.png", pngBytes(t, solid(8, 8, color.Gray{77}, "gray")))
	writeFile(t, dir+"/c_rgba.png", pngBytes(t, solid(8, 8, color.NRGBA{10, 20, 30, 0}, "rgba")))
	writeFile(t, dir+"/d_wide.png", pngBytes(t, solid(16, 8, color.NRGBA{10, 20, 30, 255}, "rgb")))
	writeFile(t, dir+"/e_odd.png", pngBytes(t, solid(13, 13, color.NRGBA{90, 90, 90, 255}, "rgb")))
	writeFile(t, dir+"/sub/f_big.png", pngBytes(t, solid(40, 40, color.NRGBA{1, 2, 3, 255}, "rgb")))
	writeFile(t, dir+"/g_truncated.png", good[:len(good)/2])
	writeFile(t, dir+"/h_empty.png", nil)
	writeFile(t, dir+"/i_text.png", []byte("this is not an image at all"))
	writeFile(t, dir+"/j_huge.png", hugePNGHeader(60000, 60000))
	writeFile(t, dir+"/notes.txt", []byte("hello"))

	st := dirStore(t)
	m, rep, err := create(t, st, Options{Source: dir, Resolution: 8, Channels: "rgb", Background: "ff0000"})
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, rep,
		"skip "+dir+"/g_truncated.png: truncated",
		"skip "+dir+"/h_empty.png: empty file (0 bytes)",
		"skip "+dir+"/i_text.png: not an image",
		"skip "+dir+"/j_huge.png: png header claims 60000x60000 pixels, over the limit",
		"not decoded",
		"ignore "+dir+"/notes.txt: no image extension",
		"channels "+dir+"/b_gray.png: gray (8x8) -> 3 channel(s): gray replicated to RGB",
		"channels "+dir+"/c_rgba.png: rgba (8x8) -> 3 channel(s): alpha composited onto #ff0000",
		"non-square "+dir+"/d_wide.png: 16x8 centre-cropped to 8x8 (--square crop)",
		"resized "+dir+"/e_odd.png: 13x13 resampled to 8x8 (lanczos)",
		"resized "+dir+"/sub/f_big.png: 40x40 resampled to 8x8 (lanczos)",
	)
	s := m.Report
	if s.Imported != 6 || s.Skipped != 4 || s.Ignored != 1 || s.Seen != s.Imported+s.Skipped+s.Ignored {
		t.Fatalf("summary %+v: want 6 imported, 4 skipped, 1 ignored, nothing unaccounted", s)
	}
	if s.Problems["truncated"] != 1 || s.Problems["empty"] != 1 || s.Problems["not-an-image"] != 1 || s.Problems["too-large"] != 1 {
		t.Fatalf("problems %v", s.Problems)
	}
	if m.Count != 6 || m.Channels != 3 {
		t.Fatalf("count %d channels %d", m.Count, m.Channels)
	}
	// The policies were applied: gray replicated, transparent composited onto red, solid
	// colours survive the resampling.
	for i, want := range [][3]byte{{200, 100, 50}, {77, 77, 77}, {255, 0, 0}, {10, 20, 30}, {90, 90, 90}, {1, 2, 3}} {
		img := image0(t, st, m, i)
		for ch := range 3 {
			if got := img[ch*64+27]; got != want[ch] {
				t.Errorf("image %d channel %d = %d, want %d", i, ch, got, want[ch])
			}
		}
	}

	// The same folder with --on-error stop fails at the first bad file.
	_, _, err = create(t, dirStore(t), Options{Source: dir, Resolution: 8, OnError: "stop"})
	if err == nil || !strings.Contains(err.Error(), "g_truncated.png") || !strings.Contains(err.Error(), "--on-error stop") {
		t.Fatalf("on-error stop: %v", err)
	}
}

func TestChannelPolicies(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/gray.png", pngBytes(t, solid(4, 4, color.Gray{100}, "gray")))
	writeFile(t, dir+"/rgb.png", pngBytes(t, solid(4, 4, color.NRGBA{255, 0, 0, 255}, "rgb")))
	half := color.NRGBA{0, 0, 255, 128}
	writeFile(t, dir+"/rgba.png", pngBytes(t, solid(4, 4, half, "rgba")))
	for _, tc := range []struct {
		policy string
		c      int
		want   [][]byte // per image, per channel value
	}{
		{"gray", 1, [][]byte{{100}, {76}, {142}}},                           // 0.299*255; blue on white: (0.299+0.587)*127+0.114*255
		{"rgb", 3, [][]byte{{100, 100, 100}, {255, 0, 0}, {127, 127, 255}}}, // composited onto white
		{"rgba", 4, [][]byte{{100, 100, 100, 255}, {255, 0, 0, 255}, {0, 0, 255, 128}}},
		{"keep", 4, [][]byte{{100, 100, 100, 255}, {255, 0, 0, 255}, {0, 0, 255, 128}}}, // widest input mode
	} {
		st := dirStore(t)
		m, _, err := create(t, st, Options{Source: dir, Resolution: 4, Channels: tc.policy})
		if err != nil {
			t.Fatal(err)
		}
		if m.Channels != tc.c {
			t.Fatalf("%s: %d channels, want %d", tc.policy, m.Channels, tc.c)
		}
		for i, want := range tc.want {
			img := image0(t, st, m, i)
			for ch, v := range want {
				if got := int(img[ch*16+5]); got < int(v)-1 || got > int(v)+1 {
					t.Errorf("%s: image %d channel %d = %d, want %d", tc.policy, i, ch, got, v)
				}
			}
		}
	}
	// keep with only gray inputs stays gray.
	gdir := t.TempDir()
	writeFile(t, gdir+"/g.png", pngBytes(t, solid(4, 4, color.Gray{9}, "gray")))
	if m, _, err := create(t, dirStore(t), Options{Source: gdir, Resolution: 4}); err != nil || m.Channels != 1 {
		t.Fatalf("keep on gray: %v, %+v", err, m)
	}
}

func TestSquareAndFilterNone(t *testing.T) {
	dir := t.TempDir()
	// 6 wide, 2 high: left half black, right half white.
	img := image.NewGray(image.Rect(0, 0, 6, 2))
	for y := range 2 {
		for x := 3; x < 6; x++ {
			img.SetGray(x, y, color.Gray{255})
		}
	}
	writeFile(t, dir+"/wide.png", pngBytes(t, img))
	st := dirStore(t)
	m, rep, err := create(t, st, Options{Source: dir, Resolution: 8, Square: "pad", Filter: "none", Background: "404040"})
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, rep, "6x2 centre-padded to 6x6 (--square pad)", "6x6 centre-padded to 8x8 without resampling (--filter none)")
	got := image0(t, st, m, 0)
	// Row 3 and 4 hold the image, offset by 1 column; everything else is the background.
	for y := range 8 {
		for x := range 8 {
			want := byte(0x40)
			if (y == 3 || y == 4) && x >= 1 && x < 7 {
				want = 0
				if x >= 4 {
					want = 255
				}
			}
			if got[y*8+x] != want {
				t.Fatalf("pixel (%d,%d) = %d, want %d", x, y, got[y*8+x], want)
			}
		}
	}
	// Crop picks the centre square.
	m, _, err = create(t, st2(t), Options{Source: dir, Resolution: 4, Square: "crop", Filter: "nearest"})
	if err != nil || m.Count != 1 {
		t.Fatal(err)
	}
}

func st2(t testing.TB) store.Store { return dirStore(t) }

func TestBadOptions(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/a.png", pngBytes(t, solid(4, 4, color.Gray{1}, "gray")))
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Source: dir, Resolution: 30}, "resolution 30 is not a power of two from 4 to 16384 (try 32)"},
		{Options{Source: dir, Resolution: 2}, "not a power of two"},
		{Options{Source: dir, Resolution: 8, Filter: "sinc"}, `filter "sinc"`},
		{Options{Source: dir, Resolution: 8, Channels: "cmyk"}, `channel policy "cmyk"`},
		{Options{Source: dir, Resolution: 8, Background: "red"}, "six hex digits"},
		{Options{Source: dir + "/missing", Resolution: 8}, "no such file"},
		{Options{Source: t.TempDir(), Resolution: 8}, "no images in"},
		{Options{Source: dir, Resolution: 8, Labels: "x.idx"}, "needs an IDX source"},
	} {
		if _, _, err := create(t, dirStore(t), tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error containing %q", tc.opts, err, tc.want)
		}
	}
}

func TestZipUnsafePaths(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "in", "images.zip")
	os.MkdirAll(filepath.Dir(src), 0o755)
	f, _ := os.Create(src)
	zw := zip.NewWriter(f)
	good := pngBytes(t, solid(4, 4, color.Gray{50}, "gray"))
	for _, name := range []string{"cats/ok.png", "../evil.png", "/abs.png", "cats/../../evil2.png", `dogs\win.png`, "dogs/fine.png", "readme.md"} {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(good)
	}
	zw.Close()
	f.Close()
	out := filepath.Join(root, "out")
	st, _ := store.Open(context.Background(), out, store.Config{})
	m, rep, err := create(t, st, Options{Source: src, Resolution: 4, ClassFolders: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"../evil.png", "/abs.png", "cats/../../evil2.png", `dogs\win.png`} {
		mustContain(t, rep, "skip "+src+":"+bad+": zip entry path")
	}
	mustContain(t, rep, "ignore "+src+":readme.md")
	if m.Count != 2 || m.Report.Problems["unsafe-path"] != 4 {
		t.Fatalf("count %d, problems %v", m.Count, m.Report.Problems)
	}
	if m.Labels == nil || strings.Join(m.Labels.Names, ",") != "cats,dogs" {
		t.Fatalf("labels %+v", m.Labels)
	}
	// Nothing was written outside the output.
	filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if strings.Contains(p, "evil") || strings.Contains(p, "abs.png") {
			t.Errorf("found %s outside the archive", p)
		}
		return nil
	})
}

func TestIDXErrors(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 3*5*5)
	writeFile(t, dir+"/badmagic.idx", append([]byte{0, 1, 8, 3}, idxBytes([]int{3, 5, 5}, data)[4:]...))
	writeFile(t, dir+"/short.idx.gz", gz(idxBytes([]int{3, 5, 5}, data[:50])))
	writeFile(t, dir+"/good.idx", idxBytes([]int{3, 5, 5}, data))
	writeFile(t, dir+"/labels.idx", idxBytes([]int{2}, []byte{1, 2}))
	writeFile(t, dir+"/flat.idx", idxBytes([]int{75}, data))
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Source: dir + "/badmagic.idx"}, "bad magic"},
		{Options{Source: dir + "/short.idx.gz"}, "short data: header declares [3 5 5] = 75 bytes, file has 50"},
		{Options{Source: dir + "/good.idx", Labels: dir + "/labels.idx"}, "want one label per image (3)"},
		{Options{Source: dir + "/flat.idx"}, "want images x rows x cols"},
	} {
		tc.opts.Resolution = 8
		_, _, err := create(t, dirStore(t), tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.opts.Source, err, tc.want)
		}
	}
}

func TestCompleteDatasetIsNotOverwritten(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/a.png", pngBytes(t, solid(4, 4, color.Gray{1}, "gray")))
	st := dirStore(t)
	if _, _, err := create(t, st, Options{Source: dir, Resolution: 4}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := create(t, st, Options{Source: dir, Resolution: 4}); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
}

func FuzzDecodeImage(f *testing.F) {
	f.Add(pngBytes(f, solid(3, 2, color.NRGBA{1, 2, 3, 4}, "rgba")))
	f.Add(hugePNGHeader(70000, 2))
	f.Add([]byte("GIF89a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := decodeImage(b, 1<<16)
		if err != nil {
			var p *problem
			if !errors.As(err, &p) || p.kind == "" {
				t.Fatalf("error %v is not a classified problem", err)
			}
			return
		}
		toRaster(img)
	})
}
