// Package grid lays out images as one PNG: sample grids, style-mixing figures and latent
// interpolation strips. Images are float32 NCHW in [-1, 1] (what G renders), 1, 3 or 4
// channels.
package grid

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
)

// Images is a batch of NCHW float32 images in [-1, 1].
type Images struct {
	N, C, H, W int
	Data       []float32
}

// Check reports a malformed batch.
func (im Images) Check() error {
	if im.N < 0 || im.H < 1 || im.W < 1 || (im.C != 1 && im.C != 3 && im.C != 4) {
		return fmt.Errorf("grid: images %dx%dx%dx%d: need 1, 3 or 4 channels", im.N, im.C, im.H, im.W)
	}
	if len(im.Data) != im.N*im.C*im.H*im.W {
		return fmt.Errorf("grid: images %dx%dx%dx%d need %d values, have %d", im.N, im.C, im.H, im.W, im.N*im.C*im.H*im.W, len(im.Data))
	}
	return nil
}

// Upsample repeats pixels so that images reach size (an integer multiple of their own).
func (im Images) Upsample(size int) Images {
	if size <= im.H || size%im.H != 0 {
		return im
	}
	f := size / im.H
	out := Images{N: im.N, C: im.C, H: size, W: im.W * f, Data: make([]float32, im.N*im.C*size*im.W*f)}
	for p := 0; p < im.N*im.C; p++ {
		src := im.Data[p*im.H*im.W:]
		dst := out.Data[p*out.H*out.W:]
		for y := 0; y < out.H; y++ {
			for x := 0; x < out.W; x++ {
				dst[y*out.W+x] = src[(y/f)*im.W+x/f]
			}
		}
	}
	return out
}

func toByte(v float32) uint8 {
	f := (float64(v) + 1) * 127.5
	return uint8(math.Max(0, math.Min(255, math.Round(f))))
}

// Layout places image i at cell (row, col) = (i / cols, i % cols) with a pad-pixel gap; cells
// may be left empty by passing fewer images.
func Layout(im Images, cols, pad int) (image.Image, error) {
	if err := im.Check(); err != nil {
		return nil, err
	}
	if cols < 1 {
		return nil, fmt.Errorf("grid: %d columns", cols)
	}
	rows := max((im.N+cols-1)/cols, 1)
	wd, ht := cols*im.W+(cols+1)*pad, rows*im.H+(rows+1)*pad
	out := image.NewNRGBA(image.Rect(0, 0, wd, ht))
	for i := range out.Pix {
		out.Pix[i] = 255
	}
	plane := im.H * im.W
	for i := 0; i < im.N; i++ {
		x0, y0 := pad+(i%cols)*(im.W+pad), pad+(i/cols)*(im.H+pad)
		base := im.Data[i*im.C*plane:]
		for y := 0; y < im.H; y++ {
			for x := 0; x < im.W; x++ {
				o := y*im.W + x
				var c color.NRGBA
				switch im.C {
				case 1:
					g := toByte(base[o])
					c = color.NRGBA{g, g, g, 255}
				case 3:
					c = color.NRGBA{toByte(base[o]), toByte(base[plane+o]), toByte(base[2*plane+o]), 255}
				case 4:
					c = color.NRGBA{toByte(base[o]), toByte(base[plane+o]), toByte(base[2*plane+o]), toByte(base[3*plane+o])}
				}
				out.SetNRGBA(x0+x, y0+y, c)
			}
		}
	}
	return out, nil
}

// PNG encodes Layout(im, cols, pad).
func PNG(im Images, cols, pad int) ([]byte, error) {
	img, err := Layout(im, cols, pad)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("grid: encode png: %w", err)
	}
	return buf.Bytes(), nil
}
