package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
)

func newServeCmd() *cobra.Command {
	var (
		jobFile, etcd, natsURL, storeURI, id, logLevel string
		ttl                                            time.Duration
		jsonLogs                                       bool
		s3                                             store.Config
	)
	cmd := &cobra.Command{
		Use:   "serve --job job.yaml --etcd HOST:PORT --nats nats://HOST:PORT --store s3://bucket/prefix",
		Short: "Coordinate a job on a cluster: campaign for leadership, manage members, commit checkpoints",
		Long: `Campaigns for the job's leadership through etcd (run two or more for standbys: one leads, the
others take over within the lease TTL). The leader keeps the ranked member list and the
generation, assigns dataset shards, pauses the job below the minimum worker count, verifies and
records the checkpoints rank 0 writes, and records progress. Workers join with 'worker join'.
The job spec is published to the store as job.yaml for the workers.`,
		Args: cobra.NoArgs,
	}
	flags := spec.RegisterFlags(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&jobFile, "job", "", "job spec file (YAML)")
	f.StringVar(&etcd, "etcd", "", "etcd endpoints, comma-separated host:port")
	f.StringVar(&natsURL, "nats", "", "NATS server URL")
	f.StringVar(&storeURI, "store", "", "the job's store (checkpoints, job.yaml): a directory, file:///dir or s3://bucket/prefix")
	f.StringVar(&id, "id", "", "coordinator id in the election (default: host-pid)")
	f.DurationVar(&ttl, "ttl", 5*time.Second, "leadership lease TTL: how fast a standby takes over")
	f.StringVar(&logLevel, "log-level", "info", "log level")
	f.BoolVar(&jsonLogs, "log-json", false, "log as JSON lines")
	s3.BindFlags(f)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		for _, req := range []struct{ name, v string }{{"--etcd", etcd}, {"--nats", natsURL}, {"--store", storeURI}} {
			if req.v == "" {
				return fmt.Errorf("serve: %s is required", req.name)
			}
		}
		s, err := flags.Load(jobFile)
		if err != nil {
			return err
		}
		if s.Dataset.URI == "" {
			return fmt.Errorf("serve: the job has no dataset.uri")
		}
		host, _ := os.Hostname()
		if id == "" {
			id = fmt.Sprintf("%s-%d", host, os.Getpid())
		}
		lg := hclog.New(&hclog.LoggerOptions{Name: "coordinator", Level: hclog.LevelFromString(logLevel), Output: os.Stderr, JSONFormat: jsonLogs}).With("id", id)
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		s3.Logger = lg.Named("store")
		out, err := store.Open(ctx, storeURI, s3)
		if err != nil {
			return err
		}
		shards, err := numShards(ctx, s, s3)
		if err != nil {
			return err
		}
		if err := publishSpec(ctx, out, s); err != nil {
			return err
		}
		cli, err := control.NewClient(strings.Split(etcd, ","), lg.Named("etcd"))
		if err != nil {
			return err
		}
		defer cli.Close()
		job, err := control.NewJob(cli, s.Name, lg.Named("control"))
		if err != nil {
			return err
		}
		nc, err := nats.Connect(natsURL, nats.Name("gantry-coordinator-"+id), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("serve: nats %s: %w", natsURL, err)
		}
		defer nc.Close()
		lw := &leaderWork{job: job, nc: nc, out: out, spec: s, lg: lg.Named("leader")}
		lg.Info("campaigning", "job", s.Name, "shards", shards, "min_workers", s.Workers.Min, "max_workers", s.Workers.Max)
		return job.Lead(ctx, control.LeaderConfig{ID: id, TTL: ttl, MinWorkers: s.Workers.Min,
			MaxWorkers: s.Workers.Max, NumShards: shards}, lw.run)
	}
	return cmd
}
