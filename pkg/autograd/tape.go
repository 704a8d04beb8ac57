// Package autograd is Gantry's tensor and reverse-mode automatic differentiation layer, in
// Go on top of package kernels. Operations on Tensors record nodes on a Tape; Grad walks the
// tape backwards. With create-graph, the backward pass records its own operations on the
// same tape, so a gradient can be differentiated again: the R1 penalty
// gamma/2 * mean ||dD(x)/dx||^2 is differentiated exactly with respect to D's parameters.
//
// Every op's backward is written in terms of recorded ops (the conv's gradients are convs,
// the FIR's gradient is a FIR, bias+lrelu's gradient is its own second-order gradient), so
// higher-order gradients come for free wherever they are needed.
//
// Errors are sticky: the first failing op stores its error in the Tape, later ops return a
// dead tensor without running, and Err (or Grad) reports it. Graph-building code therefore
// reads like arithmetic and checks once. Intermediate buffers come from an arena that Reset
// recycles, so a steady-state step allocates no new device memory.
package autograd

import (
	"errors"
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
)

// ErrNoPath is returned by Grad for an output that does not depend on any requested input
// through recorded operations.
var ErrNoPath = errors.New("autograd: output does not depend on the inputs")

// Tensor is a value on a device, optionally tracked for gradients.
type Tensor struct {
	V    kernels.View
	grad bool  // requires grad
	node *node // producer; nil for leaves and untracked values
	tape *Tape
}

// Shape returns the tensor's shape (do not modify it).
func (t *Tensor) Shape() []int { return t.V.Shape }

// Numel is the number of elements.
func (t *Tensor) Numel() int { return t.V.Numel() }

// RequiresGrad reports whether gradients flow to this tensor.
func (t *Tensor) RequiresGrad() bool { return t.grad }

func (t *Tensor) String() string { return t.V.String() }

// backwardFn returns the gradients of a node's inputs given the gradient of its output.
// needs[i] says whether input i wants a gradient; entries may be nil where it does not.
type backwardFn func(g *Tensor, needs []bool) []*Tensor

type node struct {
	op       string
	inputs   []*Tensor
	out      *Tensor
	backward backwardFn
	idx      int
}

// Tape records operations for differentiation and owns the buffers of intermediate values.
type Tape struct {
	dev   *kernels.Device
	arena *kernels.Arena
	nodes []*node
	err   error
	// noGrad disables recording (NoGrad blocks and backward passes without create-graph).
	noGrad int
	dead   *Tensor
}

// NewTape returns an empty tape on dev with its own arena.
func NewTape(dev *kernels.Device) *Tape {
	tp := &Tape{dev: dev, arena: kernels.NewArena(dev)}
	tp.dead = &Tensor{tape: tp, V: kernels.View{Shape: []int{0}, Stride: []int{1}}}
	return tp
}

// Device returns the device the tape computes on.
func (tp *Tape) Device() *kernels.Device { return tp.dev }

// Err returns the first error of any op since the last Reset.
func (tp *Tape) Err() error { return tp.err }

// Reset forgets every recorded node and takes back every intermediate buffer, keeping them
// for reuse. Tensors made by ops since the last Reset must not be used afterwards; leaves
// made by Param and Const on caller-owned buffers stay valid.
func (tp *Tape) Reset() {
	tp.nodes = tp.nodes[:0]
	tp.err = nil
	tp.noGrad = 0
	tp.arena.Reset()
}

// Close frees the arena's buffers.
func (tp *Tape) Close() { tp.arena.Close() }

// Allocs reports how many device buffers the tape's arena ever allocated (it stops growing
// once a workload reaches its steady state).
func (tp *Tape) Allocs() int64 { return tp.arena.Allocs() }

// NoGrad runs f without recording: values computed inside are constants to Grad.
func (tp *Tape) NoGrad(f func()) {
	tp.noGrad++
	defer func() { tp.noGrad-- }()
	f()
}

// Param wraps a caller-owned view as a leaf that requires grad (a trainable parameter).
func (tp *Tape) Param(v kernels.View) *Tensor { return &Tensor{V: v, grad: true, tape: tp} }

// Const wraps a caller-owned view as a leaf that does not require grad.
func (tp *Tape) Const(v kernels.View) *Tensor { return &Tensor{V: v, tape: tp} }

// Detach returns t as a constant (same data, no history).
func (tp *Tape) Detach(t *Tensor) *Tensor { return &Tensor{V: t.V, tape: tp} }

// RequireGrad returns t as a leaf that requires grad (same data, no history): the input
// of a gradient penalty, for example.
func (tp *Tape) RequireGrad(t *Tensor) *Tensor { return &Tensor{V: t.V, grad: true, tape: tp} }

// FromHost copies data into a new arena tensor of the given shape (a constant).
func (tp *Tape) FromHost(data []float32, shape ...int) *Tensor {
	if tp.err != nil {
		return tp.dead
	}
	if len(data) != kernels.Numel(shape) {
		return tp.fail(fmt.Errorf("autograd: from_host: %d values for shape %s", len(data), kernels.ShapeString(shape)))
	}
	t := tp.alloc(shape...)
	if tp.err == nil {
		tp.check(t.V.Buf.Write(t.V.Off, data))
	}
	return t
}

// ToHost copies a tensor to host memory (dense or not).
func (tp *Tape) ToHost(t *Tensor) ([]float32, error) {
	if tp.err != nil {
		return nil, tp.err
	}
	v := t.V
	if !v.IsDense() {
		c := tp.contiguous(t)
		if tp.err != nil {
			return nil, tp.err
		}
		v = c.V
	}
	out := make([]float32, v.Numel())
	if err := v.Buf.Read(v.Off, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Scalar reads a one-element tensor.
func (tp *Tape) Scalar(t *Tensor) (float32, error) {
	if t.Numel() != 1 {
		return 0, fmt.Errorf("autograd: scalar of a tensor of shape %s", t)
	}
	v, err := tp.ToHost(t)
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

// fail records err (the first one wins) and returns the dead tensor.
func (tp *Tape) fail(err error) *Tensor {
	if tp.err == nil {
		tp.err = err
	}
	return tp.dead
}

// check records a kernel error.
func (tp *Tape) check(err error) bool {
	if err != nil {
		tp.fail(err)
		return false
	}
	return true
}

// live reports whether the op may run: no earlier error and every input present.
func (tp *Tape) live(op string, ts ...*Tensor) bool {
	if tp.err != nil {
		return false
	}
	for i, t := range ts {
		if t == nil {
			tp.fail(fmt.Errorf("autograd: %s: input %d is nil", op, i))
			return false
		}
		if t == tp.dead {
			tp.fail(fmt.Errorf("autograd: %s: input %d is the result of a failed op", op, i))
			return false
		}
	}
	return true
}

// alloc returns a dense arena tensor (contents undefined).
func (tp *Tape) alloc(shape ...int) *Tensor {
	if tp.err != nil {
		return tp.dead
	}
	b, err := tp.arena.Get(kernels.Numel(shape))
	if err != nil {
		return tp.fail(err)
	}
	return &Tensor{V: b.View(shape...), tape: tp}
}

// record attaches a node producing out from inputs when recording is on and some input
// requires grad.
func (tp *Tape) record(op string, out *Tensor, bw backwardFn, inputs ...*Tensor) *Tensor {
	if tp.err != nil || tp.noGrad > 0 {
		return out
	}
	need := false
	for _, in := range inputs {
		if in != nil && in.grad {
			need = true
			break
		}
	}
	if !need {
		return out
	}
	n := &node{op: op, inputs: inputs, out: out, backward: bw, idx: len(tp.nodes)}
	tp.nodes = append(tp.nodes, n)
	out.grad = true
	out.node = n
	return out
}

// Grad returns d out / d wrt[i] for each input, seeding with seed (ones of out's shape when
// nil). With createGraph the backward pass is itself recorded, so the returned gradients
// can be differentiated again. An input out does not depend on gets a zero gradient.
func (tp *Tape) Grad(out *Tensor, wrt []*Tensor, seed *Tensor, createGraph bool) ([]*Tensor, error) {
	if tp.err != nil {
		return nil, tp.err
	}
	if out == nil || !out.grad {
		return nil, fmt.Errorf("autograd: grad of a tensor that requires no grad: %w", ErrNoPath)
	}
	if seed == nil {
		seed = tp.Full(1, out.Shape()...)
	} else if !sameShape(seed.Shape(), out.Shape()) {
		return nil, fmt.Errorf("autograd: grad: seed %s for output %s", seed, out)
	}
	if !createGraph {
		tp.noGrad++
		defer func() { tp.noGrad-- }()
	}
	grads := map[*Tensor]*Tensor{out: seed}
	want := make(map[*Tensor]bool, len(wrt))
	for _, w := range wrt {
		want[w] = true
	}
	last := len(tp.nodes) - 1
	if out.node != nil {
		last = out.node.idx
	}
	// Only inputs computed from some wrt tensor need a gradient: R1's d D(x)/dx, for
	// example, must not compute D's weight gradients.
	dep := make(map[*Tensor]bool, len(wrt))
	for w := range want {
		dep[w] = true
	}
	for i := 0; i <= last; i++ {
		n := tp.nodes[i]
		if dep[n.out] {
			continue
		}
		for _, in := range n.inputs {
			if in != nil && dep[in] {
				dep[n.out] = true
				break
			}
		}
	}
	for i := last; i >= 0 && tp.err == nil; i-- {
		n := tp.nodes[i]
		g := grads[n.out]
		if g == nil {
			continue
		}
		if !want[n.out] {
			delete(grads, n.out) // free for reuse by the map; the buffer stays in the arena
		}
		needs := make([]bool, len(n.inputs))
		any := false
		for j, in := range n.inputs {
			needs[j] = in != nil && in.grad && dep[in]
			any = any || needs[j]
		}
		if !any {
			continue
		}
		gin := n.backward(g, needs)
		if tp.err != nil {
			return nil, fmt.Errorf("autograd: %s backward: %w", n.op, tp.err)
		}
		for j, gi := range gin {
			if gi == nil || !needs[j] {
				continue
			}
			in := n.inputs[j]
			if !sameShape(gi.Shape(), in.Shape()) {
				return nil, fmt.Errorf("autograd: %s backward: gradient %s for input %d of shape %s", n.op, gi, j, in)
			}
			if prev := grads[in]; prev != nil {
				grads[in] = tp.Add(prev, gi)
			} else {
				grads[in] = gi
			}
		}
	}
	if tp.err != nil {
		return nil, tp.err
	}
	res := make([]*Tensor, len(wrt))
	for i, w := range wrt {
		if g := grads[w]; g != nil {
			res[i] = g
		} else {
			res[i] = tp.Full(0, w.Shape()...)
		}
	}
	return res, tp.err
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Fail records err as the tape's error (the first one wins) and returns a dead tensor; for
// graph-building code outside this package that detects a bad input.
func (tp *Tape) Fail(err error) *Tensor { return tp.fail(err) }
