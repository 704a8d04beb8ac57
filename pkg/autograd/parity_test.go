package autograd_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/autograd"
	"github.com/gantry-ml/gantry/pkg/gradcheck"
)

// The parity tests run the same inputs through Gantry (float32) and PyTorch (float64, as the
// reference) and compare with tolerances relative to the largest reference magnitude:
//
//	forward values          1e-6   (float32 rounding of sums of tens to hundreds of terms)
//	first-order gradients   2e-6
//	R1 and its gradients    1e-5   (double backward: three chained float32 passes)
//
// hack/parity/torch_parity.py is the PyTorch side; it needs Debian's python3-torch.

const (
	tolForward = 1e-6
	tolGrad    = 2e-6
	tolR1      = 1e-5
)

type parityInput struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
}

type parityCase struct {
	Name   string                 `json:"name"`
	Kind   string                 `json:"kind"`
	Inputs map[string]parityInput `json:"inputs"`
	Alpha  float64                `json:"alpha,omitempty"`
	Stride int                    `json:"stride"`
	Pad    int                    `json:"pad"`
	Group  int                    `json:"group,omitempty"`
	Gamma  float64                `json:"gamma,omitempty"`

	host map[string][]float32
	// run computes Gantry's outputs by name.
	run func(tp *autograd.Tape, in map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error)
	tol map[string]float64
}

func torchPython(t *testing.T) string {
	py := os.Getenv("GANTRY_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	if err := exec.Command(py, "-c", "import torch, numpy").Run(); err != nil {
		t.Skipf("parity with PyTorch needs %s with torch and numpy (Debian python3-torch; `make test` installs it): %v", py, err)
	}
	return py
}

func writeF32(path string, v []float32) error {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return os.WriteFile(path, b, 0o644)
}

func readF32(path string) ([]float32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

func (c *parityCase) input(name string, seed uint64, shape ...int) {
	if c.Inputs == nil {
		c.Inputs = map[string]parityInput{}
		c.host = map[string][]float32{}
	}
	c.Inputs[name] = parityInput{Name: c.Name + "." + name, Shape: shape}
	c.host[name] = gradcheck.Randn(seed, kernels.Numel(shape))
}

func grads(tp *autograd.Tape, y *autograd.Tensor, in map[string]*autograd.Tensor, seed string, names ...string) (map[string]*autograd.Tensor, error) {
	wrt := make([]*autograd.Tensor, len(names))
	for i, n := range names {
		wrt[i] = in[n]
	}
	gs, err := tp.Grad(y, wrt, in[seed], false)
	if err != nil {
		return nil, err
	}
	out := map[string]*autograd.Tensor{"y": y}
	for i, n := range names {
		out["g"+n] = gs[i]
	}
	return out, nil
}

func parityCases() []*parityCase {
	var cs []*parityCase
	add := func(c *parityCase) { cs = append(cs, c) }

	for i, cv := range []struct{ n, ci, co, h, w, k, stride, pad int }{
		{3, 5, 6, 7, 9, 3, 1, 1},    // odd everything
		{2, 8, 3, 8, 8, 1, 1, 0},    // 1x1 toRGB-like
		{1, 3, 4, 8, 6, 4, 2, 1},    // SG's fused down conv shape (4x4 stride 2)
		{2, 16, 16, 1, 1, 3, 1, 1},  // 1x1 image
		{2, 24, 17, 7, 6, 3, 1, 1},  // Winograd F(2x2,3x3) path (>= 16 channels), odd height
		{2, 16, 20, 6, 10, 4, 2, 1}, // polyphase Winograd F(2x2,2x2) path of the 4x4 stride 2
	} {
		c := &parityCase{Name: fmt.Sprintf("conv%d", i), Kind: "conv", Alpha: 0.37, Stride: cv.stride, Pad: cv.pad}
		c.input("x", uint64(10+i), cv.n, cv.ci, cv.h, cv.w)
		c.input("w", uint64(20+i), cv.co, cv.ci, cv.k, cv.k)
		ho, wo := (cv.h+2*cv.pad-cv.k)/cv.stride+1, (cv.w+2*cv.pad-cv.k)/cv.stride+1
		c.input("gy", uint64(30+i), cv.n, cv.co, ho, wo)
		p := autograd.ConvParams{Stride: cv.stride, Pad: cv.pad, Alpha: 0.37}
		c.run = func(tp *autograd.Tape, in map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error) {
			return grads(tp, tp.Conv2d(in["x"], in["w"], p), in, "gy", "x", "w")
		}
		add(c)
	}

	lr := &parityCase{Name: "lrelu", Kind: "lrelu"}
	lr.input("x", 40, 3, 5, 4, 3)
	lr.input("b", 41, 5)
	lr.input("gy", 42, 3, 5, 4, 3)
	lr.run = func(tp *autograd.Tape, in map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error) {
		y := tp.BiasAct(in["x"], in["b"], kernels.ActParams{Act: kernels.ActLReLU, Alpha: 0.2, Gain: float32(math.Sqrt2)})
		return grads(tp, y, in, "gy", "x", "b")
	}
	add(lr)

	bl := &parityCase{Name: "blur", Kind: "blur"}
	bl.input("x", 50, 2, 3, 7, 5)
	bl.input("gy", 51, 2, 3, 7, 5)
	bl.run = func(tp *autograd.Tape, in map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error) {
		y := tp.FIR(in["x"], []float32{0.25, 0.5, 0.25}, kernels.FIRParams{Up: 1, Down: 1, Pad0: 1, Pad1: 1, Gain: 1})
		return grads(tp, y, in, "gy", "x")
	}
	add(bl)

	bd := &parityCase{Name: "box_down", Kind: "box_down"}
	bd.input("x", 60, 2, 3, 8, 6)
	bd.input("gy", 61, 2, 3, 4, 3)
	bd.run = func(tp *autograd.Tape, in map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error) {
		y := tp.FIR(in["x"], []float32{0.5, 0.5}, kernels.FIRParams{Up: 1, Down: 2, Gain: 1})
		return grads(tp, y, in, "gy", "x")
	}
	add(bd)

	in := &parityCase{Name: "instance_norm", Kind: "instance_norm"}
	in.input("x", 70, 3, 5, 4, 6)
	in.input("s", 71, 3, 5)
	in.input("b", 72, 3, 5)
	in.input("gy", 73, 3, 5, 4, 6)
	in.run = func(tp *autograd.Tape, t map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error) {
		y := tp.AdaIN(t["x"], t["s"], t["b"], 1e-8)
		return grads(tp, y, t, "gy", "x", "s", "b")
	}
	add(in)

	mb := &parityCase{Name: "mbstd", Kind: "mbstd", Group: 4}
	mb.input("x", 80, 8, 5, 4, 4)
	mb.input("gy", 81, 8, 6, 4, 4)
	mb.run = func(tp *autograd.Tape, t map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error) {
		return grads(tp, tp.MinibatchStddev(t["x"], 4, 1, 1e-8), t, "gy", "x")
	}
	add(mb)

	r1 := &parityCase{Name: "r1", Kind: "r1", Gamma: 10}
	r1.input("x", 90, 4, 3, 8, 8)
	r1.input("w1", 91, 6, 3, 3, 3)
	r1.input("b1", 92, 6)
	r1.input("w2", 93, 5, 6, 3, 3)
	r1.input("b2", 94, 5)
	r1.input("wd", 95, 1, 5*8*8)
	r1.tol = map[string]float64{}
	for _, k := range []string{"penalty", "gx", "g_w1", "g_b1", "g_w2", "g_b2", "g_wd"} {
		r1.tol[k] = tolR1
	}
	r1.run = func(tp *autograd.Tape, t map[string]*autograd.Tensor) (map[string]*autograd.Tensor, error) {
		he := float32(math.Sqrt2)
		lrelu := kernels.ActParams{Act: kernels.ActLReLU, Alpha: 0.2, Gain: he}
		h := tp.Conv2d(t["x"], t["w1"], autograd.ConvParams{Stride: 1, Pad: 1, Alpha: he / float32(math.Sqrt(27))})
		h = tp.BiasAct(h, t["b1"], lrelu)
		h = tp.Conv2d(h, t["w2"], autograd.ConvParams{Stride: 1, Pad: 1, Alpha: he / float32(math.Sqrt(54))})
		h = tp.BiasAct(h, t["b2"], lrelu)
		logits := tp.MatMul(tp.Reshape(h, 4, 5*8*8), t["wd"], false, true, 1/float32(math.Sqrt(320)))
		gx, err := tp.Grad(tp.Sum(logits), []*autograd.Tensor{t["x"]}, nil, true)
		if err != nil {
			return nil, err
		}
		penalty := tp.Scale(tp.Mean(tp.SumSq(gx[0], 1, 2, 3)), 10.0/2, 0)
		names := []string{"w1", "b1", "w2", "b2", "wd"}
		wrt := make([]*autograd.Tensor, len(names))
		for i, n := range names {
			wrt[i] = t[n]
		}
		gs, err := tp.Grad(penalty, wrt, nil, false)
		if err != nil {
			return nil, err
		}
		out := map[string]*autograd.Tensor{"penalty": tp.Reshape(penalty, 1), "gx": gx[0]}
		for i, n := range names {
			out["g_"+n] = gs[i]
		}
		return out, nil
	}
	add(r1)
	return cs
}

func TestParityWithPyTorch(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("parity runs on 64-bit machines only")
	}
	py := torchPython(t)
	dir := t.TempDir()
	cases := parityCases()
	for _, c := range cases {
		for k, in := range c.Inputs {
			if err := writeF32(filepath.Join(dir, in.Name+".bin"), c.host[k]); err != nil {
				t.Fatal(err)
			}
		}
	}
	js, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cases.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs("../../hack/parity/torch_parity.py")
	cmd := exec.Command(py, script, dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("torch_parity.py: %v\n%s", err, out)
	}

	d := newDevice(t)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			tp := autograd.NewTape(d)
			defer tp.Close()
			ins := map[string]*autograd.Tensor{}
			for k, in := range c.Inputs {
				b, err := d.Alloc(len(c.host[k]))
				if err != nil {
					t.Fatal(err)
				}
				defer b.Free()
				if err := b.Write(0, c.host[k]); err != nil {
					t.Fatal(err)
				}
				ins[k] = tp.Param(b.View(in.Shape...))
			}
			outs, err := c.run(tp, ins)
			if err != nil {
				t.Fatal(err)
			}
			for k, o := range outs {
				got, err := tp.ToHost(o)
				if err != nil {
					t.Fatal(err)
				}
				want, err := readF32(filepath.Join(dir, c.Name+"."+k+".out"))
				if err != nil {
					t.Fatalf("%s: torch output: %v", k, err)
				}
				tol := tolGrad
				if k == "y" {
					tol = tolForward
				}
				if v, ok := c.tol[k]; ok {
					tol = v
				}
				rel := maxRelErr(got, want)
				t.Logf("%s.%s: max |gantry - torch| / max |torch| = %.2g (tolerance %.0g)", c.Name, k, rel, tol)
				if len(got) != len(want) || rel > tol {
					t.Errorf("%s.%s: relative error %.3g > %.0g (len %d vs %d)", c.Name, k, rel, tol, len(got), len(want))
				}
			}
		})
	}
}

func maxRelErr(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var diff, ref float64
	for i := range got {
		diff = math.Max(diff, math.Abs(float64(got[i])-float64(want[i])))
		ref = math.Max(ref, math.Abs(float64(want[i])))
		if math.IsNaN(float64(got[i])) {
			return math.NaN()
		}
	}
	return diff / math.Max(ref, 1e-30)
}
