package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/etcdembed"
)

// Watches cut off from etcd while the keys they follow change and the history is compacted
// must resume with ErrCompacted, read again and converge: the leader's member watch, a
// worker's state watch, a standby's leader observation and the term's own key watch.
func TestWatchesSurviveCompaction(t *testing.T) {
	log, logs := testLogger(t)
	name := jobName(t)
	ctx := ctxTimeout(t, 30*time.Second)
	p, err := shared.NewProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() }) // after the clients through it are closed
	cut := []string{p.Endpoint()}
	leader := newJob(t, name, cut, log)
	// A TTL well above the cut, so the term lives through it.
	runLeader(t, leader, LeaderConfig{ID: "coord", TTL: 10 * time.Second, Settle: -1, MinWorkers: 1, NumShards: 3}, nil)
	watcher := newJob(t, name, cut, log)
	states := watcher.WatchState(ctx)
	leaders := watcher.ObserveLeader(ctx)

	startWorker(t, name, "w1", shared.Endpoints(), log)
	for s := range states {
		if s.Rank("w1") == 0 {
			break
		}
	}
	// The observer may first report "no leader" (a zero value) if it looked before the
	// campaign won; it must then report coord.
	seen := false
	for li := range leaders {
		if li.ID == "coord" {
			seen = true
			break
		}
	}
	if !seen {
		t.Fatal("leader coord was never observed")
	}

	p.Cut()
	admin := newClient(t, shared.Endpoints())
	startWorker(t, name, "w2", shared.Endpoints(), log)
	startWorker(t, name, "w3", shared.Endpoints(), log)
	var rev int64
	for i := range 20 {
		resp, err := admin.Put(ctx, "/unrelated", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := admin.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	p.Restore()

	var s State
	for s = range states {
		if len(s.Members) == 3 {
			break
		}
	}
	if ctx.Err() != nil {
		t.Fatal("state watch did not converge after compaction")
	}
	if !slices.Equal(s.MemberIDs(), []string{"w1", "w2", "w3"}) || s.Generation != 2 {
		t.Errorf("members %v gen %d; want [w1 w2 w3] 2", s.MemberIDs(), s.Generation)
	}
	waitFor(t, 5*time.Second, "three compaction recoveries logged", func() bool {
		return logs.count("watch compacted, reading again") >= 2
	})
	if n := logs.count("leadership ended"); n != 0 {
		t.Errorf("term ended %d times during a short cut", n)
	}
}

func TestCheckpointCommit(t *testing.T) {
	log, _ := testLogger(t)
	j := newJob(t, jobName(t), shared.Endpoints(), log)
	ctx := ctxTimeout(t, 20*time.Second)
	term, err := j.Campaign(ctx, LeaderInfo{ID: "coord"}, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	rec := func(seq int64) CheckpointRecord {
		return CheckpointRecord{Seq: seq, Dir: fmt.Sprintf("s3://b/run/ckpt-%012d", seq*1000), Nimg: seq * 1000, WorldSize: 2}
	}
	s1, err := term.CommitCheckpoint(ctx, rec(1))
	if err != nil {
		t.Fatal(err)
	}
	if s1.Checkpoint == nil || s1.Checkpoint.Seq != 1 || s1.Checkpoint.Committed.IsZero() {
		t.Fatalf("state checkpoint %+v", s1.Checkpoint)
	}
	// A retry of the same commit (a lost answer) succeeds and writes nothing.
	again, err := term.CommitCheckpoint(ctx, rec(1))
	if err != nil || again.Revision != s1.Revision {
		t.Fatalf("retried commit: %v, revision %d -> %d", err, s1.Revision, again.Revision)
	}
	other := rec(1)
	other.Dir = "elsewhere"
	if _, err := term.CommitCheckpoint(ctx, other); !errors.Is(err, ErrCheckpointExists) {
		t.Fatalf("conflicting seq 1: %v, want ErrCheckpointExists", err)
	}
	for _, bad := range []CheckpointRecord{{Seq: 0, Dir: "d"}, {Seq: 4}, {Seq: 4, Dir: "d", Nimg: -1}} {
		if _, err := term.CommitCheckpoint(ctx, bad); err == nil {
			t.Errorf("record %+v accepted", bad)
		}
	}
	for seq := int64(2); seq <= 3; seq++ {
		if _, err := term.CommitCheckpoint(ctx, rec(seq)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := term.CommitCheckpoint(ctx, rec(2)); err != nil {
		t.Errorf("retry of an older, identical record: %v", err)
	}
	if err := term.DeleteCheckpoints(ctx, 3); err == nil {
		t.Error("deleting the last committed checkpoint was allowed")
	}
	if err := term.DeleteCheckpoints(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := term.CommitCheckpoint(ctx, rec(1)); !errors.Is(err, ErrStaleCheckpoint) {
		t.Errorf("re-commit of a deleted older seq: %v, want ErrStaleCheckpoint", err)
	}
	cks, err := j.Checkpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	for _, c := range cks {
		seqs = append(seqs, c.Seq)
	}
	if !slices.Equal(seqs, []int64{2, 3}) {
		t.Errorf("records %v, want [2 3]", seqs)
	}
	st, _ := j.State(ctx)
	if st.Checkpoint.Seq != 3 || st.Checkpoint.Dir != rec(3).Dir {
		t.Errorf("last checkpoint %+v", st.Checkpoint)
	}
	if err := term.PutProgress(ctx, Progress{Nimg: 3000, Kimg: 3, LOD: 2.5, Resolution: 16, ImgPerSec: 40}); err != nil {
		t.Fatal(err)
	}
	if p, err := j.Progress(ctx); err != nil || p.Kimg != 3 || p.Resolution != 16 {
		t.Errorf("progress %+v, %v", p, err)
	}
	o, err := j.Overview(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o.Leader == nil || o.Leader.ID != "coord" || o.State == nil || o.State.Checkpoint.Seq != 3 ||
		o.Progress.Kimg != 3 || len(o.Checkpoints) != 2 || len(o.Workers) != 0 {
		t.Errorf("overview %+v", o)
	}
}

// trainer commits checkpoints 1, 2, ... as a leader's work, retrying a failed commit with the
// same record, and records which commits were acknowledged.
type trainer struct {
	mu      sync.Mutex
	acked   []int64
	refused []error // ErrCheckpointExists / ErrStaleCheckpoint: would mean a duplicate
	stop    chan struct{}
}

func ckptRec(seq int64) CheckpointRecord {
	return CheckpointRecord{Seq: seq, Dir: fmt.Sprintf("ckpt-%06d", seq), Nimg: seq * 1000}
}

func (tr *trainer) work(term *Term) {
	ctx := term.Context()
	st, err := term.Job().State(ctx)
	for err != nil && !errors.Is(err, ErrNoState) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		st, err = term.Job().State(ctx)
	}
	seq := int64(1)
	if st.Checkpoint != nil {
		seq = st.Checkpoint.Seq + 1
	}
	for ctx.Err() == nil {
		select {
		case <-tr.stop:
			return
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := term.CommitCheckpoint(cctx, ckptRec(seq))
		cancel()
		switch {
		case err == nil:
			tr.mu.Lock()
			tr.acked = append(tr.acked, seq)
			tr.mu.Unlock()
			seq++
		case errors.Is(err, ErrNotLeader):
			return
		case errors.Is(err, ErrCheckpointExists), errors.Is(err, ErrStaleCheckpoint):
			tr.mu.Lock()
			tr.refused = append(tr.refused, err)
			tr.mu.Unlock()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (tr *trainer) ackedCount() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.acked)
}

// etcd stops and restarts under a running leader that keeps committing, with two workers
// registered: the leader keeps or regains leadership, every acknowledged commit survives, no
// record is written twice, and the members come back.
func TestEtcdRestartUnderLeader(t *testing.T) {
	log, logs := testLogger(t)
	srv, err := etcdembed.Start(context.Background(), etcdembed.Options{UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() }) // after the clients are closed
	name := jobName(t)
	ep := srv.Endpoints()
	leader := newJob(t, name, ep, log)
	tr := &trainer{stop: make(chan struct{})}
	runLeader(t, leader, LeaderConfig{ID: "coord", TTL: testTTL, Settle: 100 * time.Millisecond, MinWorkers: 2, NumShards: 4}, tr.work)
	startWorker(t, name, "w1", ep, log)
	startWorker(t, name, "w2", ep, log)
	stateWhere(t, leader, 5*time.Second, "two members running", func(s State) bool { return s.Status == StatusRunning })
	waitFor(t, 5*time.Second, "first commits", func() bool { return tr.ackedCount() >= 5 })

	srv.Stop()
	before := tr.ackedCount()
	time.Sleep(testTTL + time.Second) // longer than every lease's TTL: sessions and registrations lapse
	if err := srv.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "commits after the restart", func() bool { return tr.ackedCount() >= before+20 })
	close(tr.stop)

	ctx := ctxTimeout(t, 10*time.Second)
	s := stateWhere(t, leader, 10*time.Second, "members back", func(s State) bool {
		return s.Status == StatusRunning && len(s.Members) == 2
	})
	waitFor(t, 5*time.Second, "trainer stopped", func() bool {
		st, err := leader.State(ctx)
		time.Sleep(100 * time.Millisecond)
		st2, err2 := leader.State(ctx)
		return err == nil && err2 == nil && st.Revision == st2.Revision
	})
	s, _ = leader.State(ctx)
	tr.mu.Lock()
	acked, refused := slices.Clone(tr.acked), slices.Clone(tr.refused)
	tr.mu.Unlock()
	if len(refused) > 0 {
		t.Fatalf("commits refused as duplicates: %v", refused)
	}
	cks, err := leader.Checkpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byseq := map[int64]CheckpointRecord{}
	for i, c := range cks {
		if c.Seq != int64(i+1) {
			t.Fatalf("records not 1..%d in order: position %d holds seq %d", len(cks), i, c.Seq)
		}
		if !c.sameContent(ckptRec(c.Seq)) {
			t.Errorf("record %d = %+v", c.Seq, c)
		}
		byseq[c.Seq] = c
	}
	for _, seq := range acked {
		if _, ok := byseq[seq]; !ok {
			t.Errorf("acknowledged checkpoint %d lost", seq)
		}
	}
	if s.Checkpoint == nil || s.Checkpoint.Seq != int64(len(cks)) {
		t.Errorf("state's last checkpoint %+v, records up to %d", s.Checkpoint, len(cks))
	}
	slices.Sort(s.MemberIDs())
	ids := s.MemberIDs()
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"w1", "w2"}) {
		t.Errorf("members after restart %v", ids)
	}
	t.Logf("%d commits acknowledged (%d before the stop), %d records; terms: %d; generation %d",
		len(acked), before, len(cks), logs.count("leader elected"), s.Generation)
}
