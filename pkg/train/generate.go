package train

import (
	"fmt"
	"math"

	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/model"
)

// Generation beyond Generate: style-mixing figures and latent interpolation strips. Every
// function here draws a seed's z and noise exactly as Generate does, so a seed renders the
// same image whichever function asks for it.

// net returns the generator o asks for: Gs (the moving average) or G.
func (t *Trainer) net(o GenOptions) *model.Generator {
	if o.UseAverage {
		return t.Gs
	}
	return t.G
}

// seedW maps the seeds' latents (z from Philox key = seed, offset 0, as in Generate) to w
// [len(seeds), WDim].
func (t *Trainer) seedW(g *model.Generator, p *model.Bound, seeds []uint64) *autograd.Tensor {
	zd := t.opts.Model.ZDim
	zs := make([]*autograd.Tensor, len(seeds))
	for i, s := range seeds {
		zs[i] = t.randn(s, 0, 1, zd)
	}
	return g.Mapping(t.tp, p, t.tp.Concat(0, zs...))
}

// seedNoise is the noise input of one synthesis layer for one seed [1, 1, H, W], drawn as
// Generate draws it: per seed ("random"), seed 0 for every image ("const").
func (t *Trainer) seedNoise(seed uint64, mode string, layer int, shape []int) *autograd.Tensor {
	if mode == "const" {
		seed = 0
	}
	return t.randn(seed^0x5eed0000^uint64(layer)<<40, 0, 1, shape[1], shape[2], shape[3])
}

// noiseFor returns the noise source of a batch whose image i takes the noise of seeds[i]
// (nil for noise mode "none").
func (t *Trainer) noiseFor(seeds []uint64, mode string) model.NoiseFunc {
	if mode == "none" {
		return nil
	}
	return func(layer int, shape []int) *autograd.Tensor {
		parts := make([]*autograd.Tensor, len(seeds))
		for i, s := range seeds {
			parts[i] = t.seedNoise(s, mode, layer, shape)
		}
		return t.tp.Concat(0, parts...)
	}
}

// truncate applies o's truncation to per-layer styles.
func (t *Trainer) truncate(g *model.Generator, ws []*autograd.Tensor, o GenOptions) []*autograd.Tensor {
	if o.Psi == 1 {
		return ws
	}
	return g.Truncate(t.tp, ws, t.tp.Const(t.WAvg.View(1, t.opts.Model.WDim)), o.Psi, o.Cutoff)
}

// checkNoiseMode rejects a noise mode Generate does not know.
func checkNoiseMode(mode string) error {
	switch mode {
	case "random", "const", "none":
		return nil
	}
	return fmt.Errorf("train: noise mode %q: want random, const or none", mode)
}

// NumStyleLayers is the number of style inputs the synthesis network uses at lod:
// 2*log2(resolution) - 2 at the resolution lod renders.
func (t *Trainer) NumStyleLayers(lod float64) int {
	cur, _ := t.opts.Model.LevelAt(lod)
	return 2*cur - 2
}

// GenerateMixed renders SG's style-mixing figure body: image (i, j) takes the styles of
// layers [0, crossover) (coarse) from rowSeeds[i] and the rest (fine) from colSeeds[j], and
// the noise of rowSeeds[i]. It returns [len(rowSeeds)*len(colSeeds), C, r, r] row-major.
// Truncation applies to both latents before mixing. crossover 0 takes every style from the
// column seed; crossover >= the layer count every style from the row seed. The source images
// themselves are what Generate renders for the same seeds and options.
func (t *Trainer) GenerateMixed(rowSeeds, colSeeds []uint64, crossover int, o GenOptions) ([]float32, []int, error) {
	if len(rowSeeds) == 0 || len(colSeeds) == 0 {
		return nil, nil, fmt.Errorf("train: style mixing needs row and column seeds (have %d and %d)", len(rowSeeds), len(colSeeds))
	}
	if crossover < 0 {
		return nil, nil, fmt.Errorf("train: style mixing crossover %d is negative", crossover)
	}
	if err := checkNoiseMode(o.NoiseMode); err != nil {
		return nil, nil, err
	}
	tp := t.tp
	tp.Reset()
	g := t.net(o)
	var img *autograd.Tensor
	tp.NoGrad(func() {
		p := g.Params.Bind(tp, false)
		wr := t.seedW(g, p, rowSeeds)
		wc := t.seedW(g, p, colSeeds)
		// Every cell's pair of latents: row i repeated across the columns, the columns
		// tiled down the rows.
		nr, nc := len(rowSeeds), len(colSeeds)
		w1s := make([]*autograd.Tensor, 0, nr*nc)
		w2s := make([]*autograd.Tensor, 0, nr*nc)
		noiseSeeds := make([]uint64, 0, nr*nc)
		for i := 0; i < nr; i++ {
			for j := 0; j < nc; j++ {
				w1s = append(w1s, tp.Slice(wr, 0, i, i+1))
				w2s = append(w2s, tp.Slice(wc, 0, j, j+1))
				noiseSeeds = append(noiseSeeds, rowSeeds[i])
			}
		}
		w1, w2 := tp.Concat(0, w1s...), tp.Concat(0, w2s...)
		var ws []*autograd.Tensor
		if crossover == 0 {
			ws = g.Styles(w2, nil, 0)
		} else {
			ws = g.Styles(w1, w2, crossover)
		}
		img = g.Synthesis(tp, p, t.truncate(g, ws, o), o.LOD, t.noiseFor(noiseSeeds, o.NoiseMode))
	})
	out, err := tp.ToHost(img)
	if err != nil {
		return nil, nil, fmt.Errorf("train: style mixing: %w", err)
	}
	return out, img.Shape(), nil
}

// Interpolate renders a latent interpolation strip of steps images from seed from to seed
// to: w is interpolated linearly in w space (w_k = (1-a) w_from + a w_to, a = k/(steps-1)),
// then truncated. Noise (mode "random") is blended as cos(a pi/2) n_from + sin(a pi/2) n_to,
// which keeps it standard normal. The first and last images are exactly what Generate renders
// for from and to.
func (t *Trainer) Interpolate(from, to uint64, steps int, o GenOptions) ([]float32, []int, error) {
	if steps < 2 {
		return nil, nil, fmt.Errorf("train: interpolation needs at least 2 steps, have %d", steps)
	}
	if err := checkNoiseMode(o.NoiseMode); err != nil {
		return nil, nil, err
	}
	tp := t.tp
	tp.Reset()
	g := t.net(o)
	wd := t.opts.Model.WDim
	// The end points' w, read back so that the blend is computed exactly on the host.
	var ends []float32
	var err error
	tp.NoGrad(func() {
		p := g.Params.Bind(tp, false)
		ends, err = tp.ToHost(t.seedW(g, p, []uint64{from, to}))
	})
	if err != nil {
		return nil, nil, fmt.Errorf("train: interpolation: %w", err)
	}
	alpha := func(k int) (a, b float32) {
		switch k {
		case 0:
			return 1, 0
		case steps - 1:
			return 0, 1
		}
		x := float64(k) / float64(steps-1)
		return float32(1 - x), float32(x)
	}
	wHost := make([]float32, steps*wd)
	for k := 0; k < steps; k++ {
		a, b := alpha(k)
		for j := 0; j < wd; j++ {
			wHost[k*wd+j] = a*ends[j] + b*ends[wd+j]
		}
	}
	var noise model.NoiseFunc
	switch o.NoiseMode {
	case "random":
		noise = func(layer int, shape []int) *autograd.Tensor {
			per := shape[1] * shape[2] * shape[3]
			nf, e1 := tp.ToHost(t.seedNoise(from, o.NoiseMode, layer, shape))
			nt, e2 := tp.ToHost(t.seedNoise(to, o.NoiseMode, layer, shape))
			if e1 != nil || e2 != nil {
				return tp.Fail(fmt.Errorf("noise: %v %v", e1, e2))
			}
			blend := make([]float32, steps*per)
			for k := 0; k < steps; k++ {
				cf, ct := float32(1), float32(0)
				switch k {
				case 0:
				case steps - 1:
					cf, ct = 0, 1
				default:
					x := float64(k) / float64(steps-1) * math.Pi / 2
					cf, ct = float32(math.Cos(x)), float32(math.Sin(x))
				}
				for j := 0; j < per; j++ {
					blend[k*per+j] = cf*nf[j] + ct*nt[j]
				}
			}
			return tp.FromHost(blend, steps, shape[1], shape[2], shape[3])
		}
	case "const":
		seeds := make([]uint64, steps)
		noise = t.noiseFor(seeds, o.NoiseMode)
	}
	var img *autograd.Tensor
	tp.NoGrad(func() {
		p := g.Params.Bind(tp, false)
		w := tp.FromHost(wHost, steps, wd)
		img = g.Synthesis(tp, p, t.truncate(g, g.Styles(w, nil, 0), o), o.LOD, noise)
	})
	out, err := tp.ToHost(img)
	if err != nil {
		return nil, nil, fmt.Errorf("train: interpolation: %w", err)
	}
	return out, img.Shape(), nil
}
