package autograd_test

import (
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/gradcheck"
)

func newDevice(t testing.TB) *kernels.Device {
	t.Helper()
	d, err := kernels.Open(kernels.Config{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

type T = autograd.Tensor

func inputs(seed uint64, shapes ...[]int) [][]float32 {
	out := make([][]float32, len(shapes))
	for i, s := range shapes {
		out[i] = gradcheck.Randn(seed+uint64(i), kernels.Numel(s))
	}
	return out
}

func positive(x []float32) []float32 {
	for i, v := range x {
		if v < 0 {
			x[i] = -v
		}
		x[i] += 0.5
	}
	return x
}

// basicCases covers the generic ops on odd shapes, including broadcasting.
func basicCases() []gradcheck.Case {
	s := [][]int{{3, 5, 1, 7}, {1, 5, 1, 1}}
	in := inputs(1, s...)
	pos := inputs(9, []int{2, 3})
	positive(pos[0])
	return []gradcheck.Case{
		{Name: "add_broadcast", Inputs: in, Shapes: s, F: func(tp *autograd.Tape, x []*T) *T { return tp.Add(x[0], x[1]) }},
		{Name: "sub_broadcast", Inputs: in, Shapes: s, F: func(tp *autograd.Tape, x []*T) *T { return tp.Sub(x[1], x[0]) }},
		{Name: "mul_broadcast", Inputs: in, Shapes: s, F: func(tp *autograd.Tape, x []*T) *T { return tp.Mul(x[0], x[1]) }},
		{Name: "div", Inputs: [][]float32{in[0][:6], pos[0]}, Shapes: [][]int{{2, 3}, {2, 3}}, F: func(tp *autograd.Tape, x []*T) *T { return tp.Div(x[0], x[1]) }},
		{Name: "square_scale", Inputs: in[:1], Shapes: s[:1], F: func(tp *autograd.Tape, x []*T) *T { return tp.Scale(tp.Square(x[0]), 0.5, 1) }},
		{Name: "sqrt", Inputs: pos, Shapes: [][]int{{2, 3}}, F: func(tp *autograd.Tape, x []*T) *T { return tp.Sqrt(x[0]) }},
		{Name: "softplus", Inputs: in[:1], Shapes: s[:1], F: func(tp *autograd.Tape, x []*T) *T { return tp.Softplus(x[0]) }},
		{Name: "sum_mean", Inputs: in[:1], Shapes: s[:1], F: func(tp *autograd.Tape, x []*T) *T {
			return tp.Mul(tp.Mean(x[0], 0, 2, 3), tp.Sum(tp.Square(x[0]), 1))
		}},
		{Name: "sumsq_per_sample", Inputs: in[:1], Shapes: s[:1], F: func(tp *autograd.Tape, x []*T) *T { return tp.SumSq(x[0], 1, 2, 3) }},
		{Name: "slice_concat", Inputs: in, Shapes: s, F: func(tp *autograd.Tape, x []*T) *T {
			a := tp.Slice(x[0], 1, 1, 4)
			b := tp.Expand(x[1], 3, 5, 1, 7)
			return tp.Square(tp.Concat(1, a, b, a))
		}},
		{Name: "lerp", Inputs: [][]float32{in[0], gradcheck.Randn(7, 90)}, Shapes: [][]int{{3, 5, 1, 7}, {3, 5, 1, 6}}, F: func(tp *autograd.Tape, x []*T) *T {
			return tp.Lerp(tp.Slice(x[0], 3, 0, 6), x[1], 0.3)
		}},
		{Name: "reshape", Inputs: in[:1], Shapes: s[:1], F: func(tp *autograd.Tape, x []*T) *T {
			return tp.Square(tp.Reshape(tp.Slice(x[0], 1, 0, 4), 12, 7))
		}},
	}
}

func TestBasicOpsFirstOrder(t *testing.T) {
	d := newDevice(t)
	for _, c := range basicCases() {
		if err := gradcheck.First(d, c, gradcheck.Options{Seed: 1}); err != nil {
			t.Error(err)
		}
	}
}

func TestBasicOpsSecondOrder(t *testing.T) {
	d := newDevice(t)
	for _, c := range basicCases() {
		if err := gradcheck.Second(d, c, gradcheck.Options{Seed: 2}); err != nil {
			t.Error(err)
		}
	}
}

func matmulCases() []gradcheck.Case {
	var cs []gradcheck.Case
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			m, k, n := 3, 5, 4
			as, bs := []int{m, k}, []int{k, n}
			if ta {
				as = []int{k, m}
			}
			if tb {
				bs = []int{n, k}
			}
			ta, tb := ta, tb
			cs = append(cs, gradcheck.Case{
				Name: "matmul", Inputs: inputs(3, as, bs), Shapes: [][]int{as, bs},
				F: func(tp *autograd.Tape, x []*T) *T { return tp.Square(tp.MatMul(x[0], x[1], ta, tb, 0.7)) },
			})
		}
	}
	return cs
}

func TestMatMulGradients(t *testing.T) {
	d := newDevice(t)
	for _, c := range matmulCases() {
		if err := gradcheck.First(d, c, gradcheck.Options{Seed: 4}); err != nil {
			t.Error(err)
		}
		if err := gradcheck.Second(d, c, gradcheck.Options{Seed: 5}); err != nil {
			t.Error(err)
		}
	}
}

func TestStickyErrorNamesOpAndShapes(t *testing.T) {
	d := newDevice(t)
	tp := autograd.NewTape(d)
	defer tp.Close()
	a := tp.Full(1, 2, 3)
	b := tp.Full(1, 4, 5)
	c := tp.Add(a, b) // fails: shapes do not broadcast
	e := tp.Mul(c, a) // must not run or crash
	if e == nil || tp.Err() == nil {
		t.Fatal("expected a sticky error")
	}
	want := "autograd: add: shapes [2,3] and [4,5] do not broadcast"
	if tp.Err().Error() != want {
		t.Fatalf("error = %q, want %q", tp.Err(), want)
	}
	if _, err := tp.Grad(e, []*T{a}, nil, false); err == nil {
		t.Fatal("Grad after a failed op must return the error")
	}
	tp.Reset()
	if tp.Err() != nil {
		t.Fatal("Reset must clear the error")
	}
	m := tp.MatMul(tp.Full(1, 2, 3), tp.Full(1, 2, 3), false, false, 1)
	_ = m
	if tp.Err() == nil || !strings.Contains(tp.Err().Error(), "gemm: shapes do not agree: a [2,3] b [2,3]") {
		t.Fatalf("matmul error = %v", tp.Err())
	}
}
