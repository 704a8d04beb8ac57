package model

import (
	"math"
	"slices"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/gradcheck"
)

func tinyConfig() Config {
	return Config{Resolution: 8, Channels: 3, ZDim: 4, WDim: 4, MappingLayers: 2, MappingLRMul: 0.1,
		FmapBase: 16, FmapDecay: 1, FmapMax: 4, MbstdGroup: 2, MbstdFeatures: 1, FusedScaleMin: 8,
		UseNoise: true, Blur: []float64{1, 2, 1}}
}

// Output shapes of G and D for SG's 1024 configuration at several levels of detail
// (computed on a narrow copy of the architecture to keep the test fast).
func TestOutputShapes(t *testing.T) {
	d := newDevice(t)
	cfg := SG1024()
	cfg.FmapBase, cfg.FmapMax, cfg.ZDim, cfg.WDim = 16, 4, 8, 8
	g, dd := newNetworks(t, d, cfg, 1)
	tp := autograd.NewTape(d)
	defer tp.Close()
	for _, c := range []struct {
		lod  float64
		side int
	}{{8, 4}, {7.5, 8}, {5, 32}, {2.25, 256}} {
		tp.Reset()
		var img, logit *autograd.Tensor
		tp.NoGrad(func() {
			pg, pd := g.Params.Bind(tp, false), dd.Params.Bind(tp, false)
			w := g.Mapping(tp, pg, tp.Full(0.5, 4, cfg.ZDim))
			img = g.Synthesis(tp, pg, g.Styles(w, nil, 0), c.lod, nil)
			logit = dd.Forward(tp, pd, img, c.lod)
		})
		if err := tp.Err(); err != nil {
			t.Fatalf("lod %g: %v", c.lod, err)
		}
		if s := img.Shape(); s[0] != 4 || s[1] != 3 || s[2] != c.side || s[3] != c.side {
			t.Errorf("lod %g: G output %v, want [4,3,%d,%d]", c.lod, s, c.side, c.side)
		}
		if s := logit.Shape(); s[0] != 4 || s[1] != 1 {
			t.Errorf("lod %g: D output %v, want [4,1]", c.lod, s)
		}
	}
	if n := cfg.NumLayers(); n != 18 {
		t.Errorf("style layers at 1024: %d, want 18", n)
	}
}

// TestFullNetworksFiniteDifferences checks d logit / d (every parameter of G and D) of the
// whole D(G(z)) against central differences on a tiny configuration, with a fade in
// progress and the fused up/down convolutions on.
func TestFullNetworksFiniteDifferences(t *testing.T) {
	d := newDevice(t)
	cfg := tinyConfig()
	g, dd := newNetworks(t, d, cfg, 3)
	gv, _ := g.Params.Host()
	dv, _ := dd.Params.Host()
	// Small noise strengths and style biases so that every parameter matters, and a
	// non-constant input block (a constant plane makes instance norm ill-conditioned, and
	// finite differences meaningless).
	for i := range gv {
		if gv[i] == 0 {
			gv[i] = 0.1 * float32(math.Sin(float64(i)))
		}
	}
	ci := g.Params.index["syn.const"]
	for j, v := range gradcheck.Randn(7, kernels.Numel(g.Params.shapes[ci])) {
		gv[g.Params.offs[ci]+j] = v
	}
	z := gradcheck.Randn(5, 4*cfg.ZDim)
	noise := gradcheck.Randn(6, 4*64*4)
	for _, lod := range []float64{0.4, 0} {
		lod := lod
		c := gradcheck.Case{
			Name:   "D(G(z))",
			Inputs: [][]float32{gv, dv, z},
			Shapes: [][]int{{len(gv)}, {len(dv)}, {4, cfg.ZDim}},
			Wrt:    []int{0, 1},
			F: func(tp *autograd.Tape, x []*autograd.Tensor) *autograd.Tensor {
				pg, pd := g.Params.BindFlat(tp, x[0]), dd.Params.BindFlat(tp, x[1])
				nz := func(layer int, shape []int) *autograd.Tensor {
					n := kernels.Numel(shape)
					return tp.FromHost(noise[layer*64:layer*64+n], shape...)
				}
				w := g.Mapping(tp, pg, x[2])
				img := g.Synthesis(tp, pg, g.Styles(w, nil, 0), lod, nz)
				return dd.Forward(tp, pd, img, lod)
			},
		}
		if err := gradcheck.First(d, c, gradcheck.Options{Seed: 12, Samples: 64, Eps: 5e-3}); err != nil {
			t.Errorf("lod %g: %v", lod, err)
		}
	}
}

// TestDownConvIsConvThenAverage checks that the 4x4 stride-2 form D uses equals SG's
// non-fused 3x3 conv followed by 2x averaging.
func TestDownConvIsConvThenAverage(t *testing.T) {
	d := newDevice(t)
	tp := autograd.NewTape(d)
	defer tp.Close()
	x := tp.FromHost(gradcheck.Randn(1, 2*3*8*6), 2, 3, 8, 6)
	w := tp.FromHost(gradcheck.Randn(2, 5*3*9), 5, 3, 3, 3)
	fused, err := tp.ToHost(downConv(tp, x, w, sqrt2))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := tp.ToHost(Downsample2x(tp, conv(tp, x, w, sqrt2)))
	if err != nil {
		t.Fatal(err)
	}
	if len(fused) != len(plain) {
		t.Fatalf("sizes %d and %d", len(fused), len(plain))
	}
	for i := range fused {
		if d := math.Abs(float64(fused[i] - plain[i])); d > 1e-5 {
			t.Fatalf("element %d: fused %g, conv+average %g", i, fused[i], plain[i])
		}
	}
}

// TestUpConvIsUpsampleThenConv checks that the non-fused up-conv, computed as a transposed
// conv with the flipped fused kernel, equals SG's nearest 2x upsampling followed by the 3x3
// conv: values and the gradients with respect to x and w, on odd, non-square shapes.
func TestUpConvIsUpsampleThenConv(t *testing.T) {
	d := newDevice(t)
	tp := autograd.NewTape(d)
	defer tp.Close()
	for i, c := range []struct{ n, ci, co, h, w int }{{2, 3, 5, 5, 7}, {1, 4, 2, 1, 3}, {3, 2, 3, 4, 4}} {
		tp.Reset()
		x := tp.RequireGrad(tp.FromHost(gradcheck.Randn(uint64(10+i), c.n*c.ci*c.h*c.w), c.n, c.ci, c.h, c.w))
		w := tp.RequireGrad(tp.FromHost(gradcheck.Randn(uint64(20+i), c.co*c.ci*9), c.co, c.ci, 3, 3))
		seed := tp.FromHost(gradcheck.Randn(uint64(30+i), c.n*c.co*4*c.h*c.w), c.n, c.co, 2*c.h, 2*c.w)
		var got [2][3][]float32
		for j, y := range []*autograd.Tensor{upConv(tp, x, w, sqrt2, false), conv(tp, Upsample2x(tp, x), w, sqrt2)} {
			if s := y.Shape(); !slices.Equal(s, seed.Shape()) {
				t.Fatalf("case %d: output %v, want %v", i, s, seed.Shape())
			}
			g, err := tp.Grad(y, []*autograd.Tensor{x, w}, seed, false)
			if err != nil {
				t.Fatalf("case %d: %v", i, err)
			}
			for k, v := range []*autograd.Tensor{y, g[0], g[1]} {
				if got[j][k], err = tp.ToHost(v); err != nil {
					t.Fatalf("case %d: %v", i, err)
				}
			}
		}
		for k, name := range []string{"output", "d/dx", "d/dw"} {
			a, b := got[0][k], got[1][k]
			scale := 0.0
			for _, v := range b {
				scale = math.Max(scale, math.Abs(float64(v)))
			}
			for e := range a {
				if diff := math.Abs(float64(a[e] - b[e])); diff > 1e-5*scale {
					t.Fatalf("case %d %s element %d: transposed %g, upsample+conv %g", i, name, e, a[e], b[e])
				}
			}
		}
	}
}

// TestUpConvFiniteDifferences checks the gradients of both up-conv forms against central
// differences.
func TestUpConvFiniteDifferences(t *testing.T) {
	d := newDevice(t)
	shapes := [][]int{{2, 3, 3, 5}, {4, 3, 3, 3}}
	for _, fused := range []bool{false, true} {
		fused := fused
		c := gradcheck.Case{
			Name:   "up_conv",
			Inputs: [][]float32{gradcheck.Randn(40, 2*3*3*5), gradcheck.Randn(41, 4*3*9)},
			Shapes: shapes,
			F: func(tp *autograd.Tape, x []*autograd.Tensor) *autograd.Tensor {
				return tp.Square(upConv(tp, x[0], x[1], sqrt2, fused))
			},
		}
		if err := gradcheck.First(d, c, gradcheck.Options{Seed: 42}); err != nil {
			t.Errorf("fused %v: %v", fused, err)
		}
	}
}
