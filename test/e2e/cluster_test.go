package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/control"
	"github.com/gantry-ml/gantry/pkg/etcdembed"
	"github.com/gantry-ml/gantry/pkg/natsembed"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

// clusterJob is the job name of the cluster tests.
const clusterJob = "e2e"

// cluster is a job run the way a real deployment runs it: an etcd server and a NATS server
// (embedded in the test process, so that the test can stop and restart them), the job's
// store (a directory or a MinIO bucket), `coordinator serve` replicas and `worker join`
// processes.
type cluster struct {
	t        *testing.T // the test or subtest now running
	parent   *testing.T
	dir      string
	etcd     *etcdembed.Server
	nats     *natsembed.Server
	natsPort int
	store    string
	s3       store.Config
	s3Flags  []string
	specPath string
	job      *control.Job
	procs    map[string]*proc
}

type clusterOptions struct {
	checkpointTicks int
	minio           *storetest.MinIO // nil: a directory store
}

func newCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	c := &cluster{t: t, parent: t, dir: t.TempDir(), procs: map[string]*proc{}}
	dumpLogsOnFailure(t, filepath.Join(c.dir, "*.log"))
	var err error
	c.etcd, err = etcdembed.Start(context.Background(), etcdembed.Options{Dir: filepath.Join(c.dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.etcd.Close() })
	c.nats, err = natsembed.Start(natsembed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(c.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	c.natsPort, _ = strconv.Atoi(u.Port())
	t.Cleanup(func() {
		if c.nats != nil {
			c.nats.Shutdown()
		}
	})
	if m := o.minio; m != nil {
		c.store = m.Bucket(t) + "/job"
		c.s3 = m.Config()
		c.s3Flags = []string{"--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey,
			"--s3-secret-key", m.SecretKey, "--s3-region", "us-east-1"}
	} else {
		c.store = filepath.Join(c.dir, "store")
	}
	s, err := spec.Preset("cpu-smoke")
	if err != nil {
		t.Fatal(err)
	}
	s.Name = clusterJob
	s.Dataset.URI = env.data
	s.Schedule.LODTrainingKimg = 1000
	s.Schedule.TickKimgBase = 0.25
	s.Schedule.TotalKimg = 500
	s.Metrics.SWDImages = 0
	s.Snapshot.ImageTicks = 0
	s.Snapshot.CheckpointTicks = o.checkpointTicks
	s.Workers.Min, s.Workers.Max = 2, 2
	s.Threads = 1
	b, err := s.YAML()
	if err != nil {
		t.Fatal(err)
	}
	c.specPath = filepath.Join(c.dir, "job.yaml")
	if err := os.WriteFile(c.specPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	c.job = jobClient(t, c.etcd.Endpoints(), clusterJob)
	return c
}

func (c *cluster) log(id string) string { return filepath.Join(c.dir, id+".log") }

// serve starts a `coordinator serve` replica with a 2 s leadership lease.
func (c *cluster) serve(id string) *proc {
	args := append([]string{"serve", "--job", c.specPath, "--etcd", c.etcd.Endpoint(), "--nats", c.nats.URL(),
		"--store", c.store, "--id", id, "--ttl", "2s", "--log-level", "debug"}, c.s3Flags...)
	p := startProc(c.t, "coordinator "+id, c.log(id), coordinatorBin(), args...)
	c.procs[id] = p
	return p
}

// join starts a `worker join` process logging every step.
func (c *cluster) join(id string) *proc {
	args := append([]string{"join", "--etcd", c.etcd.Endpoint(), "--nats", c.nats.URL(), "--store", c.store,
		"--job", clusterJob, "--id", id, "--run-dir", filepath.Join(c.dir, "run"), "--threads", "1",
		"--log-level", "trace"}, c.s3Flags...)
	p := startProc(c.t, "worker "+id, c.log(id), workerBin(), args...)
	c.procs[id] = p
	return p
}

// kill sends SIGKILL to a process and forgets it (noneExited no longer checks it).
func (c *cluster) kill(id string) {
	c.procs[id].killGroup()
	delete(c.procs, id)
}

// leader returns the ID of the leading coordinator ("" when none).
func (c *cluster) leader() string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l, err := c.job.Leader(ctx)
	if err != nil {
		return ""
	}
	return l.ID
}

// noneExited fails the test when one of the processes has exited.
func (c *cluster) noneExited() {
	c.t.Helper()
	for id, p := range c.procs {
		if p.exited() {
			c.t.Fatalf("%s exited with %d (log %s)", id, p.code, p.log)
		}
	}
}

// waitStepping waits until the job runs with workers and each has done n steps since t0.
func (c *cluster) waitStepping(d time.Duration, workers []string, t0 time.Time, n int) control.State {
	c.t.Helper()
	var st control.State
	eventually(c.t, d, fmt.Sprintf("%d workers stepping", len(workers)), func() (string, bool) {
		c.noneExited()
		s, err := state(c.job)
		if err != nil {
			return err.Error(), false
		}
		if s.Status != control.StatusRunning || len(s.Members) != len(workers) {
			return fmt.Sprintf("job %s with %d members", s.Status, len(s.Members)), false
		}
		for _, id := range workers {
			if k := len(stepsOf(after(readLog(c.log(id)), t0))); k < n {
				return fmt.Sprintf("%s did %d steps since %s", id, k, t0.Format("15:04:05.000")), false
			}
		}
		st = s
		return "", true
	})
	return st
}

// waitCheckpoint waits for a checkpoint committed after seq and returns the state.
func (c *cluster) waitCheckpoint(d time.Duration, seq int64) control.State {
	c.t.Helper()
	var st control.State
	eventually(c.t, d, fmt.Sprintf("a checkpoint committed after seq %d", seq), func() (string, bool) {
		c.noneExited()
		s, err := state(c.job)
		if err != nil {
			return err.Error(), false
		}
		if s.Checkpoint == nil || s.Checkpoint.Seq <= seq {
			return "none yet", false
		}
		st = s
		return "", true
	})
	return st
}

// maxStepGap returns the longest time between consecutive steps of a worker inside
// [from, to], counting from `from` to the first step and from the last step to `to`, and
// the number of steps in it.
func maxStepGap(lines []logLine, from, to time.Time) (time.Duration, int) {
	prev := from
	var gap time.Duration
	n := 0
	for _, s := range stepsOf(lines) {
		if s.T.Before(from) || s.T.After(to) {
			continue
		}
		gap = max(gap, s.T.Sub(prev))
		prev = s.T
		n++
	}
	return max(gap, to.Sub(prev)), n
}
