// Package control is Gantry's control plane on etcd: coordinator election with fenced writes,
// worker registration under leases, the job state record the leader owns (status, generation,
// ranks, shard assignment, last committed checkpoint, counters), and the watches through which
// workers follow it.
//
// # Keyspace
//
// Everything of a job named J lives under /gantry/jobs/J/:
//
//	leader/<lease-hex>      election keys (client/v3/concurrency); the key created first
//	                        leads; value: LeaderInfo JSON; bound to the candidate's session
//	                        lease, so it vanishes when the candidate dies
//	state                   the job state record (State JSON); written only by the leader
//	members/<worker-id>     one registration per worker (WorkerInfo JSON plus a leaving
//	                        flag); bound to the worker's lease (TTL a few seconds)
//	checkpoints/<seq>       committed checkpoint records (CheckpointRecord JSON), seq zero
//	                        padded to 20 digits so keys sort by seq; create-only
//	progress                training progress (Progress JSON) for `coordinator status`
//
// # Failure semantics
//
// Leadership is a lease, not a lock: a leader that stalls past its TTL may still believe it
// leads. So every leader write (state, checkpoints, progress) is one transaction guarded by the
// creation revision of the leader's own election key, the fencing token of its term. When the
// term's lease expires the key goes with it, a standby's key becomes the oldest, and any write
// still in flight from the deposed leader fails with ErrNotLeader without landing. A term
// (Term) carries a context that is cancelled as soon as the leader learns it lost (session
// expiry, its key deleted, a refused write, Resign, or its parent context).
//
// A campaign that is still waiting when its own session expires would wait forever behind
// other keys; Campaign cancels it and starts over with a new session.
//
// Workers are members while their lease lives. The leader watches members/ and, after a short
// settle window that batches near-simultaneous joins, rewrites the member list: survivors keep
// their relative order (the oldest member stays rank 0, as elastic Horovod prefers), newcomers
// are appended in registration order, workers beyond the job's maximum wait in a list, and
// below the minimum the job pauses. Every change of the ranked list bumps the generation;
// workers follow the state through WatchState and re-form their ring when it changes.
//
// Watches can fail with ErrCompacted after a disconnection; every watch here then re-reads
// the key and watches again from the revision it read, so a watcher may skip intermediate
// values but always converges to the latest one. Writes that may have landed without an
// acknowledgement (etcd stopped mid-request) are safe to retry: the reconcile loop recomputes
// from the stored state, and a checkpoint record is create-only and idempotent for the same
// content.
package control

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/gantry-ml/gantry/pkg/zaphclog"
)

// Root is the prefix of every job's keys.
const Root = "/gantry/jobs/"

// Errors a caller can test for with errors.Is.
var (
	// ErrNotLeader: the write was refused because this term no longer leads (its fencing
	// token is not the current leader key's); nothing was written.
	ErrNotLeader = errors.New("control: not the leader")
	// ErrNoLeader: no coordinator currently leads the job.
	ErrNoLeader = errors.New("control: no leader")
	// ErrNoState: the job has no state record yet (no leader has run).
	ErrNoState = errors.New("control: no job state")
	// ErrSessionExpired ends a term whose lease was lost (no keep-alive answered within the
	// TTL, or the lease was revoked).
	ErrSessionExpired = errors.New("control: session expired")
	// ErrResigned ends a term given up through Resign.
	ErrResigned = errors.New("control: resigned")
	// ErrCheckpointExists: a different record is already committed under that seq.
	ErrCheckpointExists = errors.New("control: another checkpoint record has this seq")
	// ErrStaleCheckpoint: the seq is not after the last committed checkpoint's.
	ErrStaleCheckpoint = errors.New("control: checkpoint seq not after the last committed one")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

func checkName(what, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("control: %s %q: use 1-128 letters, digits, '_', '.', '-' (not starting with '.' or '-')", what, name)
	}
	return nil
}

// Job is the control-plane handle of one job. It is safe for concurrent use.
type Job struct {
	cli  *clientv3.Client
	name string
	log  hclog.Logger
}

// NewJob returns the handle of the job called name on cli. log may be nil.
func NewJob(cli *clientv3.Client, name string, log hclog.Logger) (*Job, error) {
	if cli == nil {
		return nil, errors.New("control: nil etcd client")
	}
	if err := checkName("job name", name); err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Job{cli: cli, name: name, log: log.Named("control").With("job", name)}, nil
}

// Name is the job's name.
func (j *Job) Name() string { return j.name }

// Client is the etcd client the job uses.
func (j *Job) Client() *clientv3.Client { return j.cli }

// Prefix is the key prefix of the job (/gantry/jobs/<job>/).
func (j *Job) Prefix() string { return Root + j.name + "/" }

// LeaderPrefix is the election prefix.
func (j *Job) LeaderPrefix() string { return j.Prefix() + "leader/" }

// StateKey is the key of the job state record.
func (j *Job) StateKey() string { return j.Prefix() + "state" }

// MembersPrefix is the prefix of worker registrations.
func (j *Job) MembersPrefix() string { return j.Prefix() + "members/" }

// MemberKey is the registration key of a worker.
func (j *Job) MemberKey(id string) string { return j.MembersPrefix() + id }

// CheckpointsPrefix is the prefix of committed checkpoint records.
func (j *Job) CheckpointsPrefix() string { return j.Prefix() + "checkpoints/" }

// CheckpointKey is the key of checkpoint record seq.
func (j *Job) CheckpointKey(seq int64) string {
	return fmt.Sprintf("%s%020d", j.CheckpointsPrefix(), seq)
}

// ProgressKey is the key of the training progress record.
func (j *Job) ProgressKey() string { return j.Prefix() + "progress" }

// NewClient connects to etcd at endpoints with settings suited to the control plane: reconnect
// attempts at most a second apart (so a restarted etcd is found quickly), gRPC keep-alive
// pings to notice dead connections, and the client's own log lines passed to log at Error
// only (it logs every retry at Warn). The connection is made in the background; the first
// request waits for it.
func NewClient(endpoints []string, log hclog.Logger) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("control: no etcd endpoints given")
	}
	var zl = zaphclog.New(nil, zapcore.ErrorLevel)
	if log != nil {
		zl = zaphclog.New(log.Named("etcd"), zapcore.ErrorLevel)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zl,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   time.Second,
			},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("control: connect to etcd %v: %w", endpoints, err)
	}
	return cli, nil
}

// ttlSeconds turns a TTL into etcd's whole seconds, rounding up, at least 1; 0 means def.
func ttlSeconds(ttl, def time.Duration) int64 {
	if ttl <= 0 {
		ttl = def
	}
	s := int64((ttl + time.Second - 1) / time.Second)
	return max(s, 1)
}

// sleepCtx waits d or until ctx ends; it reports whether ctx is still live.
func sleepCtx(ctx interface{ Done() <-chan struct{} }, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// offer puts v in a one-slot channel, replacing a value the reader has not taken yet, so a
// slow reader sees the newest value rather than a backlog. Only one goroutine may send on ch.
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
