package train

import (
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
)

// stateBuffers lists every device buffer of the trainer's state, in a fixed order: what a
// new member receives from rank 0 and what a rollback restores.
func (t *Trainer) stateBuffers() []*kernels.Buffer {
	return []*kernels.Buffer{
		t.G.Params.Values, t.D.Params.Values, t.Gs.Params.Values,
		t.mG, t.vG, t.mD, t.vD, t.WAvg,
	}
}

// StateLen is the number of floats PackState writes.
func (t *Trainer) StateLen() int {
	n := 0
	for _, b := range t.stateBuffers() {
		n += b.Len()
	}
	return n
}

// PackState copies parameters, Gs, optimizer moments and the w average into dst (of
// StateLen floats), for a broadcast to new members.
func (t *Trainer) PackState(dst []float32) error {
	if len(dst) != t.StateLen() {
		return fmt.Errorf("train: pack state into %d floats, need %d", len(dst), t.StateLen())
	}
	off := 0
	for _, b := range t.stateBuffers() {
		if err := b.Read(0, dst[off:off+b.Len()]); err != nil {
			return err
		}
		off += b.Len()
	}
	return nil
}

// UnpackState is PackState's inverse.
func (t *Trainer) UnpackState(src []float32) error {
	if len(src) != t.StateLen() {
		return fmt.Errorf("train: unpack state of %d floats, need %d", len(src), t.StateLen())
	}
	off := 0
	for _, b := range t.stateBuffers() {
		if err := b.Write(0, src[off:off+b.Len()]); err != nil {
			return err
		}
		off += b.Len()
	}
	return nil
}

// Snapshot remembers the state at a step boundary on the device, so that a step aborted
// halfway (a peer lost in the middle of an all-reduce) can be undone with Rollback.
func (t *Trainer) Snapshot() error {
	bufs := t.stateBuffers()
	if t.shadow == nil {
		for _, b := range bufs {
			s, err := t.dev.Alloc(b.Len())
			if err != nil {
				t.freeShadow()
				return err
			}
			t.shadow = append(t.shadow, s)
		}
	}
	for i, b := range bufs {
		if err := t.dev.Copy(b.View(b.Len()), t.shadow[i].View(b.Len())); err != nil {
			return err
		}
	}
	t.shadowC = t.C
	return nil
}

// Rollback returns to the last Snapshot.
func (t *Trainer) Rollback() error {
	if t.shadow == nil {
		return fmt.Errorf("train: rollback without a snapshot")
	}
	for i, b := range t.stateBuffers() {
		if err := t.dev.Copy(t.shadow[i].View(b.Len()), b.View(b.Len())); err != nil {
			return err
		}
	}
	t.C = t.shadowC
	return nil
}

func (t *Trainer) freeShadow() {
	for _, s := range t.shadow {
		s.Free()
	}
	t.shadow = nil
}
