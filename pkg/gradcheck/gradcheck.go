// Package gradcheck verifies autograd gradients against central finite differences, to
// first and second order. The kernels and the model tests use it; it runs real kernels on a
// real device, in float32, so it compares with a norm-relative tolerance over a sample of
// coordinates rather than element by element.
package gradcheck

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
)

// Func builds a graph from its inputs and returns any tensor; the checked scalar is
// sum(out * R) for a fixed random R, so every output element matters.
type Func func(tp *autograd.Tape, xs []*autograd.Tensor) *autograd.Tensor

// Case is one function with its inputs.
type Case struct {
	Name   string
	Inputs [][]float32 // host values of each input
	Shapes [][]int
	// Wrt lists the inputs to differentiate with respect to (all when nil).
	Wrt []int
	F   Func
}

// Options tune a check.
type Options struct {
	Eps     float64 // finite-difference step (default 1e-2)
	Tol     float64 // allowed ||analytic - numeric|| / max(||numeric||, Floor) (default 2e-2)
	Floor   float64 // norm floor for tiny gradients (default 1e-3)
	Samples int     // coordinates sampled per input (default 24; all when the input is smaller)
	Seed    uint64
}

func (o *Options) defaults() {
	if o.Eps == 0 {
		o.Eps = 1e-2
	}
	if o.Tol == 0 {
		o.Tol = 2e-2
	}
	if o.Floor == 0 {
		o.Floor = 1e-3
	}
	if o.Samples == 0 {
		o.Samples = 24
	}
}

// harness holds device copies of a case's inputs and evaluates it.
type harness struct {
	tp   *autograd.Tape
	c    Case
	bufs []*kernels.Buffer
	r    []float32 // output weights
	rbuf *kernels.Buffer
	wrt  []int
}

func newHarness(dev *kernels.Device, c Case, seed uint64) (*harness, error) {
	h := &harness{tp: autograd.NewTape(dev), c: c, wrt: c.Wrt}
	if h.wrt == nil {
		for i := range c.Inputs {
			h.wrt = append(h.wrt, i)
		}
	}
	for i, in := range c.Inputs {
		b, err := dev.Alloc(len(in))
		if err != nil {
			h.close()
			return nil, err
		}
		h.bufs = append(h.bufs, b)
		if err := b.Write(0, in); err != nil {
			h.close()
			return nil, err
		}
		if kernels.Numel(c.Shapes[i]) != len(in) {
			h.close()
			return nil, fmt.Errorf("gradcheck %s: input %d has %d values for shape %v", c.Name, i, len(in), c.Shapes[i])
		}
	}
	// Size R from one evaluation.
	out, err := h.forward()
	if err != nil {
		h.close()
		return nil, err
	}
	n := out.Numel()
	rng := rand.New(rand.NewPCG(seed, 77))
	h.r = make([]float32, n)
	for i := range h.r {
		h.r[i] = float32(rng.NormFloat64())
	}
	if h.rbuf, err = dev.Alloc(n); err != nil {
		h.close()
		return nil, err
	}
	if err := h.rbuf.Write(0, h.r); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) close() {
	for _, b := range h.bufs {
		b.Free()
	}
	h.rbuf.Free()
	h.tp.Close()
}

func (h *harness) leaves() []*autograd.Tensor {
	xs := make([]*autograd.Tensor, len(h.bufs))
	for i, b := range h.bufs {
		xs[i] = h.tp.Const(b.View(h.c.Shapes[i]...))
	}
	for _, i := range h.wrt {
		xs[i] = h.tp.Param(h.bufs[i].View(h.c.Shapes[i]...))
	}
	return xs
}

func (h *harness) forward() (*autograd.Tensor, error) {
	h.tp.Reset()
	out := h.c.F(h.tp, h.leaves())
	return out, h.tp.Err()
}

// loss returns sum(F(xs) * R) on the tape.
func (h *harness) loss(xs []*autograd.Tensor) *autograd.Tensor {
	out := h.c.F(h.tp, xs)
	r := h.tp.Const(h.rbuf.View(out.Shape()...))
	return h.tp.Sum(h.tp.Mul(out, r))
}

// value evaluates the scalar loss.
func (h *harness) value() (float64, error) {
	h.tp.Reset()
	l := h.loss(h.leaves())
	v, err := h.tp.Scalar(l)
	return float64(v), err
}

// gradNorm evaluates sum_i ||dL/dx_i||^2 over the wrt inputs (the quantity whose gradient
// the second-order check verifies, like R1).
func (h *harness) gradNorm(create bool) (*autograd.Tensor, []*autograd.Tensor, error) {
	h.tp.Reset()
	xs := h.leaves()
	l := h.loss(xs)
	wrt := make([]*autograd.Tensor, len(h.wrt))
	for i, j := range h.wrt {
		wrt[i] = xs[j]
	}
	gs, err := h.tp.Grad(l, wrt, nil, create)
	if err != nil {
		return nil, nil, err
	}
	var total *autograd.Tensor
	for _, g := range gs {
		s := h.tp.SumSq(g)
		s = h.tp.Reshape(s, 1)
		if total == nil {
			total = s
		} else {
			total = h.tp.Add(total, s)
		}
	}
	return total, xs, h.tp.Err()
}

// perturb evaluates f at input i coordinate k displaced by d, restoring it afterwards.
func (h *harness) perturb(i, k int, d float64, f func() (float64, error)) (float64, error) {
	orig := h.c.Inputs[i][k]
	set := func(v float32) error { return h.bufs[i].Write(k, []float32{v}) }
	if err := set(orig + float32(d)); err != nil {
		return 0, err
	}
	v, err := f()
	if rerr := set(orig); err == nil {
		err = rerr
	}
	return v, err
}

// compare checks analytic against numeric gradients at sampled coordinates.
func compare(name string, analytic []float32, numeric func(k int) (float64, error), n int, o Options, rng *rand.Rand) error {
	idx := sample(n, o.Samples, rng)
	var diff, ref float64
	worst, worstK, worstA, worstN := 0.0, 0, 0.0, 0.0
	for _, k := range idx {
		num, err := numeric(k)
		if err != nil {
			return err
		}
		a := float64(analytic[k])
		d := a - num
		diff += d * d
		ref += num * num
		if math.Abs(d) > worst {
			worst, worstK, worstA, worstN = math.Abs(d), k, a, num
		}
	}
	rel := math.Sqrt(diff) / math.Max(math.Sqrt(ref), o.Floor)
	if math.IsNaN(rel) || rel > o.Tol {
		return fmt.Errorf("%s: relative error %.3g > %.3g (worst at %d: analytic %.6g numeric %.6g)",
			name, rel, o.Tol, worstK, worstA, worstN)
	}
	return nil
}

func sample(n, k int, rng *rand.Rand) []int {
	if n <= k {
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out
	}
	return rng.Perm(n)[:k]
}

// First checks d sum(F*R) / d x against central differences for every wrt input.
func First(dev *kernels.Device, c Case, o Options) error {
	o.defaults()
	h, err := newHarness(dev, c, o.Seed)
	if err != nil {
		return fmt.Errorf("gradcheck %s: %w", c.Name, err)
	}
	defer h.close()
	h.tp.Reset()
	xs := h.leaves()
	l := h.loss(xs)
	wrt := make([]*autograd.Tensor, len(h.wrt))
	for i, j := range h.wrt {
		wrt[i] = xs[j]
	}
	gs, err := h.tp.Grad(l, wrt, nil, false)
	if err != nil {
		return fmt.Errorf("gradcheck %s: %w", c.Name, err)
	}
	analytic := make([][]float32, len(gs))
	for i, g := range gs {
		if analytic[i], err = h.tp.ToHost(g); err != nil {
			return err
		}
	}
	rng := rand.New(rand.NewPCG(o.Seed, 3))
	for i, j := range h.wrt {
		num := func(k int) (float64, error) {
			p, err := h.perturb(j, k, o.Eps, h.value)
			if err != nil {
				return 0, err
			}
			m, err := h.perturb(j, k, -o.Eps, h.value)
			return (p - m) / (2 * o.Eps), err
		}
		if err := compare(fmt.Sprintf("gradcheck %s: d/d input %d", c.Name, j), analytic[i], num, len(c.Inputs[j]), o, rng); err != nil {
			return err
		}
	}
	return nil
}

// Second checks the gradient of G = sum_i ||d sum(F*R) / d x_i||^2 (a gradient norm, the
// shape of the R1 penalty) with respect to every wrt input, computed by create-graph
// double backward, against central differences of G.
func Second(dev *kernels.Device, c Case, o Options) error {
	o.defaults()
	h, err := newHarness(dev, c, o.Seed)
	if err != nil {
		return fmt.Errorf("gradcheck %s: %w", c.Name, err)
	}
	defer h.close()
	total, xs, err := h.gradNorm(true)
	if err != nil {
		return fmt.Errorf("gradcheck %s: %w", c.Name, err)
	}
	wrt := make([]*autograd.Tensor, len(h.wrt))
	for i, j := range h.wrt {
		wrt[i] = xs[j]
	}
	analytic := make([][]float32, len(wrt))
	if !total.RequiresGrad() {
		// The gradient norm does not depend on the inputs (F is linear in them): its
		// gradient is zero, which the finite differences must confirm.
		for i, x := range wrt {
			analytic[i] = make([]float32, x.Numel())
		}
	} else {
		gs, err := h.tp.Grad(total, wrt, nil, false)
		if err != nil {
			return fmt.Errorf("gradcheck %s: second order: %w", c.Name, err)
		}
		for i, g := range gs {
			if analytic[i], err = h.tp.ToHost(g); err != nil {
				return err
			}
		}
	}
	value := func() (float64, error) {
		t, _, err := h.gradNorm(false)
		if err != nil {
			return 0, err
		}
		v, err := h.tp.Scalar(t)
		return float64(v), err
	}
	rng := rand.New(rand.NewPCG(o.Seed, 5))
	for i, j := range h.wrt {
		num := func(k int) (float64, error) {
			p, err := h.perturb(j, k, o.Eps, value)
			if err != nil {
				return 0, err
			}
			m, err := h.perturb(j, k, -o.Eps, value)
			return (p - m) / (2 * o.Eps), err
		}
		if err := compare(fmt.Sprintf("gradcheck %s: second order d/d input %d", c.Name, j), analytic[i], num, len(c.Inputs[j]), o, rng); err != nil {
			return err
		}
	}
	return nil
}

// Randn returns n standard normal values from a seeded generator (test inputs).
func Randn(seed uint64, n int) []float32 {
	rng := rand.New(rand.NewPCG(seed, 11))
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64())
	}
	return out
}
