package e2e

import (
	"context"
	"encoding/json"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/gantry-ml/gantry/pkg/control"
)

// leaseTTL is the leadership lease the cluster tests give `coordinator serve` (--ttl 2s).
const leaseTTL = 2 * time.Second

// waitLeader polls the election every 20 ms until id leads and returns when it saw it.
func (c *cluster) waitLeader(id string, d time.Duration) time.Time {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if c.leader() == id {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("%s did not lead within %s (leader now %q)", id, d, c.leader())
	return time.Time{}
}

// TestCoordinatorFailover runs two `coordinator serve` replicas (2 s lease) and two workers.
// SIGKILL of the leader: the standby leads within the lease TTL plus a second, the workers
// keep stepping in the same generation throughout (their steps never wait for a leader),
// and the new leader records progress and commits checkpoints. Then a leader that is
// frozen (SIGSTOP) past its lease and thawed (SIGCONT) after a third replica took over: no
// state write of the deposed leader lands (the fencing of every write by the leader key's
// revision, unit-tested in pkg/control's election and fault tests, seen end to end).
func TestCoordinatorFailover(t *testing.T) {
	need(t)
	c := newCluster(t, clusterOptions{checkpointTicks: 2})
	c.serve("coord-a")
	c.waitLeader("coord-a", 60*time.Second)
	c.serve("coord-b")
	workers := []string{"w0", "w1"}
	for _, id := range workers {
		c.join(id)
	}
	c.waitStepping(2*time.Minute, workers, time.Time{}, 10)
	st := c.waitCheckpoint(60*time.Second, 0)
	eventually(t, 30*time.Second, "coord-b campaigning", func() (string, bool) {
		return "no campaigning line", len(linesWith(readLog(c.log("coord-b")), "campaigning")) > 0
	})
	pw := watchProgress(t, c.job)
	time.Sleep(500 * time.Millisecond)
	gen0 := st.Generation

	// SIGKILL the leader.
	t0 := time.Now()
	c.kill("coord-a")
	tLead := c.waitLeader("coord-b", 30*time.Second)
	takeover := tLead.Sub(t0)
	if takeover > leaseTTL+time.Second {
		t.Errorf("coord-b led %.2fs after coord-a was killed; want within the %s lease TTL plus 1s", secs(takeover), leaseTTL)
	}
	time.Sleep(2 * time.Second)
	to := time.Now()
	var gaps []float64
	for _, id := range workers {
		lines := readLog(c.log(id))
		gap, n := maxStepGap(lines, t0, to)
		gaps = append(gaps, secs(gap))
		if n == 0 || gap >= leaseTTL {
			t.Errorf("%s: longest pause between steps from the kill to 2s after the takeover: %.2fs (%d steps); the workers should not wait for a leader",
				id, secs(gap), n)
		}
		if gs := gensOf(after(lines, t0)); len(gs) > 0 {
			t.Errorf("%s re-formed (generation %d) during the failover; membership did not change", id, gs[0].Gen)
		}
	}
	s := c.waitCheckpoint(60*time.Second, st.Checkpoint.Seq)
	if s.Leader != "coord-b" || s.Generation != gen0 {
		t.Errorf("after the failover the state was written by %q in generation %d; want coord-b, generation %d", s.Leader, s.Generation, gen0)
	}
	var before, afterK float64
	for _, p := range pw.values() {
		if p.Updated.Before(t0) {
			before = p.Kimg
		} else if p.Updated.After(tLead) {
			afterK = p.Kimg
		}
	}
	if afterK <= before {
		t.Errorf("no progress recorded by the new leader: %.3f kimg before the kill, %.3f after the takeover", before, afterK)
	}
	rep := statusJSON(t, c.etcd.Endpoint(), clusterJob)
	if rep.Leader != "coord-b" {
		t.Errorf("coordinator status --json: leader %q, want coord-b", rep.Leader)
	}
	t.Logf("SIGKILL of the leader: coord-b led after %.2fs (lease %s); longest pause between steps %v s; generation %d throughout; "+
		"checkpoint seq %d committed by coord-b at %.3f kimg", secs(takeover), leaseTTL, gaps, gen0, s.Checkpoint.Seq, float64(s.Checkpoint.Nimg)/1000)

	// A leader frozen past its lease, then thawed.
	c.serve("coord-c")
	eventually(t, 30*time.Second, "coord-c campaigning", func() (string, bool) {
		return "no campaigning line", len(linesWith(readLog(c.log("coord-c")), "campaigning")) > 0
	})
	time.Sleep(500 * time.Millisecond)
	t1 := time.Now()
	c.procs["coord-b"].signal(syscall.SIGSTOP)
	tLead2 := c.waitLeader("coord-c", 30*time.Second)
	rev := currentRevision(t, c.job)
	s = c.waitCheckpoint(60*time.Second, s.Checkpoint.Seq)
	t2 := time.Now()
	c.procs["coord-b"].signal(syscall.SIGCONT)
	eventually(t, 30*time.Second, "the thawed coord-b to notice it no longer leads", func() (string, bool) {
		return "no leadership ended line", len(linesWith(after(readLog(c.log("coord-b")), t2), "leadership ended")) > 0
	})
	s = c.waitCheckpoint(60*time.Second, s.Checkpoint.Seq)
	by := stateWriters(t, c.job, rev)
	for _, w := range by {
		if w != "coord-c" {
			t.Errorf("a state write by %s landed after coord-c took over (writers since: %v)", w, by)
			break
		}
	}
	refused := 0
	for _, l := range after(readLog(c.log("coord-b")), t2) {
		if l.Level == "WARN" || l.Level == "ERROR" {
			refused++
		}
	}
	c.noneExited()
	t.Logf("SIGSTOP of the leader: coord-c led after %.2fs; coord-b thawed %.1fs later, stepped down, %d of its writes "+
		"refused or abandoned (warnings); %d state writes since the takeover, all by coord-c; checkpoint seq %d committed",
		secs(tLead2.Sub(t1)), secs(t2.Sub(tLead2)), refused, len(by), s.Checkpoint.Seq)
}

func currentRevision(t *testing.T, j *control.Job) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := j.Client().Get(ctx, j.StateKey())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// stateWriters returns the leader named in every write of the job state after rev.
func stateWriters(t *testing.T, j *control.Job, rev int64) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := currentRevision(t, j)
	var out []string
	for wr := range j.Client().Watch(ctx, j.StateKey(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			t.Fatalf("watch the state history: %v", err)
		}
		for _, ev := range wr.Events {
			var s control.State
			if err := json.Unmarshal(ev.Kv.Value, &s); err != nil {
				t.Fatalf("state at revision %d: %v", ev.Kv.ModRevision, err)
			}
			out = append(out, s.Leader)
		}
		if wr.Header.Revision >= now {
			break
		}
	}
	return out
}
