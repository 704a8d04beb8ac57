package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/elastic"
	"github.com/gantry-ml/gantry/pkg/safetensors"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
)

// detTotalKimg is the length of the determinism test's job: at 4x4 with a minibatch of 16,
// 500 steps, about 4 epochs of each rank's shards once 2 workers share them.
const detTotalKimg = 8

// detKillAfter is how many steps every worker has logged when one is killed: more than a
// tick (16 steps), so that run B ends a tick at S that run A was in the middle of, and in
// the stretch (about steps 128-153 here) where rank 0 has wrapped its shards into the next
// epoch and rank 1 has not: a next deal that followed rank 0's own epoch would then differ
// between the two paths.
const detKillAfter = 135

// editSpec rewrites the cluster's job file with edit applied.
func (c *cluster) editSpec(edit func(*spec.Spec)) {
	c.t.Helper()
	s, err := spec.LoadFile(c.specPath)
	if err != nil {
		c.t.Fatal(err)
	}
	edit(s)
	if err := s.Validate(); err != nil {
		c.t.Fatal(err)
	}
	b, err := s.YAML()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(c.specPath, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// startWorkersFirst starts the workers before the coordinator, so that its first member
// list holds all of them: the job trains with len(ids) ranks from step 0 (started the other
// way round, the first two to register would form a generation of 2 and train before the
// third arrives). The workers read the job spec from the store, so it is published there
// first, as `coordinator serve` publishes it (and the coordinator writes it again, the same).
func (c *cluster) startWorkersFirst(coord string, ids ...string) []byte {
	c.t.Helper()
	s, err := spec.LoadFile(c.specPath)
	if err != nil {
		c.t.Fatal(err)
	}
	yml, err := s.YAML()
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, c.store, c.s3)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := st.Put(ctx, elastic.JobFileKey, bytes.NewReader(yml), int64(len(yml))); err != nil {
		c.t.Fatal(err)
	}
	for _, id := range ids {
		c.join(id)
	}
	eventually(c.t, 2*time.Minute, fmt.Sprintf("%d workers registered", len(ids)), func() (string, bool) {
		c.noneExited()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		ws, err := c.job.Workers(ctx)
		if err != nil {
			return err.Error(), false
		}
		var got []string
		for _, w := range ws {
			got = append(got, w.ID)
		}
		return fmt.Sprintf("registered: %v", got), len(got) == len(ids)
	})
	c.serve(coord)
	return yml
}

// waitWorkersDone waits for the workers to finish the job and exit with 0.
func (c *cluster) waitWorkersDone(d time.Duration, ids ...string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for _, id := range ids {
		p := c.procs[id]
		if code := p.wait(c.t, max(time.Until(deadline), time.Second)); code != 0 {
			c.t.Fatalf("%s exited with %d before or after finishing the job (log %s)", id, code, p.log)
		}
		delete(c.procs, id)
	}
}

// finalCheckpoint returns the newest checkpoint of the cluster's store, which must be
// committed in the store and recorded in etcd, and its verified manifest.
func (c *cluster) finalCheckpoint() (string, *checkpoint.Manifest) {
	c.t.Helper()
	es := committed(c.t, c.store, c.s3)
	if len(es) == 0 || !es[len(es)-1].Committed {
		c.t.Fatalf("no committed checkpoint in %s: %+v", c.store, es)
	}
	dir := es[len(es)-1].Dir
	var rec *control.CheckpointRecord
	eventually(c.t, 30*time.Second, "the final checkpoint recorded in etcd", func() (string, bool) {
		s, err := state(c.job)
		if err != nil {
			return err.Error(), false
		}
		rec = s.Checkpoint
		return fmt.Sprintf("recorded: %+v", rec), rec != nil && rec.Dir == dir
	})
	return dir, manifest(c.t, c.store, c.s3, dir)
}

// onlyGeneration checks that a worker's log since t0 shows exactly one generation entered,
// of world workers at step, and returns it.
func onlyGeneration(t *testing.T, path string, t0 time.Time, world, step int64) gen {
	t.Helper()
	gs := gensOf(after(readLog(path), t0))
	if len(gs) != 1 || gs[0].World != world || gs[0].Step != step {
		t.Fatalf("%s: generations entered %+v; want exactly one, of world %d at step %d", path, gs, world, step)
	}
	return gs[0]
}

// TestKilledWorkerMatchesResumedRun checks the determinism the must-show asks for.
//
// Run A: a cluster of `coordinator serve` and three unsupervised `worker join` processes
// trains from step 0 with 3 ranks; rank 0 is killed with SIGKILL in the middle of training.
// The two survivors re-form (one new generation of world 2, at the step S of rank 0's last
// completed step), step again within workerRecovery, never go back in kimg, and train to the
// end, where rank 0 writes the final checkpoint.
//
// Run B: a fresh job with the same spec and seed trains with 3 workers to exactly step S
// (its total_kimg set to S's images) and ends there with a final checkpoint; a new cluster
// resumes that checkpoint with 2 workers and trains to A's total.
//
// A's and B's final checkpoints must hold the same state bit for bit: every safetensors
// object (G, D, Gs, both Adam moments, w_avg), the training counters (images, step, Adam
// step counts, skips, resets) and the loader cursors. Only the loop's bookkeeping (tick and
// checkpoint numbers, time stamps) may differ: B ended a tick at S that A was in the middle
// of. Rank 0 is the victim: the old rank 1 leads the survivors, and both paths must still
// start the re-dealt shards at the same epoch (the deal's, not a rank's own).
func TestKilledWorkerMatchesResumedRun(t *testing.T) {
	need(t)
	began := time.Now()
	workers3 := []string{"w0", "w1", "w2"}
	edit := func(total float64) func(*spec.Spec) {
		return func(s *spec.Spec) {
			s.Workers.Min, s.Workers.Max = 2, 3
			s.Schedule.TotalKimg = total
			s.Snapshot.CheckpointTicks = 0 // only the final checkpoint
		}
	}

	// Run A: 3 workers, one killed, 2 to the end.
	a := newCluster(t, clusterOptions{})
	a.editSpec(edit(detTotalKimg))
	ymlA := a.startWorkersFirst("coord", workers3...)
	var st control.State
	eventually(t, 2*time.Minute, "3 workers stepping together", func() (string, bool) {
		a.noneExited()
		s, err := state(a.job)
		if err != nil {
			return err.Error(), false
		}
		if s.Status != control.StatusRunning || len(s.Members) != 3 {
			return fmt.Sprintf("job %s with %d members", s.Status, len(s.Members)), false
		}
		for _, id := range workers3 {
			if n := len(stepsOf(readLog(a.log(id)))); n < detKillAfter {
				return fmt.Sprintf("%s did %d steps", id, n), false
			}
		}
		st = s
		return "", true
	})
	checkShards(t, st)
	g0 := onlyGeneration(t, a.log(workers3[0]), time.Time{}, 3, 0)
	for _, id := range workers3[1:] {
		if g := onlyGeneration(t, a.log(id), time.Time{}, 3, 0); g.Gen != g0.Gen {
			t.Fatalf("%s entered generation %d, w0 generation %d", id, g.Gen, g0.Gen)
		}
	}
	victim := st.Members[0].ID
	survivors := []string{st.Members[1].ID, st.Members[2].ID}
	t0 := time.Now()
	a.kill(victim)
	tKilled := time.Since(began)
	vs := stepsOf(readLog(a.log(victim)))
	lastBefore := vs[len(vs)-1]
	t.Logf("run A: killed rank 0 (%s) after its step %d (%.3f kimg), %.1fs into the test", victim, lastBefore.Step, lastBefore.Kimg, secs(tKilled))

	a.waitWorkersDone(3*time.Minute, survivors...)
	var re gen
	var resumedAt time.Time
	for i, id := range survivors {
		lines := readLog(a.log(id))
		g := gensOf(after(lines, t0))
		if len(g) != 1 || g[0].World != 2 || g[0].Rank != int64(i) {
			t.Fatalf("run A: %s entered generations %+v after the kill; want exactly one, of world 2, as rank %d", id, g, i)
		}
		if i == 0 {
			re = g[0]
		} else if g[0].Step != re.Step || g[0].Gen != re.Gen {
			t.Fatalf("run A: the survivors entered different generations after the kill: %+v and %+v", re, g[0])
		}
		ts, _, ok := firstStepIn(lines, t0, 2)
		if !ok {
			t.Fatalf("run A: %s never stepped in the generation of 2", id)
		}
		resumedAt = maxTime(resumedAt, ts)
		var ks []float64
		for _, s := range stepsOf(lines) {
			ks = append(ks, s.Kimg)
		}
		checkNeverBack(t, "run A: "+id+" steps", ks)
		for _, l := range after(lines, t0) {
			if strings.Contains(l.Msg, "membership change") {
				t.Logf("run A: %s after the kill: %s (step %s)", id, l.Msg, l.KV["step"])
				break
			}
		}
	}
	S := re.Step
	if recovery := resumedAt.Sub(t0); recovery > workerRecovery {
		t.Errorf("run A: the survivors stepped again %.1fs after the kill; want within %s", secs(recovery), workerRecovery)
	}
	if S < lastBefore.Step {
		t.Errorf("run A: the world of 2 started at step %d, before the killed worker's last completed step %d", S, lastBefore.Step)
	}
	nimgS := int64(math.Round(re.Kimg * 1000))
	dirA, mA := a.finalCheckpoint()
	if mA.WorldSize != 2 || float64(mA.Nimg) < detTotalKimg*1000 {
		t.Fatalf("run A: final checkpoint %s: world %d at %d images; want world 2 at %d images or more", dirA, mA.WorldSize, mA.Nimg, detTotalKimg*1000)
	}
	if got := readStoreFile(t, a, elastic.JobFileKey); !bytes.Equal(got, ymlA) {
		t.Errorf("run A: the coordinator published a job.yaml other than the one the test gave the workers first:\n%s\nvs\n%s", got, ymlA)
	}
	tA := time.Since(began)
	t.Logf("run A: the 2 survivors re-formed in generation %d at step %d (%d images) and stepped again %.1fs after the kill; final checkpoint %s at step %d; run A took %.1fs",
		re.Gen, S, nimgS, secs(resumedAt.Sub(t0)), dirA, mA.Step, secs(tA))

	// Run B, first part: a fresh job with 3 workers that ends at step S.
	b1 := newCluster(t, clusterOptions{})
	totalS := strconv.FormatFloat(float64(nimgS)/1000, 'g', -1, 64)
	b1.editSpec(edit(float64(nimgS) / 1000))
	b1.startWorkersFirst("coord", workers3...)
	b1.waitWorkersDone(3*time.Minute, workers3...)
	for _, id := range workers3 {
		onlyGeneration(t, b1.log(id), time.Time{}, 3, 0)
	}
	dirB1, mB1 := b1.finalCheckpoint()
	if mB1.Step != S || mB1.Nimg != nimgS || mB1.WorldSize != 3 {
		t.Fatalf("run B (3 workers, total_kimg %s): final checkpoint %s at step %d, %d images, world %d; want step %d, %d images, world 3",
			totalS, dirB1, mB1.Step, mB1.Nimg, mB1.WorldSize, S, nimgS)
	}
	tB1 := time.Since(began) - tA

	// Run B, second part: a new cluster resumes that checkpoint with 2 workers to A's total.
	b2 := newCluster(t, clusterOptions{})
	b2.store = b1.store
	b2.editSpec(edit(detTotalKimg))
	workers2 := []string{"v0", "v1"}
	start2 := time.Now()
	b2.startWorkersFirst("coord", workers2...)
	b2.waitWorkersDone(3*time.Minute, workers2...)
	for _, id := range workers2 {
		lines := after(readLog(b2.log(id)), start2)
		rs := linesWith(lines, "resumed")
		if len(rs) != 1 || rs[0].KV["checkpoint"] != dirB1 {
			t.Fatalf("run B: %s did not resume from %s (resumed lines: %d)", id, dirB1, len(rs))
		}
		onlyGeneration(t, b2.log(id), start2, 2, S)
	}
	dirB, mB := b2.finalCheckpoint()
	tB2 := time.Since(began) - tA - tB1

	compareFinal(t, a, dirA, mA, b2, dirB, mB)
	t.Logf("run B: 3 workers to step %d (total_kimg %s, %s) in %.1fs, then 2 workers resumed there to %s (step %d) in %.1fs; test %.1fs",
		S, totalS, dirB1, secs(tB1), dirB, mB.Step, secs(tB2), secs(time.Since(began)))
}

func readStoreFile(t *testing.T, c *cluster, key string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, c.store, c.s3)
	if err != nil {
		t.Fatal(err)
	}
	b, err := store.ReadAll(ctx, st, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// compareFinal fails the test unless two final checkpoints hold the same training state:
// counters, loader cursors and every object's bytes. A differing object is loaded and the
// first differing tensor named.
func compareFinal(t *testing.T, a *cluster, dirA string, mA *checkpoint.Manifest, b *cluster, dirB string, mB *checkpoint.Manifest) {
	t.Helper()
	if dirA != dirB || mA.Nimg != mB.Nimg || mA.Step != mB.Step || mA.WorldSize != mB.WorldSize || mA.LOD != mB.LOD {
		t.Errorf("final position: A %s (step %d, world %d, lod %g), B %s (step %d, world %d, lod %g)",
			dirA, mA.Step, mA.WorldSize, mA.LOD, dirB, mB.Step, mB.WorldSize, mB.LOD)
	}
	for name, o := range mA.Optimizers {
		if mB.Optimizers[name] != o {
			t.Errorf("optimizer %s: A %+v, B %+v", name, o, mB.Optimizers[name])
		}
	}
	for k, v := range mA.Counters {
		if mB.Counters[k] != v {
			t.Errorf("counter %s: A %d, B %d", k, v, mB.Counters[k])
		}
	}
	if ca, cb := string(mA.Extra["train_counters"]), string(mB.Extra["train_counters"]); ca != cb {
		t.Errorf("training counters: A %s, B %s", ca, cb)
	}
	if !bytes.Equal(mA.Loader, mB.Loader) {
		t.Errorf("loader cursors: A %s, B %s", mA.Loader, mB.Loader)
	}
	if !bytes.Equal(mA.RNG["philox_seed"], mB.RNG["philox_seed"]) {
		t.Errorf("RNG seed: A %x, B %x", mA.RNG["philox_seed"], mB.RNG["philox_seed"])
	}
	objB := map[string]checkpoint.ObjectInfo{}
	for _, o := range mB.Objects {
		objB[o.Name] = o
	}
	var same, differ []string
	for _, o := range mA.Objects {
		ob, ok := objB[o.Name]
		switch {
		case !ok:
			t.Errorf("object %s is in A's checkpoint, not in B's", o.Name)
		case o.SHA256 == ob.SHA256 && o.Size == ob.Size:
			same = append(same, fmt.Sprintf("%s (%d tensors, %d bytes)", o.Name, o.Tensors, o.Size))
		default:
			differ = append(differ, o.Name)
		}
		delete(objB, o.Name)
	}
	for name := range objB {
		t.Errorf("object %s is in B's checkpoint, not in A's", name)
	}
	if len(mA.Objects) == 0 {
		t.Errorf("A's checkpoint has no objects")
	}
	if len(differ) > 0 {
		ca := loadCheckpoint(t, a, dirA)
		cb := loadCheckpoint(t, b, dirB)
		for _, name := range differ {
			t.Errorf("object %s differs: %s", name, firstDifference(ca.Objects[name], cb.Objects[name]))
		}
	}
	if t.Failed() {
		return
	}
	var ia, ib struct {
		Tick int64 `json:"tick"`
		Seq  int64 `json:"seq"`
	}
	_ = json.Unmarshal(mA.Extra["loop"], &ia)
	_ = json.Unmarshal(mB.Extra["loop"], &ib)
	t.Logf("final checkpoints at step %d: all %d objects bit-identical: %s; counters %s and loader cursors %s equal (A ticks %d / checkpoint seq %d, B ticks %d / seq %d: bookkeeping only)",
		mA.Step, len(same), strings.Join(same, ", "), mA.Extra["train_counters"], mA.Loader, ia.Tick, ia.Seq, ib.Tick, ib.Seq)
}

func loadCheckpoint(t *testing.T, c *cluster, dir string) *checkpoint.Checkpoint {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, c.store, c.s3)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := checkpoint.Load(ctx, st, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ck
}

// firstDifference describes where two decoded objects first differ: the tensor, the first
// element and how many elements differ.
func firstDifference(a, b *safetensors.File) string {
	if a == nil || b == nil {
		return "missing on one side"
	}
	for _, ta := range a.Tensors {
		tb, ok := b.Tensor(ta.Name)
		if !ok {
			return fmt.Sprintf("tensor %s only in A", ta.Name)
		}
		if !slices.Equal(ta.Shape, tb.Shape) || ta.DType != tb.DType {
			return fmt.Sprintf("tensor %s: A %s%v, B %s%v", ta.Name, ta.DType, ta.Shape, tb.DType, tb.Shape)
		}
		if bytes.Equal(ta.Data, tb.Data) {
			continue
		}
		fa, errA := ta.Float32()
		fb, errB := tb.Float32()
		if errA != nil || errB != nil {
			return fmt.Sprintf("tensor %s: bytes differ", ta.Name)
		}
		first, n := -1, 0
		var maxAbs float64
		for i := range fa {
			if math.Float32bits(fa[i]) != math.Float32bits(fb[i]) {
				if first < 0 {
					first = i
				}
				n++
				maxAbs = max(maxAbs, math.Abs(float64(fa[i])-float64(fb[i])))
			}
		}
		return fmt.Sprintf("first at tensor %s element %d (A %g, B %g); %d of its %d elements differ, by up to %g",
			ta.Name, first, fa[first], fb[first], n, len(fa), maxAbs)
	}
	return "the tensors are equal; the encoding differs"
}
