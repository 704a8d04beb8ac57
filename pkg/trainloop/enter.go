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
	l.group, l.entered = g, true
	l.red = l.cfg.Cluster.Reducer(g)
	if err := l.tr.SetGroup(g.Rank, g.World); err != nil {
		return err
	}
	l.closeLoader()
	// Rank 0 decides whether this generation continues the current shard deal: at step 0
	// (nothing drawn yet), or when the whole job restarts from a checkpoint written by this
	// world size (every rank goes on from its saved cursor). Otherwise the shards are dealt
	// anew and every rank starts its new shards at the deal's next epoch: the same epoch
	// after a membership change as after a resume with another world size, whichever rank
	// was lost, so the two paths draw the same images.
	cont := l.tr.C.Step == 0 || (!l.dealt && len(l.ckptCursors) == g.World && l.tr.C.Step == l.ckptStep)
	if g.World > 1 {
		gctx, cancel := genContext(ctx, g)
		err := l.syncState(gctx, &cont)
		cancel()
		if err != nil {
			if changed(g) || l.awaitChange(ctx, g, err) {
				return fmt.Errorf("%w: %v", ErrGenerationChanged, err)
			}
			return err
		}
	}
	switch {
	case cont && l.tr.C.Step > 0 && len(l.ckptCursors) == g.World:
		l.cursor = l.ckptCursors[g.Rank]
	case cont:
		l.cursor = dataset.Cursor{Epoch: l.dealEpoch}
	default:
		l.dealEpoch++
		l.cursor = dataset.Cursor{Epoch: l.dealEpoch}
	}
	l.dealt = true
	l.lg.Info("generation", "generation", g.Generation, "rank", g.Rank, "world", g.World,
		"shards", len(g.Shards), "kimg", round(l.tr.Kimg()), "step", l.tr.C.Step)
	return nil
}

// syncState broadcasts rank 0's whole state to the group: every float of the trainer, and
// the counters as raw bits (the broadcast copies bytes, it does no arithmetic).
func (l *loop) syncState(ctx context.Context, cont *bool) error {
	tr := l.tr
	n := tr.StateLen()
	ints := []*int64{&tr.C.Images, &tr.C.PrevImages, &tr.C.Step, &tr.C.AdamStepG, &tr.C.AdamStepD,
		&tr.C.SkippedG, &tr.C.SkippedD, &tr.C.NonFinite, &tr.C.ResetCount, &l.tick, &l.tickStartNimg, &l.seq}
	deal := int64(l.dealEpoch)
	var flag int64
	if *cont {
		flag = 1
	}
	ints = append(ints, &deal, &flag)
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
		l.dealEpoch, *cont = int(deal), flag == 1
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
