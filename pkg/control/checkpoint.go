package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CommitCheckpoint records a checkpoint as committed: in one fenced transaction it creates
// checkpoints/<seq> and sets the state's last checkpoint. Call it after the checkpoint's
// manifest is in the store and verified. It is idempotent: committing the same record again
// (a retry after a lost answer) succeeds without writing. A different record under an
// existing seq gives ErrCheckpointExists, a seq not after the last committed one
// ErrStaleCheckpoint, a deposed term ErrNotLeader. rec.Committed is set when zero.
func (t *Term) CommitCheckpoint(ctx context.Context, rec CheckpointRecord) (State, error) {
	if rec.Seq <= 0 || rec.Dir == "" || rec.Nimg < 0 {
		return State{}, fmt.Errorf("control: checkpoint record needs seq > 0, a dir and nimg >= 0 (got seq %d, dir %q, nimg %d)", rec.Seq, rec.Dir, rec.Nimg)
	}
	if rec.Committed.IsZero() {
		rec.Committed = time.Now().UTC()
	}
	j := t.job
	key := j.CheckpointKey(rec.Seq)
	recVal, err := json.Marshal(rec)
	if err != nil {
		return State{}, fmt.Errorf("control: encode checkpoint %d: %w", rec.Seq, err)
	}
	for {
		if t.ctx.Err() != nil {
			return State{}, ErrNotLeader
		}
		cur, _, err := j.readState(ctx)
		if err != nil {
			return State{}, err
		}
		if cur.Checkpoint != nil && rec.Seq <= cur.Checkpoint.Seq {
			return t.alreadyCommitted(ctx, cur, rec)
		}
		next := cur.clone()
		next.Job, next.Leader, next.LeaderRev = j.name, t.info.ID, t.info.Rev
		r := rec
		next.Checkpoint = &r
		next.Updated = time.Now().UTC()
		val, err := json.Marshal(next)
		if err != nil {
			return State{}, fmt.Errorf("control: encode job state: %w", err)
		}
		resp, err := j.cli.Txn(ctx).
			If(t.Guard(),
				clientv3.Compare(clientv3.ModRevision(j.StateKey()), "=", cur.Revision),
				clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(recVal)), clientv3.OpPut(j.StateKey(), string(val))).
			Else(clientv3.OpGet(t.info.Key), clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return State{}, fmt.Errorf("control: commit checkpoint %d: %w", rec.Seq, err)
		}
		if resp.Succeeded {
			next.Revision = resp.Header.Revision
			t.log.Info("checkpoint committed", "seq", rec.Seq, "dir", rec.Dir, "nimg", rec.Nimg)
			return next, nil
		}
		if !t.stillLeads(resp) {
			return State{}, t.lost()
		}
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			return t.alreadyCommitted(ctx, cur, rec)
		}
		// The state changed between read and write: read again.
	}
}

// alreadyCommitted answers a commit of a seq at or below the last committed one: success if
// the same record is stored under it, an error otherwise.
func (t *Term) alreadyCommitted(ctx context.Context, cur State, rec CheckpointRecord) (State, error) {
	resp, err := t.job.cli.Get(ctx, t.job.CheckpointKey(rec.Seq))
	if err != nil {
		return State{}, fmt.Errorf("control: read checkpoint %d: %w", rec.Seq, err)
	}
	if len(resp.Kvs) == 0 {
		return State{}, fmt.Errorf("%w: seq %d, last committed %d", ErrStaleCheckpoint, rec.Seq, cur.Checkpoint.Seq)
	}
	var have CheckpointRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &have); err != nil {
		return State{}, fmt.Errorf("control: decode checkpoint %d: %w", rec.Seq, err)
	}
	if !have.sameContent(rec) {
		return State{}, fmt.Errorf("%w: seq %d holds %s", ErrCheckpointExists, rec.Seq, have.Dir)
	}
	s, err := t.job.State(ctx)
	if err != nil {
		return State{}, err
	}
	return s, nil
}

// Checkpoints lists the committed checkpoint records, lowest seq first.
func (j *Job) Checkpoints(ctx context.Context) ([]CheckpointRecord, error) {
	resp, err := j.cli.Get(ctx, j.CheckpointsPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("control: list checkpoints: %w", err)
	}
	out := make([]CheckpointRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec CheckpointRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("control: decode checkpoint record %s: %w", kv.Key, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

// DeleteCheckpoints removes checkpoint records (after retention deleted their objects) in one
// fenced transaction. The last committed checkpoint cannot be deleted.
func (t *Term) DeleteCheckpoints(ctx context.Context, seqs ...int64) error {
	if len(seqs) == 0 {
		return nil
	}
	cur, err := t.job.State(ctx)
	if err != nil {
		return err
	}
	if cur.Checkpoint != nil && slices.Contains(seqs, cur.Checkpoint.Seq) {
		return fmt.Errorf("control: checkpoint %d is the last committed one and cannot be deleted", cur.Checkpoint.Seq)
	}
	ops := make([]clientv3.Op, len(seqs))
	for i, s := range seqs {
		ops[i] = clientv3.OpDelete(t.job.CheckpointKey(s))
	}
	// The state's mod revision is compared too, so that a commit racing with this delete
	// cannot have made one of seqs the last committed checkpoint.
	resp, err := t.job.cli.Txn(ctx).
		If(t.Guard(), clientv3.Compare(clientv3.ModRevision(t.job.StateKey()), "=", cur.Revision)).
		Then(ops...).
		Else(clientv3.OpGet(t.info.Key)).
		Commit()
	if err != nil {
		return fmt.Errorf("control: delete checkpoint records: %w", err)
	}
	if !resp.Succeeded {
		if !t.stillLeads(resp) {
			return t.lost()
		}
		return t.DeleteCheckpoints(ctx, seqs...)
	}
	return nil
}

// Progress is the training position the leader publishes for `coordinator status`.
type Progress struct {
	Nimg       int64     `json:"nimg"`
	Kimg       float64   `json:"kimg"`
	LOD        float64   `json:"lod"`
	Resolution int       `json:"resolution"`
	Stage      string    `json:"stage,omitempty"` // e.g. "16x16 fading in"
	Step       int64     `json:"step"`
	ImgPerSec  float64   `json:"img_per_sec"`
	Generation int64     `json:"generation"`
	Updated    time.Time `json:"updated"`
}

// PutProgress publishes p under the term's fence; kept apart from the state record so that
// frequent progress updates do not wake the workers' state watches.
func (t *Term) PutProgress(ctx context.Context, p Progress) error {
	if p.Updated.IsZero() {
		p.Updated = time.Now().UTC()
	}
	val, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("control: encode progress: %w", err)
	}
	resp, err := t.job.cli.Txn(ctx).
		If(t.Guard()).
		Then(clientv3.OpPut(t.job.ProgressKey(), string(val))).
		Else(clientv3.OpGet(t.info.Key)).
		Commit()
	if err != nil {
		return fmt.Errorf("control: write progress: %w", err)
	}
	if !resp.Succeeded {
		return t.lost()
	}
	return nil
}

// Progress reads the last published progress; the zero Progress when none was published.
func (j *Job) Progress(ctx context.Context) (Progress, error) {
	resp, err := j.cli.Get(ctx, j.ProgressKey())
	if err != nil {
		return Progress{}, fmt.Errorf("control: read progress: %w", err)
	}
	var p Progress
	if len(resp.Kvs) == 0 {
		return p, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
		return Progress{}, fmt.Errorf("control: decode progress: %w", err)
	}
	return p, nil
}

// Overview is everything `coordinator status` shows about a job, read in one call.
type Overview struct {
	Job         string             `json:"job"`
	Leader      *LeaderInfo        `json:"leader,omitempty"` // nil when no coordinator leads
	State       *State             `json:"state,omitempty"`  // nil before the first leader wrote it
	Progress    Progress           `json:"progress"`
	Workers     []WorkerInfo       `json:"workers"` // registered, in registration order
	Checkpoints []CheckpointRecord `json:"checkpoints"`
}

// Overview reads the leader, state, progress, registered workers and checkpoint records.
func (j *Job) Overview(ctx context.Context) (Overview, error) {
	o := Overview{Job: j.name}
	li, err := j.Leader(ctx)
	switch {
	case err == nil:
		o.Leader = &li
	case !errors.Is(err, ErrNoLeader):
		return Overview{}, err
	}
	s, err := j.State(ctx)
	switch {
	case err == nil:
		o.State = &s
	case !errors.Is(err, ErrNoState):
		return Overview{}, err
	}
	if o.Progress, err = j.Progress(ctx); err != nil {
		return Overview{}, err
	}
	if o.Workers, err = j.Workers(ctx); err != nil {
		return Overview{}, err
	}
	if o.Checkpoints, err = j.Checkpoints(ctx); err != nil {
		return Overview{}, err
	}
	return o, nil
}
