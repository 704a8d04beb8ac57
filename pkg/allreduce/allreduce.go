// Package allreduce averages gradients across the workers of a job over NATS core pub/sub.
//
// AllReduce is a ring all-reduce: the buffer is cut into one segment per member, and every
// member sends 2(N-1) segments to its successor in the ring and receives as many from its
// predecessor (N-1 reduce-scatter steps, then N-1 all-gather steps). Segments travel in
// chunks that fit the server's max_payload; a chunk is sent as soon as the chunk it depends
// on has been reduced, so sending, receiving and adding overlap. Each segment is summed in
// the order the ring fixes and reaches the other members as copied bytes, so every member
// ends with bit-identical values, and a run repeats exactly for a given world size.
//
// Flow control is by credit: a receiver grants its predecessor a window of messages when it
// enters a collective and extends it as it consumes them, so no sender ever has more than
// Config.WindowBytes unconsumed at its successor and nothing is sent before the receiver is
// subscribed. Subjects are scoped by job and generation, so the server keeps a stale
// generation's traffic away; beyond that, every message carries the generation, the
// collective's sequence number and its index in the sender's stream: messages from another
// generation or collective are dropped and counted; a missing index (NATS drops silently
// when a subscriber falls behind) fails the collective instead of producing a wrong sum, and
// so does a drop the client library reports on the subscription (a slow consumer). A
// collective that cannot finish returns an error naming the peer and the phase: when the
// context ends (the caller's way to abandon a generation), when a peer is silent for
// Config.PeerTimeout, or when another member gave up and said so.
//
// Broadcast (from rank 0, used when members join) runs the same machinery along a chain;
// AllGather collects a few float64 values from every member (losses, checksums).
package allreduce

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
)

// Op says how AllReduce combines the members' buffers.
type Op int

const (
	// Sum leaves the element-wise sum of all members' buffers.
	Sum Op = iota
	// Mean leaves the element-wise sum divided by the number of members.
	Mean
)

// Config tunes a Reducer. The zero value is usable.
type Config struct {
	// ChunkBytes caps the payload of one message; 0 or anything above the server's
	// max_payload minus HeaderSize means as large as the server allows.
	ChunkBytes int
	// WindowBytes bounds the bytes a member may have sent to its successor that the
	// successor has not consumed yet; 0 means 16 MiB. At least two chunks are always
	// allowed.
	WindowBytes int
	// PeerTimeout is how long a member waits for a peer's next message before it fails
	// the collective; 0 means 10 seconds.
	PeerTimeout time.Duration
	// SubjectPrefix starts every subject; empty means "gantry.allreduce".
	SubjectPrefix string
	// PendingBytes is the pending limit of this member's data subscription: beyond it the
	// NATS client drops messages, and the collective fails as a slow consumer. 0 means
	// 64 MiB or four windows, whichever is larger; credit keeps at most one window in
	// flight, the rest is room for stale traffic from a failed collective.
	PendingBytes int
}

// Group says who takes part in a collective. All members must call the same collectives,
// in the same order, with equal Job, Generation and Members; within a generation the
// collectives are numbered in call order, so a member that skips one desynchronises the
// group until the next generation.
type Group struct {
	// Job names the training job; it scopes the subjects.
	Job string
	// Generation is the membership version the coordinator published. It scopes the
	// subjects, and messages of any other generation are dropped and counted. It must not
	// decrease between calls.
	Generation uint64
	// Members lists the workers in ring order; every member sees the same list.
	Members []string
	// Rank is this worker's index in Members.
	Rank int
}

// Stats counts what a Reducer has done since it was created.
type Stats struct {
	// Collectives counts finished collectives, Failures the ones that returned an error.
	Collectives, Failures uint64
	// DroppedStale counts messages dropped because they belonged to another generation or
	// collective, or were not messages of this package.
	DroppedStale uint64
	// Gaps counts missing messages detected by sequence number.
	Gaps uint64
	// SlowConsumerDrops counts messages the NATS client dropped on this member's data
	// subscription because it fell behind.
	SlowConsumerDrops uint64
	// BytesSent and BytesReceived count payload bytes, headers excluded.
	BytesSent, BytesReceived uint64
	// Seconds is the wall time spent inside collectives.
	Seconds float64
}

// Reducer runs collectives for one worker over one NATS connection. Its methods may be
// called from several goroutines, but collectives run one at a time.
type Reducer struct {
	nc         *nats.Conn
	log        hclog.Logger
	prefix     string
	chunk      int // payload bytes per message, a multiple of 8
	window     int // messages
	peerTimout time.Duration
	pending    int // bytes

	mu        sync.Mutex // held for the whole of a collective
	job, self string
	dataSub   *nats.Subscription
	credSub   *nats.Subscription
	dropSeen  int
	gen       uint64
	nextOp    uint64
	futureMu  sync.Mutex
	future    map[opKey]uint32 // credits that arrived for a later collective

	collectives, failures, stale, gaps, slow atomic.Uint64
	sent, received, nanos                    atomic.Uint64
}

type opKey struct{ gen, op uint64 }

func (k opKey) after(o opKey) bool { return k.gen > o.gen || (k.gen == o.gen && k.op > o.op) }

// New returns a Reducer that talks over nc. The chunk size comes from the server's
// max_payload as the connection reports it.
func New(nc *nats.Conn, cfg Config, logger hclog.Logger) (*Reducer, error) {
	if nc == nil {
		return nil, errors.New("allreduce: nil NATS connection")
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if cfg.ChunkBytes < 0 || cfg.WindowBytes < 0 || cfg.PeerTimeout < 0 || cfg.PendingBytes < 0 {
		return nil, fmt.Errorf("allreduce: negative chunk size, window, peer timeout or pending limit in config")
	}
	maxPayload := int(nc.MaxPayload())
	if maxPayload <= 0 {
		return nil, errors.New("allreduce: NATS connection reports no max_payload (not connected?)")
	}
	chunk := maxPayload - HeaderSize
	if cfg.ChunkBytes > 0 && cfg.ChunkBytes < chunk {
		chunk = cfg.ChunkBytes
	}
	chunk &^= 7
	if chunk < 8 {
		return nil, fmt.Errorf("allreduce: server max_payload %d leaves no room for data after the %d-byte header", maxPayload, HeaderSize)
	}
	windowBytes := cfg.WindowBytes
	if windowBytes == 0 {
		windowBytes = 16 << 20
	}
	window := max(2, windowBytes/chunk)
	timeout := cfg.PeerTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	prefix := cfg.SubjectPrefix
	if prefix == "" {
		prefix = "gantry.allreduce"
	}
	for _, tok := range strings.Split(prefix, ".") {
		if err := checkToken("subject prefix", tok); err != nil {
			return nil, err
		}
	}
	pending := cfg.PendingBytes
	if pending == 0 {
		pending = max(64<<20, 4*window*(chunk+HeaderSize))
	}
	return &Reducer{
		nc: nc, log: logger.Named("allreduce"), prefix: prefix, chunk: chunk, window: window,
		peerTimout: timeout, pending: pending, future: map[opKey]uint32{},
	}, nil
}

// ChunkBytes is the payload size of one message.
func (r *Reducer) ChunkBytes() int { return r.chunk }

// Stats returns a snapshot of the counters.
func (r *Reducer) Stats() Stats {
	return Stats{
		Collectives:       r.collectives.Load(),
		Failures:          r.failures.Load(),
		DroppedStale:      r.stale.Load(),
		Gaps:              r.gaps.Load(),
		SlowConsumerDrops: r.slow.Load(),
		BytesSent:         r.sent.Load(),
		BytesReceived:     r.received.Load(),
		Seconds:           float64(r.nanos.Load()) / 1e9,
	}
}

// Close drops the Reducer's subscriptions. It does not close the connection.
func (r *Reducer) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unsubscribe()
}

// DataSubject is the subject on which member receives chunks and aborts in generation gen
// of job. Scoping subjects by generation lets the server drop a stale generation's traffic;
// the header check catches whatever reaches a subject it does not belong to.
func (r *Reducer) DataSubject(job string, gen uint64, member string) string {
	return fmt.Sprintf("%s.%s.%d.%s.data", r.prefix, job, gen, member)
}

// CreditSubject is the subject on which member receives credit from its successor in
// generation gen of job.
func (r *Reducer) CreditSubject(job string, gen uint64, member string) string {
	return fmt.Sprintf("%s.%s.%d.%s.credit", r.prefix, job, gen, member)
}

func (r *Reducer) unsubscribe() error {
	var errs []error
	for _, s := range []*nats.Subscription{r.dataSub, r.credSub} {
		if s != nil && s.IsValid() {
			errs = append(errs, s.Unsubscribe())
		}
	}
	r.dataSub, r.credSub, r.job, r.self = nil, nil, "", ""
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("allreduce: unsubscribe: %w", err)
	}
	return nil
}

func checkToken(what, s string) error {
	if s == "" {
		return fmt.Errorf("allreduce: empty %s", what)
	}
	if strings.ContainsAny(s, ".*> \t\r\n") {
		return fmt.Errorf("allreduce: %s %q may not contain '.', '*', '>' or white space", what, s)
	}
	return nil
}

// begin validates g, makes sure this member is subscribed, and numbers the collective.
func (r *Reducer) begin(g Group) (opKey, error) {
	n := len(g.Members)
	if n == 0 {
		return opKey{}, errors.New("allreduce: group has no members")
	}
	if g.Rank < 0 || g.Rank >= n {
		return opKey{}, fmt.Errorf("allreduce: rank %d out of range for %d members", g.Rank, n)
	}
	if err := checkToken("job", g.Job); err != nil {
		return opKey{}, err
	}
	seen := make(map[string]int, n)
	for i, m := range g.Members {
		if err := checkToken("member name", m); err != nil {
			return opKey{}, err
		}
		if j, dup := seen[m]; dup {
			return opKey{}, fmt.Errorf("allreduce: member %q appears at ranks %d and %d", m, j, i)
		}
		seen[m] = i
	}
	sameEndpoint := g.Job == r.job && g.Members[g.Rank] == r.self
	if sameEndpoint && g.Generation < r.gen {
		return opKey{}, fmt.Errorf("allreduce: generation %d is older than generation %d already used", g.Generation, r.gen)
	}
	if !sameEndpoint || g.Generation != r.gen {
		if err := r.unsubscribe(); err != nil {
			return opKey{}, err
		}
		if err := r.subscribe(g.Job, g.Generation, g.Members[g.Rank]); err != nil {
			return opKey{}, err
		}
		r.gen, r.nextOp = g.Generation, 0
	}
	k := opKey{gen: r.gen, op: r.nextOp}
	r.nextOp++
	r.futureMu.Lock()
	for fk := range r.future {
		if !fk.after(k) && fk != k {
			delete(r.future, fk)
		}
	}
	r.futureMu.Unlock()
	return k, nil
}

func (r *Reducer) subscribe(job string, gen uint64, self string) error {
	data, err := r.nc.SubscribeSync(r.DataSubject(job, gen, self))
	if err != nil {
		return fmt.Errorf("allreduce: subscribe to %s: %w", r.DataSubject(job, gen, self), err)
	}
	if err := data.SetPendingLimits(1<<20, r.pending); err != nil {
		_ = data.Unsubscribe()
		return fmt.Errorf("allreduce: set pending limits: %w", err)
	}
	cred, err := r.nc.SubscribeSync(r.CreditSubject(job, gen, self))
	if err != nil {
		_ = data.Unsubscribe()
		return fmt.Errorf("allreduce: subscribe to %s: %w", r.CreditSubject(job, gen, self), err)
	}
	r.dataSub, r.credSub, r.job, r.self, r.dropSeen = data, cred, job, self, 0
	return nil
}
