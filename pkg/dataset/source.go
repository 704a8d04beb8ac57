package dataset

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// maxFileBytes bounds the size of one image file or zip entry (1 GiB).
const maxFileBytes = 1 << 30

// input is one candidate image of a source.
type input struct {
	name   string                 // for reports: path, zip entry or IDX file#index
	label  int32                  // -1 without labels
	read   func() ([]byte, error) // encoded bytes (folder and zip)
	img    image.Image            // decoded image (IDX)
	refuse *problem               // refused at enumeration (unsafe zip path, no class folder)
}

// source is an enumerated import source.
type source struct {
	info    SourceInfo
	inputs  []input
	ignored []string // files without an image extension
	labels  *LabelInfo
	idx     *IDX // the IDX image file, for IDX sources
	close   func() error
}

func isImageName(name string) bool {
	return imageExts[strings.ToLower(filepath.Ext(name))]
}

// openSource enumerates the source named by opts.
func openSource(opts Options) (*source, error) {
	st, err := os.Stat(opts.Source)
	if err != nil {
		return nil, fmt.Errorf("dataset: source %s: %w", opts.Source, err)
	}
	if opts.Labels != "" && (st.IsDir() || opts.ClassFolders) {
		return nil, fmt.Errorf("dataset: --labels names an IDX label file and needs an IDX source; for folders use --class-folders")
	}
	switch {
	case st.IsDir():
		return openFolder(opts)
	case strings.EqualFold(filepath.Ext(opts.Source), ".zip"):
		return openZip(opts)
	default:
		if opts.ClassFolders {
			return nil, fmt.Errorf("dataset: --class-folders needs a folder or zip source, not %s", opts.Source)
		}
		return openIDX(opts)
	}
}

// classOf returns the top folder of a slash path and whether the file sits in one.
func classOf(rel string) (string, bool) {
	top, rest, ok := strings.Cut(rel, "/")
	return top, ok && rest != ""
}

// assignClasses gives each input its class folder's index, or refuses it.
func assignClasses(s *source, rels []string) {
	names := map[string]bool{}
	for i, rel := range rels {
		if s.inputs[i].refuse != nil {
			continue
		}
		if c, ok := classOf(rel); ok {
			names[c] = true
		}
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	index := map[string]int32{}
	for i, n := range sorted {
		index[n] = int32(i)
	}
	for i, rel := range rels {
		if s.inputs[i].refuse != nil {
			continue
		}
		c, ok := classOf(rel)
		if !ok {
			s.inputs[i].refuse = newProblem("no-class-folder", "not inside a class folder (--class-folders labels images by their top folder)")
			continue
		}
		s.inputs[i].label = index[c]
	}
	if len(sorted) > 0 {
		s.labels = &LabelInfo{Classes: len(sorted), Names: sorted, From: "folders"}
	}
}

func openFolder(opts Options) (*source, error) {
	s := &source{info: SourceInfo{Kind: "folder", Path: opts.Source}, close: func() error { return nil }}
	var rels []string
	err := filepath.WalkDir(opts.Source, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("dataset: walk %s: %w", p, err)
		}
		if e.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(opts.Source, p)
		rel = filepath.ToSlash(rel)
		if !isImageName(rel) {
			s.ignored = append(s.ignored, p)
			return nil
		}
		path := p
		s.inputs = append(s.inputs, input{name: p, label: -1, read: func() ([]byte, error) {
			return readFileLimited(path)
		}})
		rels = append(rels, rel)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if opts.ClassFolders {
		assignClasses(s, rels)
	}
	return s, nil
}

func readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, newProblem("unreadable", "cannot open: %v", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > maxFileBytes {
		return nil, newProblem("too-large", "file is %d bytes, over the %d byte limit", st.Size(), maxFileBytes)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, newProblem("unreadable", "read failed: %v", err)
	}
	if len(b) > maxFileBytes {
		return nil, newProblem("too-large", "file is over the %d byte limit", maxFileBytes)
	}
	return b, nil
}

// zipPathProblem says why a zip entry name is unsafe, or returns nil.
func zipPathProblem(name string) *problem {
	if strings.Contains(name, `\`) || strings.HasPrefix(name, "/") || !filepath.IsLocal(name) || strings.Contains(name, "\x00") {
		return newProblem("unsafe-path", "zip entry path %q is absolute or leaves the archive (..); refused", name)
	}
	return nil
}

func openZip(opts Options) (*source, error) {
	zr, err := zip.OpenReader(opts.Source)
	if err != nil && !(errors.Is(err, zip.ErrInsecurePath) && zr != nil) {
		return nil, fmt.Errorf("dataset: zip %s: %w", opts.Source, err)
	}
	s := &source{info: SourceInfo{Kind: "zip", Path: opts.Source}, close: zr.Close}
	var rels []string
	for _, f := range zr.File {
		if strings.HasSuffix(f.Name, "/") {
			continue
		}
		name := opts.Source + ":" + f.Name
		if !isImageName(f.Name) {
			s.ignored = append(s.ignored, name)
			continue
		}
		in := input{name: name, label: -1, refuse: zipPathProblem(f.Name)}
		file := f
		in.read = func() ([]byte, error) {
			if file.UncompressedSize64 > maxFileBytes {
				return nil, newProblem("too-large", "entry declares %d bytes, over the %d byte limit", file.UncompressedSize64, maxFileBytes)
			}
			rc, err := file.Open()
			if err != nil {
				return nil, newProblem("unreadable", "cannot open entry: %v", err)
			}
			defer rc.Close()
			b, err := io.ReadAll(io.LimitReader(rc, maxFileBytes+1))
			if err != nil {
				return nil, newProblem("truncated", "entry unreadable: %v", err)
			}
			if len(b) > maxFileBytes {
				return nil, newProblem("too-large", "entry inflates past the %d byte limit", maxFileBytes)
			}
			return b, nil
		}
		s.inputs = append(s.inputs, in)
		rels = append(rels, f.Name)
	}
	if opts.ClassFolders {
		assignClasses(s, rels)
	}
	return s, nil
}

func openIDX(opts Options) (*source, error) {
	x, err := ReadIDXFile(opts.Source)
	if err != nil {
		return nil, fmt.Errorf("%w (a source is a folder, a .zip or an IDX image file)", err)
	}
	var n, h, w, c int
	switch {
	case len(x.Dims) == 3:
		n, h, w, c = x.Dims[0], x.Dims[1], x.Dims[2], 1
	case len(x.Dims) == 4 && (x.Dims[3] == 1 || x.Dims[3] == 3 || x.Dims[3] == 4):
		n, h, w, c = x.Dims[0], x.Dims[1], x.Dims[2], x.Dims[3]
	default:
		return nil, fmt.Errorf("dataset: IDX %s: dimensions %v; want images x rows x cols (x channels 1, 3 or 4)", opts.Source, x.Dims)
	}
	if n == 0 || h == 0 || w == 0 {
		return nil, fmt.Errorf("dataset: IDX %s: dimensions %v hold no images", opts.Source, x.Dims)
	}
	s := &source{info: SourceInfo{Kind: "idx", Path: opts.Source, Labels: opts.Labels}, idx: x, close: func() error { return nil }}
	var labels []byte
	if opts.Labels != "" {
		lx, err := ReadIDXFile(opts.Labels)
		if err != nil {
			return nil, err
		}
		if len(lx.Dims) != 1 || lx.Dims[0] != n {
			return nil, fmt.Errorf("dataset: IDX labels %s: dimensions %v; want one label per image (%d)", opts.Labels, lx.Dims, n)
		}
		labels = lx.Data
		classes := 0
		for _, l := range labels {
			classes = max(classes, int(l)+1)
		}
		s.labels = &LabelInfo{Classes: classes, From: "idx"}
	}
	size := h * w * c
	s.inputs = make([]input, n)
	for i := range n {
		pix := x.Data[i*size : (i+1)*size : (i+1)*size]
		var img image.Image
		switch c {
		case 1:
			img = &image.Gray{Pix: pix, Stride: w, Rect: image.Rect(0, 0, w, h)}
		default:
			img = hwcImage{pix: pix, w: w, h: h, c: c}
		}
		in := input{name: fmt.Sprintf("%s#%d", opts.Source, i), label: -1, img: img}
		if labels != nil {
			in.label = int32(labels[i])
		}
		s.inputs[i] = in
	}
	return s, nil
}

// hwcImage adapts interleaved RGB or RGBA IDX data to image.Image.
type hwcImage struct {
	pix     []byte
	w, h, c int
}

func (m hwcImage) ColorModel() color.Model { return color.NRGBAModel }
func (m hwcImage) Bounds() image.Rectangle { return image.Rect(0, 0, m.w, m.h) }
func (m hwcImage) At(x, y int) color.Color {
	p := m.pix[(y*m.w+x)*m.c:]
	a := byte(255)
	if m.c == 4 {
		a = p[3]
	}
	return color.NRGBA{p[0], p[1], p[2], a}
}

// headerChannels guesses an image's channel count from its header alone, for the keep
// policy: 1 gray, 3 colour, 4 with alpha; 0 when unreadable.
func headerChannels(b []byte) int {
	cfg, _, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return 0
	}
	switch m := cfg.ColorModel; m {
	case color.GrayModel, color.Gray16Model:
		return 1
	case color.YCbCrModel, color.CMYKModel, color.RGBAModel, color.RGBA64Model:
		// Decoders report RGBA for formats without an alpha channel (PNG truecolor, BMP).
		return 3
	case color.NRGBAModel, color.NRGBA64Model, color.NYCbCrAModel, color.AlphaModel, color.Alpha16Model:
		return 4
	default:
		if pal, ok := m.(color.Palette); ok {
			c := 1
			for _, col := range pal {
				r, g, bl, a := col.RGBA()
				if a != 0xffff {
					return 4
				}
				if r != g || g != bl {
					c = 3
				}
			}
			return c
		}
		return 3
	}
}
