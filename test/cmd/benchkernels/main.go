// Command benchkernels measures Gantry's CPU kernels on StyleGAN shapes (batch 32) next to
// PyTorch on the same shapes and thread count, and prints one table. `make bench-kernels`
// runs it (hack/bench-kernels.sh).
//
// PyTorch runs as a child process (hack/bench_kernels_torch.py) that serves one case per
// request, so the two sides alternate case by case and round by round and see the same
// machine load; each side keeps its best time. Convolutions and GEMM report GFLOP/s (2 FLOPs
// per multiply-add; forward+backward counts 3x the forward's FLOPs), memory-bound ops GB/s
// over a nominal byte count both sides share, so every ratio (torch time / Gantry time, >1
// means Gantry is faster) is a ratio of times. -cpu-clock times by process CPU time instead
// of wall time, for machines that other work keeps busy.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/gantry-ml/gantry/kernels"
)

type bench struct {
	dev     *kernels.Device
	bufs    []*kernels.Buffer
	minTime time.Duration
	rng     *rand.Rand
}

func (b *bench) tensor(shape ...int) kernels.View {
	n := kernels.Numel(shape)
	buf, err := b.dev.Alloc(n)
	if err != nil {
		fail(err)
	}
	b.bufs = append(b.bufs, buf)
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(b.rng.NormFloat64())
	}
	if err := buf.Write(0, data); err != nil {
		fail(err)
	}
	return buf.View(shape...)
}

func (b *bench) free() {
	for _, buf := range b.bufs {
		buf.Free()
	}
	b.bufs = nil
}

// cpuClock makes best measure the process's CPU time (all threads) instead of wall time:
// on a loaded machine, time other processes take is not charged, while a thread that spins
// instead of working still is. Rates are then per CPU-second times the thread count.
var cpuClock bool

func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fail(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// best runs f once to warm up, then until minTime has passed (at least 3 times), and
// returns the fastest run in seconds.
func (b *bench) best(f func() error) float64 {
	if err := f(); err != nil {
		fail(err)
	}
	best := math.Inf(1)
	start := time.Now()
	for i := 0; i < 3 || time.Since(start) < b.minTime; i++ {
		t0, c0 := time.Now(), cpuNow()
		if err := f(); err != nil {
			fail(err)
		}
		s := time.Since(t0).Seconds()
		if cpuClock {
			s = (cpuNow() - c0).Seconds() / float64(b.dev.Threads())
		}
		if s < best {
			best = s
		}
	}
	return best
}

func all(fs ...func() error) func() error {
	return func() error {
		for _, f := range fs {
			if err := f(); err != nil {
				return err
			}
		}
		return nil
	}
}

// kcase is one benchmark case: what the torch server is asked, the work of a forward and of
// a forward+backward (FLOPs or bytes), and Gantry's two runs on buffers set up by prepare.
type kcase struct {
	op, shape, unit string
	torch           string
	workFwd, workFB float64
	prepare         func(b *bench) (fwd, fwdbwd func() error)
}

func convCase(n, cin, cout, hw, k int) kcase { return convStrided(n, cin, cout, hw, k, 1, k/2) }

// convStrided: stride 2 with k 4, pad 1 is StyleGAN's fused downsampling conv (D); its data
// gradient is the transposed conv of the fused upsampling (G).
func convStrided(n, cin, cout, hw, k, stride, pad int) kcase {
	ho := (hw+2*pad-k)/stride + 1
	flops := 2.0 * float64(n*cout*cin*k*k*ho*ho)
	name := fmt.Sprintf("conv%dx%d", k, k)
	if stride != 1 {
		name += fmt.Sprintf("s%d", stride)
	}
	return kcase{op: name, shape: fmt.Sprintf("%d->%d @%dx%d", cin, cout, hw, hw), unit: "GFLOP/s",
		torch: fmt.Sprintf("conv %d %d %d %d %d %d %d", n, cin, cout, hw, k, stride, pad), workFwd: flops, workFB: 3 * flops,
		prepare: func(b *bench) (func() error, func() error) {
			x, w := b.tensor(n, cin, hw, hw), b.tensor(cout, cin, k, k)
			y, dy := b.tensor(n, cout, ho, ho), b.tensor(n, cout, ho, ho)
			dx, dw := b.tensor(n, cin, hw, hw), b.tensor(cout, cin, k, k)
			p := kernels.ConvParams{Stride: stride, Pad: pad, Alpha: 1}
			fwd := func() error { return b.dev.Conv2d(x, w, y, p) }
			bwdD := func() error { return b.dev.Conv2dBwdData(dy, w, dx, p) }
			bwdF := func() error { return b.dev.Conv2dBwdFilter(x, dy, dw, p) }
			return fwd, all(fwd, bwdD, bwdF)
		}}
}

func gemmCase(m int) kcase {
	flops := 2.0 * float64(m*m*m)
	return kcase{op: "sgemm", shape: fmt.Sprintf("%d^3", m), unit: "GFLOP/s", torch: fmt.Sprintf("gemm %d", m),
		workFwd: flops, workFB: flops,
		prepare: func(b *bench) (func() error, func() error) {
			a, bb, c := b.tensor(m, m), b.tensor(m, m), b.tensor(m, m)
			f := func() error { return b.dev.Gemm(false, false, 1, a, bb, 0, c) }
			return f, f
		}}
}

// biasActCase: y = lrelu(x + b) * sqrt(2); backward dx and db. Nominal bytes: the forward
// reads x and writes y; the backward reads dy and y, writes dx, reads dx again for db.
func biasActCase(n, c, hw int) kcase {
	bytes := 4.0 * float64(n*c*hw*hw)
	return kcase{op: "bias+lrelu", shape: fmt.Sprintf("%dx%d @%dx%d", n, c, hw, hw), unit: "GB/s",
		torch: fmt.Sprintf("biasact %d %d %d", n, c, hw), workFwd: 2 * bytes, workFB: 6 * bytes,
		prepare: func(b *bench) (func() error, func() error) {
			x, bias, y := b.tensor(n, c, hw, hw), b.tensor(c), b.tensor(n, c, hw, hw)
			dy, dx, db := b.tensor(n, c, hw, hw), b.tensor(n, c, hw, hw), b.tensor(1, c, 1, 1)
			p := kernels.ActParams{Act: kernels.ActLReLU, Alpha: 0.2, Gain: float32(math.Sqrt2)}
			fwd := func() error { return b.dev.BiasAct(x, bias, y, p) }
			bwd := func() error { return b.dev.BiasActGrad(dy, y, dx, p) }
			red := func() error { return b.dev.Reduce(kernels.ReduceSum, dx, db, 1) }
			return fwd, all(fwd, bwd, red)
		}}
}

// blurCase: [1,2,1] separable blur (pad 1, same size), or blur then 2x down (pad 1/0,
// stride 2; D's path); the backward is FIR with FIRGradParams. Nominal bytes: each pass
// reads its input and writes its output once.
func blurCase(n, c, hw, down int) kcase {
	p := kernels.FIRParams{Pad0: 1, Pad1: 1, Gain: 1}
	name := "blur"
	if down == 2 {
		p = kernels.FIRParams{Down: 2, Pad0: 1, Pad1: 0, Gain: 1}
		name = "blur+down2"
	}
	taps := []float32{0.25, 0.5, 0.25}
	ho, wo, err := kernels.FIROutSize(hw, hw, len(taps), p)
	if err != nil {
		fail(err)
	}
	bytes := 4.0 * float64(n*c*(hw*hw+ho*wo))
	return kcase{op: name, shape: fmt.Sprintf("%dx%d @%dx%d", n, c, hw, hw), unit: "GB/s",
		torch: fmt.Sprintf("blur %d %d %d %d", n, c, hw, down), workFwd: bytes, workFB: 2 * bytes,
		prepare: func(b *bench) (func() error, func() error) {
			g, err := kernels.FIRGradParams(hw, hw, len(taps), p)
			if err != nil {
				fail(err)
			}
			x, y := b.tensor(n, c, hw, hw), b.tensor(n, c, ho, wo)
			dy, dx := b.tensor(n, c, ho, wo), b.tensor(n, c, hw, hw)
			fwd := func() error { return b.dev.FIR(x, y, taps, p) }
			bwd := func() error { return b.dev.FIR(dy, dx, taps, g) }
			return fwd, all(fwd, bwd)
		}}
}

// adainCase: instance norm + style. Nominal bytes: the forward reads x and writes y; the
// backward reads dy and xn and writes dx.
func adainCase(n, c, hw int) kcase {
	bytes := 4.0 * float64(n*c*hw*hw)
	return kcase{op: "adain", shape: fmt.Sprintf("%dx%d @%dx%d", n, c, hw, hw), unit: "GB/s",
		torch: fmt.Sprintf("adain %d %d %d", n, c, hw), workFwd: 2 * bytes, workFB: 5 * bytes,
		prepare: func(b *bench) (func() error, func() error) {
			x, s, bb := b.tensor(n, c, hw, hw), b.tensor(n, c), b.tensor(n, c)
			y, xn, rstd := b.tensor(n, c, hw, hw), b.tensor(n, c, hw, hw), b.tensor(n, c)
			dy, dx, ds, db := b.tensor(n, c, hw, hw), b.tensor(n, c, hw, hw), b.tensor(n, c), b.tensor(n, c)
			fwd := func() error { return b.dev.AdaIN(x, s, bb, y, xn, rstd, 1e-8) }
			bwd := func() error { return b.dev.AdaINBwd(dy, xn, rstd, s, dx, ds, db) }
			return fwd, all(fwd, bwd)
		}}
}

func clockName() string {
	if cpuClock {
		return "cpu"
	}
	return "wall"
}

// torchServer is hack/bench_kernels_torch.py answering one request per line.
type torchServer struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startTorch(python, script string, threads int) (*torchServer, error) {
	cmd := exec.Command(python, script)
	cmd.Env = append(os.Environ(), fmt.Sprintf("GANTRY_BENCH_THREADS=%d", threads))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	return &torchServer{cmd: cmd, in: in, out: sc}, nil
}

func (t *torchServer) ask(req string, v any) error {
	if _, err := fmt.Fprintln(t.in, req); err != nil {
		return err
	}
	if !t.out.Scan() {
		if err := t.out.Err(); err != nil {
			return err
		}
		return fmt.Errorf("torch server exited on %q", req)
	}
	return json.Unmarshal(t.out.Bytes(), v)
}

func (t *torchServer) close() {
	t.in.Close()
	_ = t.cmd.Wait()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "benchkernels:", err)
	os.Exit(1)
}

func main() {
	// Every cgo call from this goroutine runs on one OS thread, so OpenMP keeps one thread
	// pool (libgomp creates a pool per calling thread) and OpenBLAS sees one caller.
	runtime.LockOSThread()
	threads := flag.Int("threads", 2, "backend threads (and torch.set_num_threads)")
	batch := flag.Int("batch", 32, "minibatch")
	minTime := flag.Duration("mintime", 400*time.Millisecond, "minimum measuring time per case, side and round")
	rounds := flag.Int("rounds", 3, "rounds alternating Gantry and PyTorch; the best of each side counts")
	python := flag.String("python", "", "Python with torch; empty: Gantry only")
	script := flag.String("torch-script", "hack/bench_kernels_torch.py", "the PyTorch side")
	only := flag.String("only", "", "run only cases whose op contains this string")
	fused := flag.Bool("fused", true, "include bias+lrelu and AdaIN")
	flag.BoolVar(&cpuClock, "cpu-clock", false, "time by process CPU time / threads instead of wall time (for loaded machines)")
	flag.Parse()

	dev, err := kernels.Open(kernels.Config{Threads: *threads})
	if err != nil {
		fail(err)
	}
	defer dev.Close()
	var ts *torchServer
	if *python != "" {
		if ts, err = startTorch(*python, *script, *threads); err != nil {
			fail(fmt.Errorf("start %s %s: %w", *python, *script, err))
		}
		defer ts.close()
		var th struct{ Threads int }
		if err := ts.ask("threads", &th); err != nil {
			fail(fmt.Errorf("torch server: %w", err))
		}
	}
	b := &bench{dev: dev, minTime: *minTime, rng: rand.New(rand.NewPCG(1, 2))}
	n := *batch
	cases := []kcase{
		convCase(n, 128, 128, 32, 3),
		convCase(n, 256, 256, 16, 3),
		convCase(n, 256, 256, 8, 3),
		convCase(n, 128, 3, 32, 1),
		convStrided(n, 128, 128, 32, 4, 2, 1),
		biasActCase(n, 128, 32),
		blurCase(n, 128, 32, 1),
		blurCase(n, 128, 32, 2),
		adainCase(n, 128, 32),
		gemmCase(1024),
	}
	fmt.Printf("Gantry (%s backend) vs PyTorch%s, batch %d, %d threads, best of %d alternating rounds, %s clock\n",
		kernels.Backend(), map[bool]string{true: "", false: " (not run)"}[ts != nil], n, *threads, *rounds, clockName())
	fmt.Printf("%-11s %-16s %-8s %9s %9s %6s   %9s %9s %6s\n", "op", "shape", "unit", "gantry", "torch", "ratio", "g fwd+bwd", "t fwd+bwd", "ratio")
	for _, c := range cases {
		if *only != "" && !strings.Contains(c.op, *only) {
			continue
		}
		if !*fused && (c.op == "bias+lrelu" || c.op == "adain") {
			continue
		}
		fwd, fb := c.prepare(b)
		gf, gb, tf, tb := math.Inf(1), math.Inf(1), math.Inf(1), math.Inf(1)
		for r := 0; r < *rounds; r++ {
			gf = math.Min(gf, b.best(fwd))
			gb = math.Min(gb, b.best(fb))
			if ts != nil {
				var res struct{ Fwd, FwdBwd float64 }
				if err := ts.ask(fmt.Sprintf("%g %s %s", minTime.Seconds(), clockName(), c.torch), &res); err != nil {
					fail(fmt.Errorf("torch %s: %w", c.torch, err))
				}
				tf, tb = math.Min(tf, res.Fwd), math.Min(tb, res.FwdBwd)
			}
		}
		b.free()
		rate := func(work, s float64) float64 { return work / s / 1e9 }
		col := func(work, s float64) string {
			if math.IsInf(s, 1) {
				return "-"
			}
			return fmt.Sprintf("%.1f", rate(work, s))
		}
		ratio := func(g, t float64) string {
			if math.IsInf(t, 1) {
				return "-"
			}
			return fmt.Sprintf("%.2f", t/g)
		}
		fmt.Printf("%-11s %-16s %-8s %9.1f %9s %6s   %9.1f %9s %6s\n", c.op, c.shape, c.unit,
			rate(c.workFwd, gf), col(c.workFwd, tf), ratio(gf, tf), rate(c.workFB, gb), col(c.workFB, tb), ratio(gb, tb))
	}
}
