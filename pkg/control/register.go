package control

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// registration is the value under members/<id>.
type registration struct {
	WorkerInfo
	// Leaving is set by a worker that deregisters, just before its key is deleted, so that
	// the leader counts the departure as a resize and not as a failure.
	Leaving    bool      `json:"leaving,omitempty"`
	Registered time.Time `json:"registered"`
}

// Registration keeps a worker registered while it lives. If its lease is lost (etcd
// unreachable for longer than the TTL) it registers again under a new lease and the same ID;
// when the old key had not expired yet, the worker keeps its place.
type Registration struct {
	job  *Job
	info WorkerInfo
	ttl  int64
	log  hclog.Logger

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	lease clientv3.LeaseID
}

// Register registers a worker under a lease of ttl (0: DefaultTTL) and keeps it alive until
// Close. It fails when etcd cannot be reached before ctx ends. A registration left by an
// earlier process with the same ID is taken over.
func (j *Job) Register(ctx context.Context, info WorkerInfo, ttl time.Duration) (*Registration, error) {
	if err := checkName("worker id", info.ID); err != nil {
		return nil, err
	}
	r := &Registration{job: j, info: info, ttl: ttlSeconds(ttl, DefaultTTL), log: j.log.With("worker", info.ID), done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	ka, err := r.attach(ctx)
	if err != nil {
		r.cancel()
		return nil, err
	}
	r.log.Info("worker registered", "lease", fmt.Sprintf("%x", r.Lease()))
	go r.keep(ka)
	return r, nil
}

// Lease is the lease the registration currently holds.
func (r *Registration) Lease() clientv3.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// Key is the registration's key.
func (r *Registration) Key() string { return r.job.MemberKey(r.info.ID) }

// Info is what the worker registered.
func (r *Registration) Info() WorkerInfo { return r.info }

// attach grants a lease, writes the registration under it and starts its keep-alive.
func (r *Registration) attach(ctx context.Context) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	cli := r.job.cli
	g, err := cli.Grant(ctx, r.ttl)
	if err != nil {
		return nil, fmt.Errorf("control: register worker %s: grant lease: %w", r.info.ID, err)
	}
	val, err := json.Marshal(registration{WorkerInfo: r.info, Registered: time.Now().UTC()})
	if err != nil {
		return nil, fmt.Errorf("control: register worker %s: %w", r.info.ID, err)
	}
	if _, err := cli.Put(ctx, r.Key(), string(val), clientv3.WithLease(g.ID)); err != nil {
		return nil, fmt.Errorf("control: register worker %s: %w", r.info.ID, err)
	}
	ka, err := cli.KeepAlive(r.ctx, g.ID)
	if err != nil {
		return nil, fmt.Errorf("control: register worker %s: keep lease alive: %w", r.info.ID, err)
	}
	r.mu.Lock()
	r.lease = g.ID
	r.mu.Unlock()
	return ka, nil
}

// keep drains keep-alive answers; when they stop before Close, it registers again.
func (r *Registration) keep(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(r.done)
	for {
		for range ka {
		}
		if r.ctx.Err() != nil {
			return
		}
		if r.job.cli.Ctx().Err() != nil {
			r.log.Warn("registration lost: etcd client closed")
			return
		}
		r.log.Warn("registration lease lost, registering again")
		retry := 100 * time.Millisecond
		lost, nextWarn := time.Now(), time.Now().Add(30*time.Second)
		for {
			var err error
			actx, cancel := context.WithTimeout(r.ctx, time.Duration(r.ttl)*time.Second)
			ka, err = r.attach(actx)
			cancel()
			if err == nil {
				r.log.Info("worker registered again", "lease", fmt.Sprintf("%x", r.Lease()))
				break
			}
			r.log.Debug("register again failed", "error", err)
			if time.Now().After(nextWarn) { // etcd gone for long: say so, every 30 s
				r.log.Warn("still not registered; etcd unreachable?", "for", time.Since(lost).Round(time.Second), "error", err)
				nextWarn = time.Now().Add(30 * time.Second)
			}
			if !sleepCtx(r.ctx, retry) {
				return
			}
			retry = min(2*retry, time.Second)
		}
	}
}

// Close deregisters the worker: it marks the registration as leaving (a departure, not a
// failure) and revokes the lease, which deletes the key. If etcd cannot be reached before ctx
// ends, the lease expires on its own within the TTL. Close is idempotent.
func (r *Registration) Close(ctx context.Context) error {
	select {
	case <-r.done:
		if r.ctx.Err() != nil {
			return nil
		}
	default:
	}
	r.cancel()
	<-r.done
	lease := r.Lease()
	cli := r.job.cli
	val, _ := json.Marshal(registration{WorkerInfo: r.info, Leaving: true, Registered: time.Now().UTC()})
	_, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(r.Key()), "=", lease)).
		Then(clientv3.OpPut(r.Key(), string(val), clientv3.WithLease(lease))).
		Commit()
	if err == nil {
		_, err = cli.Revoke(ctx, lease)
	}
	if err != nil {
		return fmt.Errorf("control: deregister worker %s: %w", r.info.ID, err)
	}
	r.log.Info("worker deregistered")
	return nil
}

// liveWorker is a registration read back from etcd.
type liveWorker struct {
	registration
	created int64 // creation revision of the key: registration order
}

// readMembers returns the registrations in registration order and the store revision.
func (j *Job) readMembers(ctx context.Context) ([]liveWorker, int64, error) {
	resp, err := j.cli.Get(ctx, j.MembersPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("control: read members: %w", err)
	}
	out := make([]liveWorker, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var reg registration
		if err := json.Unmarshal(kv.Value, &reg); err != nil {
			j.log.Warn("unreadable registration ignored", "key", string(kv.Key), "error", err)
			continue
		}
		out = append(out, liveWorker{registration: reg, created: kv.CreateRevision})
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].created < out[b].created })
	return out, resp.Header.Revision, nil
}

// Workers lists the registered workers (members, waiting and leaving alike) in registration
// order.
func (j *Job) Workers(ctx context.Context) ([]WorkerInfo, error) {
	live, _, err := j.readMembers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]WorkerInfo, len(live))
	for i, w := range live {
		out[i] = w.WorkerInfo
	}
	return out, nil
}
