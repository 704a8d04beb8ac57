// Package elastic is a worker's side of a distributed job: it registers the worker in etcd,
// follows the job state the leading coordinator writes, and turns each generation of the
// membership into a ring of NATS collectives for package trainloop (trainloop.Cluster).
//
// A membership change is detected by the coordinator from lease expiry (not by a collective
// timing out); it bumps the generation, every worker sees the new state through its watch,
// the collective in flight is cancelled through the generation's context, and the loop
// re-forms from rank 0's state. Checkpoints are committed by the leader: rank 0 writes the
// objects and sends the manifest over NATS (request/reply); the leader verifies the objects
// against it, writes it create-only and records the checkpoint in etcd. A fresh start
// resumes from that record (LastCheckpoint).
package elastic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/gantry-ml/gantry/pkg/allreduce"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/train"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

// JobFileKey is where the coordinator publishes the job spec in the job's store and where
// joining workers read it.
const JobFileKey = "job.yaml"

// CommitSubject is where rank 0 asks the leader to commit a checkpoint of job.
func CommitSubject(job string) string { return "gantry.ctl." + job + ".commit" }

// ProgressSubject is where rank 0 publishes each tick of job.
func ProgressSubject(job string) string { return "gantry.ctl." + job + ".progress" }

// CommitRequest asks the leader to commit a checkpoint whose objects rank 0 has written in
// Dir: the leader verifies every object against Manifest (the encoded manifest, exactly the
// bytes to store), writes the manifest create-only and records the checkpoint in etcd.
type CommitRequest struct {
	Dir        string `json:"dir"`
	Manifest   []byte `json:"manifest"` // base64 in JSON, so the bytes travel unchanged
	Generation int64  `json:"generation"`
}

// CommitReply is the leader's answer; Error is empty on success. Retry marks a failure that
// is no verdict on the checkpoint (the leader's term ended while committing it): rank 0 asks
// again, and the next leader commits it.
type CommitReply struct {
	Error string `json:"error,omitempty"`
	Retry bool   `json:"retry,omitempty"`
}

// DefaultPeerTimeout is how long a collective waits for a silent peer that still holds its
// lease.
const DefaultPeerTimeout = 5 * time.Minute

// Config configures a Worker.
type Config struct {
	Job       *control.Job
	Info      control.WorkerInfo
	TTL       time.Duration // registration lease (a few seconds)
	NATS      *nats.Conn
	AllReduce allreduce.Config
	// CommitTimeout bounds a checkpoint commit request (default 60 s).
	CommitTimeout time.Duration
	Logger        hclog.Logger
}

// Worker is one registered worker of a job.
type Worker struct {
	cfg Config
	lg  hclog.Logger
	reg *control.Registration
	red *allreduce.Reducer

	bg     context.Context // ends with Close
	cancel context.CancelFunc
	done   chan struct{}
	rejoin chan struct{} // a NATS reconnect asks the rejoin loop to re-form
	left   chan struct{} // closed when the rejoin loop has ended

	mu      sync.Mutex
	latest  control.State
	have    bool
	notify  chan struct{} // closed and replaced on every new state
	current *generation   // the generation handed out by Join
	minGen  int64         // Join waits for a generation at least this new
}

type generation struct {
	gen     int64
	changed chan struct{}
	members []string
}

// Start registers the worker and starts following the job state.
func Start(ctx context.Context, cfg Config) (*Worker, error) {
	lg := cfg.Logger
	if lg == nil {
		lg = hclog.NewNullLogger()
	}
	if cfg.CommitTimeout <= 0 {
		cfg.CommitTimeout = 60 * time.Second
	}
	if cfg.AllReduce.PeerTimeout <= 0 {
		// Membership changes are detected by lease expiry, which cancels the collective at
		// once; the peer timeout only catches a peer that is alive but stuck, and must
		// outlast rank 0's tick work (grids, SWD, checkpoints) that the others wait through.
		cfg.AllReduce.PeerTimeout = DefaultPeerTimeout
	}
	if err := waitEarlierRegistration(ctx, cfg.Job, cfg.Info.ID, lg); err != nil {
		return nil, err
	}
	red, err := allreduce.New(cfg.NATS, cfg.AllReduce, lg.Named("allreduce"))
	if err != nil {
		return nil, err
	}
	reg, err := cfg.Job.Register(ctx, cfg.Info, cfg.TTL)
	if err != nil {
		red.Close()
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	w := &Worker{cfg: cfg, lg: lg, reg: reg, red: red, bg: wctx, cancel: cancel, done: make(chan struct{}),
		rejoin: make(chan struct{}, 1), left: make(chan struct{}), notify: make(chan struct{})}
	states := cfg.Job.WatchState(wctx)
	go w.follow(states)
	prev := cfg.NATS.Opts.ReconnectedCB
	cfg.NATS.SetReconnectHandler(func(nc *nats.Conn) {
		if prev != nil {
			prev(nc)
		}
		select {
		case w.rejoin <- struct{}{}:
		default:
		}
	})
	go w.rejoinLoop()
	return w, nil
}

// rejoinLoop re-forms the ring after a NATS reconnect. Messages of a collective in flight may
// have been lost while the connection was down, and a ring that lost its last messages
// would wait for them until the peer timeout. The worker therefore leaves the job
// (gracefully) and registers again: the leader bumps the generation, every member aborts its
// collective, and the ring re-forms from rank 0's state.
func (w *Worker) rejoinLoop() {
	defer close(w.left)
	for {
		select {
		case <-w.bg.Done():
			return
		case <-w.rejoin:
		}
		w.mu.Lock()
		g, reg := w.current, w.reg
		if g == nil {
			w.mu.Unlock()
			continue // not in a generation: nothing in flight
		}
		w.minGen = max(w.minGen, g.gen+1)
		close(g.changed)
		w.current = nil
		w.mu.Unlock()
		w.lg.Warn("NATS connection interrupted; leaving and joining again so that the ring re-forms", "generation", g.gen)
		cctx, cancel := context.WithTimeout(w.bg, 10*time.Second)
		if err := reg.Close(cctx); err != nil {
			w.lg.Warn("leaving the job", "error", err)
		}
		cancel()
		for {
			err := waitEarlierRegistration(w.bg, w.cfg.Job, w.cfg.Info.ID, w.lg)
			var nreg *control.Registration
			if err == nil {
				nreg, err = w.cfg.Job.Register(w.bg, w.cfg.Info, w.cfg.TTL)
			}
			if w.bg.Err() != nil {
				return
			}
			if err == nil {
				w.mu.Lock()
				w.reg = nreg
				w.mu.Unlock()
				break
			}
			w.lg.Warn("registering again failed; retrying", "error", err)
			time.Sleep(time.Second)
		}
	}
}

// waitEarlierRegistration waits until no registration holds id and the job state no longer
// lists id. A worker restarted under the same id must not take over the place of its earlier
// process: if the new registration replaced the old one, or appeared before the leader had
// counted the old one's departure, the leader would see the same member and keep the
// generation, and the others would wait in a collective for a peer that lost its state. Once
// the leader has recorded the departure, this process joins as a newcomer and receives rank
// 0's state.
func waitEarlierRegistration(ctx context.Context, job *control.Job, id string, lg hclog.Logger) error {
	key := job.MemberKey(id)
	cli := job.Client()
	logged := ""
	for {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("elastic: read the registration of %s: %w", id, err)
		}
		rev := resp.Header.Revision
		why := ""
		if len(resp.Kvs) > 0 {
			var old control.WorkerInfo
			_ = json.Unmarshal(resp.Kvs[0].Value, &old)
			why = fmt.Sprintf("an earlier process with this id (pid %d on %s) is still registered; waiting for its lease to end", old.PID, old.Host)
		} else {
			s, err := job.State(ctx)
			switch {
			case errors.Is(err, control.ErrNoState):
			case err != nil:
				return fmt.Errorf("elastic: read the job state: %w", err)
			case s.Rank(id) >= 0 || s.IsWaiting(id):
				why = fmt.Sprintf("generation %d still lists an earlier process with this id; waiting for the leader to record its departure", s.Generation)
				rev = max(rev, s.Revision)
			}
		}
		if why == "" {
			return nil
		}
		if why != logged {
			lg.Info("waiting before registering", "reason", why)
			logged = why
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		for wr := range cli.Watch(wctx, job.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if wr.Err() != nil || len(wr.Events) > 0 {
				break
			}
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Close deregisters the worker (a graceful leave) and stops following.
func (w *Worker) Close(ctx context.Context) error {
	w.cancel()
	<-w.done
	<-w.left
	w.mu.Lock()
	reg := w.reg
	w.mu.Unlock()
	err := reg.Close(ctx)
	w.red.Close()
	return err
}

// Stats returns the all-reduce counters.
func (w *Worker) Stats() allreduce.Stats { return w.red.Stats() }

func (w *Worker) follow(states <-chan control.State) {
	defer close(w.done)
	for s := range states {
		w.mu.Lock()
		w.latest, w.have = s, true
		if g := w.current; g != nil && !w.sameGeneration(g, s) {
			close(g.changed)
			w.current = nil
		}
		close(w.notify)
		w.notify = make(chan struct{})
		w.mu.Unlock()
	}
}

// sameGeneration reports whether s still runs generation g with this worker in it.
func (w *Worker) sameGeneration(g *generation, s control.State) bool {
	return s.Generation == g.gen && s.Status == control.StatusRunning && s.Rank(w.cfg.Info.ID) >= 0
}

// Join waits until the job runs with this worker as a member and returns that generation.
func (w *Worker) Join(ctx context.Context) (trainloop.Group, error) {
	logged := ""
	for {
		w.mu.Lock()
		s, have, wait := w.latest, w.have, w.notify
		if have && s.Status == control.StatusRunning && s.Generation >= w.minGen {
			if m, ok := s.Member(w.cfg.Info.ID); ok {
				g := &generation{gen: s.Generation, changed: make(chan struct{}), members: s.MemberIDs()}
				if old := w.current; old != nil && old.gen != g.gen {
					close(old.changed)
				}
				w.current = g
				w.mu.Unlock()
				return trainloop.Group{Generation: s.Generation, Rank: m.Rank, World: len(s.Members),
					Shards: m.Shards, Changed: g.changed}, nil
			}
		}
		w.mu.Unlock()
		why := "no job state yet"
		if have {
			why = fmt.Sprintf("job %s, generation %d", s.Status, s.Generation)
			if s.IsWaiting(w.cfg.Info.ID) {
				why += ", waiting for a free place (max workers reached)"
			}
		}
		if why != logged {
			w.lg.Info("waiting to join", "reason", why)
			logged = why
		}
		select {
		case <-ctx.Done():
			return trainloop.Group{}, ctx.Err()
		case <-wait:
		}
	}
}

func (w *Worker) group(g trainloop.Group) allreduce.Group {
	w.mu.Lock()
	defer w.mu.Unlock()
	var members []string
	if w.current != nil && w.current.gen == g.Generation {
		members = w.current.members
	}
	return allreduce.Group{Job: w.cfg.Job.Name(), Generation: uint64(g.Generation), Members: members, Rank: g.Rank}
}

// reducer adapts the ring to train.Reducer for one generation.
type reducer struct {
	w *Worker
	g trainloop.Group
}

func (r reducer) AllReduceSum(ctx context.Context, buf []float32) error {
	err := r.w.red.AllReduce(ctx, r.w.group(r.g), buf, allreduce.Sum)
	return r.w.wrap(r.g, err)
}

func (w *Worker) wrap(g trainloop.Group, err error) error {
	if err == nil {
		return nil
	}
	select {
	case <-g.Changed:
		return fmt.Errorf("%w: %v", trainloop.ErrGenerationChanged, err)
	default:
		return err
	}
}

// Reducer returns the generation's all-reduce.
func (w *Worker) Reducer(g trainloop.Group) train.Reducer { return reducer{w: w, g: g} }

// Broadcast copies rank 0's buf to every member.
func (w *Worker) Broadcast(ctx context.Context, g trainloop.Group, buf []float32) error {
	return w.wrap(g, w.red.Broadcast(ctx, w.group(g), buf))
}

// Commit asks the leader to commit the checkpoint whose objects rank 0 has written in dir:
// the leader verifies them against manifest, writes it and records the checkpoint. out is
// not used: the leader writes to the job's store through its own handle.
func (w *Worker) Commit(ctx context.Context, _ checkpoint.Bucket, dir string, manifest []byte) error {
	req := CommitRequest{Dir: dir, Manifest: manifest}
	w.mu.Lock()
	if w.current != nil {
		req.Generation = w.current.gen
	}
	w.mu.Unlock()
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("elastic: commit %s: encode the request: %w", dir, err)
	}
	if limit := w.cfg.NATS.MaxPayload(); limit > 0 && int64(len(body)) > limit {
		return fmt.Errorf("elastic: commit %s: the request with its manifest is %d bytes, over the NATS server's max payload of %d", dir, len(body), limit)
	}
	deadline := time.Now().Add(w.cfg.CommitTimeout)
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		msg, err := w.cfg.NATS.RequestWithContext(rctx, CommitSubject(w.cfg.Job.Name()), body)
		cancel()
		if err == nil {
			var rep CommitReply
			if err := json.Unmarshal(msg.Data, &rep); err != nil {
				return fmt.Errorf("elastic: commit %s: bad reply: %w", dir, err)
			}
			if rep.Error == "" {
				return nil
			}
			if !rep.Retry || time.Now().After(deadline) {
				return fmt.Errorf("elastic: commit %s: leader refused: %s", dir, rep.Error)
			}
			w.lg.Warn("checkpoint commit interrupted by a change of leader; retrying", "dir", dir, "error", rep.Error)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		// No leader answering (failover in progress, NATS reconnecting): retry until the
		// deadline; the checkpoint's objects are already safe in the store, and rank 0 holds
		// the manifest.
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("elastic: commit %s: no answer from the coordinator: %w", dir, err)
		}
		if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			w.lg.Warn("checkpoint commit request failed; retrying", "dir", dir, "error", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// LastCheckpoint returns the directory of the last committed checkpoint in the job state the
// leader writes in etcd, "" when none is recorded (or there is no job state yet).
func (w *Worker) LastCheckpoint(ctx context.Context) (string, error) {
	s, err := w.cfg.Job.State(ctx)
	if errors.Is(err, control.ErrNoState) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("elastic: read the job state: %w", err)
	}
	if s.Checkpoint == nil {
		return "", nil
	}
	return s.Checkpoint.Dir, nil
}

// Report publishes a tick for the coordinator's progress line and status.
func (w *Worker) Report(t trainloop.Tick) {
	b, err := json.Marshal(t)
	if err == nil {
		err = w.cfg.NATS.Publish(ProgressSubject(w.cfg.Job.Name()), b)
	}
	if err != nil {
		w.lg.Warn("progress report not sent", "error", err)
	}
}
