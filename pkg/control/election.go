package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultTTL is the lease TTL of coordinator sessions and worker registrations when none is
// given: failures are noticed within it, and a keep-alive goes out every third of it.
const DefaultTTL = 5 * time.Second

// LeaderInfo identifies a coordinator in the election.
type LeaderInfo struct {
	ID   string `json:"id"`             // coordinator instance, e.g. host-pid
	Addr string `json:"addr,omitempty"` // where it serves status and metrics
	// Rev is the creation revision of the leader's election key: the fencing token of its
	// term. Set on read; ignored on Campaign.
	Rev int64 `json:"-"`
	// Key is the leader's election key. Set on read.
	Key string `json:"-"`
}

// Term is one period of leadership. Its context is cancelled when leadership ends; leader-only
// work runs under it. Every write through a Term is fenced by Rev.
type Term struct {
	job  *Job
	info LeaderInfo
	sess *concurrency.Session
	ttl  time.Duration // the lease's TTL as granted
	log  hclog.Logger

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	once   sync.Once
}

// Campaign blocks until this coordinator leads the job, then returns its term. ttl is the
// session lease (0: DefaultTTL; use 2 s or more, since the client renews on a 500 ms grid);
// a standby takes over about ttl after the leader died. A leader that cannot renew its lease
// ends its term after two thirds of ttl without an answer, before etcd can expire the lease
// and elect another (fencing covers a leader too stalled to notice). Campaign retries through etcd outages and session expiry; it returns an error
// only when ctx ends. Cancelling ctx also ends the returned term.
func (j *Job) Campaign(ctx context.Context, me LeaderInfo, ttl time.Duration) (*Term, error) {
	if err := checkName("coordinator id", me.ID); err != nil {
		return nil, err
	}
	me.Rev, me.Key = 0, ""
	val, err := json.Marshal(me)
	if err != nil {
		return nil, fmt.Errorf("control: encode leader info: %w", err)
	}
	log := j.log.With("id", me.ID)
	retry := 100 * time.Millisecond
	for {
		t, err := j.campaignOnce(ctx, me, string(val), ttlSeconds(ttl, DefaultTTL), log)
		if err == nil {
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("control: campaign: %w", ctx.Err())
		}
		if errors.Is(err, ErrSessionExpired) {
			log.Debug("campaign session expired, campaigning again")
		} else {
			log.Warn("campaign failed, retrying", "error", err)
		}
		sleepCtx(ctx, retry)
		retry = min(2*retry, 2*time.Second)
	}
}

func (j *Job) campaignOnce(ctx context.Context, me LeaderInfo, val string, ttl int64, log hclog.Logger) (*Term, error) {
	// Grant under ctx (NewSession would grant under the client's context and could block
	// for the whole of an etcd outage); the session only keeps the lease alive.
	g, err := j.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("control: grant session lease: %w", err)
	}
	sess, err := concurrency.NewSession(j.cli, concurrency.WithLease(g.ID), concurrency.WithTTL(int(ttl)))
	if err != nil {
		return nil, fmt.Errorf("control: start session: %w", err)
	}
	e := concurrency.NewElection(sess, j.LeaderPrefix())

	// A waiting Campaign does not notice that its own session expired: cancel it then.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-stop:
		}
	}()
	if err := e.Campaign(cctx, val); err != nil {
		expired := false
		select {
		case <-sess.Done():
			expired = true
		default:
		}
		sess.Close()
		if expired && ctx.Err() == nil {
			return nil, ErrSessionExpired
		}
		return nil, fmt.Errorf("control: campaign: %w", err)
	}
	// The key may have gone between winning and now; lead only if it is still ours.
	resp, err := j.cli.Get(cctx, e.Key())
	if err != nil || len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != e.Rev() {
		sess.Close()
		if err == nil {
			err = ErrSessionExpired
		}
		return nil, fmt.Errorf("control: confirm leadership: %w", err)
	}
	me.Rev, me.Key = e.Rev(), e.Key()
	t := &Term{job: j, info: me, sess: sess, ttl: time.Duration(g.TTL) * time.Second, log: log.With("term", me.Rev), done: make(chan struct{})}
	t.ctx, t.cancel = context.WithCancelCause(ctx)
	t.log.Info("leader elected")
	go t.monitor()
	return t, nil
}

// Context is cancelled when the term ends; context.Cause(ctx) says why.
func (t *Term) Context() context.Context { return t.ctx }

// Done is closed after the term ended and its lease was released.
func (t *Term) Done() <-chan struct{} { return t.done }

// Err says why the term ended (ErrSessionExpired, ErrNotLeader, ErrResigned, or the parent
// context's error); nil while it lasts.
func (t *Term) Err() error {
	if t.ctx.Err() == nil {
		return nil
	}
	return context.Cause(t.ctx)
}

// Rev is the term's fencing token: the creation revision of its election key. Stamp it on
// messages that act for the leader so receivers can drop those of deposed leaders.
func (t *Term) Rev() int64 { return t.info.Rev }

// Leader describes this term's leader.
func (t *Term) Leader() LeaderInfo { return t.info }

// Job is the job the term leads.
func (t *Term) Job() *Job { return t.job }

// Guard is the transaction condition that fences a write to this term: it holds only while
// the term's election key exists with its original creation revision. Custom leader-only
// transactions put it in their If.
func (t *Term) Guard() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(t.info.Key), "=", t.info.Rev)
}

// Resign ends the term and deletes its election key, so that a standby leads at once rather
// than after the TTL. It waits until the key is released or ctx ends.
func (t *Term) Resign(ctx context.Context) error {
	t.end(ErrResigned)
	select {
	case <-t.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("control: resign: %w", ctx.Err())
	}
}

// end cancels the term once with cause.
func (t *Term) end(cause error) {
	t.once.Do(func() { t.cancel(cause) })
}

// monitor ends the term when the session expires or the election key goes away, then
// releases the lease.
func (t *Term) monitor() {
	defer close(t.done)
	errc := make(chan error, 2)
	go func() { errc <- t.watchKey() }()
	go func() { errc <- t.watchLease() }()
	select {
	case <-t.ctx.Done():
	case <-t.sess.Done():
		t.end(ErrSessionExpired)
	case err := <-errc:
		t.end(err)
	}
	// Revoking deletes the key, so a standby need not wait out the TTL. After an expiry
	// this fails harmlessly (bounded by the TTL).
	t.sess.Close()
	t.log.Info("leadership ended", "reason", context.Cause(t.ctx))
}

// watchLease returns ErrSessionExpired when no keep-alive answer came for two thirds of the
// TTL (at least a third plus 600 ms), or nil when the term ends first. The client library
// itself would notice only up to a second after the TTL, by which time etcd may have expired
// the lease and elected another leader.
func (t *Term) watchLease() error {
	ka, err := t.job.cli.KeepAlive(t.ctx, t.sess.Lease())
	if err != nil {
		if t.ctx.Err() != nil {
			return nil
		}
		return ErrSessionExpired
	}
	// The client sends a keep-alive a third of the TTL after the last answer, but only on
	// its own 500 ms send ticks, so answers can be that much further apart when all is well.
	limit := max(2*t.ttl/3, t.ttl/3+600*time.Millisecond)
	tick := time.NewTicker(max(t.ttl/20, 10*time.Millisecond))
	defer tick.Stop()
	last := time.Now() // the campaign has just read the key
	for {
		select {
		case <-t.ctx.Done():
			return nil
		case _, ok := <-ka:
			if !ok {
				if t.ctx.Err() != nil {
					return nil
				}
				return ErrSessionExpired
			}
			last = time.Now()
		case <-tick.C:
			if time.Since(last) > limit {
				return ErrSessionExpired
			}
		}
	}
}

// watchKey returns ErrNotLeader when the term's election key is deleted, or nil when the
// term ends first.
func (t *Term) watchKey() error {
	cli := t.job.cli
	rev := t.info.Rev
	for t.ctx.Err() == nil {
		wch := cli.Watch(t.ctx, t.info.Key, clientv3.WithRev(rev))
		for wr := range wch {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					return ErrNotLeader
				}
			}
			rev = wr.Header.Revision + 1
		}
		if t.ctx.Err() != nil {
			return nil
		}
		// The watch broke (compaction, outage): check the key directly, then watch on.
		resp, err := cli.Get(t.ctx, t.info.Key)
		if err != nil {
			sleepCtx(t.ctx, 200*time.Millisecond)
			continue
		}
		if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != t.info.Rev {
			return ErrNotLeader
		}
		rev = resp.Header.Revision + 1
	}
	return nil
}

// stillLeads inspects the Else branch of a fenced transaction whose first Else operation read
// the term's key: it reports whether the key still carries the term's revision.
func (t *Term) stillLeads(resp *clientv3.TxnResponse) bool {
	if len(resp.Responses) == 0 {
		return false
	}
	r := resp.Responses[0].GetResponseRange()
	return r != nil && len(r.Kvs) == 1 && r.Kvs[0].CreateRevision == t.info.Rev
}

// lost ends the term after etcd refused one of its writes.
func (t *Term) lost() error {
	t.end(ErrNotLeader)
	return ErrNotLeader
}

// Leader returns the current leader; ErrNoLeader when there is none.
func (j *Job) Leader(ctx context.Context) (LeaderInfo, error) {
	li, _, err := j.leaderAt(ctx)
	if err != nil {
		return LeaderInfo{}, err
	}
	if li.Key == "" {
		return LeaderInfo{}, ErrNoLeader
	}
	return li, nil
}

// leaderAt returns the leader (zero when none) and the store revision of the read.
func (j *Job) leaderAt(ctx context.Context) (LeaderInfo, int64, error) {
	resp, err := j.cli.Get(ctx, j.LeaderPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return LeaderInfo{}, 0, fmt.Errorf("control: read leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return LeaderInfo{}, resp.Header.Revision, nil
	}
	kv := resp.Kvs[0]
	var li LeaderInfo
	if err := json.Unmarshal(kv.Value, &li); err != nil {
		return LeaderInfo{}, 0, fmt.Errorf("control: decode leader key %s: %w", kv.Key, err)
	}
	li.Rev, li.Key = kv.CreateRevision, string(kv.Key)
	return li, resp.Header.Revision, nil
}

// ObserveLeader sends the current leader now and whenever it changes, until ctx ends; then
// it closes the channel. A zero LeaderInfo (empty Key) means no leader. Standby coordinators
// and `coordinator status` use it; it survives etcd restarts and compaction.
func (j *Job) ObserveLeader(ctx context.Context) <-chan LeaderInfo {
	ch := make(chan LeaderInfo, 1)
	go func() {
		defer close(ch)
		first, last := true, LeaderInfo{}
		j.follow(ctx, j.LeaderPrefix(), []clientv3.OpOption{clientv3.WithPrefix()}, func(ctx context.Context) (int64, error) {
			li, rev, err := j.leaderAt(ctx)
			if err != nil {
				return 0, err
			}
			if first || li.Key != last.Key || li.Rev != last.Rev {
				first, last = false, li
				offer(ch, li)
			}
			return rev, nil
		})
	}()
	return ch
}
