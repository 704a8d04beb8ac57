package dataset

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/gif" // registers decoders with image.Decode
	_ "image/jpeg"
	"image/png"
	"io"
	"math"
	"strings"

	_ "golang.org/x/image/bmp"
	_ "golang.org/x/image/tiff"
	_ "golang.org/x/image/webp"
)

// imageExts are the file name extensions treated as images.
var imageExts = map[string]bool{".png": true, ".jpg": true, ".jpeg": true, ".gif": true,
	".bmp": true, ".tif": true, ".tiff": true, ".webp": true}

// problem is a per-input failure: kind is a short class for counting, detail the line text.
type problem struct{ kind, detail string }

func (p *problem) Error() string { return p.detail }

func newProblem(kind, format string, args ...any) *problem {
	return &problem{kind: kind, detail: fmt.Sprintf(format, args...)}
}

// raster is an image as float planes R, G, B, A with values 0..255 (alpha straight).
type raster struct {
	w, h     int
	p        [4][]float32
	hasAlpha bool // some pixel is not opaque
	gray     bool // R == G == B everywhere
	deep     bool // more than 8 bits per channel
}

// decodeImage decodes b after checking its header against maxPixels.
func decodeImage(b []byte, maxPixels int64) (img image.Image, err error) {
	if len(b) == 0 {
		return nil, newProblem("empty", "empty file (0 bytes)")
	}
	format := "image"
	// A decoder bug must cost one file, not the import.
	defer func() {
		if r := recover(); r != nil {
			img, err = nil, newProblem("corrupt", "%s decoder failed: %v", format, r)
		}
	}()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		if errors.Is(err, image.ErrFormat) {
			return nil, newProblem("not-an-image", "not an image: content matches none of PNG, JPEG, GIF, BMP, TIFF, WebP")
		}
		return nil, newProblem("corrupt", "unreadable header: %v", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, newProblem("corrupt", "%s header claims %dx%d pixels", format, cfg.Width, cfg.Height)
	}
	if int64(cfg.Width)*int64(cfg.Height) > maxPixels {
		return nil, newProblem("too-large", "%s header claims %dx%d pixels, over the limit of %d (--max-pixels); not decoded",
			format, cfg.Width, cfg.Height, maxPixels)
	}
	img, _, err = image.Decode(bytes.NewReader(b))
	if err != nil {
		kind := "corrupt"
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "EOF") {
			kind = "truncated"
		}
		return nil, newProblem(kind, "%s %s: %v", kind, format, err)
	}
	return img, nil
}

// toRaster converts any image to float planes, with fast paths for the common types.
func toRaster(img image.Image) *raster {
	bnd := img.Bounds()
	w, h := bnd.Dx(), bnd.Dy()
	r := &raster{w: w, h: h}
	for i := range r.p {
		r.p[i] = make([]float32, w*h)
	}
	switch m := img.(type) {
	case *image.Gray:
		for y := range h {
			row := m.Pix[y*m.Stride : y*m.Stride+w]
			for x, v := range row {
				f := float32(v)
				r.p[0][y*w+x], r.p[1][y*w+x], r.p[2][y*w+x], r.p[3][y*w+x] = f, f, f, 255
			}
		}
	case *image.NRGBA:
		for y := range h {
			row := m.Pix[y*m.Stride : y*m.Stride+4*w]
			for x := range w {
				i := y*w + x
				r.p[0][i], r.p[1][i], r.p[2][i], r.p[3][i] = float32(row[4*x]), float32(row[4*x+1]), float32(row[4*x+2]), float32(row[4*x+3])
			}
		}
	default:
		// Read straight (non-premultiplied) samples where the colour type has them: going
		// through color.Model loses precision at low alpha.
		for y := range h {
			for x := range w {
				var v [4]uint16
				switch c := img.At(bnd.Min.X+x, bnd.Min.Y+y).(type) {
				case color.NRGBA:
					v = [4]uint16{uint16(c.R) * 257, uint16(c.G) * 257, uint16(c.B) * 257, uint16(c.A) * 257}
				case color.NRGBA64:
					v = [4]uint16{c.R, c.G, c.B, c.A}
				default:
					n := color.NRGBA64Model.Convert(c).(color.NRGBA64)
					v = [4]uint16{n.R, n.G, n.B, n.A}
				}
				i := y*w + x
				for k, s := range v {
					if s%257 != 0 {
						r.deep = true
					}
					r.p[k][i] = float32(s) / 257
				}
			}
		}
	}
	r.gray = true
	for i := range r.p[0] {
		if r.p[3][i] != 255 {
			r.hasAlpha = true
		}
		if r.p[0][i] != r.p[1][i] || r.p[1][i] != r.p[2][i] {
			r.gray = false
		}
	}
	return r
}

// modeName describes a raster's channel content for reports.
func (r *raster) modeName() string {
	switch {
	case r.hasAlpha && r.gray:
		return "gray+alpha"
	case r.hasAlpha:
		return "rgba"
	case r.gray:
		return "gray"
	}
	return "rgb"
}

// outputChannels maps a channel policy to a count.
func outputChannels(policy string) int {
	switch policy {
	case "gray":
		return 1
	case "rgb":
		return 3
	}
	return 4
}

// convert applies the channel policy, returning c planes (straight alpha last when c == 4)
// and a description of what changed ("" when nothing did).
func convert(r *raster, c int, bg color.NRGBA) ([][]float32, string) {
	var change []string
	p := r.p
	if c != 4 && r.hasAlpha {
		bgv := [3]float32{float32(bg.R), float32(bg.G), float32(bg.B)}
		for i := range p[3] {
			a := p[3][i] / 255
			for k := range 3 {
				p[k][i] = p[k][i]*a + bgv[k]*(1-a)
			}
			p[3][i] = 255
		}
		change = append(change, fmt.Sprintf("alpha composited onto #%02x%02x%02x", bg.R, bg.G, bg.B))
	}
	var out [][]float32
	switch c {
	case 1:
		if !r.gray {
			for i := range p[0] {
				p[0][i] = 0.299*p[0][i] + 0.587*p[1][i] + 0.114*p[2][i]
			}
			change = append(change, "colour converted to gray (ITU-R 601 luma)")
		}
		out = [][]float32{p[0]}
	case 3:
		if r.gray {
			change = append(change, "gray replicated to RGB")
		}
		out = [][]float32{p[0], p[1], p[2]}
	case 4:
		if !r.hasAlpha {
			change = append(change, "opaque alpha channel added")
		}
		out = [][]float32{p[0], p[1], p[2], p[3]}
	}
	if r.deep {
		change = append(change, "16-bit samples rounded to 8 bits")
	}
	return out, strings.Join(change, "; ")
}

// crop returns the sub-rectangle (x0, y0, w, h) of each plane.
func crop(planes [][]float32, sw, x0, y0, w, h int) [][]float32 {
	out := make([][]float32, len(planes))
	for k, p := range planes {
		q := make([]float32, w*h)
		for y := range h {
			copy(q[y*w:(y+1)*w], p[(y0+y)*sw+x0:])
		}
		out[k] = q
	}
	return out
}

// pad centres planes of sw x sh in side x side filled with fill[k].
func pad(planes [][]float32, sw, sh, side int, fill []float32) [][]float32 {
	out := make([][]float32, len(planes))
	x0, y0 := (side-sw)/2, (side-sh)/2
	for k, p := range planes {
		q := make([]float32, side*side)
		for i := range q {
			q[i] = fill[k]
		}
		for y := range sh {
			copy(q[(y0+y)*side+x0:], p[y*sw:(y+1)*sw])
		}
		out[k] = q
	}
	return out
}

// fitSquare makes planes square: centre-crop to the short side or pad to the long side.
func fitSquare(planes [][]float32, w, h int, policy string, fill []float32) ([][]float32, int) {
	if w == h {
		return planes, w
	}
	if policy == "pad" {
		side := max(w, h)
		return pad(planes, w, h, side, fill), side
	}
	side := min(w, h)
	return crop(planes, w, (w-side)/2, (h-side)/2, side, side), side
}

// quantize rounds planes to bytes, clamping to 0..255.
func quantize(planes [][]float32, dst []byte) {
	n := len(planes[0])
	for k, p := range planes {
		o := dst[k*n : (k+1)*n]
		for i, v := range p {
			v = float32(math.Floor(float64(v) + 0.5))
			if v < 0 {
				v = 0
			} else if v > 255 {
				v = 255
			}
			o[i] = byte(v)
		}
	}
}

// EncodePNG writes c planes of w x h bytes as a PNG (gray, RGB as NRGBA, or NRGBA).
func EncodePNG(w io.Writer, planes []byte, c, width, height int) error {
	n := width * height
	var img image.Image
	switch c {
	case 1:
		g := image.NewGray(image.Rect(0, 0, width, height))
		copy(g.Pix, planes[:n])
		img = g
	default:
		m := image.NewNRGBA(image.Rect(0, 0, width, height))
		for i := range n {
			m.Pix[4*i], m.Pix[4*i+1], m.Pix[4*i+2], m.Pix[4*i+3] = planes[i], planes[n+i], planes[2*n+i], 255
			if c == 4 {
				m.Pix[4*i+3] = planes[3*n+i]
			}
		}
		img = m
	}
	return png.Encode(w, img)
}
