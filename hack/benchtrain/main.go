// Command benchtrain measures Gantry's full StyleGAN training step (D step with R1 on every
// step, G step, EMA) at the S32-small configuration, optionally beside the PyTorch twin
// hack/bench_train_torch.py: the two alternate single steps (PyTorch runs as a server
// process) so that both see the same machine load, and the table reports best and median
// img/s, CPU seconds per image and the median of the paired step-time ratios.
// hack/bench-train.sh (make bench-train) runs it.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/model"
	"github.com/gantry-ml/gantry/pkg/schedule"
	"github.com/gantry-ml/gantry/pkg/train"
)

// s32Small is the S32-small model: 32x32x3, z = w = 128, 8 mapping layers, channels
// min(1024 / 2^stage, 128).
func s32Small() model.Config {
	return model.Config{Resolution: 32, Channels: 3, ZDim: 128, WDim: 128, MappingLayers: 8,
		MappingLRMul: 0.01, FmapBase: 1024, FmapDecay: 1, FmapMax: 128, MbstdGroup: 4,
		MbstdFeatures: 1, FusedScaleMin: 128, UseNoise: true, Blur: []float64{1, 2, 1}}
}

type options struct {
	threads, batch, warmup, steps int
	python, script, blur          string
	cpuprofile                    string
}

func main() {
	var o options
	flag.IntVar(&o.threads, "threads", 2, "threads of each implementation")
	flag.IntVar(&o.batch, "batch", 32, "global minibatch")
	flag.IntVar(&o.warmup, "warmup", 1, "untimed steps of each implementation first")
	flag.IntVar(&o.steps, "steps", 6, "timed steps of each implementation")
	flag.StringVar(&o.python, "python", "", "Python with torch: also run hack/bench_train_torch.py and compare (empty: Gantry only)")
	flag.StringVar(&o.script, "script", "hack/bench_train_torch.py", "the PyTorch twin")
	flag.StringVar(&o.blur, "torch-blur", "", "the twin's --blur form (empty: its default)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of Gantry's timed steps to this file")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "benchtrain:", err)
		os.Exit(1)
	}
}

// sample is one step's wall and CPU seconds.
type sample struct{ wall, cpu float64 }

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func run(o options) error {
	if o.threads < 1 || o.batch < 1 || o.warmup < 0 || o.steps < 1 {
		return fmt.Errorf("threads %d, batch %d, warmup %d, steps %d out of range", o.threads, o.batch, o.warmup, o.steps)
	}
	runtime.GOMAXPROCS(max(o.threads, 2))
	dev, err := kernels.Open(kernels.Config{Threads: o.threads})
	if err != nil {
		return err
	}
	defer dev.Close()
	mc := s32Small()
	sc := schedule.Default()
	sc.FixedResolution = true
	sc.MinibatchBase = o.batch
	sc.Minibatch = nil
	sched, err := schedule.New(sc, mc.Resolution)
	if err != nil {
		return err
	}
	tr, err := train.New(dev, train.Options{
		Model: mc, Schedule: sched, R1Gamma: 10, R1Interval: 1, StyleMixing: 0.9, WAvgBeta: 0.995,
		EMAHalfLife: 10, Beta1: 0, Beta2: 0.99, Epsilon: 1e-8, ResetAdam: true, Seed: 1, Rank: 0, World: 1,
	})
	if err != nil {
		return err
	}
	defer tr.Close()
	plan := tr.Plan()
	if plan.State.Resolution != mc.Resolution || plan.N != o.batch {
		return fmt.Errorf("schedule gives %d images at %dx%d, want %d at %d", plan.N, plan.State.Resolution, plan.State.Resolution, o.batch, mc.Resolution)
	}
	r := mc.Resolution
	rng := rand.New(rand.NewPCG(7, 11))
	data := make([]float32, o.batch*mc.Channels*r*r)
	for i := range data {
		data[i] = rng.Float32()*2 - 1
	}
	reals := train.Batch{Data: data, N: o.batch, C: mc.Channels, H: r, W: r}
	ctx := context.Background()
	gantryStep := func() (sample, error) {
		c0, t0 := cpuSeconds(), time.Now()
		st, err := tr.Step(ctx, reals, train.Local{})
		s := sample{wall: time.Since(t0).Seconds(), cpu: cpuSeconds() - c0}
		if err != nil {
			return s, err
		}
		if st.SkippedD || st.SkippedG {
			return s, fmt.Errorf("step %d skipped an update (non-finite gradients)", tr.C.Step)
		}
		return s, nil
	}

	var tw *twin
	if o.python != "" {
		if tw, err = startTwin(o); err != nil {
			return err
		}
		defer tw.close()
	}
	for i := 0; i < o.warmup; i++ {
		if _, err := gantryStep(); err != nil {
			return err
		}
		if tw != nil {
			if _, err := tw.step(); err != nil {
				return err
			}
		}
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var gs, ts []sample
	for i := 0; i < o.steps; i++ {
		s, err := gantryStep()
		if err != nil {
			return err
		}
		gs = append(gs, s)
		if tw != nil {
			s, err := tw.step()
			if err != nil {
				return err
			}
			ts = append(ts, s)
		}
	}
	report(o, tr, gs, ts, tw)
	return nil
}

func report(o options, tr *train.Trainer, gs, ts []sample, tw *twin) {
	b := float64(o.batch)
	g := summarise(gs, b)
	fmt.Printf("S32-small full step (D step + R1, G step, EMA), batch %d, %d threads each, %d alternating steps\n", o.batch, o.threads, o.steps)
	fmt.Printf("%-28s %12s %12s %12s\n", "", "best img/s", "median img/s", "CPU s/img")
	fmt.Printf("%-28s %12.2f %12.2f %12.3f\n", "Gantry", g.best, g.median, g.cpuPerImg)
	line := fmt.Sprintf("BENCH-TRAIN gantry_best=%.2f gantry_median=%.2f gantry_cpu_s_per_img=%.4f", g.best, g.median, g.cpuPerImg)
	if tw != nil {
		t := summarise(ts, b)
		ratios := make([]float64, len(gs))
		for i := range gs {
			ratios[i] = ts[i].wall / gs[i].wall
		}
		pr := median(ratios)
		fmt.Printf("%-28s %12.2f %12.2f %12.3f\n", "PyTorch "+tw.info["torch"], t.best, t.median, t.cpuPerImg)
		fmt.Printf("%-28s %11.2fx %11.2fx %11.2fx   paired-step median %.2fx (aim >= 1.5x)\n", "Gantry / PyTorch",
			g.best/t.best, g.median/t.median, t.cpuPerImg/g.cpuPerImg, pr)
		line += fmt.Sprintf(" pytorch_best=%.2f pytorch_median=%.2f pytorch_cpu_s_per_img=%.4f ratio_best=%.2f ratio_median=%.2f ratio_paired=%.2f torch=%s torch_blur=%s",
			t.best, t.median, t.cpuPerImg, g.best/t.best, g.median/t.median, pr, tw.info["torch"], tw.info["blur"])
		if tw.info["g_params"] != strconv.Itoa(tr.G.Params.Len()-unusedG(tr)) || tw.info["d_params"] != strconv.Itoa(tr.D.Params.Len()-unusedD(tr)) {
			fmt.Printf("WARNING: parameter counts differ: PyTorch G %s D %s, Gantry G %d D %d (less the unused lower-resolution toRGB/fromRGB)\n",
				tw.info["g_params"], tw.info["d_params"], tr.G.Params.Len()-unusedG(tr), tr.D.Params.Len()-unusedD(tr))
		}
	}
	fmt.Printf("%s batch=%d threads=%d steps=%d g_params=%d d_params=%d\n", line, o.batch, o.threads, o.steps, tr.G.Params.Len(), tr.D.Params.Len())
}

// unusedG and unusedD count the toRGB/fromRGB parameters of the lower resolutions, which
// Gantry keeps for progressive growing and the fixed-resolution twin has not.
func unusedG(tr *train.Trainer) int {
	n := 0
	for _, name := range tr.G.Params.Names() {
		if strings.HasPrefix(name, "syn.torgb.") && !strings.Contains(name, resName(tr.G.Cfg.Resolution)) {
			n += kernels.Numel(tr.G.Params.Shape(name))
		}
	}
	return n
}

func unusedD(tr *train.Trainer) int {
	n := 0
	for _, name := range tr.D.Params.Names() {
		if strings.HasPrefix(name, "fromrgb.") && !strings.Contains(name, resName(tr.D.Cfg.Resolution)) {
			n += kernels.Numel(tr.D.Params.Shape(name))
		}
	}
	return n
}

func resName(r int) string { return fmt.Sprintf(".%dx%d.", r, r) }

type summary struct{ best, median, cpuPerImg float64 }

func summarise(s []sample, batch float64) summary {
	walls := make([]float64, len(s))
	cpus := make([]float64, len(s))
	for i, x := range s {
		walls[i], cpus[i] = x.wall, x.cpu
	}
	return summary{best: batch / slices.Min(walls), median: batch / median(walls), cpuPerImg: median(cpus) / batch}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// twin is the PyTorch implementation running as a server process.
type twin struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	info map[string]string
}

func startTwin(o options) (*twin, error) {
	args := []string{o.script, "--serve", "--threads", strconv.Itoa(o.threads), "--batch", strconv.Itoa(o.batch)}
	if o.blur != "" {
		args = append(args, "--blur", o.blur)
	}
	cmd := exec.Command(o.python, args...)
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS="+strconv.Itoa(o.threads))
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
		return nil, fmt.Errorf("start %s %s: %w", o.python, o.script, err)
	}
	t := &twin{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	line, err := t.read()
	if err != nil {
		t.close()
		return nil, err
	}
	f, ok := strings.CutPrefix(line, "READY ")
	if !ok {
		t.close()
		return nil, fmt.Errorf("%s: want READY, got %q", o.script, line)
	}
	t.info = fields(f)
	return t, nil
}

func (t *twin) read() (string, error) {
	if !t.out.Scan() {
		if err := t.out.Err(); err != nil {
			return "", fmt.Errorf("pytorch twin: %w", err)
		}
		return "", fmt.Errorf("pytorch twin exited (see its stderr above)")
	}
	return t.out.Text(), nil
}

func (t *twin) step() (sample, error) {
	if _, err := io.WriteString(t.in, "step\n"); err != nil {
		return sample{}, fmt.Errorf("pytorch twin: %w", err)
	}
	line, err := t.read()
	if err != nil {
		return sample{}, err
	}
	f, ok := strings.CutPrefix(line, "STEP ")
	if !ok {
		return sample{}, fmt.Errorf("pytorch twin: want STEP, got %q", line)
	}
	kv := fields(f)
	wall, err1 := strconv.ParseFloat(kv["wall"], 64)
	cpu, err2 := strconv.ParseFloat(kv["cpu"], 64)
	if err1 != nil || err2 != nil {
		return sample{}, fmt.Errorf("pytorch twin: bad STEP line %q", line)
	}
	return sample{wall: wall, cpu: cpu}, nil
}

func (t *twin) close() {
	io.WriteString(t.in, "quit\n")
	t.in.Close()
	t.cmd.Wait()
}

func fields(s string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}
