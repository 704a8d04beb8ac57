package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/elastic"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

func newJoinCmd() *cobra.Command {
	var (
		etcd, natsURL, storeURI, job, id, runDir, cacheDir, logLevel string
		threads                                                      int
		ttl                                                          time.Duration
		jsonLogs                                                     bool
		s3                                                           store.Config
	)
	cmd := &cobra.Command{
		Use:   "join --etcd HOST:PORT --nats nats://HOST:PORT --store URI --job NAME",
		Short: "Join a running job: register, take a rank, train with the other workers",
		Long: `Registers this worker with the job's coordinator through etcd (under a lease of --ttl),
waits for a rank, then trains with the other workers, averaging gradients over NATS. The job
spec is read from the job's store (job.yaml, written by the coordinator). When a worker joins
or leaves, the others re-form from rank 0's state without reloading a checkpoint.`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&etcd, "etcd", "", "etcd endpoints, comma-separated host:port")
	f.StringVar(&natsURL, "nats", "", "NATS server URL (nats://host:port)")
	f.StringVar(&storeURI, "store", "", "the job's store: a directory, file:///dir or s3://bucket/prefix")
	f.StringVar(&job, "job", "", "job name")
	f.StringVar(&id, "id", "", "worker id, unique in the job (default: host-pid)")
	f.StringVar(&runDir, "run-dir", "", "local directory for sample grids and metrics (rank 0)")
	f.StringVar(&cacheDir, "cache-dir", "", "local cache of dataset shards")
	f.IntVar(&threads, "threads", 0, "kernel threads (0: the job spec's)")
	f.DurationVar(&ttl, "ttl", 3*time.Second, "registration lease TTL: how fast a dead worker is noticed")
	f.StringVar(&logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	f.BoolVar(&jsonLogs, "log-json", false, "log as JSON lines")
	s3.BindFlags(f)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		for _, req := range []struct{ name, v string }{{"--etcd", etcd}, {"--nats", natsURL}, {"--store", storeURI}, {"--job", job}} {
			if req.v == "" {
				return fmt.Errorf("join: %s is required", req.name)
			}
		}
		if threads < 0 || threads > spec.MaxThreads {
			return fmt.Errorf("join: --threads %d: want 0 (the job spec's) to %d", threads, spec.MaxThreads)
		}
		host, _ := os.Hostname()
		if id == "" {
			id = fmt.Sprintf("%s-%d", host, os.Getpid())
		}
		lg := newLogger("worker", logLevel, jsonLogs).With("worker", id)
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		s3.Logger = lg.Named("store")
		st, err := store.OpenExisting(ctx, storeURI, s3)
		if err != nil {
			return fmt.Errorf("join: --store: %w", err)
		}
		raw, err := store.ReadAll(ctx, st, elastic.JobFileKey)
		if err != nil {
			return fmt.Errorf("join: read the job spec %s from %s (has the coordinator started?): %w", elastic.JobFileKey, st.URI(), err)
		}
		s := spec.Defaults()
		if err := spec.Decode(raw, st.URI()+"/"+elastic.JobFileKey, s); err != nil {
			return err
		}
		if s.Name != job {
			// A mistyped --job registered under a job no coordinator leads and waited forever.
			return fmt.Errorf("join: --job %q, but the job spec in %s is job %q's: give --job %s or the store of job %q", job, st.URI(), s.Name, s.Name, job)
		}
		if threads > 0 {
			s.Threads = threads
		}
		data, err := store.OpenExisting(ctx, s.Dataset.URI, s3)
		if err != nil {
			return fmt.Errorf("join: dataset: %w", err)
		}
		cli, err := control.NewClient(strings.Split(etcd, ","), lg.Named("etcd"))
		if err != nil {
			return err
		}
		defer cli.Close()
		j, err := control.NewJob(cli, job, lg.Named("control"))
		if err != nil {
			return err
		}
		nc, err := nats.Connect(natsURL, nats.Name("gantry-worker-"+id), nats.MaxReconnects(-1),
			nats.ReconnectWait(250*time.Millisecond), nats.Timeout(5*time.Second))
		if err != nil {
			return fmt.Errorf("join: nats %s: %w", natsURL, err)
		}
		defer nc.Close()
		dev, err := kernels.Open(kernels.Config{Threads: s.Threads})
		if err != nil {
			return err
		}
		defer dev.Close()
		w, err := elastic.Start(ctx, elastic.Config{
			Job: j, NATS: nc, TTL: ttl, Logger: lg,
			Info: control.WorkerInfo{ID: id, Host: host, PID: os.Getpid(), Backend: kernels.Backend()},
		})
		if err != nil {
			return err
		}
		sum, err := trainloop.Run(ctx, trainloop.Config{
			Spec: s, Data: data, Out: st, RunDir: runDir, Cluster: w, Device: dev,
			Logger: lg.Named("train"), CacheDir: cacheDir,
		})
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if cerr := w.Close(cctx); cerr != nil {
			lg.Warn("leaving the job", "error", cerr)
		}
		if err != nil {
			if ctx.Err() != nil {
				lg.Info("stopped")
				return nil
			}
			return err
		}
		lg.Info("finished", "kimg", sum.Kimg, "checkpoint", sum.Checkpoint)
		return nil
	}
	return cmd
}
