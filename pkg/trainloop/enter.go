package trainloop

import (
	"context"
	"fmt"
	"math"

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
			if changed(g) {
				return fmt.Errorf("%w: %v", ErrGenerationChanged, err)
			}
			return err
		}
	}
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
