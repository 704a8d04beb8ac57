package autograd_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/gradcheck"
)

var (
	lrelu    = kernels.ActParams{Act: kernels.ActLReLU, Alpha: 0.2, Gain: 1.4142135}
	blurTaps = []float32{0.25, 0.5, 0.25}
)

// dPathCases are the ops on the discriminator's path, which R1 differentiates twice.
func dPathCases() []gradcheck.Case {
	var cs []gradcheck.Case
	for i, c := range []struct{ n, ci, co, h, w, k, s, p int }{
		{2, 3, 5, 5, 4, 3, 1, 1}, // odd channels and sizes
		{1, 2, 3, 1, 1, 3, 1, 1}, // batch 1, 1x1 image
		{2, 3, 2, 4, 4, 1, 1, 0}, // 1x1 conv (toRGB / fromRGB)
		{2, 2, 3, 6, 6, 4, 2, 1}, // SG's fused downsampling conv
	} {
		c := c
		shapes := [][]int{{c.n, c.ci, c.h, c.w}, {c.co, c.ci, c.k, c.k}}
		cs = append(cs, gradcheck.Case{
			Name: fmt.Sprintf("conv%d", i), Inputs: inputs(uint64(100+i), shapes...), Shapes: shapes,
			F: func(tp *autograd.Tape, x []*T) *T {
				y := tp.Conv2d(x[0], x[1], autograd.ConvParams{Stride: c.s, Pad: c.p, Alpha: 0.6})
				return tp.Square(y) // nonlinear so the second order is not trivially zero
			},
		})
	}
	ts := [][]int{{2, 3, 3, 3}, {3, 2, 4, 4}}
	cs = append(cs, gradcheck.Case{
		Name: "conv_transpose_up", Inputs: inputs(110, ts...), Shapes: ts,
		F: func(tp *autograd.Tape, x []*T) *T {
			return tp.Square(tp.ConvTranspose2d(x[0], x[1], []int{2, 2, 6, 6}, autograd.ConvParams{Stride: 2, Pad: 1, Alpha: 0.5}))
		},
	})
	// A flipped, permuted 4x4 kernel into the transposed conv: G's up-conv below the fused
	// resolution; the flip is a negative-stride view that the conv reads through a copy.
	fts := [][]int{{2, 3, 3, 5}, {2, 3, 4, 4}}
	cs = append(cs, gradcheck.Case{
		Name: "flip_conv_transpose", Inputs: inputs(111, fts...), Shapes: fts,
		F: func(tp *autograd.Tape, x []*T) *T {
			w := tp.Permute(tp.Flip(x[1], 2, 3), 1, 0, 2, 3)
			y := tp.ConvTranspose2d(x[0], w, []int{2, 2, 6, 10}, autograd.ConvParams{Stride: 2, Pad: 1, Alpha: 0.5})
			return tp.Square(tp.Flip(y, 3))
		},
	})
	bs := [][]int{{2, 5, 3, 3}, {5}}
	cs = append(cs, gradcheck.Case{
		Name: "bias_lrelu", Inputs: inputs(120, bs...), Shapes: bs,
		F: func(tp *autograd.Tape, x []*T) *T { return tp.Square(tp.BiasAct(x[0], x[1], lrelu)) },
	})
	// bias+lrelu composed with a conv: the second-order path R1 really takes.
	cbs := [][]int{{2, 3, 4, 4}, {4, 3, 3, 3}, {4}, {3, 4, 3, 3}}
	cs = append(cs, gradcheck.Case{
		Name: "conv_bias_lrelu", Inputs: inputs(125, cbs...), Shapes: cbs,
		F: func(tp *autograd.Tape, x []*T) *T {
			h := tp.BiasAct(tp.Conv2d(x[0], x[1], autograd.ConvParams{Stride: 1, Pad: 1, Alpha: 0.5}), x[2], lrelu)
			return tp.Conv2d(h, x[3], autograd.ConvParams{Stride: 1, Pad: 1, Alpha: 0.5})
		},
	})
	fs := [][]int{{2, 3, 5, 7}}
	for _, f := range []struct {
		name string
		taps []float32
		p    kernels.FIRParams
	}{
		{"blur", blurTaps, kernels.FIRParams{Up: 1, Down: 1, Pad0: 1, Pad1: 1, Gain: 1}},
		{"blur_down", blurTaps, kernels.FIRParams{Up: 1, Down: 2, Pad0: 1, Pad1: 1, Gain: 1}},
		{"box_down", []float32{0.5, 0.5}, kernels.FIRParams{Up: 1, Down: 2, Gain: 1}},
		{"nearest_up", []float32{1, 1}, kernels.FIRParams{Up: 2, Down: 1, Pad0: 1, Gain: 1}},
		{"up_blur", blurTaps, kernels.FIRParams{Up: 2, Down: 1, Pad0: 1, Pad1: 1, Gain: 4}},
	} {
		f := f
		cs = append(cs, gradcheck.Case{
			Name: "fir_" + f.name, Inputs: inputs(130, fs...), Shapes: fs,
			F: func(tp *autograd.Tape, x []*T) *T { return tp.Square(tp.FIR(x[0], f.taps, f.p)) },
		})
	}
	ds := [][]int{{3, 7}, {5, 7}, {5}}
	cs = append(cs, gradcheck.Case{
		Name: "dense_lrmul", Inputs: inputs(140, ds...), Shapes: ds,
		F: func(tp *autograd.Tape, x []*T) *T { return tp.Square(tp.Dense(x[0], x[1], x[2], 0.3, 0.01, lrelu)) },
	})
	for _, m := range []struct{ n, group int }{{8, 4}, {4, 4}, {1, 4}, {6, 2}} {
		m := m
		ms := [][]int{{m.n, 4, 2, 3}}
		cs = append(cs, gradcheck.Case{
			Name: fmt.Sprintf("mbstd_n%d_g%d", m.n, m.group), Inputs: inputs(150, ms...), Shapes: ms,
			F: func(tp *autograd.Tape, x []*T) *T {
				return tp.Square(tp.MinibatchStddev(x[0], m.group, 1, 1e-8))
			},
		})
	}
	// Only the appended feature: its gradient is all mbstd adds to the identity part.
	mf := [][]int{{8, 3, 2, 2}}
	cs = append(cs, gradcheck.Case{
		Name: "mbstd_feature_only", Inputs: inputs(152, mf...), Shapes: mf,
		F: func(tp *autograd.Tape, x []*T) *T {
			return tp.Square(tp.Slice(tp.MinibatchStddev(x[0], 4, 1, 1e-8), 1, 3, 4))
		},
	})
	ms2 := [][]int{{4, 4, 2, 2}}
	cs = append(cs, gradcheck.Case{
		Name: "mbstd_features2", Inputs: inputs(155, ms2...), Shapes: ms2,
		F: func(tp *autograd.Tape, x []*T) *T { return tp.Square(tp.MinibatchStddev(x[0], 2, 2, 1e-8)) },
	})
	ls := [][]int{{2, 3, 4, 4}, {2, 3, 4, 4}}
	cs = append(cs, gradcheck.Case{
		Name: "blend", Inputs: inputs(160, ls...), Shapes: ls,
		F: func(tp *autograd.Tape, x []*T) *T { return tp.Square(tp.Lerp(x[0], x[1], 0.35)) },
	})
	cs = append(cs, gradcheck.Case{
		Name: "concat_channels", Inputs: inputs(170, ls...), Shapes: ls,
		F: func(tp *autograd.Tape, x []*T) *T { return tp.Square(tp.Concat(1, x[0], tp.Square(x[1]))) },
	})
	return cs
}

func TestDiscriminatorPathOpsFirstOrder(t *testing.T) {
	d := newDevice(t)
	for _, c := range dPathCases() {
		if err := gradcheck.First(d, c, gradcheck.Options{Seed: 7}); err != nil {
			t.Error(err)
		}
	}
}

func TestDiscriminatorPathOpsSecondOrder(t *testing.T) {
	d := newDevice(t)
	for _, c := range dPathCases() {
		if err := gradcheck.Second(d, c, gradcheck.Options{Seed: 8}); err != nil {
			t.Error(err)
		}
	}
}

// gPathCases are the generator-only ops (first order is all training needs).
func gPathCases() []gradcheck.Case {
	as := [][]int{{2, 3, 4, 5}, {2, 3}, {2, 3}}
	ns := [][]int{{2, 3, 4, 4}, {2, 1, 4, 4}, {3}}
	ps := [][]int{{3, 5}}
	ps4 := [][]int{{2, 5, 2, 3}}
	return []gradcheck.Case{
		{Name: "adain", Inputs: inputs(200, as...), Shapes: as, F: func(tp *autograd.Tape, x []*T) *T {
			return tp.AdaIN(x[0], x[1], x[2], 1e-8)
		}},
		{Name: "instance_norm", Inputs: inputs(201, as[:1]...), Shapes: as[:1], F: func(tp *autograd.Tape, x []*T) *T {
			return tp.AdaIN(x[0], nil, nil, 1e-8)
		}},
		{Name: "noise", Inputs: inputs(210, ns...), Shapes: ns, Wrt: []int{0, 2}, F: func(tp *autograd.Tape, x []*T) *T {
			return tp.Square(tp.Noise(x[0], x[1], x[2]))
		}},
		{Name: "pixel_norm", Inputs: inputs(220, ps...), Shapes: ps, F: func(tp *autograd.Tape, x []*T) *T {
			return tp.PixelNorm(x[0], 1e-8)
		}},
		{Name: "pixel_norm_nchw", Inputs: inputs(221, ps4...), Shapes: ps4, F: func(tp *autograd.Tape, x []*T) *T {
			return tp.PixelNorm(x[0], 1e-8)
		}},
	}
}

func TestGeneratorPathOpsFirstOrder(t *testing.T) {
	d := newDevice(t)
	for _, c := range gPathCases() {
		if err := gradcheck.First(d, c, gradcheck.Options{Seed: 9}); err != nil {
			t.Error(err)
		}
	}
	// The composite backward of pixel norm and noise (used under create-graph) is checked
	// to second order too.
	for _, c := range gPathCases()[2:] {
		if err := gradcheck.Second(d, c, gradcheck.Options{Seed: 10}); err != nil {
			t.Error(err)
		}
	}
}

func TestAdaINRefusesSecondOrder(t *testing.T) {
	d := newDevice(t)
	c := gPathCases()[0]
	err := gradcheck.Second(d, c, gradcheck.Options{Seed: 11})
	if err == nil || !strings.Contains(err.Error(), "adain: second-order gradient is not implemented") {
		t.Fatalf("second order through AdaIN: got %v", err)
	}
}

// TestCompositeBackwardMatchesKernels checks that the differentiable composite backward
// used under create-graph gives the same first-order gradient as the fused kernel.
func TestCompositeBackwardMatchesKernels(t *testing.T) {
	d := newDevice(t)
	cases := []struct {
		name  string
		shape []int
		f     func(tp *autograd.Tape, x *T) *T
	}{
		{"mbstd", []int{8, 6, 3, 2}, func(tp *autograd.Tape, x *T) *T { return tp.MinibatchStddev(x, 4, 2, 1e-8) }},
		{"pixel_norm", []int{3, 7, 2, 2}, func(tp *autograd.Tape, x *T) *T { return tp.PixelNorm(x, 1e-8) }},
	}
	for _, c := range cases {
		tp := autograd.NewTape(d)
		x := tp.RequireGrad(tp.FromHost(gradcheck.Randn(300, kernels.Numel(c.shape)), c.shape...))
		y := c.f(tp, x)
		seed := tp.FromHost(gradcheck.Randn(301, y.Numel()), y.Shape()...)
		var got [2][]float32
		for i, create := range []bool{false, true} {
			g, err := tp.Grad(y, []*T{x}, seed, create)
			if err != nil {
				t.Fatal(err)
			}
			if got[i], err = tp.ToHost(g[0]); err != nil {
				t.Fatal(err)
			}
		}
		for i := range got[0] {
			if diff := got[0][i] - got[1][i]; diff > 1e-5 || diff < -1e-5 {
				t.Fatalf("%s: element %d: kernel %g, composite %g", c.name, i, got[0][i], got[1][i])
			}
		}
		tp.Close()
	}
}
