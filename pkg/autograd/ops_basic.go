package autograd

import (
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
)

// Full returns a constant tensor of the given shape filled with value.
func (tp *Tape) Full(value float32, shape ...int) *Tensor {
	t := tp.alloc(shape...)
	if tp.err == nil {
		tp.check(tp.dev.Fill(t.V, value))
	}
	return t
}

// contiguous returns t itself when dense, else a dense copy (recorded).
func (tp *Tape) contiguous(t *Tensor) *Tensor {
	if !tp.live("contiguous", t) {
		return tp.dead
	}
	if t.V.IsDense() {
		return t
	}
	y := tp.alloc(t.Shape()...)
	if !tp.check(tp.dev.Copy(t.V, y.V)) {
		return tp.dead
	}
	return tp.record("contiguous", y, func(g *Tensor, _ []bool) []*Tensor { return []*Tensor{g} }, t)
}

// broadcastShape is numpy's rule: align trailing dims; sizes equal or 1.
func broadcastShape(a, b []int) ([]int, bool) {
	n := max(len(a), len(b))
	out := make([]int, n)
	for i := 0; i < n; i++ {
		da, db := 1, 1
		if j := i - (n - len(a)); j >= 0 {
			da = a[j]
		}
		if j := i - (n - len(b)); j >= 0 {
			db = b[j]
		}
		switch {
		case da == db, db == 1:
			out[i] = da
		case da == 1:
			out[i] = db
		default:
			return nil, false
		}
	}
	return out, true
}

// binary runs an elementwise kernel with broadcasting and records bw.
func (tp *Tape) binary(name string, op kernels.BinaryOp, a, b *Tensor, alpha float32,
	bw func(g *Tensor, y *Tensor, needs []bool) []*Tensor) *Tensor {
	if !tp.live(name, a, b) {
		return tp.dead
	}
	shape, ok := broadcastShape(a.Shape(), b.Shape())
	if !ok {
		return tp.fail(fmt.Errorf("autograd: %s: shapes %s and %s do not broadcast", name, a, b))
	}
	av, err := a.V.Broadcast(shape...)
	if err != nil {
		return tp.fail(err)
	}
	bv, err := b.V.Broadcast(shape...)
	if err != nil {
		return tp.fail(err)
	}
	y := tp.alloc(shape...)
	if !tp.check(tp.dev.Binary(op, av, bv, y.V, alpha, 0)) {
		return tp.dead
	}
	return tp.record(name, y, func(g *Tensor, needs []bool) []*Tensor { return bw(g, y, needs) }, a, b)
}

// Add returns a + b (broadcasting).
func (tp *Tape) Add(a, b *Tensor) *Tensor {
	return tp.binary("add", kernels.Add, a, b, 1, func(g, _ *Tensor, needs []bool) []*Tensor {
		return []*Tensor{tp.sumTo(g, a.Shape(), needs[0]), tp.sumTo(g, b.Shape(), needs[1])}
	})
}

// Sub returns a - b (broadcasting).
func (tp *Tape) Sub(a, b *Tensor) *Tensor {
	return tp.binary("sub", kernels.Sub, a, b, 1, func(g, _ *Tensor, needs []bool) []*Tensor {
		var gb *Tensor
		if needs[1] {
			gb = tp.sumTo(tp.Scale(g, -1, 0), b.Shape(), true)
		}
		return []*Tensor{tp.sumTo(g, a.Shape(), needs[0]), gb}
	})
}

// Mul returns a * b (broadcasting).
func (tp *Tape) Mul(a, b *Tensor) *Tensor {
	return tp.binary("mul", kernels.Mul, a, b, 1, func(g, _ *Tensor, needs []bool) []*Tensor {
		var ga, gb *Tensor
		if needs[0] {
			ga = tp.sumTo(tp.Mul(g, b), a.Shape(), true)
		}
		if needs[1] {
			gb = tp.sumTo(tp.Mul(g, a), b.Shape(), true)
		}
		return []*Tensor{ga, gb}
	})
}

// Div returns a / b (broadcasting).
func (tp *Tape) Div(a, b *Tensor) *Tensor {
	return tp.binary("div", kernels.Div, a, b, 1, func(g, y *Tensor, needs []bool) []*Tensor {
		var ga, gb *Tensor
		if needs[0] {
			ga = tp.sumTo(tp.Div(g, b), a.Shape(), true)
		}
		if needs[1] {
			// d(a/b)/db = -a/b^2 = -y/b
			gb = tp.sumTo(tp.Scale(tp.Div(tp.Mul(g, y), b), -1, 0), b.Shape(), true)
		}
		return []*Tensor{ga, gb}
	})
}

// unary runs f elementwise: y = alpha*f(x) + beta.
func (tp *Tape) unary(name string, op kernels.UnaryOp, x *Tensor, alpha, beta float32,
	bw func(g, y *Tensor) *Tensor) *Tensor {
	if !tp.live(name, x) {
		return tp.dead
	}
	y := tp.alloc(x.Shape()...)
	if !tp.check(tp.dev.Unary(op, x.V, y.V, alpha, beta)) {
		return tp.dead
	}
	return tp.record(name, y, func(g *Tensor, _ []bool) []*Tensor { return []*Tensor{bw(g, y)} }, x)
}

// Scale returns alpha*x + beta.
func (tp *Tape) Scale(x *Tensor, alpha, beta float32) *Tensor {
	return tp.unary("scale", kernels.Identity, x, alpha, beta, func(g, _ *Tensor) *Tensor {
		return tp.Scale(g, alpha, 0)
	})
}

// Square returns x^2.
func (tp *Tape) Square(x *Tensor) *Tensor {
	return tp.unary("square", kernels.Square, x, 1, 0, func(g, _ *Tensor) *Tensor {
		return tp.Mul(g, tp.Scale(x, 2, 0))
	})
}

// Sqrt returns sqrt(x).
func (tp *Tape) Sqrt(x *Tensor) *Tensor {
	return tp.unary("sqrt", kernels.Sqrt, x, 1, 0, func(g, y *Tensor) *Tensor {
		return tp.Div(g, tp.Scale(y, 2, 0))
	})
}

// Exp returns e^x.
func (tp *Tape) Exp(x *Tensor) *Tensor {
	return tp.unary("exp", kernels.Exp, x, 1, 0, func(g, y *Tensor) *Tensor { return tp.Mul(g, y) })
}

// Sigmoid returns 1/(1+e^-x).
func (tp *Tape) Sigmoid(x *Tensor) *Tensor {
	return tp.unary("sigmoid", kernels.Sigmoid, x, 1, 0, func(g, y *Tensor) *Tensor {
		// s' = s(1-s)
		return tp.Mul(g, tp.Mul(y, tp.Scale(y, -1, 1)))
	})
}

// Softplus returns log(1+e^x), computed without overflow.
func (tp *Tape) Softplus(x *Tensor) *Tensor {
	return tp.unary("softplus", kernels.Softplus, x, 1, 0, func(g, _ *Tensor) *Tensor {
		return tp.Mul(g, tp.Sigmoid(x))
	})
}

// reduceShape returns x's shape with the given axes set to 1 (all axes when none given).
func reduceShape(shape []int, axes []int) ([]int, error) {
	out := append([]int(nil), shape...)
	if len(axes) == 0 {
		for i := range out {
			out[i] = 1
		}
		return out, nil
	}
	for _, a := range axes {
		if a < 0 || a >= len(shape) {
			return nil, fmt.Errorf("axis %d out of range for %s", a, kernels.ShapeString(shape))
		}
		out[a] = 1
	}
	return out, nil
}

func (tp *Tape) reduce(name string, op kernels.ReduceOp, x *Tensor, alpha float32, axes []int,
	bw func(g *Tensor) *Tensor) *Tensor {
	if !tp.live(name, x) {
		return tp.dead
	}
	shape, err := reduceShape(x.Shape(), axes)
	if err != nil {
		return tp.fail(fmt.Errorf("autograd: %s: %w", name, err))
	}
	y := tp.alloc(shape...)
	if !tp.check(tp.dev.Reduce(op, x.V, y.V, alpha)) {
		return tp.dead
	}
	return tp.record(name, y, func(g *Tensor, _ []bool) []*Tensor { return []*Tensor{bw(g)} }, x)
}

// Sum sums over the given axes (all when none), keeping them as size-1 dims.
func (tp *Tape) Sum(x *Tensor, axes ...int) *Tensor {
	return tp.reduce("sum", kernels.ReduceSum, x, 1, axes, func(g *Tensor) *Tensor {
		return tp.Expand(g, x.Shape()...)
	})
}

// Mean averages over the given axes (all when none), keeping them as size-1 dims.
func (tp *Tape) Mean(x *Tensor, axes ...int) *Tensor {
	shape, err := reduceShape(x.Shape(), axes)
	if err != nil {
		return tp.fail(fmt.Errorf("autograd: mean: %w", err))
	}
	scale := float32(kernels.Numel(shape)) / float32(max(x.Numel(), 1))
	return tp.reduce("mean", kernels.ReduceSum, x, scale, axes, func(g *Tensor) *Tensor {
		return tp.Expand(tp.Scale(g, scale, 0), x.Shape()...)
	})
}

// SumSq sums squares over the given axes (all when none): per-sample ||x||^2 with axes
// 1, 2, 3 of an NCHW tensor.
func (tp *Tape) SumSq(x *Tensor, axes ...int) *Tensor {
	return tp.reduce("sumsq", kernels.ReduceSumSq, x, 1, axes, func(g *Tensor) *Tensor {
		return tp.Mul(tp.Expand(g, x.Shape()...), tp.Scale(x, 2, 0))
	})
}

// sumTo reduces a broadcast gradient back to shape (the adjoint of broadcasting). It returns
// nil when the gradient is not needed.
func (tp *Tape) sumTo(g *Tensor, shape []int, needed bool) *Tensor {
	if !needed {
		return nil
	}
	if sameShape(g.Shape(), shape) {
		return g
	}
	gs := g.Shape()
	pad := len(gs) - len(shape)
	var axes []int
	for i := range gs {
		if i < pad || (shape[i-pad] == 1 && gs[i] != 1) {
			axes = append(axes, i)
		}
	}
	s := tp.Sum(g, axes...)
	return tp.Reshape(s, shape...)
}

// Expand broadcasts x to shape without copying (stride-0 view).
func (tp *Tape) Expand(x *Tensor, shape ...int) *Tensor {
	if !tp.live("expand", x) {
		return tp.dead
	}
	if sameShape(x.Shape(), shape) {
		return x
	}
	v, err := x.V.Broadcast(shape...)
	if err != nil {
		return tp.fail(err)
	}
	y := &Tensor{V: v, tape: tp}
	return tp.record("expand", y, func(g *Tensor, _ []bool) []*Tensor {
		return []*Tensor{tp.sumTo(g, x.Shape(), true)}
	}, x)
}

// Reshape returns x with another shape of the same element count (a copy only when x is
// not dense).
func (tp *Tape) Reshape(x *Tensor, shape ...int) *Tensor {
	if !tp.live("reshape", x) {
		return tp.dead
	}
	if sameShape(x.Shape(), shape) {
		return x
	}
	c := tp.contiguous(x)
	if tp.err != nil {
		return tp.dead
	}
	v, err := c.V.Reshape(shape...)
	if err != nil {
		return tp.fail(err)
	}
	y := &Tensor{V: v, tape: tp}
	return tp.record("reshape", y, func(g *Tensor, _ []bool) []*Tensor {
		return []*Tensor{tp.Reshape(g, c.Shape()...)}
	}, c)
}

// Slice narrows dim to [start, end) without copying.
func (tp *Tape) Slice(x *Tensor, dim, start, end int) *Tensor {
	if !tp.live("slice", x) {
		return tp.dead
	}
	v, err := x.V.Slice(dim, start, end)
	if err != nil {
		return tp.fail(err)
	}
	y := &Tensor{V: v, tape: tp}
	return tp.record("slice", y, func(g *Tensor, _ []bool) []*Tensor {
		return []*Tensor{tp.unslice(g, x.Shape(), dim, start)}
	}, x)
}

// unslice places g into zeros of shape at offset start along dim (Slice's adjoint).
func (tp *Tape) unslice(g *Tensor, shape []int, dim, start int) *Tensor {
	y := tp.Full(0, shape...)
	if tp.err != nil {
		return tp.dead
	}
	dst, err := y.V.Slice(dim, start, start+g.Shape()[dim])
	if err != nil {
		return tp.fail(err)
	}
	if !tp.check(tp.dev.Copy(g.V, dst)) {
		return tp.dead
	}
	end := start + g.Shape()[dim]
	return tp.record("unslice", y, func(gg *Tensor, _ []bool) []*Tensor {
		return []*Tensor{tp.Slice(gg, dim, start, end)}
	}, g)
}

// Concat joins tensors along dim; the other dims must agree.
func (tp *Tape) Concat(dim int, ts ...*Tensor) *Tensor {
	if !tp.live("concat", ts...) {
		return tp.dead
	}
	if len(ts) == 0 {
		return tp.fail(fmt.Errorf("autograd: concat of nothing"))
	}
	shape := append([]int(nil), ts[0].Shape()...)
	if dim < 0 || dim >= len(shape) {
		return tp.fail(fmt.Errorf("autograd: concat: dim %d out of range for %s", dim, ts[0]))
	}
	shape[dim] = 0
	for _, t := range ts {
		s := t.Shape()
		ok := len(s) == len(shape)
		for i := 0; ok && i < len(s); i++ {
			ok = i == dim || s[i] == shape[i]
		}
		if !ok {
			return tp.fail(fmt.Errorf("autograd: concat along %d: %s does not fit %s", dim, t, ts[0]))
		}
		shape[dim] += s[dim]
	}
	y := tp.alloc(shape...)
	offs := make([]int, len(ts))
	off := 0
	for i, t := range ts {
		dst, err := y.V.Slice(dim, off, off+t.Shape()[dim])
		if err != nil || !tp.check(tp.dev.Copy(t.V, dst)) {
			return tp.fail(fmt.Errorf("autograd: concat: %w", err))
		}
		offs[i] = off
		off += t.Shape()[dim]
	}
	return tp.record("concat", y, func(g *Tensor, needs []bool) []*Tensor {
		out := make([]*Tensor, len(ts))
		for i, t := range ts {
			if needs[i] {
				out[i] = tp.Slice(g, dim, offs[i], offs[i]+t.Shape()[dim])
			}
		}
		return out
	}, ts...)
}

// Lerp returns a + t*(b - a) for a scalar t (fades between resolutions).
func (tp *Tape) Lerp(a, b *Tensor, t float32) *Tensor {
	if !tp.live("lerp", a, b) {
		return tp.dead
	}
	if !sameShape(a.Shape(), b.Shape()) {
		return tp.fail(fmt.Errorf("autograd: lerp: shapes %s and %s differ", a, b))
	}
	y := tp.alloc(a.Shape()...)
	if !tp.check(tp.dev.Lerp(a.V, b.V, y.V, t)) {
		return tp.dead
	}
	return tp.record("lerp", y, func(g *Tensor, needs []bool) []*Tensor {
		var ga, gb *Tensor
		if needs[0] {
			ga = tp.Scale(g, 1-t, 0)
		}
		if needs[1] {
			gb = tp.Scale(g, t, 0)
		}
		return []*Tensor{ga, gb}
	}, a, b)
}

// MatMul returns alpha * op(a) op(b) for 2-D tensors, op a transpose when asked.
func (tp *Tape) MatMul(a, b *Tensor, transA, transB bool, alpha float32) *Tensor {
	if !tp.live("matmul", a, b) {
		return tp.dead
	}
	a, b = tp.contiguous(a), tp.contiguous(b)
	if tp.err != nil {
		return tp.dead
	}
	if len(a.Shape()) != 2 || len(b.Shape()) != 2 {
		return tp.fail(fmt.Errorf("autograd: matmul: operands %s and %s must be 2-D", a, b))
	}
	m, n := a.Shape()[0], b.Shape()[1]
	if transA {
		m = a.Shape()[1]
	}
	if transB {
		n = b.Shape()[0]
	}
	y := tp.alloc(m, n)
	if !tp.check(tp.dev.Gemm(transA, transB, alpha, a.V, b.V, 0, y.V)) {
		return tp.dead
	}
	return tp.record("matmul", y, func(g *Tensor, needs []bool) []*Tensor {
		var ga, gb *Tensor
		switch {
		case !transA && !transB: // Y = A B
			if needs[0] {
				ga = tp.MatMul(g, b, false, true, alpha)
			}
			if needs[1] {
				gb = tp.MatMul(a, g, true, false, alpha)
			}
		case transA && !transB: // Y = A^T B
			if needs[0] {
				ga = tp.MatMul(b, g, false, true, alpha)
			}
			if needs[1] {
				gb = tp.MatMul(a, g, false, false, alpha)
			}
		case !transA && transB: // Y = A B^T
			if needs[0] {
				ga = tp.MatMul(g, b, false, false, alpha)
			}
			if needs[1] {
				gb = tp.MatMul(g, a, true, false, alpha)
			}
		default: // Y = A^T B^T
			if needs[0] {
				ga = tp.MatMul(b, g, true, true, alpha)
			}
			if needs[1] {
				gb = tp.MatMul(g, a, true, true, alpha)
			}
		}
		return []*Tensor{ga, gb}
	}, a, b)
}
