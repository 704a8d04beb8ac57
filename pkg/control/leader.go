package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaderConfig configures a coordinator's leadership loop.
type LeaderConfig struct {
	// ID and Addr identify this coordinator in the election (ID required).
	ID, Addr string
	// TTL is the session lease (0: DefaultTTL).
	TTL time.Duration
	// Settle is how long the leader waits after a membership event for more before it
	// re-forms the member list (TorchElastic's last-call window): 0 means 500 ms, negative
	// means no wait.
	Settle time.Duration
	// MinWorkers and MaxWorkers bound the world size (MaxWorkers 0: no limit); NumShards is
	// the dataset's shard count. The leader writes them into the state record.
	MinWorkers, MaxWorkers, NumShards int
}

func (c LeaderConfig) settle() time.Duration {
	switch {
	case c.Settle == 0:
		return 500 * time.Millisecond
	case c.Settle < 0:
		return 0
	}
	return c.Settle
}

func (c LeaderConfig) check() error {
	if c.MinWorkers < 0 || c.MaxWorkers < 0 || c.NumShards < 0 {
		return fmt.Errorf("control: negative worker bound or shard count (min %d, max %d, shards %d)", c.MinWorkers, c.MaxWorkers, c.NumShards)
	}
	if c.MaxWorkers > 0 && c.MinWorkers > c.MaxWorkers {
		return fmt.Errorf("control: min workers %d above max workers %d", c.MinWorkers, c.MaxWorkers)
	}
	return nil
}

// Lead is a coordinator's leadership loop: it campaigns, and for each term it wins it runs
// Reconcile and work(term) (if not nil) side by side until the term ends, waits for both,
// and campaigns again. It returns nil when ctx ends (resigning a term it holds, so a standby
// takes over at once), or an error for a bad config. work must return when term.Context()
// is done.
func (j *Job) Lead(ctx context.Context, cfg LeaderConfig, work func(*Term)) error {
	if err := cfg.check(); err != nil {
		return err
	}
	for {
		t, err := j.Campaign(ctx, LeaderInfo{ID: cfg.ID, Addr: cfg.Addr}, cfg.TTL)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		var wg sync.WaitGroup
		wg.Go(func() { t.Reconcile(cfg) })
		if work != nil {
			wg.Go(func() { work(t) })
		}
		wg.Wait()
		<-t.Done()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// Update changes the job state record under the term's fence: it reads the record, applies fn
// to a copy and writes it back if nothing changed it meanwhile, retrying otherwise; fn may
// therefore run more than once and must compute from the state it is given. A missing record
// starts as a zero State. Returns the state written, or ErrNotLeader (nothing written) when
// the term no longer leads. If fn leaves the record as it was, nothing is written.
func (t *Term) Update(ctx context.Context, fn func(*State) error) (State, error) {
	_, next, err := t.update(ctx, fn)
	return next, err
}

// update is Update returning the record it replaced as well.
func (t *Term) update(ctx context.Context, fn func(*State) error) (cur, next State, err error) {
	j := t.job
	for {
		if t.ctx.Err() != nil {
			return State{}, State{}, ErrNotLeader
		}
		cur, _, err = j.readState(ctx)
		if err != nil {
			return State{}, State{}, err
		}
		next = cur.clone()
		if err := fn(&next); err != nil {
			return State{}, State{}, err
		}
		next.Job = j.name
		next.Leader, next.LeaderRev = t.info.ID, t.info.Rev
		if cur.Revision != 0 && sameRecord(cur, next) {
			return cur, cur, nil
		}
		next.Updated = time.Now().UTC()
		val, err := json.Marshal(next)
		if err != nil {
			return State{}, State{}, fmt.Errorf("control: encode job state: %w", err)
		}
		resp, err := j.cli.Txn(ctx).
			If(t.Guard(), clientv3.Compare(clientv3.ModRevision(j.StateKey()), "=", cur.Revision)).
			Then(clientv3.OpPut(j.StateKey(), string(val))).
			Else(clientv3.OpGet(t.info.Key)).
			Commit()
		if err != nil {
			return State{}, State{}, fmt.Errorf("control: write job state: %w", err)
		}
		if resp.Succeeded {
			next.Revision = resp.Header.Revision
			return cur, next, nil
		}
		if !t.stillLeads(resp) {
			return State{}, State{}, t.lost()
		}
		// Someone changed the record between our read and write (another goroutine of
		// this leader): read again.
	}
}

// Reconcile is the leader's membership loop. It writes the job bounds of cfg into the state,
// then keeps the member list in step with the registrations until the term ends: survivors
// keep their order, newcomers are appended, extra workers wait, below the minimum the job
// pauses, and every change of the ranked list bumps the generation. It returns when the
// term's context is done.
func (t *Term) Reconcile(cfg LeaderConfig) {
	ctx := t.ctx
	j := t.job
	graceful := map[string]bool{}
	retry := 100 * time.Millisecond
	for ctx.Err() == nil {
		live, rev, err := j.readMembers(ctx)
		if err == nil {
			err = t.apply(ctx, cfg, live, graceful)
		}
		if err != nil {
			if errors.Is(err, ErrNotLeader) || ctx.Err() != nil {
				return
			}
			t.log.Warn("reconcile failed, retrying", "error", err)
			sleepCtx(ctx, retry)
			retry = min(2*retry, 2*time.Second)
			continue
		}
		retry = 100 * time.Millisecond
		clear(graceful)
		t.waitMembers(ctx, rev, cfg.settle(), graceful)
	}
}

// apply writes the plan for live into the state and logs what changed.
func (t *Term) apply(ctx context.Context, cfg LeaderConfig, live []liveWorker, graceful map[string]bool) error {
	var workers []WorkerInfo
	for _, w := range live {
		if w.Leaving {
			graceful[w.ID] = true
			continue
		}
		workers = append(workers, w.WorkerInfo)
	}
	var ch change
	cur, next, err := t.update(ctx, func(s *State) error {
		if s.Status == "" {
			s.Status = StatusPending
		}
		s.MinWorkers, s.MaxWorkers, s.NumShards = cfg.MinWorkers, cfg.MaxWorkers, cfg.NumShards
		*s, ch = plan(*s, workers, graceful)
		return nil
	})
	if err != nil {
		return err
	}
	if next.Revision == cur.Revision {
		return nil
	}
	for _, id := range ch.left {
		t.log.Info("member left", "worker", id, "reason", "deregistered")
	}
	for _, id := range ch.expired {
		t.log.Info("member left", "worker", id, "reason", "lease expired")
	}
	for _, id := range ch.joined {
		t.log.Info("member joined", "worker", id, "rank", next.Rank(id))
	}
	if next.Generation != cur.Generation {
		t.log.Info("generation", "generation", next.Generation, "members", next.MemberIDs(), "waiting", len(next.Waiting), "status", string(next.Status))
	}
	if next.Status != cur.Status && cur.Status != "" {
		switch {
		case next.Status == StatusPaused:
			t.log.Info("job paused", "members", len(next.Members), "min_workers", next.MinWorkers)
		case next.Status == StatusRunning && cur.Status == StatusPaused:
			t.log.Info("job resumed", "members", len(next.Members))
		case next.Status == StatusRunning:
			t.log.Info("job running", "members", len(next.Members))
		default:
			t.log.Info("job status", "status", string(next.Status))
		}
	}
	return nil
}

// waitMembers watches the registrations after rev and returns a settle window after the first
// change (or at once when the watch fails, e.g. compaction), noting workers that announced
// they are leaving.
func (t *Term) waitMembers(ctx context.Context, rev int64, settle time.Duration, graceful map[string]bool) {
	j := t.job
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := j.cli.Watch(wctx, j.MembersPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	var deadline <-chan time.Time
	for {
		select {
		case <-deadline:
			return
		case wr, ok := <-wch:
			if !ok {
				return
			}
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					t.log.Warn("watch compacted, reading again", "key", j.MembersPrefix(), "compact_revision", wr.CompactRevision)
				} else {
					t.log.Debug("members watch failed, reading again", "error", err)
				}
				return
			}
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var reg registration
				if json.Unmarshal(ev.Kv.Value, &reg) == nil {
					if reg.Leaving {
						graceful[reg.ID] = true
					} else {
						delete(graceful, reg.ID)
					}
				}
			}
			if len(wr.Events) > 0 && deadline == nil {
				if settle <= 0 {
					return
				}
				deadline = time.After(settle)
			}
		}
	}
}
