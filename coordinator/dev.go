package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/dataset"
	"github.com/gantry-ml/gantry/pkg/etcdembed"
	"github.com/gantry-ml/gantry/pkg/natsembed"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

// fashionMNIST is where Debian's dataset-fashion-mnist package puts the IDX files.
const fashionMNIST = "/usr/share/datasets/fashion-mnist"

// devJob is the job name `coordinator dev` runs.
const devJob = "dev"

type devOptions struct {
	data, runDir, workerBin, jobFile string
	workers                          int
	smoke                            bool
	smokeDrop                        float64
	ttl                              time.Duration
	logLevel                         string
	// minSet and maxSet: --workers-min / --workers-max were given, and win over --workers.
	minSet, maxSet bool
}

func newDevCmd() *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev --data fashion-mnist --workers 2",
		Short: "Everything on this machine: embedded etcd and NATS, a local store, N worker processes",
		Long: `Runs a whole job on one machine: an embedded etcd server and an embedded NATS server in this
process, the run directory as the object store, the dataset imported on first use, and
--workers real worker processes that this command starts and restarts if they die. Sample
grids (grids/), metrics (metrics.jsonl), worker logs (logs/) and checkpoints (checkpoints/)
go under --run-dir. Ctrl-C stops everything cleanly; running the same command again resumes
from the last committed checkpoint.

--smoke runs the cpu-smoke preset (about a minute on 2 cores), writes summary.json and exits non-zero
unless the last SWD is below (1 - --smoke-swd-drop) times the first.`,
		Args: cobra.NoArgs,
	}
	flags := spec.RegisterFlags(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&o.data, "data", "fashion-mnist", `dataset: "fashion-mnist" (Debian's dataset-fashion-mnist, imported on first use) or the URI of a Gantry dataset`)
	f.IntVar(&o.workers, "workers", 2, "worker processes to start")
	f.StringVar(&o.runDir, "run-dir", "runs/dev", "run directory (store, grids, metrics, logs, etcd data)")
	f.StringVar(&o.jobFile, "job", "", "job spec file (YAML); default: the fashion-mnist-demo preset (cpu-smoke with --smoke)")
	f.StringVar(&o.workerBin, "worker-bin", "", "worker binary (default: the worker next to this binary, else PATH)")
	f.BoolVar(&o.smoke, "smoke", false, "CI smoke mode: short run, summary.json, exit code from the SWD drop")
	f.Float64Var(&o.smokeDrop, "smoke-swd-drop", 0.2, "smoke mode: required fractional drop of SWD from the first to the last measurement")
	// 6 s: the embedded etcd shares the cores with the workers' kernels; at 3 s, a machine
	// loaded past its cores (a demo beside a build) lost every lease in turn and paused.
	f.DurationVar(&o.ttl, "ttl", 6*time.Second, "worker and coordinator lease TTL: how fast a dead worker is noticed")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.workers < 1 {
			return fmt.Errorf("dev: --workers %d: need at least 1", o.workers)
		}
		if o.runDir == "" {
			return fmt.Errorf("dev: --run-dir is empty; give a directory (default runs/dev)")
		}
		if o.ttl <= 0 {
			return fmt.Errorf("dev: --ttl %s: want a positive duration such as 6s", o.ttl)
		}
		if o.smokeDrop < 0 || o.smokeDrop >= 1 || o.smokeDrop != o.smokeDrop {
			return fmt.Errorf("dev: --smoke-swd-drop %g: want a fraction in [0, 1)", o.smokeDrop)
		}
		if o.jobFile == "" && !cmd.Flags().Changed("preset") {
			preset := "fashion-mnist-demo"
			if o.smoke {
				preset = "cpu-smoke"
			}
			if err := cmd.Flags().Set("preset", preset); err != nil {
				return err
			}
		}
		s, err := flags.Load(o.jobFile)
		if err != nil {
			return err
		}
		// --dataset-uri or the job file's dataset.uri name the dataset as well as --data; the
		// default --data fashion-mnist silently replaced them.
		if u := s.Dataset.URI; u != "" {
			switch {
			case !cmd.Flags().Changed("data"):
				o.data = u
			case o.data != u:
				return fmt.Errorf("dev: --data %s and dataset.uri %s (--dataset-uri or the job file) name different datasets; give one", o.data, u)
			}
		}
		o.minSet, o.maxSet = cmd.Flags().Changed("workers-min"), cmd.Flags().Changed("workers-max")
		return runDev(cmd.Context(), o, s)
	}
	return cmd
}

func runDev(parent context.Context, o devOptions, s *spec.Spec) error {
	lg := hclog.New(&hclog.LoggerOptions{Name: "dev", Level: hclog.LevelFromString(o.logLevel), Output: os.Stderr})
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	runDir, err := filepath.Abs(o.runDir)
	if err != nil {
		return err
	}
	for _, d := range []string{runDir, filepath.Join(runDir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("dev: run directory: %w", err)
		}
	}
	unlock, err := lockRunDir(runDir)
	if err != nil {
		return err
	}
	defer unlock()
	workerBin, err := findWorker(o.workerBin)
	if err != nil {
		return err
	}
	s.Name = devJob
	// Without explicit bounds the job runs with exactly --workers; --workers-min below it lets
	// the job go on while a killed worker is restarted.
	if !o.minSet {
		s.Workers.Min = o.workers
	}
	if !o.maxSet {
		s.Workers.Max = o.workers
	}
	if s.Threads == 0 || s.Threads*o.workers > max(2, numCPU()) {
		s.Threads = max(1, numCPU()/o.workers)
	}
	if err := s.Validate(); err != nil {
		return err
	}
	if b := kernels.Backend(); s.Device != b {
		return fmt.Errorf("dev: device = %q: the workers are built with the %s backend", s.Device, b)
	}
	// The dataset, once the spec is known to be valid.
	dataURI, err := devDataset(ctx, o.data, runDir, s.Dataset.Resolution, lg)
	if err != nil {
		return err
	}
	s.Dataset.URI = dataURI
	out, err := store.Open(ctx, runDir, store.Config{})
	if err != nil {
		return err
	}
	if err := checkResumable(ctx, out, runDir, s); err != nil {
		return err
	}
	if err := publishSpec(ctx, out, s); err != nil {
		return err
	}
	shards, err := numShards(ctx, s, store.Config{})
	if err != nil {
		return err
	}

	// The servers.
	etcd, err := etcdembed.Start(ctx, etcdembed.Options{Dir: filepath.Join(runDir, "etcd")})
	if err != nil {
		return fmt.Errorf("dev: embedded etcd: %w", err)
	}
	defer etcd.Close()
	ns, err := natsembed.Start(natsembed.Options{})
	if err != nil {
		return fmt.Errorf("dev: embedded nats: %w", err)
	}
	defer ns.Shutdown()
	lg.Info("servers up", "etcd", etcd.Endpoint(), "nats", ns.URL(), "run_dir", runDir)

	cli, err := control.NewClient(etcd.Endpoints(), lg.Named("etcd"))
	if err != nil {
		return err
	}
	defer cli.Close()
	job, err := control.NewJob(cli, devJob, lg.Named("control"))
	if err != nil {
		return err
	}
	nc, err := nats.Connect(ns.URL(), nats.Name("gantry-coordinator"), nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()

	ticks := make(chan trainloop.Tick, 16)
	lw := &leaderWork{job: job, nc: nc, out: out, spec: s, lg: lg.Named("leader"), ticks: ticks}
	leadCtx, stopLead := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		err := job.Lead(leadCtx, control.LeaderConfig{ID: "dev-coordinator", TTL: o.ttl,
			MinWorkers: s.Workers.Min, MaxWorkers: s.Workers.Max, NumShards: shards}, func(t *control.Term) {
			if err := reopen(t.Context(), t); err != nil {
				lg.Warn("could not reopen the job", "error", err)
			}
			lw.run(t)
		})
		if err != nil {
			lg.Error("leadership loop failed", "error", err)
		}
	})

	// The workers.
	sup := &supervisor{bin: workerBin, lg: lg.Named("supervisor"), logs: filepath.Join(runDir, "logs")}
	for i := 0; i < o.workers; i++ {
		args := []string{"join", "--etcd", etcd.Endpoint(), "--nats", ns.URL(), "--store", runDir,
			"--job", devJob, "--id", fmt.Sprintf("worker-%d", i), "--run-dir", runDir,
			"--ttl", o.ttl.String(), "--log-level", o.logLevel}
		sup.start(ctx, fmt.Sprintf("worker-%d", i), args)
	}

	summary := devSummary{RunDir: runDir}
	start := time.Now()
	finished := false
	for !finished {
		select {
		case <-ctx.Done():
			lg.Info("stopping: interrupt; run the same command again to resume from the last checkpoint")
			finished = true
		case tk := <-ticks:
			summary.Ticks = append(summary.Ticks, tk)
			printProgress(lg, tk, s.Schedule.TotalKimg)
			if tk.Finished {
				finished = true
			}
		case <-sup.allDone():
			finished = true
		}
	}
	failed := sup.failures()
	sup.stopAll(30 * time.Second)
	stopLead()
	wg.Wait()
	summary.Seconds = time.Since(start).Seconds()
	if st, err := job.State(context.Background()); err == nil && st.Checkpoint != nil {
		summary.Checkpoint = st.Checkpoint.Dir
	}
	if len(failed) == len(sup.names()) && len(failed) > 0 {
		return fmt.Errorf("dev: every worker failed; %s", strings.Join(failed, "; "))
	}
	return finishDev(o, lg, summary, parent.Err() == nil && ctx.Err() == nil)
}

// checkResumable refuses, before anything starts, a run directory whose last committed
// checkpoint has another architecture than the job (a demo run directory kept across a
// change of the preset): the workers would each fail on it.
func checkResumable(ctx context.Context, out store.Store, runDir string, s *spec.Spec) error {
	dir, m, err := checkpoint.Latest(ctx, out, trainloop.CheckpointPrefix)
	if err != nil || dir == "" || m == nil || m.Spec == nil {
		return nil // nothing to resume from (or nothing readable: the workers will say)
	}
	if err := spec.CheckResume(m.Spec, s); err != nil {
		return fmt.Errorf("dev: %s/%s was trained with another configuration; move %s away to start afresh, or pass the old values as flags: %w",
			runDir, dir, runDir, err)
	}
	return nil
}

// reopen moves a job left done by an earlier run back to pending so that its workers can
// join again: a second `coordinator dev` continues training when the total grew, and
// otherwise finishes at once from the last checkpoint.
func reopen(ctx context.Context, t *control.Term) error {
	_, err := t.Update(ctx, func(s *control.State) error {
		if s.Status == control.StatusDone {
			s.Status = control.StatusPending
		}
		return nil
	})
	return err
}

func printProgress(lg hclog.Logger, tk trainloop.Tick, total float64) {
	swd := "-"
	if tk.SWD > 0 {
		swd = fmt.Sprintf("%.1f", tk.SWD)
	}
	lg.Info(fmt.Sprintf("%-16s kimg %7.2f / %g  %6.1f img/s  SWD %6s  ETA %s", tk.Stage, tk.Kimg, total, tk.ImgPerS, swd,
		(time.Duration(tk.ETA) * time.Second).String()))
}

type devSummary struct {
	RunDir     string           `json:"run_dir"`
	Seconds    float64          `json:"seconds"`
	Checkpoint string           `json:"checkpoint"`
	FirstSWD   float64          `json:"first_swd"`
	LastSWD    float64          `json:"last_swd"`
	Pass       bool             `json:"pass"`
	Reason     string           `json:"reason,omitempty"`
	Ticks      []trainloop.Tick `json:"ticks"`
}

func finishDev(o devOptions, lg hclog.Logger, sum devSummary, completed bool) error {
	// The SWD curve is the whole run's, across restarts: metrics.jsonl keeps every tick
	// rank 0 reported (a resumed run may measure only once).
	ticks := sum.Ticks
	if hist, err := readMetrics(filepath.Join(sum.RunDir, "metrics.jsonl")); err == nil && len(hist) > 0 {
		ticks = hist
	}
	for _, t := range ticks {
		if t.SWD > 0 {
			if sum.FirstSWD == 0 {
				sum.FirstSWD = t.SWD
			}
			sum.LastSWD = t.SWD
		}
	}
	if !o.smoke {
		if completed {
			lg.Info("training finished", "seconds", int(sum.Seconds), "first_swd", sum.FirstSWD, "last_swd", sum.LastSWD,
				"checkpoint", sum.Checkpoint, "grids", filepath.Join(sum.RunDir, "grids"))
		}
		return nil
	}
	switch {
	case !completed:
		sum.Reason = "the run did not finish"
	case sum.FirstSWD == 0 || sum.LastSWD == 0:
		sum.Reason = "SWD was not measured twice"
	case sum.LastSWD > (1-o.smokeDrop)*sum.FirstSWD:
		sum.Reason = fmt.Sprintf("SWD fell from %.2f to %.2f, less than the required %.0f%%", sum.FirstSWD, sum.LastSWD, 100*o.smokeDrop)
	default:
		sum.Pass = true
	}
	b, _ := json.MarshalIndent(sum, "", "  ")
	p := filepath.Join(sum.RunDir, "summary.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return err
	}
	if !sum.Pass {
		return fmt.Errorf("smoke test failed: %s (summary: %s)", sum.Reason, p)
	}
	lg.Info("smoke test passed", "first_swd", sum.FirstSWD, "last_swd", sum.LastSWD, "summary", p)
	return nil
}

// devDataset returns the dataset URI, importing Fashion-MNIST into the run directory the
// first time.
func devDataset(ctx context.Context, data, runDir string, resolution int, lg hclog.Logger) (string, error) {
	if data != "fashion-mnist" {
		return data, nil
	}
	dir := filepath.Join(runDir, "data")
	st, err := store.Open(ctx, dir, store.Config{})
	if err != nil {
		return "", err
	}
	if m, err := dataset.OpenManifest(ctx, st); err == nil {
		if m.Resolution != resolution {
			return "", fmt.Errorf("dev: %s holds a %dx%d dataset; the job wants %d (use another --run-dir)", dir, m.Resolution, m.Resolution, resolution)
		}
		return dir, nil
	}
	src := filepath.Join(fashionMNIST, "train-images-idx3-ubyte.gz")
	if _, err := os.Stat(src); err != nil {
		return "", fmt.Errorf("dev: Fashion-MNIST not found at %s: install Debian's dataset-fashion-mnist (make deps does)", src)
	}
	lg.Info("importing Fashion-MNIST (first run only)", "source", src, "out", dir)
	_, err = dataset.Create(ctx, st, dataset.Options{
		Source: src, Labels: filepath.Join(fashionMNIST, "train-labels-idx1-ubyte.gz"), Resolution: resolution,
		Filter: "none", Background: "000000", Square: "pad",
	}, lg.Named("dataset"), io.Discard)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("dev: import of Fashion-MNIST into %s interrupted; run the same command again to resume it", dir)
		}
		return "", fmt.Errorf("dev: import Fashion-MNIST: %w", err)
	}
	return dir, nil
}

// lockRunDir takes an exclusive lock on runDir/dev.lock for this process's lifetime (the
// kernel drops it when the process dies). A second `coordinator dev` on the same run directory
// blocked forever on the embedded etcd's database lock, deaf to Ctrl-C.
func lockRunDir(runDir string) (func(), error) {
	p := filepath.Join(runDir, "dev.lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("dev: run directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(p)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("dev: %s is in use by another coordinator dev (pid %s); stop it or give another --run-dir", runDir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("dev: lock %s: %w", p, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}

func findWorker(flag string) (string, error) {
	if flag != "" {
		p, err := exec.LookPath(flag)
		if err != nil {
			return "", fmt.Errorf("dev: --worker-bin %s: %w", flag, err)
		}
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "worker")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("worker"); err == nil {
		return p, nil
	}
	return "", errors.New("dev: no worker binary next to the coordinator or on PATH: build it (make build) or give --worker-bin")
}

// readMetrics reads the ticks of a run's metrics.jsonl.
func readMetrics(path string) ([]trainloop.Tick, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []trainloop.Tick
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var t trainloop.Tick
		if err := json.Unmarshal(line, &t); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, t)
	}
	return out, nil
}
