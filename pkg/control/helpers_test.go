package control

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/gantry-ml/gantry/pkg/etcdembed"
)

// testTTL is the lease TTL of the tests: short, so that failures are detected quickly, but
// not 1 s: the client renews leases on a 500 ms grid, and on a loaded machine a 1 s lease
// can lapse between two renewals.
const testTTL = 2 * time.Second

// shared is one etcd server for the tests that do not stop it; each test uses its own job.
var shared *etcdembed.Server

func TestMain(m *testing.M) {
	var err error
	shared, err = etcdembed.Start(context.Background(), etcdembed.Options{UnsafeNoFsync: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "control tests: start embedded etcd:", err)
		os.Exit(1)
	}
	code := m.Run()
	shared.Close()
	if code == 0 {
		if leaked := leakedGoroutines(3 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "control tests: goroutines still running after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits up to d for every goroutine running this package's code to end and
// returns the stacks of those that did not.
func leakedGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "gantry/pkg/control.") && !strings.Contains(g, "leakedGoroutines") &&
				!strings.Contains(g, "testing.(*M)") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logBuf collects log lines of a test and prints them if it fails.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuf) count(s string) int { return strings.Count(b.String(), s) }

// countAfter waits up to d for at least want occurrences of s and returns the count then.
// The leader writes the state before it logs the change, so a test that saw the state may
// read the log a moment before the line lands.
func (b *logBuf) countAfter(s string, want int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		n := b.count(s)
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testLogger(t *testing.T) (hclog.Logger, *logBuf) {
	t.Helper()
	b := &logBuf{}
	log := hclog.New(&hclog.LoggerOptions{Output: b, Level: hclog.Debug, TimeFormat: "15:04:05.000"})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CONTROL_TEST_LOG") != "" {
			t.Logf("log:\n%s", b.String())
		}
	})
	return log, b
}

var jobSeq atomic.Int64

// newJob returns a handle on a fresh job with its own client (one client per simulated
// process, so that closing it looks like that process dying).
func newJob(t *testing.T, name string, endpoints []string, log hclog.Logger) *Job {
	t.Helper()
	cli := newClient(t, endpoints)
	j, err := NewJob(cli, name, log)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func newClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := NewClient(endpoints, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func jobName(t *testing.T) string {
	return fmt.Sprintf("t%d-%s", jobSeq.Add(1), strings.ReplaceAll(t.Name(), "/", "-"))
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stateWhere waits until the job's state satisfies cond and returns it.
func stateWhere(t *testing.T, j *Job, d time.Duration, what string, cond func(State) bool) State {
	t.Helper()
	var s State
	waitFor(t, d, what, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		s, err = j.State(ctx)
		return err == nil && cond(s)
	})
	return s
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func ids(ws []WorkerInfo) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.ID
	}
	return out
}
