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

// Cluster is the loop's view of the other workers and the coordinator. A single process
// uses Solo.
type Cluster interface {
	// Join blocks until this worker has a rank in a running generation.
	Join(ctx context.Context) (Group, error)
	// Reducer sums buffers over the group's members.
	Reducer(g Group) train.Reducer
	// Broadcast copies rank 0's buffer to every member.
	Broadcast(ctx context.Context, g Group, buf []float32) error
	// Commit makes a checkpoint that rank 0 saved official (the leader verifies it and
	// records it). Solo has nothing to do: Save's create-only manifest is the commit.
	Commit(ctx context.Context, dir string, m *checkpoint.Manifest) error
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

// Commit does nothing.
func (Solo) Commit(context.Context, string, *checkpoint.Manifest) error { return nil }

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
