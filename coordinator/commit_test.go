package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/dataset"
	"github.com/gantry-ml/gantry/pkg/elastic"
	"github.com/gantry-ml/gantry/pkg/etcdembed"
	"github.com/gantry-ml/gantry/pkg/natsembed"
	"github.com/gantry-ml/gantry/pkg/safetensors"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/train"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

// syncBuf is a log sink the test reads while the processes it simulates write to it.
type syncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// commitEnv is a job with real servers: an embedded etcd and NATS, a directory store, a
// coordinator leading through control.Job.Lead with leaderWork, and one registered
// elastic.Worker (rank 0), each with its own etcd client and NATS connection.
type commitEnv struct {
	out  store.Store
	job  *control.Job // the test's own handle, for reading the state
	w    *elastic.Worker
	logs *syncBuf
	lg   hclog.Logger
}

// startCommitEnv starts the servers, the leader and the worker. etcdDir "" gives a new etcd.
func startCommitEnv(t *testing.T, out store.Store) *commitEnv {
	t.Helper()
	ctx := context.Background()
	logs := &syncBuf{}
	lg := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug, TimeFormat: "15:04:05.000"})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	etcd, err := etcdembed.Start(ctx, etcdembed.Options{UnsafeNoFsync: true})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(func() { etcd.Close() })
	ns, err := natsembed.Start(natsembed.Options{})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	t.Cleanup(ns.Shutdown)
	newJob := func(who string) *control.Job {
		cli, err := control.NewClient(etcd.Endpoints(), lg.Named(who))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		j, err := control.NewJob(cli, "ckpt-test", lg.Named(who))
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	connect := func(name string) *nats.Conn {
		nc, err := nats.Connect(ns.URL(), nats.Name(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}

	lj := newJob("coordinator")
	lw := &leaderWork{job: lj, nc: connect("coordinator"), out: out, spec: spec.Defaults(), lg: lg.Named("leader")}
	lctx, stopLead := context.WithCancel(ctx)
	led := make(chan error, 1)
	go func() {
		led <- lj.Lead(lctx, control.LeaderConfig{ID: "coord-1", TTL: 2 * time.Second, Settle: -1,
			MinWorkers: 1, MaxWorkers: 4, NumShards: 1}, lw.run)
	}()
	t.Cleanup(func() {
		stopLead()
		if err := <-led; err != nil {
			t.Errorf("leader: %v", err)
		}
	})

	w, err := elastic.Start(ctx, elastic.Config{Job: newJob("worker"), Info: control.WorkerInfo{ID: "w0"},
		TTL: 2 * time.Second, NATS: connect("worker"), CommitTimeout: 20 * time.Second, Logger: lg.Named("worker")})
	if err != nil {
		t.Fatalf("start the worker: %v", err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = w.Close(cctx)
	})
	jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	g, err := w.Join(jctx)
	if err != nil {
		t.Fatalf("the worker got no rank: %v", err)
	}
	if g.Rank != 0 {
		t.Fatalf("the only worker has rank %d", g.Rank)
	}
	return &commitEnv{out: out, job: newJob("test"), w: w, logs: logs, lg: lg}
}

// recorded returns the state's last committed checkpoint (nil: none).
func (e *commitEnv) recorded(t *testing.T) *control.CheckpointRecord {
	t.Helper()
	s, err := e.job.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s.Checkpoint
}

func dirStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir(), store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// saveObjects writes a small checkpoint's objects (no manifest) and returns the manifest bytes.
func saveObjects(t *testing.T, b store.Store, seq, nimg int64) (string, []byte) {
	t.Helper()
	dir := checkpoint.DirName(trainloop.CheckpointPrefix, nimg)
	m := &checkpoint.Manifest{Spec: spec.Defaults(), Nimg: nimg, Kimg: float64(nimg) / 1000, Seq: seq, WorldSize: 1, EMA: "Gs"}
	objs := []checkpoint.Object{
		{Name: "G", Tensors: []safetensors.Tensor{safetensors.FromFloat32("w", []int{4}, []float32{1, 2, 3, float32(seq)})}},
		{Name: "Gs", Tensors: []safetensors.Tensor{safetensors.FromFloat32("w", []int{4}, []float32{4, 3, 2, float32(nimg)})}},
	}
	mb, err := checkpoint.SaveObjects(context.Background(), b, dir, m, objs)
	if err != nil {
		t.Fatal(err)
	}
	return dir, mb
}

func noManifest(t *testing.T, b store.Store, dir, when string) {
	t.Helper()
	if _, err := checkpoint.ReadManifestBytes(context.Background(), b, dir); !errors.Is(err, checkpoint.ErrIncomplete) {
		t.Errorf("%s: %s has a manifest (or it cannot be read: %v)", when, dir, err)
	}
}

// TestLeaderCommitsManifest drives checkpoint commits from rank 0 (elastic.Worker.Commit)
// through NATS to the leading coordinator: the manifest reaches the store only when the leader
// commits it, a flipped byte in an object is refused, retries are idempotent, and a manifest
// already in the store is recorded when it is the same bytes and refused when it is not.
func TestLeaderCommitsManifest(t *testing.T) {
	ctx := context.Background()
	out := dirStore(t)
	e := startCommitEnv(t, out)

	// A checkpoint whose objects rank 0 wrote: no manifest until the leader commits it.
	dir1, mb1 := saveObjects(t, out, 1, 4000)
	noManifest(t, out, dir1, "after SaveObjects")
	if r := e.recorded(t); r != nil {
		t.Fatalf("a checkpoint is recorded before any commit: %+v", r)
	}
	if err := e.w.Commit(ctx, nil, dir1, mb1); err != nil {
		t.Fatalf("commit %s: %v", dir1, err)
	}
	have, err := checkpoint.ReadManifestBytes(ctx, out, dir1)
	if err != nil || !bytes.Equal(have, mb1) {
		t.Fatalf("after the commit the store holds %d manifest bytes (%v), want the %d rank 0 sent", len(have), err, len(mb1))
	}
	r := e.recorded(t)
	if r == nil || r.Dir != dir1 || r.Seq != 1 || r.Nimg != 4000 || r.ManifestSHA256 != checkpoint.ManifestSHA256(mb1) {
		t.Fatalf("recorded %+v, want %s seq 1 with the manifest's sha256", r, dir1)
	}
	if d, err := e.w.LastCheckpoint(ctx); err != nil || d != dir1 {
		t.Errorf("LastCheckpoint = %q, %v; want %s", d, err, dir1)
	}
	// A retry (the reply was lost) is accepted and changes nothing.
	if err := e.w.Commit(ctx, nil, dir1, mb1); err != nil {
		t.Fatalf("retried commit %s: %v", dir1, err)
	}
	if recs, _ := e.job.Checkpoints(ctx); len(recs) != 1 {
		t.Errorf("after a retry etcd holds %d records, want 1", len(recs))
	}

	// A flipped byte in an object: refused, nothing written, nothing recorded.
	dir2, mb2 := saveObjects(t, out, 2, 8000)
	key := path.Join(dir2, "Gs.safetensors")
	data, err := store.ReadAll(ctx, out, key)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 0x01
	if err := out.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	err = e.w.Commit(ctx, nil, dir2, mb2)
	if err == nil || !strings.Contains(err.Error(), "Gs.safetensors has sha256") || !strings.Contains(err.Error(), "leader refused") {
		t.Fatalf("commit with a flipped byte: %v; want the leader to refuse naming the object's sha256", err)
	}
	noManifest(t, out, dir2, "after a refused commit")
	if r := e.recorded(t); r.Dir != dir1 {
		t.Errorf("after a refused commit the record is %s, want %s", r.Dir, dir1)
	}

	// A manifest already in the store with the same bytes: an earlier leader wrote it and its
	// term ended before the etcd record. This leader records it.
	dir3, mb3 := saveObjects(t, out, 2, 12000)
	if err := checkpoint.CommitManifest(ctx, out, dir3, mb3); err != nil {
		t.Fatal(err)
	}
	if err := e.w.Commit(ctx, nil, dir3, mb3); err != nil {
		t.Fatalf("commit of %s whose manifest an earlier leader wrote: %v", dir3, err)
	}
	if r := e.recorded(t); r.Dir != dir3 || r.Seq != 2 {
		t.Errorf("recorded %+v, want %s seq 2", r, dir3)
	}

	// A different manifest already in the directory: refused, the one there is kept.
	dir4, mb4 := saveObjects(t, out, 3, 16000)
	other := bytes.Replace(mb4, []byte(`"world_size": 1`), []byte(`"world_size": 2`), 1)
	if bytes.Equal(other, mb4) {
		t.Fatal("test setup: world_size not found in the manifest")
	}
	if err := checkpoint.CommitManifest(ctx, out, dir4, other); err != nil {
		t.Fatal(err)
	}
	err = e.w.Commit(ctx, nil, dir4, mb4)
	if err == nil || !strings.Contains(err.Error(), "holds a different manifest") {
		t.Fatalf("commit over a different manifest: %v; want a refusal saying so", err)
	}
	if have, _ := checkpoint.ReadManifestBytes(ctx, out, dir4); !bytes.Equal(have, other) {
		t.Errorf("the refused commit replaced the manifest already in %s", dir4)
	}
	if r := e.recorded(t); r.Dir != dir3 {
		t.Errorf("after a refused commit the record is %s, want %s", r.Dir, dir3)
	}

	// A seq already recorded for another checkpoint: refused before any manifest is written.
	dir5, mb5 := saveObjects(t, out, 2, 20000)
	if err := e.w.Commit(ctx, nil, dir5, mb5); err == nil || !strings.Contains(err.Error(), "seq 2 is already recorded for "+dir3) {
		t.Fatalf("commit of a seq already recorded for another checkpoint: %v", err)
	}
	noManifest(t, out, dir5, "after a stale commit")

	// A manifest sent for another directory than its images say.
	dir6, mb6 := saveObjects(t, out, 3, 24000)
	wrong := checkpoint.DirName(trainloop.CheckpointPrefix, 28000)
	for _, o := range []string{"G.safetensors", "Gs.safetensors"} {
		data, err := store.ReadAll(ctx, out, path.Join(dir6, o))
		if err != nil {
			t.Fatal(err)
		}
		if err := out.Put(ctx, path.Join(wrong, o), bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.w.Commit(ctx, nil, wrong, mb6); err == nil || !strings.Contains(err.Error(), "belongs in ckpt-000000024000") {
		t.Fatalf("commit of %s's manifest into %s: %v", dir6, wrong, err)
	}
	noManifest(t, out, wrong, "after a commit into the wrong directory")

	// Retention after the last commit collects the orphans below it (dir2's objects and the
	// stale dir5 are after dir3, so they stay) and never what lies beyond it.
	removed, err := checkpoint.PruneUpTo(ctx, out, trainloop.CheckpointPrefix, dir3, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{dir1, dir2}; strings.Join(removed, ",") != strings.Join(want, ",") {
		t.Errorf("PruneUpTo(%s) removed %v, want %v", dir3, removed, want)
	}
	for _, d := range []string{dir4, dir5, dir6, wrong} {
		if es, _ := out.List(ctx, d+"/"); len(es) == 0 {
			t.Errorf("PruneUpTo(%s) removed %s, which is after it", dir3, d)
		}
	}
}

// TestFreshStartResumesFromRecord starts a cluster job's worker afresh (trainloop.Run with an
// elastic.Worker) over a store that holds, after the last checkpoint recorded in etcd, a
// checkpoint with objects only and one with a manifest that was never recorded: it resumes
// from the record. With a new etcd (no record) the same store resumes from its newest manifest
// and says so.
func TestFreshStartResumesFromRecord(t *testing.T) {
	ctx := context.Background()
	s, dev, tr := smokeTrainer(t, nil)
	out := dirStore(t)
	save := func(seq, nimg int64) (string, []byte) {
		t.Helper()
		return saveTrainer(t, out, s, tr, seq, nimg, nil)
	}

	e := startCommitEnv(t, out)
	recorded, mb := save(1, 512)
	if err := e.w.Commit(ctx, nil, recorded, mb); err != nil {
		t.Fatal(err)
	}
	objectsOnly, _ := save(2, 1024) // rank 0 died before the commit
	unrecorded, mb := save(2, 1536) // a leader wrote the manifest, then lost its term
	if err := checkpoint.CommitManifest(ctx, out, unrecorded, mb); err != nil {
		t.Fatal(err)
	}
	if d, _, err := checkpoint.Latest(ctx, out, trainloop.CheckpointPrefix); err != nil || d != unrecorded {
		t.Fatalf("test setup: the store's newest manifest is %s (%v), want %s", d, err, unrecorded)
	}

	run := func(e *commitEnv) *trainloop.Summary {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		// StopKimg at the oldest checkpoint: whichever it resumes from, the run ends at once.
		sum, err := trainloop.Run(rctx, trainloop.Config{Spec: s, Out: out, Cluster: e.w, Device: dev,
			Logger: e.lg.Named("train"), StopKimg: 0.512})
		if err != nil {
			t.Fatalf("trainloop.Run: %v", err)
		}
		return sum
	}
	sum := run(e)
	if sum.Checkpoint != recorded || sum.ResumedAt != 0.512 {
		t.Errorf("a fresh start resumed from %s at %.3f kimg; want the recorded %s at 0.512 (not %s, objects only, nor %s, never recorded)",
			sum.Checkpoint, sum.ResumedAt, recorded, objectsOnly, unrecorded)
	}
	if strings.Contains(e.logs.String(), "no checkpoint recorded") {
		t.Errorf("fell back to the store although etcd holds a record")
	}

	// A new etcd: no record, so the newest committed manifest in the store, logged at Info.
	e2 := startCommitEnv(t, out)
	sum = run(e2)
	if sum.Checkpoint != unrecorded {
		t.Errorf("with a new etcd a fresh start resumed from %s; want the store's newest manifest %s", sum.Checkpoint, unrecorded)
	}
	if !strings.Contains(e2.logs.String(), "[INFO]  train: no checkpoint recorded by the coordinator; resuming from the newest committed manifest in the store: checkpoint="+unrecorded) {
		t.Errorf("the fallback to the store was not logged at Info")
	}
}

// grayDataset imports n 32x32 grayscale images (smooth gradients) as a dataset in one shard.
func grayDataset(t *testing.T, n int) store.Store {
	t.Helper()
	src := t.TempDir()
	for i := 0; i < n; i++ {
		px := make([]byte, 32*32)
		for j := range px {
			px[j] = byte((j%32)*4 + (j/32)*i)
		}
		var b bytes.Buffer
		if err := dataset.EncodePNG(&b, px, 1, 32, 32); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("%03d.png", i)), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := dirStore(t)
	if _, err := dataset.Create(context.Background(), data, dataset.Options{Source: src, Resolution: 32, ShardSize: n,
		Channels: "gray", Filter: "none"}, nil, io.Discard); err != nil {
		t.Fatalf("import the test images: %v", err)
	}
	return data
}

// TestRestartAdoptsUnrecordedManifest trains a cluster job's rank 0 (trainloop.Run with an
// elastic.Worker and the leader) from the recorded checkpoint to the next one, whose
// directory already holds a manifest that a leader wrote and never recorded before the job
// restarted: the worker resumes from the record, the manifest there is recorded as it is
// (its objects are not rewritten under it), and retention after that commit collects the
// orphan below it but nothing after it.
func TestRestartAdoptsUnrecordedManifest(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode: trains 32 steps")
	}
	ctx := context.Background()
	s, dev, tr := smokeTrainer(t, func(s *spec.Spec) {
		s.Snapshot = spec.Snapshot{CheckpointTicks: 1, KeepLast: 1}
	})
	out := dirStore(t)
	// save writes checkpoint seq at nimg as the loop would (with its loop state).
	save := func(seq, nimg int64) (string, []byte) {
		t.Helper()
		return saveTrainer(t, out, s, tr, seq, nimg, func(m *checkpoint.Manifest) {
			m.Tick = seq
			m.Extra["loop"] = json.RawMessage(fmt.Sprintf(`{"tick":%d,"tick_start_nimg":%d,"cursors":[{"epoch":0,"position":0}],"seq":%d}`, seq, nimg, seq))
		})
	}
	e := startCommitEnv(t, out)
	recorded, mb := save(1, 512)
	if err := e.w.Commit(ctx, nil, recorded, mb); err != nil {
		t.Fatal(err)
	}
	orphan, _ := save(2, 768)       // objects of a failed write, below the next commit
	unrecorded, mb := save(2, 1024) // the next checkpoint: a leader wrote it, then lost its term
	if err := checkpoint.CommitManifest(ctx, out, unrecorded, mb); err != nil {
		t.Fatal(err)
	}
	// After the next commit, left alone: objects whose commit may be in flight, and a manifest
	// not recorded.
	beyond, _ := save(3, 1280)
	further, mb4 := save(4, 1536)
	if err := checkpoint.CommitManifest(ctx, out, further, mb4); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(strings.TrimPrefix(out.URI(), "file://"), unrecorded, "G.safetensors"))
	if err != nil {
		t.Fatal(err)
	}

	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	sum, err := trainloop.Run(rctx, trainloop.Config{Spec: s, Data: grayDataset(t, 32), Out: out, Cluster: e.w,
		Device: dev, Logger: e.lg.Named("train"), StopKimg: 1.024})
	if err != nil {
		t.Fatalf("trainloop.Run: %v", err)
	}
	if sum.ResumedAt != 0.512 || sum.Checkpoint != unrecorded {
		t.Fatalf("resumed at %.3f kimg and ended with checkpoint %q; want 0.512 and %s", sum.ResumedAt, sum.Checkpoint, unrecorded)
	}
	r := e.recorded(t)
	if r == nil || r.Dir != unrecorded || r.Seq != 2 || r.ManifestSHA256 != checkpoint.ManifestSHA256(mb) {
		t.Errorf("recorded %+v; want %s seq 2 with the sha256 of the manifest already there", r, unrecorded)
	}
	if !strings.Contains(e.logs.String(), "already holds an unrecorded manifest of this checkpoint") {
		t.Errorf("rank 0 did not say it committed the manifest it found")
	}
	after, err := os.ReadFile(filepath.Join(strings.TrimPrefix(out.URI(), "file://"), unrecorded, "G.safetensors"))
	if err != nil || !bytes.Equal(before, after) {
		t.Errorf("the objects under the adopted manifest were rewritten (%v)", err)
	}
	if _, err := checkpoint.Verify(ctx, out, unrecorded); err != nil {
		t.Errorf("the recorded checkpoint does not verify: %v", err)
	}
	es, err := checkpoint.List(ctx, out, trainloop.CheckpointPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range es {
		left = append(left, e.Dir)
	}
	if want := []string{unrecorded, beyond, further}; strings.Join(left, ",") != strings.Join(want, ",") {
		t.Errorf("after retention (keep_last 1) the store holds %v; want %v (%s and the orphan %s collected)", left, want, recorded, orphan)
	}
}

// smokeTrainer builds a one-thread device and trainer of the cpu-smoke preset without SWD (the runs in
// these tests only end their last tick: no dataset), edit applied to the spec first.
func smokeTrainer(t *testing.T, edit func(*spec.Spec)) (*spec.Spec, *kernels.Device, *train.Trainer) {
	t.Helper()
	dev, err := kernels.Open(kernels.Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Close)
	s, err := spec.Preset("cpu-smoke")
	if err != nil {
		t.Fatal(err)
	}
	s.Metrics.SWDImages = 0
	if edit != nil {
		edit(s)
	}
	opts, err := train.OptionsFromSpec(s, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := train.New(dev, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	return s, dev, tr
}

// saveTrainer writes the trainer's state as checkpoint seq at nimg images (objects only,
// extra applied to the manifest first) and returns the directory and the manifest bytes.
func saveTrainer(t *testing.T, out store.Store, s *spec.Spec, tr *train.Trainer, seq, nimg int64, extra func(*checkpoint.Manifest)) (string, []byte) {
	t.Helper()
	tr.C.Images = nimg
	m, err := tr.Manifest(s)
	if err != nil {
		t.Fatal(err)
	}
	m.Seq = seq
	if extra != nil {
		extra(m)
	}
	objs, err := tr.Objects()
	if err != nil {
		t.Fatal(err)
	}
	dir := checkpoint.DirName(trainloop.CheckpointPrefix, nimg)
	mb, err := checkpoint.SaveObjects(context.Background(), out, dir, m, objs)
	if err != nil {
		t.Fatal(err)
	}
	return dir, mb
}
