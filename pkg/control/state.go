package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Status is the job's lifecycle state.
type Status string

// Job statuses. The leader moves a job between pending, running and paused from its member
// count; done and failed are set by the trainer through Term.Update and are never left.
const (
	StatusPending Status = "pending" // not yet started: fewer workers than the minimum so far
	StatusRunning Status = "running"
	StatusPaused  Status = "paused" // was running, now below the minimum; resumes when workers return
	StatusDone    Status = "done"
	StatusFailed  Status = "failed"
)

// GPUInfo describes one GPU of a worker.
type GPUInfo struct {
	Index     int    `json:"index"`
	UUID      string `json:"uuid,omitempty"`
	Name      string `json:"name,omitempty"`
	MemoryMiB int64  `json:"memory_mib,omitempty"`
}

// WorkerInfo is what a worker says about itself when it registers.
type WorkerInfo struct {
	ID      string    `json:"id"`                // unique within the job; letters, digits, '_', '.', '-'
	Host    string    `json:"host,omitempty"`    // host name
	PID     int       `json:"pid,omitempty"`     // process id
	Backend string    `json:"backend,omitempty"` // compute backend: cpu, cuda
	GPUs    []GPUInfo `json:"gpus,omitempty"`
	Addr    string    `json:"addr,omitempty"` // where the worker serves metrics/status (host:port)
}

// Member is a worker with a rank in the current generation.
type Member struct {
	WorkerInfo
	Rank   int   `json:"rank"`
	Shards []int `json:"shards"` // dataset shards this rank reads, see AssignShards
	Since  int64 `json:"since"`  // generation in which the worker got its rank
}

// CheckpointRecord is a committed checkpoint.
type CheckpointRecord struct {
	Seq            int64     `json:"seq"`  // 1, 2, ... in commit order
	Dir            string    `json:"dir"`  // checkpoint directory (URI or key prefix in the store)
	Nimg           int64     `json:"nimg"` // images shown when it was taken
	Step           int64     `json:"step,omitempty"`
	WorldSize      int       `json:"world_size,omitempty"`
	Generation     int64     `json:"generation,omitempty"`
	ManifestSHA256 string    `json:"manifest_sha256,omitempty"`
	Committed      time.Time `json:"committed"` // set by CommitCheckpoint when zero
}

// sameContent compares two records ignoring the commit time, so that a retried commit of the
// same checkpoint is recognised.
func (c CheckpointRecord) sameContent(o CheckpointRecord) bool {
	c.Committed, o.Committed = time.Time{}, time.Time{}
	return c == o
}

// State is the job state record, owned and written by the leader.
type State struct {
	Job        string            `json:"job"`
	Status     Status            `json:"status"`
	Generation int64             `json:"generation"` // bumped on every change of Members
	Members    []Member          `json:"members"`    // ordered: Members[i].Rank == i
	Waiting    []WorkerInfo      `json:"waiting"`    // registered beyond MaxWorkers, in arrival order
	NumShards  int               `json:"num_shards"`
	MinWorkers int               `json:"min_workers"`
	MaxWorkers int               `json:"max_workers"` // 0: no limit
	Checkpoint *CheckpointRecord `json:"checkpoint,omitempty"`
	Failures   int64             `json:"failures"` // members lost without leaving (lease expiry)
	Resizes    int64             `json:"resizes"`  // membership changes after the first
	Leader     string            `json:"leader"`   // ID of the leader that wrote the record
	LeaderRev  int64             `json:"leader_rev"`
	Updated    time.Time         `json:"updated"`
	// Revision is the etcd modification revision the record was read at; 0 when absent.
	Revision int64 `json:"-"`
}

// Rank returns id's rank, or -1 when id is not a member.
func (s *State) Rank(id string) int {
	for i := range s.Members {
		if s.Members[i].ID == id {
			return s.Members[i].Rank
		}
	}
	return -1
}

// Member returns id's member entry.
func (s *State) Member(id string) (Member, bool) {
	if r := s.Rank(id); r >= 0 {
		return s.Members[r], true
	}
	return Member{}, false
}

// IsWaiting reports whether id is registered but waiting for a free place (above the maximum).
func (s *State) IsWaiting(id string) bool {
	return slices.ContainsFunc(s.Waiting, func(w WorkerInfo) bool { return w.ID == id })
}

// MemberIDs lists the member IDs in rank order.
func (s *State) MemberIDs() []string {
	ids := make([]string, len(s.Members))
	for i, m := range s.Members {
		ids[i] = m.ID
	}
	return ids
}

// clone deep-copies s through its JSON form (records are small).
func (s State) clone() State {
	data, _ := json.Marshal(s)
	var c State
	_ = json.Unmarshal(data, &c)
	c.Revision = s.Revision
	return c
}

// sameRecord reports whether a and b would store the same record apart from Updated.
func sameRecord(a, b State) bool {
	a.Updated, b.Updated = time.Time{}, time.Time{}
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

func decodeState(data []byte, rev int64) (State, error) {
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return State{}, fmt.Errorf("control: decode job state at revision %d: %w", rev, err)
	}
	s.Revision = rev
	return s, nil
}

// State reads the job state record; ErrNoState when no leader has written one yet.
func (j *Job) State(ctx context.Context) (State, error) {
	s, _, err := j.readState(ctx)
	if err != nil {
		return State{}, err
	}
	if s.Revision == 0 {
		return State{}, ErrNoState
	}
	return s, nil
}

// readState returns the record (zero with Revision 0 when absent) and the store revision
// the read saw.
func (j *Job) readState(ctx context.Context) (State, int64, error) {
	resp, err := j.cli.Get(ctx, j.StateKey())
	if err != nil {
		return State{}, 0, fmt.Errorf("control: read job state: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return State{}, resp.Header.Revision, nil
	}
	s, err := decodeState(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	return s, resp.Header.Revision, err
}

// WatchState sends the job state record now and after every change, until ctx ends; then it
// closes the channel. A reader that falls behind receives the newest record, not a backlog.
// The watch survives etcd restarts and compaction (it re-reads and watches again). Nothing is
// sent while the record does not exist.
func (j *Job) WatchState(ctx context.Context) <-chan State {
	ch := make(chan State, 1)
	go func() {
		defer close(ch)
		var last int64
		j.follow(ctx, j.StateKey(), nil, func(ctx context.Context) (int64, error) {
			s, rev, err := j.readState(ctx)
			if err != nil {
				return 0, err
			}
			if s.Revision != 0 && s.Revision != last {
				last = s.Revision
				offer(ch, s)
			}
			return rev, nil
		})
	}()
	return ch
}

// follow calls read, then waits for a change of key (with opts, e.g. WithPrefix) after the
// revision read returned, and repeats until ctx ends. A failed read is retried; a failed or
// compacted watch leads to a fresh read, so the reader converges on the latest value.
func (j *Job) follow(ctx context.Context, key string, opts []clientv3.OpOption, read func(context.Context) (int64, error)) {
	retry := 100 * time.Millisecond
	for ctx.Err() == nil && j.cli.Ctx().Err() == nil {
		rev, err := read(ctx)
		if err != nil {
			if ctx.Err() == nil {
				j.log.Debug("watch read failed", "key", key, "error", err)
			}
			sleepCtx(ctx, retry)
			retry = min(2*retry, 2*time.Second)
			continue
		}
		retry = 100 * time.Millisecond
		wctx, cancel := context.WithCancel(ctx)
		wch := j.cli.Watch(wctx, key, append(append([]clientv3.OpOption{}, opts...), clientv3.WithRev(rev+1))...)
		waitChange(j, key, wch)
		cancel()
	}
}

// waitChange returns at the first event, at a watch error (logged), or when the watch closes.
func waitChange(j *Job, key string, wch clientv3.WatchChan) {
	for wr := range wch {
		if err := wr.Err(); err != nil {
			if wr.CompactRevision != 0 {
				j.log.Warn("watch compacted, reading again", "key", key, "compact_revision", wr.CompactRevision)
			} else {
				j.log.Debug("watch failed, reading again", "key", key, "error", err)
			}
			return
		}
		if len(wr.Events) > 0 {
			return
		}
	}
}
