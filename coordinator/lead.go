package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/dataset"
	"github.com/gantry-ml/gantry/pkg/elastic"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

// leaderWork is what the leading coordinator does during its term besides the membership
// reconcile loop: commit checkpoints rank 0 asks for, record progress, and mark the job
// done when the last tick arrives.
type leaderWork struct {
	job   *control.Job
	nc    *nats.Conn
	out   store.Store
	spec  *spec.Spec
	lg    hclog.Logger
	ticks chan<- trainloop.Tick // optional: every tick, for the dev progress line
}

func (lw *leaderWork) run(t *control.Term) {
	ctx := t.Context()
	lg := lw.lg
	commits, err := lw.nc.Subscribe(elastic.CommitSubject(lw.job.Name()), func(m *nats.Msg) {
		rep := lw.commit(ctx, t, m.Data)
		b, _ := json.Marshal(rep)
		if err := m.Respond(b); err != nil {
			lg.Warn("commit reply not sent", "error", err)
		}
	})
	if err != nil {
		lg.Error("cannot serve checkpoint commits", "error", err)
		return
	}
	defer commits.Unsubscribe()
	progress, err := lw.nc.Subscribe(elastic.ProgressSubject(lw.job.Name()), func(m *nats.Msg) {
		var tk trainloop.Tick
		if err := json.Unmarshal(m.Data, &tk); err != nil {
			lg.Warn("bad progress report", "error", err)
			return
		}
		lw.progress(ctx, t, tk)
	})
	if err != nil {
		lg.Error("cannot follow progress", "error", err)
		return
	}
	defer progress.Unsubscribe()
	<-ctx.Done()
}

// commit verifies a checkpoint's objects against its manifest, then records it in etcd
// under the term's fence.
func (lw *leaderWork) commit(ctx context.Context, t *control.Term, data []byte) elastic.CommitReply {
	var req elastic.CommitRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return elastic.CommitReply{Error: "bad request: " + err.Error()}
	}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	m, err := checkpoint.Verify(vctx, lw.out, req.Dir)
	if err != nil {
		if ctx.Err() != nil {
			// The term ended while verifying: not a verdict on the checkpoint.
			return elastic.CommitReply{Error: "leadership ended: " + err.Error(), Retry: true}
		}
		lw.lg.Error("checkpoint refused", "dir", req.Dir, "error", err)
		return elastic.CommitReply{Error: err.Error()}
	}
	_, err = t.CommitCheckpoint(vctx, control.CheckpointRecord{
		Seq: m.Seq, Dir: req.Dir, Nimg: m.Nimg, Step: m.Step, WorldSize: m.WorldSize, Generation: req.Generation,
	})
	if err != nil {
		// A term that ended (or etcd out of reach) leaves the commit to the next leader:
		// rank 0 asks again.
		retry := ctx.Err() != nil || errors.Is(err, control.ErrNotLeader)
		lw.lg.Warn("checkpoint not recorded", "dir", req.Dir, "error", err, "retry", retry)
		return elastic.CommitReply{Error: err.Error(), Retry: retry}
	}
	lw.lg.Info("checkpoint committed", "dir", req.Dir, "kimg", m.Kimg, "seq", m.Seq)
	return elastic.CommitReply{}
}

func (lw *leaderWork) progress(ctx context.Context, t *control.Term, tk trainloop.Tick) {
	st, _ := lw.job.State(ctx)
	p := control.Progress{Nimg: int64(tk.Kimg * 1000), Kimg: tk.Kimg, LOD: tk.LOD, Stage: tk.Stage,
		ImgPerSec: tk.ImgPerS, Generation: st.Generation}
	if err := t.PutProgress(ctx, p); err != nil && ctx.Err() == nil {
		lw.lg.Warn("progress not recorded", "error", err)
	}
	if tk.Finished {
		_, err := t.Update(ctx, func(s *control.State) error {
			s.Status = control.StatusDone
			return nil
		})
		if err != nil {
			lw.lg.Warn("could not mark the job done", "error", err)
		} else {
			lw.lg.Info("job done", "kimg", tk.Kimg)
		}
	}
	if lw.ticks != nil {
		select {
		case lw.ticks <- tk:
		default:
		}
	}
}

// publishSpec writes the job spec where workers find it.
func publishSpec(ctx context.Context, out store.Store, s *spec.Spec) error {
	b, err := s.YAML()
	if err != nil {
		return err
	}
	return out.Put(ctx, elastic.JobFileKey, bytes.NewReader(b), int64(len(b)))
}

// numShards reads the dataset's shard count (the leader assigns shards to ranks).
func numShards(ctx context.Context, s *spec.Spec, cfg store.Config) (int, error) {
	data, err := store.Open(ctx, s.Dataset.URI, cfg)
	if err != nil {
		return 0, fmt.Errorf("dataset %s: %w", s.Dataset.URI, err)
	}
	m, err := dataset.OpenManifest(ctx, data)
	if err != nil {
		return 0, err
	}
	return len(m.Shards), nil
}
