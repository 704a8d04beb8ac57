package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/natsembed"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

// watchCheckpoints polls the job state and remembers every last-committed checkpoint it saw.
func watchCheckpoints(t *testing.T, j *control.Job) *poller[control.CheckpointRecord] {
	return startPoller(t, func() (control.CheckpointRecord, bool) {
		s, err := state(j)
		if err != nil || s.Checkpoint == nil {
			return control.CheckpointRecord{}, false
		}
		return *s.Checkpoint, true
	}, func(a, b control.CheckpointRecord) bool { return a == b })
}

// checkCheckpointsNeverBack fails the test when the last committed checkpoint ever went back;
// it returns how many distinct ones were seen.
func checkCheckpointsNeverBack(t *testing.T, seen []control.CheckpointRecord) int {
	t.Helper()
	for i := 1; i < len(seen); i++ {
		a, b := seen[i-1], seen[i]
		if b.Seq < a.Seq || b.Nimg < a.Nimg {
			t.Errorf("the last committed checkpoint went back from seq %d (%s) to seq %d (%s)", a.Seq, a.Dir, b.Seq, b.Dir)
		}
	}
	return len(seen)
}

// waitCommittedAfter waits for a checkpoint the leader committed after t0.
func (c *cluster) waitCommittedAfter(t *testing.T, d time.Duration, t0 time.Time) control.CheckpointRecord {
	t.Helper()
	var rec control.CheckpointRecord
	eventually(t, d, "a checkpoint committed after "+t0.Format("15:04:05.000"), func() (string, bool) {
		c.noneExited()
		s, err := state(c.job)
		if err != nil {
			return err.Error(), false
		}
		if s.Checkpoint == nil || !s.Checkpoint.Committed.After(t0) {
			return "none yet", false
		}
		rec = *s.Checkpoint
		return "", true
	})
	return rec
}

// outage stops a server for down, starts it again, and checks that both workers step again
// and that a checkpoint is committed after it came back.
func (c *cluster) outage(t *testing.T, what string, down time.Duration, stop, start func() error) {
	c.t = t
	defer func() { c.t = c.parent }()
	workers := []string{"w0", "w1"}
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("stop %s: %v", what, err)
	}
	time.Sleep(down)
	if err := start(); err != nil {
		t.Fatalf("start %s again: %v", what, err)
	}
	tUp := time.Now()
	var stepAt time.Time
	eventually(t, 2*time.Minute, "both workers stepping after "+what+" came back", func() (string, bool) {
		c.noneExited()
		stepAt = time.Time{}
		for _, id := range workers {
			ss := stepsOf(after(readLog(c.log(id)), tUp))
			if len(ss) < 3 {
				return fmt.Sprintf("%s did %d steps since", id, len(ss)), false
			}
			stepAt = maxTime(stepAt, ss[0].T)
		}
		return "", true
	})
	rec := c.waitCommittedAfter(t, 2*time.Minute, tUp)
	var gaps []float64
	var gens []int64
	retried := 0
	for _, id := range workers {
		lines := readLog(c.log(id))
		retried += len(linesWith(after(lines, t0), "checkpoint commit interrupted by a change of leader; retrying"))
		gap, _ := maxStepGap(lines, t0, stepAt)
		gaps = append(gaps, secs(gap))
		for _, g := range gensOf(after(lines, t0)) {
			gens = append(gens, g.Gen)
		}
	}
	t.Logf("%s down %s: both workers stepping %.1fs after it came back (longest pause per worker %v s; generations entered since: %v); "+
		"checkpoint seq %d (%s, %.3f kimg) committed %.1fs after it came back; %d commit requests answered with retry",
		what, down, secs(stepAt.Sub(tUp)), gaps, gens, rec.Seq, rec.Dir, float64(rec.Nimg)/1000, secs(rec.Committed.Sub(tUp)), retried)
}

// TestServersRestart stops and restarts NATS, then etcd, then MinIO (the job's store) under
// a training job of one `coordinator serve` and two `worker join`, a checkpoint every tick.
// After each outage both workers step again and a new checkpoint is committed; the last
// committed checkpoint never goes back, and kimg never goes back. Without a MinIO binary
// the job's store is a directory and the MinIO part is skipped.
func TestServersRestart(t *testing.T) {
	need(t)
	var mo *storetest.MinIO
	_, minioErr := storetest.FindMinIO()
	if minioErr == nil {
		mo = storetest.StartMinIO(t)
	}
	c := newCluster(t, clusterOptions{checkpointTicks: 1, minio: mo})
	c.serve("coord-a")
	c.waitLeader("coord-a", 60*time.Second) // the job spec is in the store
	workers := []string{"w0", "w1"}
	for _, id := range workers {
		c.join(id)
	}
	c.waitStepping(2*time.Minute, workers, time.Time{}, 10)
	c.waitCheckpoint(60*time.Second, 0)
	cw := watchCheckpoints(t, c.job)
	pw := watchProgress(t, c.job)

	t.Run("nats", func(t *testing.T) {
		c.outage(t, "NATS", 2*time.Second, func() error {
			c.nats.Shutdown()
			c.nats = nil
			return nil
		}, func() (err error) {
			c.nats, err = natsembed.Start(natsembed.Options{Port: c.natsPort})
			return err
		})
	})
	t.Run("etcd", func(t *testing.T) {
		c.outage(t, "etcd", 3*time.Second, func() error {
			c.etcd.Stop()
			return nil
		}, func() error {
			return c.etcd.Restart(t.Context())
		})
	})
	t.Run("minio", func(t *testing.T) {
		if mo == nil {
			t.Skipf("no MinIO server binary, so the job's store was a directory: %v", minioErr)
		}
		c.outage(t, "MinIO", 3*time.Second, func() error {
			mo.Stop()
			return nil
		}, mo.Start)
	})
	c.noneExited()
	cw.close()
	pw.close()
	n := checkCheckpointsNeverBack(t, cw.values())
	var pk []float64
	for _, v := range pw.values() {
		pk = append(pk, v.Kimg)
	}
	checkNeverBack(t, "progress in etcd", pk)
	s, err := state(c.job)
	if err != nil {
		t.Fatal(err)
	}
	manifest(t, c.store, c.s3, s.Checkpoint.Dir)
	t.Logf("%d last-committed checkpoints seen, never going back; the last, %s, verifies; job %s, generation %d, failures %d",
		n, s.Checkpoint.Dir, s.Status, s.Generation, s.Failures)
}
