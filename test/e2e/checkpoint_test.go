package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/store"
)

// checkpointFiles lists the objects of a checkpoint directory and whether its manifest is
// there; temporary files of the directory store are left out.
func checkpointFiles(dir string) (objects int, manifest bool) {
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		switch {
		case e.Name() == checkpoint.ManifestKey:
			manifest = true
		case strings.HasSuffix(e.Name(), ".safetensors"):
			objects++
		}
	}
	return objects, manifest
}

// workerPIDs reads the pids `coordinator dev` logged for the worker processes it started.
func workerPIDs(devLog string) []int {
	var out []int
	for _, l := range readLog(devLog) {
		if l.Msg == "worker started" {
			out = append(out, int(l.int("pid")))
		}
	}
	return out
}

// TestKillAllMidCheckpoint kills every process of a `coordinator dev` run (the coordinator
// with its embedded etcd and NATS, and both workers) with SIGKILL while rank 0 is writing a
// checkpoint: some objects are in the store, the manifest is not. The same command started
// again resumes from the previous committed checkpoint, never from the partial one, trains
// past it and writes it again whole.
func TestKillAllMidCheckpoint(t *testing.T) {
	need(t)
	run := t.TempDir()
	dumpLogsOnFailure(t, filepath.Join(run, "*.log"), filepath.Join(run, "logs", "*.log"))
	ckdir := filepath.Join(run, "checkpoints")
	args := devArgs(run, 2, "--schedule-total-kimg", "200", "--snapshot-checkpoint-ticks", "1", "--snapshot-keep-last", "100")

	// Catch a checkpoint between its first object and its manifest. The window is about
	// 100 ms (objects are written and synced one by one); a miss is retried after a restart.
	var partial, prev checkpoint.Entry
	var objects int
	var tKill time.Time
	for attempt := 1; attempt <= 3 && partial.Dir == ""; attempt++ {
		p := startDev(t, run, fmt.Sprintf("dev-%d.log", attempt), args)
		start := time.Now()
		known := map[string]bool{}
		for _, e := range committed(t, run, store.Config{}) {
			known[e.Dir] = e.Committed
		}
		base := len(known)
		eventually(t, 2*time.Minute, "a checkpoint committed by this run", func() (string, bool) {
			if p.exited() {
				t.Fatalf("coordinator dev exited with %d", p.code)
			}
			n := 0
			for _, e := range committed(t, run, store.Config{}) {
				if e.Committed {
					n++
				}
			}
			return fmt.Sprintf("%d committed", n), n > base
		})
		caught := ""
		for time.Since(start) < 2*time.Minute && caught == "" {
			es, _ := os.ReadDir(ckdir)
			for _, e := range es {
				d := filepath.Join(ckdir, e.Name())
				if known[e.Name()] {
					continue
				}
				n, man := checkpointFiles(d)
				if man {
					known[e.Name()] = true
					continue
				}
				if n > 0 {
					p.killGroup()
					tKill = time.Now()
					caught = e.Name()
					break
				}
			}
			time.Sleep(time.Millisecond)
		}
		if caught == "" {
			t.Fatalf("no checkpoint was being written within 2 minutes")
		}
		p.wait(t, 30*time.Second)
		for _, pid := range workerPIDs(p.log) {
			eventually(t, 10*time.Second, fmt.Sprintf("worker pid %d gone", pid), func() (string, bool) {
				return "still there", errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
			})
		}
		n, man := checkpointFiles(filepath.Join(ckdir, caught))
		es := committed(t, run, store.Config{})
		for i, e := range es {
			if e.Dir == "checkpoints/"+caught {
				for j := i - 1; j >= 0; j-- {
					if es[j].Committed {
						prev = es[j]
						break
					}
				}
				if !man {
					partial, objects = e, n
				}
			}
		}
		t.Logf("attempt %d: killed everything while %s was being written: %d objects, manifest %v", attempt, caught, n, man)
	}
	if partial.Dir == "" {
		t.Fatalf("3 attempts missed the window between a checkpoint's first object and its manifest")
	}
	if prev.Dir == "" {
		t.Fatalf("no committed checkpoint before the partial %s", partial.Dir)
	}
	if _, _, err := checkpoint.Latest(t.Context(), mustOpen(t, run), trainloopPrefix); err != nil {
		t.Fatalf("the store has no readable latest checkpoint after the kill: %v", err)
	}

	// The same command again, to a total just past the partial checkpoint.
	total := fmt.Sprintf("%g", float64(partial.Nimg)/1000+0.5)
	args2 := devArgs(run, 2, "--schedule-total-kimg", total, "--snapshot-checkpoint-ticks", "1", "--snapshot-keep-last", "100")
	start2 := time.Now()
	p2 := startDev(t, run, "dev-restart.log", args2)
	if code := p2.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("the restarted coordinator dev exited with %d", code)
	}
	var resumedAt time.Time
	for _, id := range []string{"worker-0", "worker-1"} {
		rs := linesWith(after(readLog(workerLog(run, id)), start2), "resumed")
		if len(rs) == 0 {
			t.Fatalf("%s did not log resumed after the restart", id)
		}
		if got := rs[0].KV["checkpoint"]; got != prev.Dir {
			t.Errorf("%s resumed from %s; want the previous committed checkpoint %s (the partial one is %s)", id, got, prev.Dir, partial.Dir)
		}
		if k := rs[0].float("kimg"); k != float64(prev.Nimg)/1000 {
			t.Errorf("%s resumed at %.3f kimg, want %.3f", id, k, float64(prev.Nimg)/1000)
		}
		resumedAt = maxTime(resumedAt, rs[0].T)
	}
	m := manifest(t, run, store.Config{}, partial.Dir)
	if m.Created.Before(start2) {
		t.Errorf("%s has a manifest from before the restart (created %s)", partial.Dir, m.Created)
	}
	if n, _ := checkpointFiles(filepath.Join(run, partial.Dir)); n != len(m.Objects) {
		t.Errorf("%s holds %d objects, its new manifest lists %d", partial.Dir, n, len(m.Objects))
	}
	t.Logf("killed everything with %d objects of %s written and no manifest; the restart resumed from %s (%.3f kimg) "+
		"%.1fs after it began and %.1fs after the kill, and wrote %s again whole (%d objects, verified)",
		objects, partial.Dir, prev.Dir, float64(prev.Nimg)/1000, secs(resumedAt.Sub(start2)), secs(resumedAt.Sub(tKill)),
		partial.Dir, len(m.Objects))
}

// trainloopPrefix is where package trainloop writes checkpoints in the job's store.
const trainloopPrefix = "checkpoints"

func mustOpen(t *testing.T, uri string) store.Store {
	t.Helper()
	st, err := store.Open(t.Context(), uri, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}
