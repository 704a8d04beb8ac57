package trainloop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/dataset"
	"github.com/gantry-ml/gantry/pkg/grid"
	"github.com/gantry-ml/gantry/pkg/swd"
	"github.com/gantry-ml/gantry/pkg/train"
)

// GridSeeds are the latents of the sample grids: the same images at every tick.
const GridSeeds = 64

// endTick does a tick's reporting: progress, grid, SWD and checkpoint.
func (l *loop) endTick(ctx context.Context, last train.Stats, took time.Duration, final bool) error {
	tr := l.tr
	l.tick++
	st := tr.State()
	imgs := tr.C.Images - l.tickStartNimg
	t := Tick{
		Tick: l.tick, Kimg: round(tr.Kimg()), LOD: round(st.LOD), Stage: st.Stage(),
		LossD: last.LossD, LossG: last.LossG, R1: last.R1,
		SecTick: took.Seconds(), Skipped: tr.C.SkippedD + tr.C.SkippedG, Resets: tr.C.ResetCount,
		Finished: final,
	}
	if took > 0 {
		t.ImgPerS = float64(imgs) / took.Seconds()
	}
	if t.ImgPerS > 0 {
		t.ETA = float64(l.stopNimg()-tr.C.Images) / t.ImgPerS
	}
	l.tickStartNimg = tr.C.Images
	sn := l.spec.Snapshot
	lead := l.group.Rank == 0
	if lead && l.cfg.RunDir != "" && (final || (sn.ImageTicks > 0 && l.tick%int64(sn.ImageTicks) == 0)) {
		p, err := l.writeGrid(st.LOD)
		if err != nil {
			return err
		}
		t.Grid = p
	}
	m := l.spec.Metrics
	if lead && m.SWDImages > 0 && (final || (m.SWDTicks > 0 && l.tick%int64(m.SWDTicks) == 0) || l.tick == 1) {
		v, err := l.measureSWD(ctx, st.LOD)
		if err != nil {
			return err
		}
		t.SWD = v
	}
	due := final || (sn.CheckpointTicks > 0 && l.tick%int64(sn.CheckpointTicks) == 0)
	if due && tr.C.Images != l.ckptNimg {
		dir, err := l.checkpoint(ctx, final)
		if err != nil {
			return err
		}
		t.Ckpt = dir
	}
	l.sum.Ticks = append(l.sum.Ticks, t)
	if lead {
		kv := []any{"tick", t.Tick, "stage", t.Stage, "kimg", t.Kimg, "img_per_s", fmt.Sprintf("%.1f", t.ImgPerS),
			"loss_d", fmt.Sprintf("%.4f", t.LossD), "loss_g", fmt.Sprintf("%.4f", t.LossG)}
		if t.SWD != 0 { // SWD is measured every metrics.swd_ticks ticks only
			kv = append(kv, "swd", fmt.Sprintf("%.2f", t.SWD))
		}
		l.lg.Info("tick", append(kv, "eta", (time.Duration(t.ETA)*time.Second).String())...)
		if err := l.appendMetrics(t); err != nil {
			return err
		}
	}
	if lead {
		l.cfg.Cluster.Report(t)
	}
	if l.cfg.OnTick != nil {
		l.cfg.OnTick(t)
	}
	return nil
}

// render generates images for seeds with Gs at lod, upsampled to the dataset resolution.
func (l *loop) render(seeds []uint64, lod float64) (grid.Images, error) {
	data, shape, err := l.tr.Generate(seeds, train.GenOptions{Psi: 1, NoiseMode: "random", LOD: lod, UseAverage: true})
	if err != nil {
		return grid.Images{}, err
	}
	im := grid.Images{N: shape[0], C: shape[1], H: shape[2], W: shape[3], Data: data}
	return im.Upsample(l.spec.Dataset.Resolution), nil
}

func (l *loop) writeGrid(lod float64) (string, error) {
	seeds := make([]uint64, GridSeeds)
	for i := range seeds {
		seeds[i] = uint64(i)
	}
	im, err := l.render(seeds, lod)
	if err != nil {
		return "", err
	}
	b, err := grid.PNG(im, 8, 1)
	if err != nil {
		return "", err
	}
	p := filepath.Join(l.cfg.RunDir, "grids", fmt.Sprintf("fakes-%07.1fkimg.png", l.tr.Kimg()))
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return "", fmt.Errorf("trainloop: write grid: %w", err)
	}
	return p, nil
}

// measureSWD compares SWDImages generated images (at the current resolution, upsampled)
// with as many reals at the dataset resolution.
func (l *loop) measureSWD(ctx context.Context, lod float64) (float64, error) {
	n := l.spec.Metrics.SWDImages
	res := l.spec.Dataset.Resolution
	opt := swd.Options{Seed: uint64(l.spec.Seed)}
	if l.realSWD == nil {
		l.realSWD = map[int]*swd.Set{}
	}
	real := l.realSWD[res]
	if real == nil {
		ld, err := dataset.NewLoader(ctx, dataset.LoaderConfig{Store: l.cfg.Data, Batch: n, Seed: 7, CacheDir: l.cfg.CacheDir})
		if err != nil {
			return 0, err
		}
		b, err := ld.Next(ctx)
		ld.Close()
		if err != nil {
			return 0, err
		}
		if real, err = swd.Prepare(swd.Images{N: b.N, C: b.C, H: b.H, W: b.W, Data: b.Data}, opt); err != nil {
			return 0, err
		}
		l.realSWD[res] = real
	}
	var all grid.Images
	for start := 0; start < n; start += 128 {
		seeds := make([]uint64, min(128, n-start))
		for i := range seeds {
			seeds[i] = uint64(1_000_000 + start + i)
		}
		im, err := l.render(seeds, lod)
		if err != nil {
			return 0, err
		}
		all.C, all.H, all.W = im.C, im.H, im.W
		all.N += im.N
		all.Data = append(all.Data, im.Data...)
	}
	fake, err := swd.Prepare(swd.Images{N: all.N, C: all.C, H: all.H, W: all.W, Data: all.Data}, opt)
	if err != nil {
		return 0, err
	}
	r, err := real.Distance(fake)
	if err != nil {
		return 0, err
	}
	return r.Average, nil
}

// checkpoint gathers every rank's loader cursor, then rank 0 writes and commits the
// checkpoint and applies retention.
func (l *loop) checkpoint(ctx context.Context, final bool) (string, error) {
	tr := l.tr
	world, rank := l.group.World, l.group.Rank
	cursors := make([]float32, 2*world)
	cursors[2*rank] = float32(l.cursor.Epoch)
	cursors[2*rank+1] = float32(l.cursor.Position)
	if err := l.red.AllReduceSum(ctx, cursors); err != nil {
		return "", fmt.Errorf("trainloop: gather loader cursors: %w", err)
	}
	// Every rank counts the checkpoints, so that whoever is rank 0 after a membership change
	// numbers the next one right (seq also travels in the state broadcast).
	l.seq++
	l.ckptNimg = tr.C.Images
	if rank != 0 {
		return "", nil
	}
	deal := l.dealEpoch
	ex := extra{Tick: l.tick, TickStartNimg: l.tickStartNimg, Seq: l.seq, DealEpoch: &deal}
	for r := 0; r < world; r++ {
		ex.Cursors = append(ex.Cursors, dataset.Cursor{Epoch: int(cursors[2*r]), Position: int(cursors[2*r+1])})
	}
	m, err := tr.Manifest(l.spec)
	if err != nil {
		return "", err
	}
	raw, err := json.Marshal(ex)
	if err != nil {
		return "", err
	}
	m.Extra["loop"] = raw
	m.Tick, m.Seq = l.tick, ex.Seq
	loader, _ := json.Marshal(ex.Cursors)
	m.Loader = loader
	objs, err := tr.Objects()
	if err != nil {
		return "", err
	}
	// The previous commit ends before the next checkpoint is saved: commits reach the
	// leader in order.
	if err := l.awaitCommit(); err != nil {
		return "", err
	}
	dir := checkpoint.DirName(CheckpointPrefix, tr.C.Images)
	mb, err := checkpoint.SaveObjects(ctx, l.cfg.Out, dir, m, objs)
	if errors.Is(err, checkpoint.ErrExists) {
		mb, m, err = l.adopt(ctx, dir, ex.Seq, err)
	}
	if err != nil {
		return "", err
	}
	// The commit runs beside training: the objects are safe in the store, and the other ranks
	// should not wait with rank 0 on a leader that may be failing over. The last checkpoint
	// of the run is waited for.
	p := &pendingCommit{dir: dir, done: make(chan error, 1)}
	l.pending = p
	kimg := round(tr.Kimg())
	go func() { p.done <- l.commit(l.runCtx, dir, m, mb, kimg) }()
	if final {
		return dir, l.awaitCommit()
	}
	return dir, nil
}

// pendingCommit is a checkpoint rank 0 has saved and the leader is committing.
type pendingCommit struct {
	dir  string
	done chan error
}

// adopt handles a checkpoint directory that already holds a manifest when rank 0 comes to
// write it. In a cluster that happens after a leader wrote the manifest and lost its term
// before recording it, and the whole job then started again from the previous recorded
// checkpoint: the manifest was verified against its objects when it was written, and it is
// the same point of the same run (the same images and checkpoint number), so rank 0 asks the
// leader to record it instead of writing the directory again (its objects must not be
// overwritten under a manifest). Anything else is the error SaveObjects gave.
func (l *loop) adopt(ctx context.Context, dir string, seq int64, saveErr error) ([]byte, *checkpoint.Manifest, error) {
	if _, solo := l.cfg.Cluster.(Solo); solo {
		return nil, nil, saveErr
	}
	mb, err := checkpoint.ReadManifestBytes(ctx, l.cfg.Out, dir)
	if err != nil {
		return nil, nil, fmt.Errorf("trainloop: %s: %w (and its manifest cannot be read: %v)", dir, saveErr, err)
	}
	old, err := checkpoint.VerifyManifest(ctx, l.cfg.Out, dir, mb)
	if err != nil {
		return nil, nil, fmt.Errorf("trainloop: %s already holds a manifest that does not match its objects: %w", dir, err)
	}
	if old.Seq != seq || old.Nimg != l.tr.C.Images {
		return nil, nil, fmt.Errorf("trainloop: %s already holds the manifest of checkpoint %d at %d images, not of checkpoint %d at %d images; "+
			"it was never recorded by the coordinator: move it away to go on", dir, old.Seq, old.Nimg, seq, l.tr.C.Images)
	}
	l.lg.Warn("checkpoint directory already holds an unrecorded manifest of this checkpoint (written before the job restarted); asking the leader to record it",
		"dir", dir, "seq", seq)
	return mb, old, nil
}

// commit makes a saved checkpoint official (in a cluster the leader verifies its objects
// against the manifest, writes the manifest and records it; Solo writes the manifest), then
// applies retention up to it. Directories after it may be in flight and are not touched.
func (l *loop) commit(ctx context.Context, dir string, m *checkpoint.Manifest, manifest []byte, kimg float64) error {
	if err := l.cfg.Cluster.Commit(ctx, l.cfg.Out, dir, manifest); err != nil {
		return fmt.Errorf("trainloop: commit %s: %w", dir, err)
	}
	l.lg.Info("checkpoint committed", "dir", dir, "kimg", kimg, "seq", m.Seq)
	sn := l.spec.Snapshot
	if removed, err := checkpoint.PruneUpTo(ctx, l.cfg.Out, CheckpointPrefix, dir, sn.KeepLast, sn.KeepEvery); err != nil {
		l.lg.Warn("checkpoint retention failed", "error", err)
	} else if len(removed) > 0 {
		l.lg.Debug("checkpoints pruned", "removed", removed)
	}
	return nil
}

// awaitCommit waits for the commit in flight, if any, and returns its error.
func (l *loop) awaitCommit() error {
	p := l.pending
	if p == nil {
		return nil
	}
	l.pending = nil
	if err := <-p.done; err != nil {
		return err
	}
	l.sum.Checkpoint = p.dir
	return nil
}

func (l *loop) appendMetrics(t Tick) error {
	if l.cfg.RunDir == "" {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(l.cfg.RunDir, "metrics.jsonl"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("trainloop: metrics: %w", err)
	}
	defer f.Close()
	b, _ := json.Marshal(t)
	_, err = f.Write(append(b, '\n'))
	return err
}

// resumeDir chooses the checkpoint to resume from: the last one the cluster recorded as
// committed (in a cluster, the leader's etcd record), not the newest directory in the store,
// which may hold a checkpoint whose commit never completed. Without a record (Solo, or a
// cluster whose etcd is new) it is the newest committed manifest in the store. ErrNone: no
// checkpoint.
func (l *loop) resumeDir(ctx context.Context) (string, error) {
	dir, err := l.cfg.Cluster.LastCheckpoint(ctx)
	switch {
	case errors.Is(err, ErrNoRecords):
		dir, _, err = checkpoint.Latest(ctx, l.cfg.Out, CheckpointPrefix)
		return dir, err
	case err != nil:
		return "", fmt.Errorf("trainloop: read the last committed checkpoint: %w", err)
	case dir != "":
		if _, err := checkpoint.ReadManifest(ctx, l.cfg.Out, dir); err != nil {
			return "", fmt.Errorf("trainloop: the last committed checkpoint %s (recorded by the coordinator) cannot be read from %s: %w",
				dir, l.cfg.Out.URI(), err)
		}
		return dir, nil
	}
	dir, _, err = checkpoint.Latest(ctx, l.cfg.Out, CheckpointPrefix)
	if err == nil {
		l.lg.Info("no checkpoint recorded by the coordinator; resuming from the newest committed manifest in the store", "checkpoint", dir)
	}
	return dir, err
}
