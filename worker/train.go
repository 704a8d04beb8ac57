package main

import (
	"fmt"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

// newLogger builds the process's root logger.
func newLogger(name, level string, json bool) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.LevelFromString(level), Output: os.Stderr, JSONFormat: json})
}

// newTrainCmd returns `worker train`: a whole training run in this one process.
func newTrainCmd() *cobra.Command {
	var (
		jobFile, out, runDir, cacheDir, logLevel string
		stopKimg                                 float64
		jsonLogs                                 bool
		s3                                       store.Config
	)
	cmd := &cobra.Command{
		Use:   "train --job job.yaml | --preset NAME [--dataset-uri URI] --out URI",
		Short: "Train in this one process (no coordinator): CI smoke runs, single machines",
		Long: `Trains StyleGAN on one machine with the job spec (file, preset and flags; flags win).
Checkpoints go to --out (a directory, file:///dir or s3://bucket/prefix) under checkpoints/;
sample grids and metrics.jsonl go to --run-dir. A run finds the last committed checkpoint in
--out and resumes from it exactly.`,
		Args: cobra.NoArgs,
	}
	flags := spec.RegisterFlags(cmd.Flags())
	cmd.Flags().StringVar(&jobFile, "job", "", "job spec file (YAML)")
	cmd.Flags().StringVar(&out, "out", "", "where checkpoints go: a directory, file:///dir or s3://bucket/prefix")
	cmd.Flags().StringVar(&runDir, "run-dir", "", "local directory for sample grids and metrics (default: --out when it is a directory)")
	cmd.Flags().StringVar(&cacheDir, "cache-dir", "", "local cache of dataset shards (default: none)")
	cmd.Flags().Float64Var(&stopKimg, "stop-kimg", 0, "stop after this many kimg (0: the spec's total)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	cmd.Flags().BoolVar(&jsonLogs, "log-json", false, "log as JSON lines")
	s3.BindFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		s, err := flags.Load(jobFile)
		if err != nil {
			return err
		}
		if s.Dataset.URI == "" {
			return fmt.Errorf("train: no dataset: give --dataset-uri or dataset.uri in the job file")
		}
		if out == "" {
			return fmt.Errorf("train: --out is required (a directory, file:///dir or s3://bucket/prefix)")
		}
		if !(stopKimg >= 0) || math.IsInf(stopKimg, 0) {
			return fmt.Errorf("train: --stop-kimg %g: want a finite number >= 0 (0: the spec's total)", stopKimg)
		}
		lg := newLogger("worker", logLevel, jsonLogs)
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		s3.Logger = lg.Named("store")
		data, err := store.OpenExisting(ctx, s.Dataset.URI, s3)
		if err != nil {
			return fmt.Errorf("train: dataset: %w", err)
		}
		outSt, err := store.Open(ctx, out, s3)
		if err != nil {
			return fmt.Errorf("train: out: %w", err)
		}
		if runDir == "" && !strings.HasPrefix(out, "s3://") {
			runDir = strings.TrimPrefix(out, "file://")
		}
		dev, err := kernels.Open(kernels.Config{Threads: s.Threads})
		if err != nil {
			return err
		}
		defer dev.Close()
		lg.Info("training", "job", s.Name, "backend", kernels.Backend(), "threads", dev.Threads(),
			"resolution", s.Dataset.Resolution, "total_kimg", s.Schedule.TotalKimg, "out", outSt.URI())
		sum, err := trainloop.Run(ctx, trainloop.Config{
			Spec: s, Data: data, Out: outSt, RunDir: runDir, Device: dev,
			Logger: lg.Named("train"), StopKimg: stopKimg, CacheDir: cacheDir,
		})
		if err != nil {
			if ctx.Err() != nil {
				lg.Info("interrupted; rerun the same command to resume from the last checkpoint")
				return nil
			}
			return err
		}
		lg.Info("done", "kimg", sum.Kimg, "checkpoint", sum.Checkpoint)
		return nil
	}
	return cmd
}
