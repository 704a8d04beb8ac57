package model

import (
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
)

// Discriminator is StyleGAN's (PG's) discriminator with its parameters.
type Discriminator struct {
	Cfg    Config
	Params *ParamSet
}

// NewDiscriminator lays out the discriminator's parameters on dev.
func NewDiscriminator(dev *kernels.Device, cfg Config) (*Discriminator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ps := newParamSet()
	for res := cfg.Log2R(); res >= 2; res-- {
		name := resName(res)
		c := cfg.NF(res - 1)
		ps.add("fromrgb."+name+".w", 1, 0, c, cfg.Channels, 1, 1)
		ps.add("fromrgb."+name+".b", 0, 0, c)
		if res >= 3 {
			ps.add("d."+name+".conv0.w", 1, 0, c, c, 3, 3)
			ps.add("d."+name+".conv0.b", 0, 0, c)
			ps.add("d."+name+".conv1_down.w", 1, 0, cfg.NF(res-2), c, 3, 3)
			ps.add("d."+name+".conv1_down.b", 0, 0, cfg.NF(res-2))
		}
	}
	c1 := cfg.NF(1)
	cin := c1
	if cfg.mbstd() {
		cin += cfg.MbstdFeatures
	}
	ps.add("d.4x4.conv.w", 1, 0, c1, cin, 3, 3)
	ps.add("d.4x4.conv.b", 0, 0, c1)
	ps.add("d.4x4.dense0.w", 1, 0, cfg.NF(0), c1*16)
	ps.add("d.4x4.dense0.b", 0, 0, cfg.NF(0))
	ps.add("d.4x4.dense1.w", 1, 0, 1, cfg.NF(0))
	ps.add("d.4x4.dense1.b", 0, 0, 1)
	if err := ps.alloc(dev); err != nil {
		return nil, err
	}
	return &Discriminator{Cfg: cfg, Params: ps}, nil
}

// Forward returns one logit per image [N,1]; img is [N, Channels, r, r] at the resolution
// of lod.
func (d *Discriminator) Forward(tp *autograd.Tape, p *Bound, img *autograd.Tensor, lod float64) *autograd.Tensor {
	cfg := d.Cfg
	cur, fade := cfg.LevelAt(lod)
	if s := img.Shape(); len(s) != 4 || s[1] != cfg.Channels || s[2] != 1<<cur || s[3] != 1<<cur {
		return tp.Fail(fmt.Errorf("model: discriminator at lod %g takes [N,%d,%d,%d] images, got %s", lod, cfg.Channels, 1<<cur, 1<<cur, img))
	}
	fromrgb := func(res int, x *autograd.Tensor) *autograd.Tensor {
		pre := "fromrgb." + resName(res)
		return tp.BiasAct(conv(tp, x, p.P(pre+".w"), sqrt2), p.P(pre+".b"), lrelu)
	}
	x := fromrgb(cur, img)
	for res := cur; res >= 3; res-- {
		pre := "d." + resName(res)
		x = tp.BiasAct(conv(tp, x, p.P(pre+".conv0.w"), sqrt2), p.P(pre+".conv0.b"), lrelu)
		x = tp.BiasAct(downConv(tp, Blur(tp, x, cfg.blurTaps()), p.P(pre+".conv1_down.w"), sqrt2), p.P(pre+".conv1_down.b"), lrelu)
		if res == cur && fade > 0 {
			x = tp.Lerp(x, fromrgb(res-1, Downsample2x(tp, img)), fade)
		}
	}
	if cfg.mbstd() {
		x = tp.MinibatchStddev(x, mbstdGroup(cfg.MbstdGroup, x.Shape()[0]), cfg.MbstdFeatures, normEps)
	}
	x = tp.BiasAct(conv(tp, x, p.P("d.4x4.conv.w"), sqrt2), p.P("d.4x4.conv.b"), lrelu)
	n := x.Shape()[0]
	x = tp.Reshape(x, n, x.Numel()/max(n, 1))
	x = dense(tp, x, p.P("d.4x4.dense0.w"), p.P("d.4x4.dense0.b"), sqrt2, 1, lrelu)
	return dense(tp, x, p.P("d.4x4.dense1.w"), p.P("d.4x4.dense1.b"), 1, 1, linear)
}

// mbstdGroup is the group size used on a local minibatch of n: SG's min(group, n), lowered
// to the largest size that divides n (a worker's share of the global minibatch need not be
// a multiple of 4).
func mbstdGroup(group, n int) int {
	g := min(group, n)
	for g > 1 && n%g != 0 {
		g--
	}
	return max(g, 1)
}
