package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/control"
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
		"--schedule-total-kimg", "200", "--snapshot-checkpoint-ticks", "0"))
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

	// The survivors re-form as a world of 2 and step again.
	var resumedAt time.Time
	var newGen gen
	eventually(t, 60*time.Second, "the 2 survivors stepping in a generation of 2", func() (string, bool) {
		resumedAt = time.Time{}
		for _, id := range survivors {
			ts, g, ok := firstStepIn(readLog(workerLog(run, id)), t0, 2)
			if !ok {
				return id + " has not stepped in a generation of 2 since the kill", false
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
		t.Errorf("the generation of 2 started at %.3f kimg, before the killed worker's last completed step (%.3f)", newGen.Kimg, lastBefore.Kimg)
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
			ts, g, ok := firstStepIn(readLog(workerLog(run, id)), resumedAt, 3)
			if !ok {
				return id + " has not stepped in a generation of 3 since the survivors re-formed", false
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
	if len(linesWith(vlines, "starting fresh")) == 0 {
		t.Errorf("the restarted worker did not log starting fresh (the job has no checkpoint yet)")
	}
	if joinGen.Kimg <= newGen.Kimg {
		t.Errorf("the restarted worker entered generation %d at %.3f kimg; it should have received rank 0's state (past %.3f)",
			joinGen.Gen, joinGen.Kimg, newGen.Kimg)
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
		"(world 3, received state at %.3f kimg) %.1fs after the kill; %d steps checked on all 3 ranks; status: generation %d, failures %d, resizes %d",
		secs(recovery), newGen.Gen, newGen.Kimg, joinGen.Gen, joinGen.Kimg, secs(rejoinedAt.Sub(t0)), common,
		rep.State.Generation, rep.State.Failures, rep.State.Resizes)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
