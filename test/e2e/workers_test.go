package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/store"
)

// Bounds the tests hold the product to.
const (
	// workerRecovery: after a worker is killed the others step again within this.
	workerRecovery = 10 * time.Second
)

// firstStepIn returns the time of the first step a worker logged after entering a
// generation of world workers at or after t0, and that generation.
func firstStepIn(lines []logLine, t0 time.Time, world int64) (time.Time, gen, bool) {
	for _, g := range gensOf(after(lines, t0)) {
		if g.World != world {
			continue
		}
		if ss := stepsOf(after(lines, g.T)); len(ss) > 0 {
			return ss[0].T, g, true
		}
	}
	return time.Time{}, gen{}, false
}

var progressRE = regexp.MustCompile(`kimg\s+([0-9.]+) /`)

// devProgress reads the kimg of the progress lines `coordinator dev` prints.
func devProgress(path string) []float64 {
	var out []float64
	for _, l := range readLog(path) {
		if l.Name != "dev" {
			continue
		}
		if m := progressRE.FindStringSubmatch(l.Msg); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			out = append(out, v)
		}
	}
	return out
}

// checkWorkerKimg fails the test when a worker's completed steps ever go back in kimg.
func checkWorkerKimg(t *testing.T, runDir string, ids []string) {
	t.Helper()
	for _, id := range ids {
		var ks []float64
		for _, s := range stepsOf(readLog(workerLog(runDir, id))) {
			ks = append(ks, s.Kimg)
		}
		checkNeverBack(t, id+" steps", ks)
	}
}

// TestWorkerKilledAndRejoins kills rank 0 of three workers with SIGKILL in the middle of
// training: the other two must re-form and step again within workerRecovery (the lease TTL
// notices the loss, not a collective timeout), kimg never goes back, and when the
// supervisor restarts the killed worker it joins the running job, receives rank 0's state
// (its steps show the same step and kimg as the others') and the steps use 3 ranks again.
func TestWorkerKilledAndRejoins(t *testing.T) {
	need(t)
	run := t.TempDir()
	dumpLogsOnFailure(t, filepath.Join(run, "*.log"), filepath.Join(run, "logs", "*.log"))
	p := startDev(t, run, "dev.log", devArgs(run, 3, "--workers-min", "2", "--workers-max", "3",
		"--schedule-total-kimg", "200", "--snapshot-checkpoint-ticks", "2"))
	ep := devEtcd(t, p)
	job := jobClient(t, []string{ep}, devJob)
	pw := watchProgress(t, job)

	// Three workers stepping together.
	var st control.State
	eventually(t, 2*time.Minute, "3 workers stepping together", func() (string, bool) {
		if p.exited() {
			t.Fatalf("coordinator dev exited with %d", p.code)
		}
		s, err := state(job)
		if err != nil {
			return err.Error(), false
		}
		if s.Status != control.StatusRunning || len(s.Members) != 3 {
			return fmt.Sprintf("job %s with %d members", s.Status, len(s.Members)), false
		}
		for _, m := range s.Members {
			lines := readLog(workerLog(run, m.ID))
			gs := gensOf(lines)
			if len(gs) == 0 || gs[len(gs)-1].World != 3 || len(stepsOf(after(lines, gs[len(gs)-1].T))) < 5 {
				return m.ID + " has not done 5 steps in a generation of 3", false
			}
		}
		st = s
		return "", true
	})
	checkShards(t, st)
	victim := st.Members[0]
	var survivors []string
	for _, m := range st.Members[1:] {
		survivors = append(survivors, m.ID)
	}
	vs := stepsOf(readLog(workerLog(run, victim.ID)))
	lastBefore := vs[len(vs)-1]

	t0 := time.Now()
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", victim.ID, victim.PID, err)
	}
	t.Logf("killed rank 0 (%s, pid %d) at step %d, %.3f kimg; its last step ended %.0f ms before the kill",
		victim.ID, victim.PID, lastBefore.Step, lastBefore.Kimg, float64(t0.Sub(lastBefore.T).Milliseconds()))

	// The survivors re-form and step again: as a world of 2, or already of 3 when the
	// supervisor's restart came back within the leader's settle window (the generation of
	// 2 may then pass before anyone stepped in it).
	var resumedAt time.Time
	var newGen gen
	eventually(t, 60*time.Second, "the 2 survivors stepping in a new generation", func() (string, bool) {
		resumedAt = time.Time{}
		for _, id := range survivors {
			lines := readLog(workerLog(run, id))
			ts, g, ok := firstStepIn(lines, t0, 2)
			if ts3, g3, ok3 := firstStepIn(lines, t0, 3); ok3 && (!ok || ts3.Before(ts)) {
				ts, g, ok = ts3, g3, true
			}
			if !ok {
				return id + " has not stepped in a new generation since the kill", false
			}
			if ts.After(resumedAt) {
				resumedAt, newGen = ts, g
			}
		}
		return "", true
	})
	recovery := resumedAt.Sub(t0)
	if recovery > workerRecovery {
		t.Errorf("the survivors stepped again %.1fs after the kill; want within %s", secs(recovery), workerRecovery)
	}
	if newGen.Kimg < lastBefore.Kimg {
		t.Errorf("the new generation started at %.3f kimg, before the killed worker's last completed step (%.3f)", newGen.Kimg, lastBefore.Kimg)
	}
	s2, err := state(job)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Generation <= st.Generation || s2.Failures < 1 {
		t.Errorf("after the kill: generation %d (was %d), failures %d; want a bump and a failure", s2.Generation, st.Generation, s2.Failures)
	}

	// The supervisor restarts the killed worker; it joins and the steps use 3 ranks again.
	var rejoinedAt time.Time
	var joinGen gen
	eventually(t, 90*time.Second, "the killed worker back and 3 workers stepping", func() (string, bool) {
		s, err := state(job)
		if err != nil {
			return err.Error(), false
		}
		m, ok := s.Member(victim.ID)
		if !ok || len(s.Members) != 3 || m.PID == victim.PID {
			return fmt.Sprintf("%d members: %v", len(s.Members), s.MemberIDs()), false
		}
		rejoinedAt = time.Time{}
		for _, id := range append([]string{victim.ID}, survivors...) {
			ts, g, ok := firstStepIn(readLog(workerLog(run, id)), t0, 3)
			if !ok {
				return id + " has not stepped in a generation of 3 since the kill", false
			}
			if id == victim.ID {
				joinGen = g
			}
			rejoinedAt = maxTime(rejoinedAt, ts)
		}
		st = s
		return "", true
	})
	checkShards(t, st)
	vlines := after(readLog(workerLog(run, victim.ID)), t0)
	ownKimg := -1.0
	for _, l := range vlines {
		if l.Msg == "starting fresh" || l.Msg == "resumed" {
			ownKimg = l.float("kimg")
			break
		}
	}
	if ownKimg < 0 {
		t.Errorf("the restarted worker logged neither starting fresh nor resumed")
	}
	if joinGen.Kimg <= newGen.Kimg || joinGen.Kimg <= ownKimg {
		t.Errorf("the restarted worker (its own start: %.3f kimg) entered generation %d at %.3f kimg; it should have received rank 0's state (past %.3f)",
			ownKimg, joinGen.Gen, joinGen.Kimg, newGen.Kimg)
	}
	// Same step, same kimg on all three ranks after the join.
	time.Sleep(2 * time.Second)
	byStep := map[int64][]float64{}
	for _, id := range append([]string{victim.ID}, survivors...) {
		for _, s := range stepsOf(after(readLog(workerLog(run, id)), rejoinedAt)) {
			byStep[s.Step] = append(byStep[s.Step], s.Kimg)
		}
	}
	common := 0
	for stepN, ks := range byStep {
		if len(ks) == 3 {
			common++
			if ks[0] != ks[1] || ks[1] != ks[2] {
				t.Errorf("step %d: the 3 ranks disagree on kimg: %v", stepN, ks)
			}
		}
	}
	if common < 3 {
		t.Errorf("only %d steps logged by all 3 ranks after the rejoin", common)
	}

	// Checkpoints go on after rank 0 was lost: the new rank 0 numbers them on.
	ckBefore := st.Checkpoint
	eventually(t, 60*time.Second, "a checkpoint committed after the rejoin", func() (string, bool) {
		s, err := state(job)
		if err != nil {
			return err.Error(), false
		}
		st = s
		return "none yet", s.Checkpoint != nil && s.Checkpoint.Committed.After(rejoinedAt) &&
			(ckBefore == nil || s.Checkpoint.Seq > ckBefore.Seq)
	})
	rep := statusJSON(t, ep, devJob)
	if len(rep.State.Members) != 3 || rep.State.Failures < 1 || rep.State.Resizes < 2 {
		t.Errorf("coordinator status --json: %d members, %d failures, %d resizes; want 3, >= 1, >= 2",
			len(rep.State.Members), rep.State.Failures, rep.State.Resizes)
	}

	p.signal(syscall.SIGINT)
	if code := p.wait(t, 60*time.Second); code != 0 {
		t.Errorf("coordinator dev exited with %d after SIGINT", code)
	}
	pw.close()
	var pk []float64
	for _, v := range pw.values() {
		pk = append(pk, v.Kimg)
	}
	checkNeverBack(t, "progress in etcd", pk)
	checkNeverBack(t, "coordinator dev progress lines", devProgress(p.log))
	checkNeverBack(t, "metrics.jsonl", metricsKimg(t, run))
	checkWorkerKimg(t, run, append([]string{victim.ID}, survivors...))
	t.Logf("survivors stepping again %.1fs after the kill (generation %d, world 2, from %.3f kimg); killed worker back in generation %d "+
		"(world 3, received state at %.3f kimg) %.1fs after the kill; %d steps checked on all 3 ranks; checkpoint seq %d committed after the rejoin; status: generation %d, failures %d, resizes %d",
		secs(recovery), newGen.Gen, newGen.Kimg, joinGen.Gen, joinGen.Kimg, secs(rejoinedAt.Sub(t0)), common,
		st.Checkpoint.Seq, rep.State.Generation, rep.State.Failures, rep.State.Resizes)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// cursor is a data loader's position as the checkpoint manifest keeps it.
type cursor struct {
	Epoch    int `json:"epoch"`
	Position int `json:"position"`
}

func cursorsOf(t *testing.T, m *checkpoint.Manifest) []cursor {
	t.Helper()
	var cs []cursor
	if err := json.Unmarshal(m.Loader, &cs); err != nil {
		t.Fatalf("loader cursors of the manifest: %v", err)
	}
	return cs
}

// dealEpochOf reads the epoch the checkpoint's shard deal started at (the loop's state in the
// manifest); the next deal starts one after it.
func dealEpochOf(t *testing.T, m *checkpoint.Manifest) int {
	t.Helper()
	var ex struct {
		DealEpoch *int `json:"deal_epoch"`
	}
	if err := json.Unmarshal(m.Extra["loop"], &ex); err != nil || ex.DealEpoch == nil {
		t.Fatalf("deal epoch of the manifest: %v (loop state %s)", err, m.Extra["loop"])
	}
	return *ex.DealEpoch
}

// localShare is this rank's part of a global minibatch (train.LocalShare: the remainder goes
// to the lowest ranks).
func localShare(global, rank, world int) int {
	n := global / world
	if rank < global%world {
		n++
	}
	return n
}

// runningState waits for a dev run to be running with n members, checks their shards, and
// returns the state.
func runningState(t *testing.T, p *proc, n int) control.State {
	t.Helper()
	job := jobClient(t, []string{devEtcd(t, p)}, devJob)
	var st control.State
	eventually(t, 2*time.Minute, fmt.Sprintf("the job running with %d workers", n), func() (string, bool) {
		if p.exited() {
			t.Fatalf("coordinator dev exited with %d before running with %d workers", p.code, n)
		}
		s, err := state(job)
		if err != nil {
			return err.Error(), false
		}
		st = s
		return fmt.Sprintf("%s with %d members", s.Status, len(s.Members)), s.Status == control.StatusRunning && len(s.Members) == n
	})
	checkShards(t, st)
	return st
}

// expectCursors computes where each rank's loader stands after steps of a global minibatch
// of 16 from a fresh epoch, given each rank's shard count: the position is the images drawn
// modulo the rank's images, the epoch counts the wraps.
func expectCursors(st control.State, epoch0 int, steps int64) []cursor {
	out := make([]cursor, len(st.Members))
	for r, m := range st.Members {
		total := int64(len(m.Shards) * dataShardSize)
		drawn := steps * int64(localShare(16, r, len(st.Members)))
		out[r] = cursor{Epoch: epoch0 + int(drawn/total), Position: int(drawn % total)}
	}
	return out
}

// TestResumeWithFewerWorkers trains with 3 workers to a checkpoint, then resumes the job
// with 2. The 2 workers continue from the checkpoint, the shards are dealt again (every
// shard to exactly one rank), and each rank starts its new shards at position 0 of the deal's
// next epoch: the loader cursors the final checkpoint records are exactly those of ranks that
// drew their share of every step from a fresh epoch. What the cursors cannot show is which
// images were drawn; that each epoch visits every image of a rank's shards once is the
// loader's property (pkg/dataset tests).
func TestResumeWithFewerWorkers(t *testing.T) {
	need(t)
	run := t.TempDir()
	dumpLogsOnFailure(t, filepath.Join(run, "*.log"), filepath.Join(run, "logs", "*.log"))

	p1 := startDev(t, run, "dev-3.log", devArgs(run, 3, "--schedule-total-kimg", "1", "--snapshot-checkpoint-ticks", "0"))
	st1 := runningState(t, p1, 3)
	if code := p1.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("the 3-worker run exited with %d", code)
	}
	es := committed(t, run, store.Config{})
	if len(es) == 0 || !es[len(es)-1].Committed {
		t.Fatalf("the 3-worker run left no committed checkpoint: %+v", es)
	}
	ck1 := es[len(es)-1].Dir
	m1 := manifest(t, run, store.Config{}, ck1)
	c1 := cursorsOf(t, m1)
	if m1.WorldSize != 3 || len(c1) != 3 {
		t.Fatalf("%s: world size %d with %d loader cursors; want 3 and 3", ck1, m1.WorldSize, len(c1))
	}
	if want := expectCursors(st1, 0, m1.Step); !slices.Equal(c1, want) {
		t.Errorf("%s: loader cursors %v after %d steps of 3 ranks from epoch 0; want %v", ck1, c1, m1.Step, want)
	}

	start2 := time.Now()
	p2 := startDev(t, run, "dev-2.log", devArgs(run, 2, "--schedule-total-kimg", "2", "--snapshot-checkpoint-ticks", "0"))
	st2 := runningState(t, p2, 2)
	if code := p2.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("the 2-worker run exited with %d", code)
	}
	for _, id := range st2.MemberIDs() {
		lines := after(readLog(workerLog(run, id)), start2)
		rs := linesWith(lines, "resumed")
		if len(rs) != 1 || rs[0].KV["checkpoint"] != ck1 {
			t.Errorf("%s did not resume from %s (resumed lines: %d)", id, ck1, len(rs))
		}
		gs := gensOf(lines)
		if len(gs) != 1 || gs[0].World != 2 || gs[0].Step != m1.Step {
			t.Errorf("%s entered generations %+v; want one of world 2 at step %d", id, gs, m1.Step)
		}
	}
	es = committed(t, run, store.Config{})
	ck2 := es[len(es)-1].Dir
	m2 := manifest(t, run, store.Config{}, ck2)
	c2 := cursorsOf(t, m2)
	if m2.WorldSize != 2 || len(c2) != 2 || m2.Nimg <= m1.Nimg {
		t.Fatalf("%s: world size %d, %d cursors, %d images; want 2, 2 and more than %d", ck2, m2.WorldSize, len(c2), m2.Nimg, m1.Nimg)
	}
	next := dealEpochOf(t, m1) + 1
	if got := dealEpochOf(t, m2); got != next {
		t.Errorf("%s: deal epoch %d; want %d (the 3-worker deal's plus one)", ck2, got, next)
	}
	want := expectCursors(st2, next, m2.Step-m1.Step)
	if !slices.Equal(c2, want) {
		t.Errorf("%s: loader cursors %v after %d steps of 2 ranks; want %v (every rank at position 0 of epoch %d when the 2 began)",
			ck2, c2, m2.Step-m1.Step, want, next)
	}
	ks := metricsKimg(t, run)
	checkNeverBack(t, "metrics.jsonl over both runs", ks)
	var sh1, sh2 []int
	for _, m := range st1.Members {
		sh1 = append(sh1, len(m.Shards))
	}
	for _, m := range st2.Members {
		sh2 = append(sh2, len(m.Shards))
	}
	t.Logf("3 workers (shards per rank %v) to %s at %.3f kimg, cursors %v; 2 workers (shards %v) resumed there and trained to %s at %.3f kimg, cursors %v = expected",
		sh1, ck1, m1.Kimg, c1, sh2, ck2, m2.Kimg, c2)
}
