package autograd_test

import (
	"math"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/gradcheck"
)

// TestSoakNoLeak runs 1000 steps of a small discriminator-like graph with an R1 double
// backward and checks that device buffers, the arena and the C heap come back to the same
// level: nothing leaks, and the steady state allocates nothing new.
func TestSoakNoLeak(t *testing.T) {
	steps := 1000
	if testing.Short() {
		steps = 200
	}
	d := newDevice(t)
	tp := autograd.NewTape(d)
	defer tp.Close()
	alloc := func(vals []float32, shape ...int) kernels.View {
		b, err := d.Alloc(len(vals))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Free)
		if err := b.Write(0, vals); err != nil {
			t.Fatal(err)
		}
		return b.View(shape...)
	}
	xv := alloc(gradcheck.Randn(1, 8*3*8*8), 8, 3, 8, 8)
	w1 := alloc(gradcheck.Randn(2, 8*3*9), 8, 3, 3, 3)
	b1 := alloc(make([]float32, 8), 8)
	w2 := alloc(gradcheck.Randn(3, 8*9*9), 8, 9, 3, 3)
	wd := alloc(gradcheck.Randn(4, 8*16), 1, 8*16)
	lr := kernels.ActParams{Act: kernels.ActLReLU, Alpha: 0.2, Gain: math.Sqrt2}
	step := func() float32 {
		tp.Reset()
		x := tp.Param(xv)
		p := []*autograd.Tensor{tp.Param(w1), tp.Param(b1), tp.Param(w2), tp.Param(wd)}
		h := tp.BiasAct(tp.Conv2d(x, p[0], autograd.ConvParams{Stride: 1, Pad: 1, Alpha: 0.2}), p[1], lr)
		h = tp.FIR(h, []float32{0.25, 0.5, 0.25}, kernels.FIRParams{Up: 1, Down: 2, Pad0: 1, Pad1: 1, Gain: 1})
		h = tp.MinibatchStddev(h, 4, 1, 1e-8)
		h = tp.BiasAct(tp.Conv2d(h, p[2], autograd.ConvParams{Stride: 1, Pad: 1, Alpha: 0.1}), nil, lr)
		h = tp.Reshape(h, 8, 8*16)
		logits := tp.MatMul(h, p[3], false, true, 0.1)
		loss := tp.Mean(tp.Softplus(logits))
		gx, err := tp.Grad(tp.Sum(logits), []*autograd.Tensor{x}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		total := tp.Add(loss, tp.Reshape(tp.Scale(tp.Mean(tp.SumSq(gx[0], 1, 2, 3)), 5, 0), 1, 1))
		if _, err := tp.Grad(total, p, nil, false); err != nil {
			t.Fatal(err)
		}
		v, err := tp.Scalar(total)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	first := step()
	for i := 0; i < 10; i++ {
		step()
	}
	allocs, bytes, heap := tp.Allocs(), d.BytesInUse(), kernels.CHeapInUse()
	var last float32
	for i := 0; i < steps; i++ {
		last = step()
	}
	if last != first {
		t.Errorf("same inputs gave a different loss: %g then %g", first, last)
	}
	if tp.Allocs() != allocs {
		t.Errorf("arena allocated %d new buffers in the steady state", tp.Allocs()-allocs)
	}
	if d.BytesInUse() != bytes {
		t.Errorf("device bytes in use moved from %d to %d", bytes, d.BytesInUse())
	}
	// The C heap may move by a few library-internal blocks; a leak of even one 256-float
	// buffer per step would add a megabyte.
	if grow := kernels.CHeapInUse() - heap; grow > 64<<10 {
		t.Errorf("C heap grew by %d bytes over %d steps", grow, steps)
	}
	t.Logf("%d steps: arena buffers %d, device bytes %d, C heap %d -> %d", steps, allocs, bytes, heap, kernels.CHeapInUse())
}
