package control

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// worker is a simulated worker process: its own client and registration.
type worker struct {
	job    *Job
	reg    *Registration
	killed bool
}

func startWorker(t *testing.T, name, id string, endpoints []string, log hclog.Logger) *worker {
	t.Helper()
	j := newJob(t, name, endpoints, log)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := j.Register(ctx, WorkerInfo{ID: id, Host: "host-" + id, Backend: "cpu",
		GPUs: []GPUInfo{{Index: 0, Name: "none"}}}, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	w := &worker{job: j, reg: reg}
	t.Cleanup(func() {
		if w.killed {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		reg.Close(ctx)
	})
	return w
}

// kill makes the worker vanish without deregistering: its lease must expire.
func (w *worker) kill() {
	w.killed = true
	w.job.Client().Close()
}

// runLeader runs the leadership loop until the test ends.
func runLeader(t *testing.T, j *Job, cfg LeaderConfig, work func(*Term)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := j.Lead(ctx, cfg, work); err != nil {
			t.Errorf("Lead: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func TestMembership(t *testing.T) {
	log, logs := testLogger(t)
	name := jobName(t)
	ep := shared.Endpoints()
	leader := newJob(t, name, ep, log)
	cfg := LeaderConfig{ID: "coord", TTL: testTTL, Settle: 300 * time.Millisecond, MinWorkers: 2, MaxWorkers: 3, NumShards: 10}
	runLeader(t, leader, cfg, nil)

	s := stateWhere(t, leader, 5*time.Second, "initial state", func(s State) bool { return s.Leader == "coord" })
	if s.Status != StatusPending || s.Generation != 0 || len(s.Members) != 0 {
		t.Fatalf("initial state %+v", s)
	}

	// Three workers register at about the same time: one generation for all three. They
	// register in order w1, w2, w3, each after the previous (the ranks follow that order).
	ws := map[string]*worker{}
	for _, id := range []string{"w1", "w2", "w3"} {
		ws[id] = startWorker(t, name, id, ep, log)
	}
	s = stateWhere(t, leader, 5*time.Second, "three members", func(s State) bool { return len(s.Members) == 3 })
	if !slices.Equal(s.MemberIDs(), []string{"w1", "w2", "w3"}) || s.Status != StatusRunning {
		t.Fatalf("members %v status %s; want [w1 w2 w3] running", s.MemberIDs(), s.Status)
	}
	if s.Generation != 1 {
		t.Errorf("generation %d after a batched join, want 1 (settle window)", s.Generation)
	}
	want := AssignShards(10, 3)
	for i, m := range s.Members {
		if m.Rank != i || !slices.Equal(m.Shards, want[i]) || m.Host != "host-"+m.ID || m.Backend != "cpu" || len(m.GPUs) != 1 {
			t.Errorf("member %d: %+v", i, m)
		}
	}
	if s.MinWorkers != 2 || s.MaxWorkers != 3 || s.NumShards != 10 || s.Leader != "coord" || s.LeaderRev == 0 {
		t.Errorf("bounds/leader in state: %+v", s)
	}

	// A fourth worker waits: above max. The ranked list is unchanged, so no new generation.
	ws["w4"] = startWorker(t, name, "w4", ep, log)
	s = stateWhere(t, leader, 5*time.Second, "w4 waiting", func(s State) bool { return s.IsWaiting("w4") })
	if s.Generation != 1 || len(s.Members) != 3 {
		t.Errorf("gen %d members %v after a waiting join", s.Generation, s.MemberIDs())
	}

	// w2 dies: detected through its lease, w4 takes the free place, survivors keep order.
	killed := time.Now()
	ws["w2"].kill()
	s = stateWhere(t, leader, testTTL+3*time.Second, "w2 gone", func(s State) bool { return s.Rank("w2") < 0 })
	t.Logf("lost worker noticed after %s (TTL %s, settle %s)", time.Since(killed), testTTL, cfg.Settle)
	if took := time.Since(killed); took > testTTL+cfg.Settle+1500*time.Millisecond {
		t.Errorf("lost worker noticed after %s", took)
	}
	if !slices.Equal(s.MemberIDs(), []string{"w1", "w3", "w4"}) || len(s.Waiting) != 0 {
		t.Fatalf("members %v waiting %v; want [w1 w3 w4] []", s.MemberIDs(), ids(s.Waiting))
	}
	if s.Generation != 2 || s.Failures != 1 || s.Resizes != 1 {
		t.Errorf("gen %d failures %d resizes %d; want 2 1 1", s.Generation, s.Failures, s.Resizes)
	}
	if m, _ := s.Member("w4"); m.Since != 2 {
		t.Errorf("w4 since %d, want 2", m.Since)
	}

	// w1 (rank 0) leaves cleanly: a resize, not a failure; the oldest survivor becomes rank 0.
	if err := ws["w1"].reg.Close(ctxTimeout(t, 3*time.Second)); err != nil {
		t.Fatal(err)
	}
	s = stateWhere(t, leader, 3*time.Second, "w1 gone", func(s State) bool { return s.Rank("w1") < 0 })
	if !slices.Equal(s.MemberIDs(), []string{"w3", "w4"}) || s.Generation != 3 || s.Failures != 1 || s.Resizes != 2 {
		t.Fatalf("members %v gen %d failures %d resizes %d; want [w3 w4] 3 1 2", s.MemberIDs(), s.Generation, s.Failures, s.Resizes)
	}

	// Below min: paused. A new worker brings it back.
	ws["w3"].kill()
	s = stateWhere(t, leader, testTTL+3*time.Second, "paused", func(s State) bool { return s.Status == StatusPaused })
	if !slices.Equal(s.MemberIDs(), []string{"w4"}) || s.Generation != 4 {
		t.Fatalf("members %v gen %d; want [w4] 4", s.MemberIDs(), s.Generation)
	}
	ws["w5"] = startWorker(t, name, "w5", ep, log)
	s = stateWhere(t, leader, 3*time.Second, "resumed", func(s State) bool { return s.Status == StatusRunning })
	if !slices.Equal(s.MemberIDs(), []string{"w4", "w5"}) || s.Generation != 5 {
		t.Fatalf("members %v gen %d; want [w4 w5] 5", s.MemberIDs(), s.Generation)
	}

	for _, line := range []string{"leader elected", "member joined", "member left", "generation", "job paused", "job resumed"} {
		if logs.countAfter(line, 1, 2*time.Second) == 0 {
			t.Errorf("no %q log line", line)
		}
	}
	if n := logs.countAfter("control: generation:", 5, 2*time.Second); n != 5 {
		t.Errorf("%d generation lines, want 5", n)
	}
}

// A worker follows its rank through WatchState, and a standby leader continues the same
// state (generation, order) after a failover.
func TestWorkerFollowsStateAcrossFailover(t *testing.T) {
	log, _ := testLogger(t)
	name := jobName(t)
	ep := shared.Endpoints()
	cfg := LeaderConfig{TTL: testTTL, Settle: -1, MinWorkers: 1, NumShards: 4}
	l1 := newJob(t, name, ep, log)
	c1 := cfg
	c1.ID = "coord-1"
	ctx1, stop1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- l1.Lead(ctx1, c1, nil) }()
	defer stop1()

	w1 := startWorker(t, name, "w1", ep, log)
	ctx := ctxTimeout(t, 20*time.Second)
	states := w1.job.WatchState(ctx)
	next := func(what string, cond func(State) bool) State {
		t.Helper()
		for {
			select {
			case s := <-states:
				if cond(s) {
					return s
				}
			case <-ctx.Done():
				t.Fatalf("watch: %s never seen", what)
			}
		}
	}
	s := next("w1 rank 0", func(s State) bool { return s.Rank("w1") == 0 })
	if !slices.Equal(s.Members[0].Shards, []int{0, 1, 2, 3}) {
		t.Errorf("single rank shards %v", s.Members[0].Shards)
	}
	startWorker(t, name, "w2", ep, log)
	s = next("w2 rank 1", func(s State) bool { return s.Rank("w2") == 1 })
	gen := s.Generation

	// Standby takes over after the leader's clean shutdown (it resigns).
	l2 := newJob(t, name, ep, log)
	c2 := cfg
	c2.ID = "coord-2"
	runLeader(t, l2, c2, nil)
	time.Sleep(100 * time.Millisecond)
	stop1()
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	s = next("coord-2 leads", func(s State) bool { return s.Leader == "coord-2" })
	if s.Generation != gen || !slices.Equal(s.MemberIDs(), []string{"w1", "w2"}) {
		t.Errorf("after failover gen %d members %v; want %d [w1 w2]", s.Generation, s.MemberIDs(), gen)
	}
	startWorker(t, name, "w3", ep, log)
	s = next("w3 rank 2", func(s State) bool { return s.Rank("w3") == 2 })
	if s.Generation != gen+1 {
		t.Errorf("generation %d, want %d", s.Generation, gen+1)
	}
}

func TestBadLeaderConfig(t *testing.T) {
	j := newJob(t, jobName(t), shared.Endpoints(), nil)
	for _, cfg := range []LeaderConfig{
		{ID: "c", MinWorkers: 3, MaxWorkers: 2},
		{ID: "c", MinWorkers: -1},
		{ID: "c", NumShards: -4},
	} {
		if err := j.Lead(context.Background(), cfg, nil); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	if err := j.Lead(ctxTimeout(t, time.Second), LeaderConfig{ID: "bad/id"}, nil); err == nil {
		t.Error("coordinator id with a slash accepted")
	}
	if _, err := j.Register(context.Background(), WorkerInfo{ID: ""}, 0); err == nil {
		t.Error("empty worker id accepted")
	}
	if _, err := NewJob(j.Client(), "../x", nil); err == nil {
		t.Error("job name ../x accepted")
	}
	if _, err := j.State(context.Background()); !errors.Is(err, ErrNoState) {
		t.Errorf("state of a new job: %v, want ErrNoState", err)
	}
	if _, err := j.Leader(context.Background()); !errors.Is(err, ErrNoLeader) {
		t.Errorf("leader of a new job: %v, want ErrNoLeader", err)
	}
}
