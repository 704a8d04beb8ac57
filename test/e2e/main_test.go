package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

// fashionMNIST is where Debian's dataset-fashion-mnist package puts the IDX files.
const fashionMNIST = "/usr/share/datasets/fashion-mnist"

// Dataset the tests share: 2048 Fashion-MNIST images in 8 shards of 256, so that 2 and 3
// workers both get several shards each.
const (
	dataImages    = 2048
	dataShardSize = 256
	dataShards    = dataImages / dataShardSize
)

var env struct {
	bin  string // directory holding the coordinator and worker binaries
	data string // the shared dataset (a directory store)
	skip string // why the tests cannot run here; empty when they can
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "gantry-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if testing.Short() {
		env.skip = "e2e: skipped with -short: each test trains with real coordinator and worker processes (seconds to a minute)"
		return m.Run()
	}
	root, err := storetest.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	env.bin = filepath.Join(tmp, "bin")
	start := time.Now()
	build := exec.Command("go", "build", "-o", env.bin+string(filepath.Separator), "./coordinator", "./worker")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./coordinator ./worker: %v\n%s", err, out)
		return 1
	}
	src := filepath.Join(fashionMNIST, "train-images-idx3-ubyte.gz")
	if _, err := os.Stat(src); err != nil {
		env.skip = "e2e: Fashion-MNIST not found at " + src + ": install Debian's dataset-fashion-mnist (make deps does)"
		return m.Run()
	}
	env.data = filepath.Join(tmp, "fmnist")
	create := exec.Command(filepath.Join(env.bin, "coordinator"), "dataset", "create", "--source", src,
		"--out", env.data, "--resolution", "32", "--max-images", strconv.Itoa(dataImages),
		"--shard-size", strconv.Itoa(dataShardSize), "--filter", "none", "--background", "000000")
	if out, err := create.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: coordinator dataset create: %v\n%s", err, out)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: binaries built and dataset imported in %.1fs\n", time.Since(start).Seconds())
	return m.Run()
}

// need skips the test when the environment cannot run it, naming what is missing.
func need(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
}

func coordinatorBin() string { return filepath.Join(env.bin, "coordinator") }
func workerBin() string      { return filepath.Join(env.bin, "worker") }

// proc is a process started by a test in a process group of its own, so that a SIGKILL to
// the group also reaches what it started (coordinator dev's workers).
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	code int // exit code once done (-1: killed by a signal)
}

// startProc starts bin with args, appending its output to log. The process and its group
// are killed when the test ends.
func startProc(t *testing.T, name, log, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.OpenFile(log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, log: log, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		p.code = cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.killGroup()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, p.pid())
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// killGroup sends SIGKILL to the process and everything in its group.
func (p *proc) killGroup() { _ = syscall.Kill(-p.pid(), syscall.SIGKILL) }

func (p *proc) signal(sig syscall.Signal) { _ = syscall.Kill(p.pid(), sig) }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(d):
		t.Fatalf("%s did not exit within %s (log %s)", p.name, d, p.log)
		return 0
	}
}

// logLine is one parsed go-hclog text line: `TIME [LEVEL]  name: message: k=v k="v w" ...`.
type logLine struct {
	T     time.Time
	Level string
	Name  string
	Msg   string
	KV    map[string]string
	Raw   string
}

var kvRE = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\S+)`)

func parseLine(s string) (logLine, bool) {
	ts, rest, ok := strings.Cut(s, " ")
	if !ok {
		return logLine{}, false
	}
	tm, err := time.Parse("2006-01-02T15:04:05.000Z0700", ts)
	if err != nil || !strings.HasPrefix(rest, "[") {
		return logLine{}, false
	}
	level, rest, ok := strings.Cut(rest[1:], "]")
	if !ok {
		return logLine{}, false
	}
	rest = strings.TrimLeft(rest, " ")
	name, rest, _ := strings.Cut(rest, ": ")
	msg, kvs, _ := strings.Cut(rest, ": ")
	l := logLine{T: tm, Level: level, Name: name, Msg: msg, KV: map[string]string{}, Raw: s}
	for _, m := range kvRE.FindAllStringSubmatch(kvs, -1) {
		v := m[2]
		if strings.HasPrefix(v, `"`) {
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
		}
		l.KV[m[1]] = v
	}
	return l, true
}

// readLog parses the lines of a log file; a missing file has none.
func readLog(path string) []logLine {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l, ok := parseLine(sc.Text()); ok {
			out = append(out, l)
		}
	}
	return out
}

func (l logLine) float(k string) float64 {
	v, _ := strconv.ParseFloat(l.KV[k], 64)
	return v
}

func (l logLine) int(k string) int64 {
	v, _ := strconv.ParseInt(l.KV[k], 10, 64)
	return v
}

// step is a worker's completed training step (logged at trace level by package trainloop).
type step struct {
	T    time.Time
	Step int64
	Kimg float64
}

// gen is a worker entering a generation of the membership.
type gen struct {
	T                time.Time
	Gen, Rank, World int64
	Kimg             float64
	Step             int64
}

func stepsOf(lines []logLine) []step {
	var out []step
	for _, l := range lines {
		if l.Msg == "step" && strings.HasSuffix(l.Name, "train") {
			out = append(out, step{T: l.T, Step: l.int("step"), Kimg: l.float("kimg")})
		}
	}
	return out
}

func gensOf(lines []logLine) []gen {
	var out []gen
	for _, l := range lines {
		if l.Msg == "generation" && strings.HasSuffix(l.Name, "train") {
			out = append(out, gen{T: l.T, Gen: l.int("generation"), Rank: l.int("rank"), World: l.int("world"),
				Kimg: l.float("kimg"), Step: l.int("step")})
		}
	}
	return out
}

func linesWith(lines []logLine, msg string) []logLine {
	var out []logLine
	for _, l := range lines {
		if l.Msg == msg {
			out = append(out, l)
		}
	}
	return out
}

// eventually polls f every 100 ms until it reports done, failing the test after d with f's
// last word on what it still waits for.
func eventually(t *testing.T, d time.Duration, what string, f func() (string, bool)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		why, ok := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", d, what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dumpLogsOnFailure prints the tail of every log matching the globs when the test failed
// (always with GANTRY_E2E_LOGS=1).
func dumpLogsOnFailure(t *testing.T, globs ...string) {
	t.Cleanup(func() {
		if !t.Failed() && os.Getenv("GANTRY_E2E_LOGS") == "" {
			return
		}
		for _, g := range globs {
			paths, _ := filepath.Glob(g)
			for _, p := range paths {
				b, _ := os.ReadFile(p)
				ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
				var keep []string
				for _, l := range ls {
					if pl, ok := parseLine(l); ok && pl.Msg == "step" {
						continue // per-step trace lines drown the rest
					}
					keep = append(keep, l)
				}
				if len(keep) > 60 {
					keep = keep[len(keep)-60:]
				}
				t.Logf("--- %s (last %d lines, step lines left out)\n%s", p, len(keep), strings.Join(keep, "\n"))
			}
		}
	})
}

// jobClient connects to etcd and returns the job's control-plane handle.
func jobClient(t *testing.T, endpoints []string, job string) *control.Job {
	t.Helper()
	cli, err := control.NewClient(endpoints, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	j, err := control.NewJob(cli, job, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func state(j *control.Job) (control.State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return j.State(ctx)
}

// poller calls read every 100 ms until closed and keeps every value that differs from the
// last one it kept (read's false: nothing to keep this time).
type poller[T any] struct {
	mu   sync.Mutex
	seen []T
	stop chan struct{}
	done chan struct{}
}

func startPoller[T any](t *testing.T, read func() (T, bool), same func(a, b T) bool) *poller[T] {
	w := &poller[T]{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			if v, ok := read(); ok {
				w.mu.Lock()
				if n := len(w.seen); n == 0 || !same(w.seen[n-1], v) {
					w.seen = append(w.seen, v)
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.close)
	return w
}

func (w *poller[T]) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// values returns the values kept so far.
func (w *poller[T]) values() []T {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]T(nil), w.seen...)
}

// watchProgress polls the job's progress record and remembers every value it saw.
func watchProgress(t *testing.T, j *control.Job) *poller[control.Progress] {
	return startPoller(t, func() (control.Progress, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p, err := j.Progress(ctx)
		return p, err == nil && p.Updated.After(time.Time{})
	}, func(a, b control.Progress) bool { return a.Updated.Equal(b.Updated) })
}

// checkNeverBack fails the test when kimg went backwards anywhere in a series.
func checkNeverBack(t *testing.T, what string, kimg []float64) {
	t.Helper()
	for i := 1; i < len(kimg); i++ {
		if kimg[i] < kimg[i-1] {
			t.Errorf("%s: kimg went backwards at entry %d: %.3f after %.3f (series %v)", what, i, kimg[i], kimg[i-1], around(kimg, i))
		}
	}
}

func around(v []float64, i int) []float64 {
	lo, hi := max(0, i-3), min(len(v), i+3)
	return v[lo:hi]
}

// metricsKimg reads the kimg of every tick in a run directory's metrics.jsonl.
func metricsKimg(t *testing.T, runDir string) []float64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runDir, "metrics.jsonl"))
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	var out []float64
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var tk struct {
			Kimg float64 `json:"kimg"`
		}
		if err := json.Unmarshal([]byte(l), &tk); err != nil {
			t.Fatalf("metrics.jsonl: bad line %q: %v", l, err)
		}
		out = append(out, tk.Kimg)
	}
	return out
}

// committed lists the checkpoint directories of a store with their manifest state.
func committed(t *testing.T, uri string, cfg store.Config) []checkpoint.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, uri, cfg)
	if err != nil {
		t.Fatal(err)
	}
	es, err := checkpoint.List(ctx, st, "checkpoints")
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// manifest reads and verifies a checkpoint's manifest and objects.
func manifest(t *testing.T, uri string, cfg store.Config, dir string) *checkpoint.Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, uri, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := checkpoint.Verify(ctx, st, dir)
	if err != nil {
		t.Fatalf("checkpoint %s in %s: %v", dir, uri, err)
	}
	return m
}

// statusJSON runs `coordinator status --json` and decodes what it prints.
func statusJSON(t *testing.T, etcd, job string) (rep struct {
	Job      string           `json:"job"`
	Leader   string           `json:"leader"`
	State    control.State    `json:"state"`
	Progress control.Progress `json:"progress"`
}) {
	t.Helper()
	out, err := exec.Command(coordinatorBin(), "status", "--etcd", etcd, "--job", job, "--json").Output()
	if err != nil {
		t.Fatalf("coordinator status --json: %v", err)
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("coordinator status --json printed %q: %v", out, err)
	}
	return rep
}

// checkShards fails the test unless the members' shards cover every dataset shard once.
func checkShards(t *testing.T, s control.State) {
	t.Helper()
	var all []int
	for _, m := range s.Members {
		all = append(all, m.Shards...)
	}
	sort.Ints(all)
	for i, sh := range all {
		if sh != i || len(all) != dataShards {
			t.Errorf("shards of the %d members do not cover the %d dataset shards once each: %v", len(s.Members), dataShards, all)
			return
		}
	}
}

func secs(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }
