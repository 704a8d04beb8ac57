package control

import (
	"context"
	"errors"
	"testing"
	"time"
)

// campaignAsync campaigns in the background and delivers the term.
func campaignAsync(ctx context.Context, j *Job, id string) <-chan *Term {
	ch := make(chan *Term, 1)
	go func() {
		t, err := j.Campaign(ctx, LeaderInfo{ID: id}, testTTL)
		if err == nil {
			ch <- t
		}
		close(ch)
	}()
	return ch
}

func TestElectionFailover(t *testing.T) {
	log, _ := testLogger(t)
	name := jobName(t)
	ctx := ctxTimeout(t, 30*time.Second)
	a, b := newJob(t, name, shared.Endpoints(), log), newJob(t, name, shared.Endpoints(), log)
	observer := newJob(t, name, shared.Endpoints(), log)

	ta, err := a.Campaign(ctx, LeaderInfo{ID: "coord-a", Addr: "a:8080"}, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	obs := observer.ObserveLeader(ctx)
	if li := <-obs; li.ID != "coord-a" || li.Addr != "a:8080" || li.Rev != ta.Rev() {
		t.Fatalf("observed %+v, want coord-a at rev %d", li, ta.Rev())
	}
	tbc := campaignAsync(ctx, b, "coord-b")
	select {
	case <-tbc:
		t.Fatal("standby won while the leader lives")
	case <-time.After(testTTL + time.Second): // longer than a TTL: the leader's keep-alives hold
	}

	// The leader's process dies: its client goes away without resigning.
	killed := time.Now()
	a.Client().Close()
	var tb *Term
	select {
	case tb = <-tbc:
	case <-time.After(testTTL + 2*time.Second):
		t.Fatal("standby did not take over")
	}
	took := time.Since(killed)
	t.Logf("standby led %s after the leader died (TTL %s)", took, testTTL)
	if took > testTTL+time.Second {
		t.Errorf("takeover took %s, want within TTL + 1 s", took)
	}
	if tb.Rev() <= ta.Rev() {
		t.Errorf("new term's token %d not above the old %d", tb.Rev(), ta.Rev())
	}
	waitFor(t, 2*time.Second, "observer sees coord-b", func() bool {
		select {
		case li := <-obs:
			return li.ID == "coord-b"
		default:
			return false
		}
	})
	// The dead leader's term has ended too.
	select {
	case <-ta.Context().Done():
	case <-time.After(testTTL + time.Second):
		t.Fatal("dead leader's term context not cancelled")
	}

	// Resign hands over at once.
	tc := campaignAsync(ctx, observer, "coord-c")
	if err := tb.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(tb.Err(), ErrResigned) {
		t.Errorf("term error %v, want ErrResigned", tb.Err())
	}
	select {
	case tcTerm := <-tc:
		if tcTerm == nil {
			t.Fatal("campaign failed")
		}
	case <-time.After(testTTL):
		t.Fatal("resign did not hand over within the TTL")
	}
}

func TestDeposedLeaderWriteRefused(t *testing.T) {
	log, _ := testLogger(t)
	name := jobName(t)
	ctx := ctxTimeout(t, 30*time.Second)
	a, b := newJob(t, name, shared.Endpoints(), log), newJob(t, name, shared.Endpoints(), log)
	ta, err := a.Campaign(ctx, LeaderInfo{ID: "coord-a"}, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Update(ctx, func(s *State) error { s.Failures = 1; return nil }); err != nil {
		t.Fatal(err)
	}

	// The lease is lost behind the leader's back (as when etcd expires it during a long
	// pause of the leader's process).
	if _, err := b.Client().Revoke(ctx, ta.sess.Lease()); err != nil {
		t.Fatal(err)
	}
	tb, err := b.Campaign(ctx, LeaderInfo{ID: "coord-b"}, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Update(ctx, func(s *State) error { s.Failures = 2; return nil }); err != nil {
		t.Fatal(err)
	}

	// The deposed leader writes with its old token. Bypass its own knowledge that the term
	// ended, so that only etcd's fence stands in the way.
	stale := &Term{job: a, info: ta.info, log: ta.log, done: make(chan struct{})}
	stale.ctx, stale.cancel = context.WithCancelCause(context.Background())
	if _, err := stale.Update(ctx, func(s *State) error { s.Failures = 99; return nil }); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed update: got %v, want ErrNotLeader", err)
	}
	if stale.ctx.Err() == nil {
		t.Error("a refused write did not end the term")
	}
	stale.ctx, stale.cancel = context.WithCancelCause(context.Background())
	if _, err := stale.CommitCheckpoint(ctx, CheckpointRecord{Seq: 1, Dir: "ckpt-1", Nimg: 10}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed checkpoint commit: got %v, want ErrNotLeader", err)
	}
	stale.ctx, stale.cancel = context.WithCancelCause(context.Background())
	if err := stale.PutProgress(ctx, Progress{Nimg: 5}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed progress: got %v, want ErrNotLeader", err)
	}
	s, err := b.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Failures != 2 || s.Leader != "coord-b" || s.Checkpoint != nil {
		t.Fatalf("state after deposed writes: failures %d leader %s checkpoint %v; want 2, coord-b, none", s.Failures, s.Leader, s.Checkpoint)
	}
	if cks, _ := b.Checkpoints(ctx); len(cks) != 0 {
		t.Fatalf("deposed leader's checkpoint record landed: %v", cks)
	}
	if p, _ := b.Progress(ctx); p.Nimg != 0 {
		t.Fatalf("deposed leader's progress landed: %+v", p)
	}
	// The real term noticed as well, on its own.
	select {
	case <-ta.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("deposed term did not end")
	}
	if _, err := ta.Update(ctx, func(s *State) error { s.Failures = 98; return nil }); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("update through an ended term: got %v, want ErrNotLeader", err)
	}
}

// A leader cut off from etcd (partition) loses its term within the TTL, a standby leads,
// and after the partition heals nothing from the old leader lands.
func TestPartitionedLeader(t *testing.T) {
	log, _ := testLogger(t)
	name := jobName(t)
	ctx := ctxTimeout(t, 30*time.Second)
	p, err := shared.NewProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() }) // after the clients through it are closed
	a := newJob(t, name, []string{p.Endpoint()}, log)
	b := newJob(t, name, shared.Endpoints(), log)
	ta, err := a.Campaign(ctx, LeaderInfo{ID: "coord-a"}, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	tbc := campaignAsync(ctx, b, "coord-b")
	time.Sleep(100 * time.Millisecond)

	p.Cut()
	cut := time.Now()
	select {
	case <-ta.Context().Done():
		took := time.Since(cut)
		t.Logf("partitioned leader stepped down after %s (TTL %s)", took, testTTL)
		if took >= testTTL {
			t.Errorf("stepped down after %s: not before etcd could expire its lease (TTL %s)", took, testTTL)
		}
	case <-time.After(testTTL + 2*time.Second):
		t.Fatal("partitioned leader's term still live")
	}
	if !errors.Is(ta.Err(), ErrSessionExpired) {
		t.Errorf("term error %v, want ErrSessionExpired", ta.Err())
	}
	var tb *Term
	select {
	case tb = <-tbc:
	case <-time.After(testTTL + 2*time.Second):
		t.Fatal("standby did not lead")
	}
	if _, err := tb.Update(ctx, func(s *State) error { s.Resizes = 7; return nil }); err != nil {
		t.Fatal(err)
	}
	p.Restore()
	stale := &Term{job: a, info: ta.info, log: ta.log, done: make(chan struct{})}
	stale.ctx, stale.cancel = context.WithCancelCause(context.Background())
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := stale.Update(wctx, func(s *State) error { s.Resizes = 99; return nil }); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("healed deposed leader's write: got %v, want ErrNotLeader", err)
	}
	if s, err := b.State(ctx); err != nil || s.Resizes != 7 || s.Leader != "coord-b" {
		t.Fatalf("state %+v, %v", s, err)
	}
}

// The REFERENCE pitfall: a candidate still waiting when its own session expires must not wait
// forever, nor win with a dead key. Campaign starts over with a new session.
func TestWaitingCampaignSurvivesSessionExpiry(t *testing.T) {
	log, _ := testLogger(t)
	name := jobName(t)
	ctx := ctxTimeout(t, 30*time.Second)
	p, err := shared.NewProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() }) // after the clients through it are closed
	a := newJob(t, name, shared.Endpoints(), log)
	b := newJob(t, name, []string{p.Endpoint()}, log)
	ta, err := a.Campaign(ctx, LeaderInfo{ID: "coord-a"}, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	tbc := campaignAsync(ctx, b, "coord-b")
	time.Sleep(200 * time.Millisecond)
	p.Cut() // b's session expires while it waits
	time.Sleep(testTTL + 1500*time.Millisecond)
	p.Restore()
	time.Sleep(500 * time.Millisecond)
	if err := ta.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	var tb *Term
	select {
	case tb = <-tbc:
	case <-time.After(5 * time.Second):
		t.Fatal("waiting candidate never led after its session expired")
	}
	li, err := a.Leader(ctx)
	if err != nil || li.ID != "coord-b" || li.Rev != tb.Rev() {
		t.Fatalf("leader %+v, %v; want coord-b at %d", li, err, tb.Rev())
	}
	if _, err := tb.Update(ctx, func(s *State) error { s.Status = StatusPending; return nil }); err != nil {
		t.Fatalf("new leader cannot write: %v", err)
	}
}
