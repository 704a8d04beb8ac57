package control_test

import (
	"context"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/gantry-ml/gantry/pkg/control"
)

// A coordinator's main loop: lead when elected, reconcile membership, and run leader-only work
// (here: committing checkpoints) under the term's context.
func ExampleJob_Lead() {
	log := hclog.New(&hclog.LoggerOptions{Name: "coordinator"})
	cli, err := control.NewClient([]string{"http://127.0.0.1:2379"}, log)
	if err != nil {
		log.Error("etcd", "error", err)
		os.Exit(1)
	}
	defer cli.Close()
	job, _ := control.NewJob(cli, "ffhq", log)
	ctx := context.Background() // cancelled on SIGTERM: the term is resigned
	cfg := control.LeaderConfig{ID: "coord-a", Addr: ":8080", TTL: 5 * time.Second,
		MinWorkers: 2, MaxWorkers: 8, NumShards: 64}
	_ = job.Lead(ctx, cfg, func(term *control.Term) {
		// Leader-only work; it must return when term.Context() is done.
		for st := range job.WatchState(term.Context()) {
			_ = st // plan, verify checkpoints, then:
			_, err := term.CommitCheckpoint(term.Context(), control.CheckpointRecord{Seq: 1, Dir: "s3://b/run/ckpt-000000004000", Nimg: 4000})
			if err != nil {
				log.Warn("commit failed", "error", err) // ErrNotLeader: the term is over
			}
		}
	})
}

// A worker: register, then follow the state to learn its rank, shards and generation.
func ExampleJob_WatchState() {
	cli, _ := control.NewClient([]string{"http://127.0.0.1:2379"}, nil)
	defer cli.Close()
	job, _ := control.NewJob(cli, "ffhq", nil)
	ctx := context.Background()
	reg, err := job.Register(ctx, control.WorkerInfo{ID: "host1-4242", Host: "host1", Backend: "cuda"}, 5*time.Second)
	if err != nil {
		return
	}
	defer reg.Close(context.Background())
	var gen int64
	for st := range job.WatchState(ctx) {
		if st.Generation == gen {
			continue
		}
		gen = st.Generation
		m, ok := st.Member("host1-4242")
		switch {
		case st.Status != control.StatusRunning:
			// paused or pending: stop stepping and wait for the next generation
		case st.IsWaiting("host1-4242"):
			// above the job's maximum: wait for a free place
		case ok:
			// abort the step in flight, re-form the ring as rank m.Rank of len(st.Members),
			// take state from rank 0, and read shards m.Shards
			_ = m
		}
	}
}
