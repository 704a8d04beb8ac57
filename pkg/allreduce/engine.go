package allreduce

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// plan describes one collective as seen by one member: it receives nIn messages from its
// predecessor up and sends nOut messages to its successor down.
type plan struct {
	coll   Collective
	length uint64 // elements in the buffer, checked against every peer's
	up     int    // rank that sends to us; unused when nIn == 0
	down   int    // rank we send to; unused when nOut == 0
	nIn    int
	nOut   int
	// dep returns how many incoming messages must be processed before outgoing message m
	// may be sent.
	dep func(m int) int
	// fill appends the payload of outgoing message m to dst.
	fill func(dst []byte, m int) []byte
	// process consumes incoming message m.
	process func(m int, payload []byte) error
	// where names the phase of message m for errors, e.g. "reduce-scatter step 2/3".
	where func(m int) string
}

// progress is shared by the receiving and the sending half of one collective.
type progress struct {
	processed atomic.Int64
	wake      chan struct{}
}

func (p *progress) advance(n int) {
	p.processed.Store(int64(n))
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run executes p for group g and accounts for it. The caller holds r.mu.
func (r *Reducer) run(ctx context.Context, g Group, k opKey, p plan) error {
	start := time.Now()
	err := r.exchange(ctx, g, k, p)
	r.nanos.Add(uint64(time.Since(start)))
	if err != nil {
		r.failures.Add(1)
		r.log.Warn("collective failed", "collective", p.coll.String(), "generation", k.gen, "op", k.op, "error", err)
		var ab *abortedError
		if !errors.As(err, &ab) {
			r.abort(g, k, p.coll, err)
		}
		return err
	}
	r.collectives.Add(1)
	return nil
}

type abortedError struct{ msg string }

func (e *abortedError) Error() string { return e.msg }

func (r *Reducer) exchange(ctx context.Context, g Group, k opKey, p plan) error {
	if p.nIn == 0 && p.nOut == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		once  sync.Once
		first error
	)
	fail := func(err error) {
		once.Do(func() { first = err; cancel() })
	}
	st := &progress{wake: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	if p.nOut > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.send(ctx, g, k, p, st); err != nil {
				fail(err)
			}
		}()
	}
	if err := r.receive(ctx, g, k, p, st); err != nil {
		fail(err)
	}
	wg.Wait()
	return first
}

func (r *Reducer) prefixErr(g Group, k opKey, p plan) string {
	return fmt.Sprintf("allreduce: %s (job %s, generation %d, op %d, rank %d %s)",
		p.coll, g.Job, k.gen, k.op, g.Rank, g.Members[g.Rank])
}

var errWait = errors.New("no message yet")

// next waits for the next message on sub for at most wait; errWait means none came.
func (r *Reducer) next(ctx context.Context, sub *nats.Subscription, wait time.Duration) (*nats.Msg, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	m, err := sub.NextMsgWithContext(wctx)
	switch {
	case err == nil:
		return m, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(wctx.Err(), context.DeadlineExceeded):
		return nil, errWait
	}
	return nil, err
}

// nextFromPeer waits for the next message on sub for at most the peer timeout. While it
// waits it calls nudge at growing intervals (to repeat a credit that may have reached the
// peer before it subscribed).
func (r *Reducer) nextFromPeer(ctx context.Context, sub *nats.Subscription, nudge func() error) (*nats.Msg, error) {
	deadline := time.Now().Add(r.peerTimout)
	every := 10 * time.Millisecond
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("silent for %s", r.peerTimout)
		}
		wait := left
		if nudge != nil {
			wait = min(wait, every)
		}
		m, err := r.next(ctx, sub, wait)
		if err != errWait {
			return m, err
		}
		if nudge != nil {
			if err := nudge(); err != nil {
				return nil, err
			}
			every = min(2*every, time.Second)
		}
	}
}

func (r *Reducer) receive(ctx context.Context, g Group, k opKey, p plan, st *progress) error {
	if p.nIn == 0 {
		return nil
	}
	up := g.Members[p.up]
	grant := min(r.window, p.nIn)
	if err := r.credit(g, k, p, grant); err != nil {
		return err
	}
	step := max(1, r.window/4)
	nudge := func() error { return r.credit(g, k, p, grant) }
	for m := 0; m < p.nIn; {
		msg, err := r.nextFromPeer(ctx, r.dataSub, nudge)
		// The client library drops messages when a subscription exceeds its pending limits
		// (and tells the connection's async error handler, which belongs to the caller);
		// the subscription's drop count says the same thing about our subject only.
		if d, derr := r.dataSub.Dropped(); derr == nil && d > r.dropSeen {
			r.slow.Add(uint64(d - r.dropSeen))
			n := d - r.dropSeen
			r.dropSeen = d
			return fmt.Errorf("%s: the NATS client dropped %d messages on %s (slow consumer) in %s; data from peer %s (rank %d) is incomplete",
				r.prefixErr(g, k, p), n, r.dataSub.Subject, p.where(m), up, p.up)
		}
		if err != nil {
			return fmt.Errorf("%s: waiting for data from peer %s (rank %d) in %s: %w",
				r.prefixErr(g, k, p), up, p.up, p.where(m), err)
		}
		h, payload, err := DecodeHeader(msg.Data)
		if err != nil {
			r.stale.Add(1)
			r.log.Debug("dropped undecodable message", "subject", msg.Subject, "error", err)
			continue
		}
		if h.Generation != k.gen || h.Op != k.op {
			r.stale.Add(1)
			r.log.Debug("dropped stale message", "generation", h.Generation, "op", h.Op, "sender", h.Sender)
			continue
		}
		sender := fmt.Sprintf("rank %d", h.Sender)
		if int(h.Sender) < len(g.Members) {
			sender = fmt.Sprintf("peer %s (rank %d)", g.Members[h.Sender], h.Sender)
		}
		switch {
		case h.Kind == KindAbort:
			return &abortedError{fmt.Sprintf("%s: %s gave up during our %s: %s",
				r.prefixErr(g, k, p), sender, p.where(m), payload)}
		case h.Kind != KindData:
			r.stale.Add(1)
			continue
		case int(h.Sender) != p.up:
			return fmt.Errorf("%s: data from %s, expected only peer %s (rank %d): do members agree on the member list?",
				r.prefixErr(g, k, p), sender, up, p.up)
		case h.Coll != p.coll:
			return fmt.Errorf("%s: %s runs %s as this collective: members called collectives in different orders",
				r.prefixErr(g, k, p), sender, h.Coll)
		case h.Length != p.length:
			return fmt.Errorf("%s: %s has a buffer of %d elements, this rank has %d",
				r.prefixErr(g, k, p), sender, h.Length, p.length)
		case int(h.Index) != m:
			r.gaps.Add(1)
			return fmt.Errorf("%s: gap from %s in %s: expected message %d, got %d (NATS dropped messages: slow consumer?)",
				r.prefixErr(g, k, p), sender, p.where(m), m, h.Index)
		}
		if err := p.process(m, payload); err != nil {
			return fmt.Errorf("%s: message %d from %s in %s: %w", r.prefixErr(g, k, p), m, sender, p.where(m), err)
		}
		r.received.Add(uint64(len(payload)))
		m++
		st.advance(m)
		if grant < p.nIn && m+r.window-grant >= step {
			grant = min(p.nIn, m+r.window)
			if err := r.credit(g, k, p, grant); err != nil {
				return err
			}
		}
	}
	return nil
}

// credit lets our predecessor send messages with an index below grant.
func (r *Reducer) credit(g Group, k opKey, p plan, grant int) error {
	msg := AppendHeader(make([]byte, 0, HeaderSize), Header{
		Kind: KindCredit, Coll: p.coll, Sender: uint32(g.Rank), Index: uint32(grant),
		Generation: k.gen, Op: k.op, Length: p.length,
	})
	if err := r.nc.Publish(r.CreditSubject(g.Job, k.gen, g.Members[p.up]), msg); err != nil {
		return fmt.Errorf("%s: send credit to peer %s (rank %d): %w", r.prefixErr(g, k, p), g.Members[p.up], p.up, err)
	}
	return nil
}

func (r *Reducer) send(ctx context.Context, g Group, k opKey, p plan, st *progress) error {
	down := g.Members[p.down]
	subject := r.DataSubject(g.Job, k.gen, down)
	grant := int(r.takeFuture(k))
	buf := make([]byte, 0, HeaderSize+r.chunk)
	for m := 0; m < p.nOut; m++ {
		for need := int64(p.dep(m)); st.processed.Load() < need; {
			select {
			case <-st.wake:
			case <-ctx.Done():
				return fmt.Errorf("%s: %s not sent to peer %s (rank %d): %w", r.prefixErr(g, k, p), p.where(m), down, p.down, ctx.Err())
			}
		}
		for m >= grant {
			msg, err := r.nextFromPeer(ctx, r.credSub, nil)
			if err != nil {
				return fmt.Errorf("%s: waiting for credit from peer %s (rank %d) to send %s: %w",
					r.prefixErr(g, k, p), down, p.down, p.where(m), err)
			}
			h, _, err := DecodeHeader(msg.Data)
			if err != nil || h.Kind != KindCredit || int(h.Sender) != p.down {
				continue
			}
			hk := opKey{h.Generation, h.Op}
			switch {
			case hk == k:
				grant = max(grant, int(h.Index))
			case hk.after(k):
				r.storeFuture(hk, h.Index)
			}
		}
		buf = AppendHeader(buf[:0], Header{
			Kind: KindData, Coll: p.coll, Sender: uint32(g.Rank), Index: uint32(m),
			Generation: k.gen, Op: k.op, Length: p.length,
		})
		buf = p.fill(buf, m)
		if err := r.nc.Publish(subject, buf); err != nil {
			return fmt.Errorf("%s: send %s to peer %s (rank %d): %w", r.prefixErr(g, k, p), p.where(m), down, p.down, err)
		}
		r.sent.Add(uint64(len(buf) - HeaderSize))
	}
	return nil
}

func (r *Reducer) takeFuture(k opKey) uint32 {
	r.futureMu.Lock()
	defer r.futureMu.Unlock()
	g := r.future[k]
	delete(r.future, k)
	return g
}

func (r *Reducer) storeFuture(k opKey, grant uint32) {
	r.futureMu.Lock()
	defer r.futureMu.Unlock()
	if len(r.future) < 64 {
		r.future[k] = max(r.future[k], grant)
	}
}

// abort tells every other member that this one gave up, so that they fail now instead of
// after a peer timeout, with the reason.
func (r *Reducer) abort(g Group, k opKey, coll Collective, cause error) {
	reason := cause.Error()
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	msg := AppendHeader(nil, Header{Kind: KindAbort, Coll: coll, Sender: uint32(g.Rank), Generation: k.gen, Op: k.op})
	msg = append(msg, reason...)
	for i, m := range g.Members {
		if i == g.Rank {
			continue
		}
		if err := r.nc.Publish(r.DataSubject(g.Job, k.gen, m), msg); err != nil {
			r.log.Debug("abort not sent", "peer", m, "error", err)
			return
		}
	}
}
