package model

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
)

// ParamSet is a network's parameters in one flat device buffer, with a gradient buffer of
// the same layout, so that the all-reduce and Adam each work on one contiguous vector.
type ParamSet struct {
	dev    *kernels.Device
	names  []string
	shapes [][]int
	offs   []int
	index  map[string]int
	n      int
	// init describes each parameter's initial distribution: std of N(0, std^2), or a
	// constant when std is 0.
	initStd   []float32
	initConst []float32

	Values *kernels.Buffer
	Grads  *kernels.Buffer
}

func newParamSet() *ParamSet { return &ParamSet{index: map[string]int{}} }

// add declares a parameter; allocation happens in alloc.
func (ps *ParamSet) add(name string, std, constant float32, shape ...int) {
	if _, dup := ps.index[name]; dup {
		panic("model: duplicate parameter " + name) // a programming error in the layout
	}
	ps.index[name] = len(ps.names)
	ps.names = append(ps.names, name)
	ps.shapes = append(ps.shapes, shape)
	ps.offs = append(ps.offs, ps.n)
	ps.initStd = append(ps.initStd, std)
	ps.initConst = append(ps.initConst, constant)
	ps.n += kernels.Numel(shape)
}

// alloc allocates the value and gradient buffers on dev.
func (ps *ParamSet) alloc(dev *kernels.Device) error {
	ps.dev = dev
	var err error
	if ps.Values, err = dev.Alloc(ps.n); err != nil {
		return err
	}
	if ps.Grads, err = dev.Alloc(ps.n); err != nil {
		ps.Values.Free()
		return err
	}
	return dev.Fill(ps.Grads.View(ps.n), 0)
}

// Init draws the initial values from seed (weights N(0, 1/lrmul^2), biases and noise
// strengths 0, the synthesis constant 1).
func (ps *ParamSet) Init(seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 0x9a17))
	host := make([]float32, ps.n)
	for i := range ps.names {
		seg := host[ps.offs[i] : ps.offs[i]+kernels.Numel(ps.shapes[i])]
		for j := range seg {
			if ps.initStd[i] != 0 {
				seg[j] = float32(rng.NormFloat64()) * ps.initStd[i]
			} else {
				seg[j] = ps.initConst[i]
			}
		}
	}
	return ps.Values.Write(0, host)
}

// Free releases the buffers.
func (ps *ParamSet) Free() {
	ps.Values.Free()
	ps.Grads.Free()
}

// Len is the total number of scalars.
func (ps *ParamSet) Len() int { return ps.n }

// Names lists the parameters in layout order.
func (ps *ParamSet) Names() []string { return ps.names }

// Shape returns a parameter's shape.
func (ps *ParamSet) Shape(name string) []int { return ps.shapes[ps.index[name]] }

// View returns the value view of a parameter.
func (ps *ParamSet) View(name string) kernels.View {
	i, ok := ps.index[name]
	if !ok {
		return kernels.View{}
	}
	v := ps.Values.View(ps.shapes[i]...)
	v.Off = ps.offs[i]
	return v
}

func (ps *ParamSet) gradView(i int) kernels.View {
	v := ps.Grads.View(ps.shapes[i]...)
	v.Off = ps.offs[i]
	return v
}

// Flat returns the whole value buffer as a 1-D view.
func (ps *ParamSet) Flat() kernels.View { return ps.Values.View(ps.n) }

// FlatGrad returns the whole gradient buffer as a 1-D view.
func (ps *ParamSet) FlatGrad() kernels.View { return ps.Grads.View(ps.n) }

// Bound is a ParamSet's parameters placed on a tape for one step.
type Bound struct {
	ps      *ParamSet
	tensors []*autograd.Tensor
}

// Bind places every parameter on tp, as trainable leaves or as constants.
func (ps *ParamSet) Bind(tp *autograd.Tape, trainable bool) *Bound {
	b := &Bound{ps: ps, tensors: make([]*autograd.Tensor, len(ps.names))}
	for i, name := range ps.names {
		if trainable {
			b.tensors[i] = tp.Param(ps.View(name))
		} else {
			b.tensors[i] = tp.Const(ps.View(name))
		}
	}
	return b
}

// P returns the bound tensor of a parameter.
func (b *Bound) P(name string) *autograd.Tensor {
	i, ok := b.ps.index[name]
	if !ok {
		panic(fmt.Sprintf("model: no parameter %q", name)) // a programming error in the layout
	}
	return b.tensors[i]
}

// Tensors returns every bound parameter in layout order.
func (b *Bound) Tensors() []*autograd.Tensor { return b.tensors }

// StoreGrads writes the gradients (one per parameter, in layout order, as returned by
// Grad for Tensors()) into the flat gradient buffer.
func (b *Bound) StoreGrads(tp *autograd.Tape, grads []*autograd.Tensor) error {
	if len(grads) != len(b.tensors) {
		return fmt.Errorf("model: %d gradients for %d parameters", len(grads), len(b.tensors))
	}
	for i, g := range grads {
		if err := tp.Device().Copy(g.V, b.ps.gradView(i)); err != nil {
			return fmt.Errorf("model: store gradient of %s: %w", b.ps.names[i], err)
		}
	}
	return nil
}

// heScale is the equalised-learning-rate runtime multiplier gain/sqrt(fanIn)*lrmul.
func heScale(gain float64, fanIn int, lrmul float64) float32 {
	return float32(gain / math.Sqrt(float64(fanIn)) * lrmul)
}

// BindFlat places the parameters on tp as slices of flat, a tensor of Len() values laid out
// like the set: gradients with respect to flat then cover every parameter at once (the
// full-network finite-difference tests use it).
func (ps *ParamSet) BindFlat(tp *autograd.Tape, flat *autograd.Tensor) *Bound {
	b := &Bound{ps: ps, tensors: make([]*autograd.Tensor, len(ps.names))}
	for i := range ps.names {
		n := kernels.Numel(ps.shapes[i])
		b.tensors[i] = tp.Reshape(tp.Slice(flat, 0, ps.offs[i], ps.offs[i]+n), ps.shapes[i]...)
	}
	return b
}

// Host copies the values to host memory.
func (ps *ParamSet) Host() ([]float32, error) {
	out := make([]float32, ps.n)
	return out, ps.Values.Read(0, out)
}
