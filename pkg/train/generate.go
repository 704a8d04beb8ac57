package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/model"
)

// Generation beyond Generate: one image at a time (GenerateEach), style-mixing figures and
// latent interpolation strips. Every function here draws a seed's z and noise exactly as
// Generate does and renders one image per network pass, as Generate does for a single seed:
// batched GEMMs round differently from one batch size to another (about 1e-6), so rendering
// each image alone is what makes a seed's image the same bit for bit in every figure.

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

// GenerateEach renders one image per seed like Generate, but each in its own pass, so that
// a seed's pixels do not depend on the other seeds asked for. It returns [len(seeds), C, r, r].
func (t *Trainer) GenerateEach(seeds []uint64, o GenOptions) ([]float32, []int, error) {
	if err := checkNoiseMode(o.NoiseMode); err != nil {
		return nil, nil, err
	}
	if len(seeds) == 0 {
		return nil, nil, fmt.Errorf("train: no seeds to generate")
	}
	var out []float32
	var shape []int
	for _, s := range seeds {
		img, sh, err := t.Generate([]uint64{s}, o)
		if err != nil {
			return nil, nil, fmt.Errorf("train: generate seed %d: %w", s, err)
		}
		out = append(out, img...)
		shape = sh
	}
	shape = append([]int{len(seeds)}, shape[1:]...)
	return out, shape, nil
}

// GenerateMixed renders the body of SG's style-mixing figure: image (i, j) takes the styles
// of layers [0, crossover) (coarse) from rowSeeds[i], the rest (fine) from colSeeds[j], and
// the noise of rowSeeds[i]. It returns [len(rowSeeds)*len(colSeeds), C, r, r], row-major.
// Truncation applies to both latents. crossover 0 takes every style from the column seed;
// crossover >= the layer count renders exactly the row seed's Generate image.
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
	g := t.net(o)
	var out []float32
	var shape []int
	for _, r := range rowSeeds {
		for _, c := range colSeeds {
			tp.Reset()
			var img *autograd.Tensor
			tp.NoGrad(func() {
				p := g.Params.Bind(tp, false)
				w1 := t.seedW(g, p, []uint64{r})
				w2 := t.seedW(g, p, []uint64{c})
				var ws []*autograd.Tensor
				if crossover == 0 {
					ws = g.Styles(w2, nil, 0)
				} else {
					ws = g.Styles(w1, w2, crossover)
				}
				img = g.Synthesis(tp, p, t.truncate(g, ws, o), o.LOD, t.noiseFor([]uint64{r}, o.NoiseMode))
			})
			v, err := tp.ToHost(img)
			if err != nil {
				return nil, nil, fmt.Errorf("train: style mixing rows %d columns %d: %w", r, c, err)
			}
			out = append(out, v...)
			shape = img.Shape()
		}
	}
	return out, append([]int{len(rowSeeds) * len(colSeeds)}, shape[1:]...), nil
}

// Interpolate renders a latent interpolation strip of steps images from seed from to seed
// to. w is interpolated linearly in w space (w_k = (1-a) w_from + a w_to, a = k/(steps-1)),
// then truncated; in mode "random" the noise is blended as cos(a pi/2) n_from +
// sin(a pi/2) n_to, which keeps it standard normal. The first and last images are exactly
// the Generate images of from and to.
func (t *Trainer) Interpolate(from, to uint64, steps int, o GenOptions) ([]float32, []int, error) {
	if steps < 2 {
		return nil, nil, fmt.Errorf("train: interpolation needs at least 2 steps, have %d", steps)
	}
	if err := checkNoiseMode(o.NoiseMode); err != nil {
		return nil, nil, err
	}
	tp := t.tp
	g := t.net(o)
	wd := t.opts.Model.WDim
	// The end points' w, read back so that the blend is computed on the host, exactly at
	// the ends.
	var wf, wt []float32
	var err1, err2 error
	tp.Reset()
	tp.NoGrad(func() {
		p := g.Params.Bind(tp, false)
		wf, err1 = tp.ToHost(t.seedW(g, p, []uint64{from}))
		wt, err2 = tp.ToHost(t.seedW(g, p, []uint64{to}))
	})
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, fmt.Errorf("train: interpolation: %w", err)
	}
	var out []float32
	var shape []int
	for k := 0; k < steps; k++ {
		// Weights of the end points in w (lerp) and in the noise (cos/sin).
		a, b := float32(1), float32(0)
		na, nb := float32(1), float32(0)
		switch k {
		case 0:
		case steps - 1:
			a, b, na, nb = 0, 1, 0, 1
		default:
			x := float64(k) / float64(steps-1)
			a, b = float32(1-x), float32(x)
			na, nb = float32(math.Cos(x*math.Pi/2)), float32(math.Sin(x*math.Pi/2))
		}
		w := make([]float32, wd)
		for j := range w {
			w[j] = a*wf[j] + b*wt[j]
		}
		var noise model.NoiseFunc
		switch o.NoiseMode {
		case "random":
			noise = func(layer int, shape []int) *autograd.Tensor {
				nf, e1 := tp.ToHost(t.seedNoise(from, o.NoiseMode, layer, shape))
				nt, e2 := tp.ToHost(t.seedNoise(to, o.NoiseMode, layer, shape))
				if err := errors.Join(e1, e2); err != nil {
					return tp.Fail(err)
				}
				for j := range nf {
					nf[j] = na*nf[j] + nb*nt[j]
				}
				return tp.FromHost(nf, shape...)
			}
		case "const":
			noise = t.noiseFor([]uint64{0}, o.NoiseMode)
		}
		tp.Reset()
		var img *autograd.Tensor
		tp.NoGrad(func() {
			p := g.Params.Bind(tp, false)
			ws := g.Styles(tp.FromHost(w, 1, wd), nil, 0)
			img = g.Synthesis(tp, p, t.truncate(g, ws, o), o.LOD, noise)
		})
		v, err := tp.ToHost(img)
		if err != nil {
			return nil, nil, fmt.Errorf("train: interpolation step %d: %w", k, err)
		}
		out = append(out, v...)
		shape = img.Shape()
	}
	return out, append([]int{steps}, shape[1:]...), nil
}
