package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/store"
)

// devJob is the job name `coordinator dev` runs.
const devJob = "dev"

// devArgs are the flags of a short `coordinator dev` run on the shared dataset: the cpu-smoke
// nets held at 4x4 (lod training of 1000 kimg), ticks of 0.25 kimg (about a second),
// no SWD and no grids except the last, trace logs (one line per step), a 3 s lease TTL (the
// recovery bounds the tests check assume it).
func devArgs(runDir string, workers int, extra ...string) []string {
	a := []string{"dev", "--data", env.data, "--run-dir", runDir, "--workers", strconv.Itoa(workers),
		"--preset", "cpu-smoke", "--log-level", "trace", "--ttl", "3s",
		"--schedule-lod-training-kimg", "1000", "--schedule-tick-kimg-base", "0.25",
		"--metrics-swd-images", "0", "--snapshot-image-ticks", "0"}
	return append(a, extra...)
}

// startDev starts `coordinator dev` with args, its log in runDir/<logName>.
func startDev(t *testing.T, runDir, logName string, args []string) *proc {
	t.Helper()
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return startProc(t, "coordinator dev", filepath.Join(runDir, logName), coordinatorBin(), args...)
}

// devEtcd waits for a dev run's "servers up" line and returns its etcd endpoint.
func devEtcd(t *testing.T, p *proc) string {
	t.Helper()
	var ep string
	eventually(t, 60*time.Second, "coordinator dev to start its servers", func() (string, bool) {
		if p.exited() {
			t.Fatalf("coordinator dev exited with %d before its servers were up", p.code)
		}
		for _, l := range readLog(p.log) {
			if l.Msg == "servers up" {
				ep = l.KV["etcd"]
			}
		}
		return "no servers up line in " + p.log, ep != ""
	})
	return ep
}

func workerLog(runDir, id string) string { return filepath.Join(runDir, "logs", id+".log") }

// after keeps the lines logged at or after t0.
func after(lines []logLine, t0 time.Time) []logLine {
	var out []logLine
	for _, l := range lines {
		if !l.T.Before(t0) {
			out = append(out, l)
		}
	}
	return out
}

// TestSmokeAndResume runs `coordinator dev --smoke --workers 2` as CI does (cpu-smoke preset,
// 4 -> 32, SWD must fall by 30%), then the identical command again in the same run
// directory: the second run resumes from the committed checkpoint instead of training
// from 0, and finishes at once.
func TestSmokeAndResume(t *testing.T) {
	need(t)
	run := t.TempDir()
	dumpLogsOnFailure(t, filepath.Join(run, "*.log"), filepath.Join(run, "logs", "*.log"))
	// The preset's SWD falls by 30-35% on this data (165 -> 108..115 in runs so far) while
	// CI's default asks for 30%: this test asks for 20% so that it checks the run, not the
	// luck of the last tick.
	args := []string{"dev", "--smoke", "--smoke-swd-drop", "0.2", "--workers", "2", "--run-dir", run, "--data", env.data}

	start := time.Now()
	p := startDev(t, run, "dev-1.log", args)
	if code := p.wait(t, 5*time.Minute); code != 0 {
		t.Fatalf("coordinator dev --smoke exited with %d", code)
	}
	took := time.Since(start)
	var sum struct {
		Pass       bool    `json:"pass"`
		Reason     string  `json:"reason"`
		Checkpoint string  `json:"checkpoint"`
		FirstSWD   float64 `json:"first_swd"`
		LastSWD    float64 `json:"last_swd"`
		Ticks      []struct {
			Kimg float64 `json:"kimg"`
		} `json:"ticks"`
	}
	b, err := os.ReadFile(filepath.Join(run, "summary.json"))
	if err != nil {
		t.Fatalf("smoke run left no summary: %v", err)
	}
	if err := json.Unmarshal(b, &sum); err != nil {
		t.Fatalf("summary.json: %v", err)
	}
	if !sum.Pass {
		t.Fatalf("summary.json says the smoke test failed: %s", sum.Reason)
	}
	grids, _ := filepath.Glob(filepath.Join(run, "grids", "*.png"))
	if len(grids) == 0 {
		t.Errorf("no sample grids under %s/grids", run)
	}
	if sum.Checkpoint == "" {
		t.Fatalf("summary.json names no committed checkpoint")
	}
	m := manifest(t, run, store.Config{}, sum.Checkpoint)
	final := float64(m.Nimg) / 1000
	t.Logf("smoke run: %.1fs, %d ticks, SWD %.1f -> %.1f, %d grids, checkpoint %s at %.3f kimg",
		took.Seconds(), len(sum.Ticks), sum.FirstSWD, sum.LastSWD, len(grids), sum.Checkpoint, final)

	// The same command again.
	start2 := time.Now()
	p2 := startDev(t, run, "dev-2.log", args)
	code := p2.wait(t, 2*time.Minute)
	took2 := time.Since(start2)
	resumed := 0
	for _, id := range []string{"worker-0", "worker-1"} {
		lines := after(readLog(workerLog(run, id)), start2)
		if len(lines) == 0 {
			t.Fatalf("%s logged nothing in the second run", id)
		}
		for _, l := range lines {
			switch {
			case l.Msg == "starting fresh":
				t.Errorf("%s started from 0 in the second run instead of resuming from %s", id, sum.Checkpoint)
			case l.Msg == "resumed":
				resumed++
				if l.KV["checkpoint"] != sum.Checkpoint || l.float("kimg") != final {
					t.Errorf("%s resumed from %s at %s kimg, want %s at %.3f", id, l.KV["checkpoint"], l.KV["kimg"], sum.Checkpoint, final)
				}
			case l.Msg == "step" || l.Msg == "generation":
				if k := l.float("kimg"); k < final {
					t.Errorf("%s: kimg %.3f in the second run, below the checkpoint's %.3f: %s", id, k, final, l.Raw)
				}
			}
		}
	}
	if resumed != 2 {
		t.Errorf("%d of 2 workers logged resumed in the second run", resumed)
	}
	ks := metricsKimg(t, run)
	checkNeverBack(t, "metrics.jsonl over both runs", ks)
	if m2 := manifest(t, run, store.Config{}, sum.Checkpoint); m2.Nimg != m.Nimg || m2.Created != m.Created {
		t.Errorf("the second run rewrote the committed checkpoint %s", sum.Checkpoint)
	}
	es := committed(t, run, store.Config{})
	if last := es[len(es)-1]; !last.Committed || last.Dir != sum.Checkpoint {
		t.Errorf("newest checkpoint after the second run: %+v, want the committed %s", last, sum.Checkpoint)
	}
	// A second smoke run has nothing left to train, so its verdict compares the one SWD it
	// measures with itself; what it exits with is logged, not asserted.
	b, _ = os.ReadFile(filepath.Join(run, "summary.json"))
	_ = json.Unmarshal(b, &sum)
	t.Logf("identical second run: exit %d after %.1fs, both workers resumed at %.3f kimg; its smoke verdict: pass=%v %s",
		code, took2.Seconds(), final, sum.Pass, sum.Reason)
}
