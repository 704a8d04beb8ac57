package trainloop

import (
	"context"
	"errors"

	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/train"
)

// Group is one generation of the job's membership as this worker sees it.
type Group struct {
	Generation int64
	Rank       int
	World      int
	Shards     []int // this rank's dataset shards (nil: all)
	// Changed is closed when the membership moves past this generation.
	Changed <-chan struct{}
}

// ErrGenerationChanged is what a collective returns when the membership moved on while it
// ran; the loop rolls the step back and re-forms.
var ErrGenerationChanged = errors.New("trainloop: generation changed")

// ErrNoRecords is what a Cluster that keeps no record of committed checkpoints apart from the
// store answers LastCheckpoint with.
var ErrNoRecords = errors.New("trainloop: no checkpoint records apart from the store")

// Cluster is the loop's view of the other workers and the coordinator. A single process
// uses Solo.
type Cluster interface {
	// Join blocks until this worker has a rank in a running generation.
	Join(ctx context.Context) (Group, error)
	// Reducer sums buffers over the group's members.
	Reducer(g Group) train.Reducer
	// Broadcast copies rank 0's buffer to every member.
	Broadcast(ctx context.Context, g Group, buf []float32) error
	// Commit makes official the checkpoint whose objects rank 0 has written in dir, given
	// its encoded manifest (checkpoint.SaveObjects). In a cluster the leader verifies every
	// object against the manifest, writes the manifest create-only and records the
	// checkpoint; Solo writes the manifest into out itself, and that write is the commit.
	Commit(ctx context.Context, out checkpoint.Bucket, dir string, manifest []byte) error
	// LastCheckpoint returns the directory of the last committed checkpoint as the cluster
	// records it, "" when it has recorded none. Solo keeps no record apart from the store
	// and returns ErrNoRecords: the newest committed manifest there is the last checkpoint.
	LastCheckpoint(ctx context.Context) (string, error)
	// Report publishes a tick's progress (rank 0).
	Report(t Tick)
}

// Solo is the Cluster of a single process.
type Solo struct{}

var never = make(chan struct{})

// Join returns rank 0 of 1.
func (Solo) Join(context.Context) (Group, error) {
	return Group{Generation: 1, Rank: 0, World: 1, Changed: never}, nil
}

// Reducer returns the identity.
func (Solo) Reducer(Group) train.Reducer { return train.Local{} }

// Broadcast does nothing: the only member is rank 0.
func (Solo) Broadcast(context.Context, Group, []float32) error { return nil }

// Commit writes the manifest after the objects, create-only.
func (Solo) Commit(ctx context.Context, out checkpoint.Bucket, dir string, manifest []byte) error {
	return checkpoint.CommitManifest(ctx, out, dir, manifest)
}

// LastCheckpoint returns ErrNoRecords: the store's newest committed manifest is the record.
func (Solo) LastCheckpoint(context.Context) (string, error) { return "", ErrNoRecords }

// Report does nothing.
func (Solo) Report(Tick) {}

// genContext returns a context cancelled when g's generation ends.
func genContext(ctx context.Context, g Group) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-g.Changed:
			cancel()
		case <-c.Done():
		}
	}()
	return c, cancel
}

func changed(g Group) bool {
	select {
	case <-g.Changed:
		return true
	default:
		return false
	}
}
