package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
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

// commit commits a checkpoint rank 0 has written: it verifies every object against the
// manifest in the request, writes the manifest create-only, then records the checkpoint in
// etcd under the term's fence. A retry is idempotent: a manifest already in the store with
// the same bytes (written by an earlier leader whose term ended before the record) is
// recorded; a different one is refused.
func (lw *leaderWork) commit(ctx context.Context, t *control.Term, data []byte) elastic.CommitReply {
	var req elastic.CommitRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return elastic.CommitReply{Error: "bad request: " + err.Error()}
	}
	if len(req.Manifest) == 0 {
		return elastic.CommitReply{Error: fmt.Sprintf("commit of %s carries no manifest (a worker older than this coordinator?)", req.Dir)}
	}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// refuse answers a failure: a term that ended (or etcd out of reach at the end of it)
	// is no verdict on the checkpoint, and rank 0 asks the next leader.
	refuse := func(what string, err error) elastic.CommitReply {
		if ctx.Err() != nil || errors.Is(err, control.ErrNotLeader) {
			lw.lg.Warn("checkpoint not committed: leadership ended", "dir", req.Dir, "step", what, "error", err)
			return elastic.CommitReply{Error: "leadership ended: " + err.Error(), Retry: true}
		}
		lw.lg.Error("checkpoint refused", "dir", req.Dir, "step", what, "error", err)
		return elastic.CommitReply{Error: err.Error()}
	}
	m, err := checkpoint.VerifyManifest(vctx, lw.out, req.Dir, req.Manifest)
	if err != nil {
		return refuse("verify", err)
	}
	if want := path.Base(checkpoint.DirName("", m.Nimg)); path.Base(req.Dir) != want {
		return refuse("verify", fmt.Errorf("checkpoint: %s holds a manifest of %d images, which belongs in %s", req.Dir, m.Nimg, want))
	}
	rec := control.CheckpointRecord{Seq: m.Seq, Dir: req.Dir, Nimg: m.Nimg, Step: m.Step, WorldSize: m.WorldSize,
		Generation: req.Generation, ManifestSHA256: checkpoint.ManifestSHA256(req.Manifest)}
	if err := lw.checkRecordable(vctx, rec); err != nil {
		return refuse("check", err)
	}
	if err := checkpoint.CommitManifest(vctx, lw.out, req.Dir, req.Manifest); err != nil {
		return refuse("write manifest", err)
	}
	if _, err := t.CommitCheckpoint(vctx, rec); err != nil {
		return refuse("record", err)
	}
	lw.lg.Debug("checkpoint verified and recorded", "dir", req.Dir, "kimg", m.Kimg, "seq", m.Seq)
	return elastic.CommitReply{}
}

// checkRecordable refuses, before the manifest is written, a checkpoint that etcd would not
// record: a seq at or below the last committed one that is not this very checkpoint (a
// retry of it is fine). Otherwise the store would hold a manifest no record points to.
func (lw *leaderWork) checkRecordable(ctx context.Context, rec control.CheckpointRecord) error {
	st, err := lw.job.State(ctx)
	if errors.Is(err, control.ErrNoState) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Checkpoint == nil || rec.Seq > st.Checkpoint.Seq {
		return nil
	}
	recs, err := lw.job.Checkpoints(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.Seq == rec.Seq {
			if r.Dir == rec.Dir && r.ManifestSHA256 == rec.ManifestSHA256 {
				return nil
			}
			return fmt.Errorf("%w: seq %d is already recorded for %s (manifest sha256 %.16s...)", control.ErrCheckpointExists, rec.Seq, r.Dir, r.ManifestSHA256)
		}
	}
	return fmt.Errorf("%w: seq %d, last committed %d (%s)", control.ErrStaleCheckpoint, rec.Seq, st.Checkpoint.Seq, st.Checkpoint.Dir)
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
	data, err := store.OpenExisting(ctx, s.Dataset.URI, cfg)
	if err != nil {
		return 0, fmt.Errorf("dataset %s: %w", s.Dataset.URI, err)
	}
	if err := trainloop.CheckDataset(ctx, data, s); err != nil {
		return 0, err
	}
	m, err := dataset.OpenManifest(ctx, data)
	if err != nil {
		return 0, err
	}
	return len(m.Shards), nil
}
