package trainloop

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/gantry-ml/gantry/pkg/dataset"
)

// enter joins the next generation: takes the rank, receives rank 0's state (parameters,
// optimizer, Gs, counters, tick position) and restarts the data stream on the new shards.
func (l *loop) enter(ctx context.Context) error {
	g, err := l.cfg.Cluster.Join(ctx)
	if err != nil {
		return err
	}
	first := !l.entered
	l.group, l.entered = g, true
	l.red = l.cfg.Cluster.Reducer(g)
	if err := l.tr.SetGroup(g.Rank, g.World); err != nil {
		return err
	}
	l.closeLoader()
	if g.World > 1 {
		gctx, cancel := genContext(ctx, g)
		err := l.syncState(gctx)
		cancel()
		if err != nil {
			if changed(g) || l.awaitChange(ctx, g, err) {
				return fmt.Errorf("%w: %v", ErrGenerationChanged, err)
			}
			return err
		}
	}
	// TODO(#6): the next epoch follows rank 0's cursor: after a generation change the new rank
	// 0's, after a resume with another world size the old rank 0's. When the worker lost was
	// rank 0 and its epoch differed from its successor's (ranks wrap their shards at
	// different steps), the two paths go on with different epochs and draw different images
	// (seen with rank 0 of 3 killed at step 131 in TestKilledWorkerMatchesResumedRun's
	// setting). A next epoch computed from what every rank knows (the images shown since the
	// shards were dealt, the largest share, the smallest rank's image count) would agree.
	switch {
	case first && len(l.ckptCursors) == g.World:
		l.cursor = l.ckptCursors[g.Rank]
	case first && len(l.ckptCursors) > 0:
		// Written by another world size: shards moved between ranks, so every rank starts
		// its new shards at the next epoch.
		l.cursor = dataset.Cursor{Epoch: l.ckptCursors[0].Epoch + 1}
	case !first:
		l.cursor = dataset.Cursor{Epoch: l.cursor.Epoch + 1}
	}
	l.lg.Info("generation", "generation", g.Generation, "rank", g.Rank, "world", g.World,
		"shards", len(g.Shards), "kimg", round(l.tr.Kimg()), "step", l.tr.C.Step)
	return nil
}

// syncState broadcasts rank 0's whole state to the group: every float of the trainer, and
// the counters as raw bits (the broadcast copies bytes, it does no arithmetic).
func (l *loop) syncState(ctx context.Context) error {
	tr := l.tr
	n := tr.StateLen()
	ints := []*int64{&tr.C.Images, &tr.C.PrevImages, &tr.C.Step, &tr.C.AdamStepG, &tr.C.AdamStepD,
		&tr.C.SkippedG, &tr.C.SkippedD, &tr.C.NonFinite, &tr.C.ResetCount, &l.tick, &l.tickStartNimg, &l.seq}
	epoch := int64(l.cursor.Epoch)
	ints = append(ints, &epoch)
	buf := make([]float32, n+2*len(ints))
	if l.group.Rank == 0 {
		if err := tr.PackState(buf[:n]); err != nil {
			return err
		}
		for i, p := range ints {
			buf[n+2*i] = math.Float32frombits(uint32(uint64(*p) >> 32))
			buf[n+2*i+1] = math.Float32frombits(uint32(uint64(*p)))
		}
	}
	if err := l.cfg.Cluster.Broadcast(ctx, l.group, buf); err != nil {
		return fmt.Errorf("trainloop: receive state from rank 0: %w", err)
	}
	if l.group.Rank != 0 {
		if err := tr.UnpackState(buf[:n]); err != nil {
			return err
		}
		for i, p := range ints {
			*p = int64(uint64(math.Float32bits(buf[n+2*i]))<<32 | uint64(math.Float32bits(buf[n+2*i+1])))
		}
		l.cursor.Epoch = int(epoch)
	}
	return nil
}

// changeGrace bounds how long a worker whose collective failed waits for a membership change
// to explain the failure (see awaitChange). It is far longer than the moments by which the
// members' watches of the job state differ, and about the default peer timeout.
const changeGrace = 10 * time.Second

// awaitChange is called when a collective of generation g failed while g had not ended as far
// as this worker knows. A peer that saw the generation end first gives up on the collective
// and tells the others, and its word can reach this worker before this worker's own watch of
// the job state does (a worker that took that as fatal exited on a peer's SIGKILL). So in a
// world of more than one the worker waits up to changeGrace for g to end, and reports whether
// it did; if it did not, the failure is the worker's to report.
func (l *loop) awaitChange(ctx context.Context, g Group, err error) bool {
	if g.World < 2 {
		return false
	}
	l.lg.Debug("collective failed in a running generation; waiting for a membership change", "generation", g.Generation, "error", err)
	t := time.NewTimer(changeGrace)
	defer t.Stop()
	select {
	case <-g.Changed:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}
