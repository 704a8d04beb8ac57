package model

import (
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
)

// Generator is StyleGAN's generator: the mapping network z -> w and the synthesis network
// w -> image, with its parameters.
type Generator struct {
	Cfg    Config
	Params *ParamSet
}

// NewGenerator lays out the generator's parameters on dev (not yet initialised; call
// Params.Init).
func NewGenerator(dev *kernels.Device, cfg Config) (*Generator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ps := newParamSet()
	in := cfg.ZDim
	for i := 0; i < cfg.MappingLayers; i++ {
		ps.add(fmt.Sprintf("map.%d.w", i), float32(1/cfg.MappingLRMul), 0, cfg.WDim, in)
		ps.add(fmt.Sprintf("map.%d.b", i), 0, 0, cfg.WDim)
		in = cfg.WDim
	}
	ps.add("syn.const", 0, 1, 1, cfg.NF(1), 4, 4)
	layer := 0
	epilogue := func(c int) {
		if cfg.UseNoise {
			ps.add(fmt.Sprintf("syn.layer%d.noise", layer), 0, 0, c)
		}
		ps.add(fmt.Sprintf("syn.layer%d.bias", layer), 0, 0, c)
		ps.add(fmt.Sprintf("syn.layer%d.style.w", layer), 1, 0, 2*c, cfg.WDim)
		ps.add(fmt.Sprintf("syn.layer%d.style.b", layer), 0, 0, 2*c)
		layer++
	}
	for res := 2; res <= cfg.Log2R(); res++ {
		c := cfg.NF(res - 1)
		if res == 2 {
			epilogue(c)
			ps.add("syn.4x4.conv.w", 1, 0, c, c, 3, 3)
			epilogue(c)
		} else {
			ps.add(fmt.Sprintf("syn.%s.conv0_up.w", resName(res)), 1, 0, c, cfg.NF(res-2), 3, 3)
			epilogue(c)
			ps.add(fmt.Sprintf("syn.%s.conv1.w", resName(res)), 1, 0, c, c, 3, 3)
			epilogue(c)
		}
		ps.add(fmt.Sprintf("syn.torgb.%s.w", resName(res)), 1, 0, cfg.Channels, c, 1, 1)
		ps.add(fmt.Sprintf("syn.torgb.%s.b", resName(res)), 0, 0, cfg.Channels)
	}
	if err := ps.alloc(dev); err != nil {
		return nil, err
	}
	return &Generator{Cfg: cfg, Params: ps}, nil
}

// Mapping returns w = mapping(pixel_norm(z)), z [N, ZDim] -> [N, WDim].
func (g *Generator) Mapping(tp *autograd.Tape, p *Bound, z *autograd.Tensor) *autograd.Tensor {
	x := tp.PixelNorm(z, normEps)
	for i := 0; i < g.Cfg.MappingLayers; i++ {
		x = dense(tp, x, p.P(fmt.Sprintf("map.%d.w", i)), p.P(fmt.Sprintf("map.%d.b", i)), sqrt2, g.Cfg.MappingLRMul, lrelu)
	}
	return x
}

// NoiseFunc returns the noise input [N,1,H,W] of a synthesis layer, or nil for none.
type NoiseFunc func(layer int, shape []int) *autograd.Tensor

// Synthesis renders images at the resolution of lod from per-layer latents ws (len
// NumLayers, each [N, WDim]; layers past the current resolution are unused).
func (g *Generator) Synthesis(tp *autograd.Tape, p *Bound, ws []*autograd.Tensor, lod float64, noise NoiseFunc) *autograd.Tensor {
	cfg := g.Cfg
	cur, fade := cfg.LevelAt(lod)
	n := ws[0].Shape()[0]
	layer := 0
	epilogue := func(x *autograd.Tensor) *autograd.Tensor {
		c := x.Shape()[1]
		pre := fmt.Sprintf("syn.layer%d.", layer)
		if noise != nil && cfg.UseNoise {
			if nz := noise(layer, []int{n, 1, x.Shape()[2], x.Shape()[3]}); nz != nil {
				x = tp.Noise(x, nz, p.P(pre+"noise"))
			}
		}
		x = tp.BiasAct(x, p.P(pre+"bias"), lrelu)
		style := dense(tp, ws[layer], p.P(pre+"style.w"), p.P(pre+"style.b"), 1, 1, linear)
		s, b := tp.Slice(style, 1, 0, c), tp.Slice(style, 1, c, 2*c)
		layer++
		return tp.AdaIN(x, s, b, normEps)
	}
	torgb := func(res int, x *autograd.Tensor) *autograd.Tensor {
		pre := "syn.torgb." + resName(res)
		return tp.BiasAct(conv(tp, x, p.P(pre+".w"), 1), p.P(pre+".b"), linear)
	}
	c0 := p.P("syn.const")
	x := tp.Expand(c0, n, c0.Shape()[1], 4, 4)
	x = epilogue(x)
	x = epilogue(conv(tp, x, p.P("syn.4x4.conv.w"), sqrt2))
	var prev *autograd.Tensor
	for res := 3; res <= cur; res++ {
		if res == cur {
			prev = x
		}
		name := resName(res)
		x = Blur(tp, upConv(tp, x, p.P("syn."+name+".conv0_up.w"), sqrt2, cfg.fused(res)), cfg.blurTaps())
		x = epilogue(x)
		x = epilogue(conv(tp, x, p.P("syn."+name+".conv1.w"), sqrt2))
	}
	img := torgb(cur, x)
	if fade > 0 && prev != nil {
		img = tp.Lerp(img, Upsample2x(tp, torgb(cur-1, prev)), fade)
	}
	return img
}

// Styles broadcasts w to every synthesis layer, or mixes two latents: layers before cutoff
// take w1, the rest w2 (cutoff <= 0 or w2 nil: no mixing).
func (g *Generator) Styles(w1, w2 *autograd.Tensor, cutoff int) []*autograd.Tensor {
	ws := make([]*autograd.Tensor, g.Cfg.NumLayers())
	for i := range ws {
		if w2 != nil && cutoff > 0 && i >= cutoff {
			ws[i] = w2
		} else {
			ws[i] = w1
		}
	}
	return ws
}

// Truncate pulls the styles of layers before cutoff towards wAvg: wAvg + psi*(w - wAvg).
func (g *Generator) Truncate(tp *autograd.Tape, ws []*autograd.Tensor, wAvg *autograd.Tensor, psi float32, cutoff int) []*autograd.Tensor {
	out := append([]*autograd.Tensor(nil), ws...)
	for i := 0; i < len(out) && i < cutoff; i++ {
		out[i] = tp.Lerp(tp.Expand(wAvg, out[i].Shape()...), out[i], psi)
	}
	return out
}
