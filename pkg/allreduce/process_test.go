package allreduce

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/natsembed"
	"github.com/nats-io/nats.go"
)

// The process tests run one rank in a child process (this test binary, re-executed) so
// that it can be killed with SIGKILL or frozen with SIGSTOP like a real worker.

const helperEnv = "GANTRY_ALLREDUCE_HELPER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(helperMain(spec))
	}
	os.Exit(m.Run())
}

// helperSpec is what the child needs: where the server is and which rank it plays.
type helperSpec struct {
	url, job  string
	n, rank   int
	size      int
	timeout   time.Duration
	chunk     int
	windowLen int
}

func (h helperSpec) String() string {
	return strings.Join([]string{h.url, h.job, strconv.Itoa(h.n), strconv.Itoa(h.rank), strconv.Itoa(h.size),
		h.timeout.String(), strconv.Itoa(h.chunk), strconv.Itoa(h.windowLen)}, " ")
}

func parseHelperSpec(s string) (helperSpec, error) {
	f := strings.Fields(s)
	if len(f) != 8 {
		return helperSpec{}, fmt.Errorf("helper spec %q: want 8 fields", s)
	}
	var h helperSpec
	var err error
	h.url, h.job = f[0], f[1]
	ints := []*int{&h.n, &h.rank, &h.size}
	for i, p := range ints {
		if *p, err = strconv.Atoi(f[2+i]); err != nil {
			return h, err
		}
	}
	if h.timeout, err = time.ParseDuration(f[5]); err != nil {
		return h, err
	}
	if h.chunk, err = strconv.Atoi(f[6]); err != nil {
		return h, err
	}
	h.windowLen, err = strconv.Atoi(f[7])
	return h, err
}

func (h helperSpec) group() Group {
	members := make([]string, h.n)
	for i := range members {
		members[i] = fmt.Sprintf("w%d", i)
	}
	return Group{Job: h.job, Generation: 1, Members: members, Rank: h.rank}
}

// ringLoop runs all-reduces until one fails, checking every result; report is called
// after each with the op number and nil, or with the error that ended the loop. A wrong
// sum is reported as an error starting with "WRONG".
func ringLoop(r *Reducer, h helperSpec, report func(op int, err error)) {
	buf := make([]float32, h.size)
	for op := 0; op < 10000; op++ {
		for i := range buf {
			buf[i] = intInput(h.rank, op, i)
		}
		if err := r.AllReduce(context.Background(), h.group(), buf, Sum); err != nil {
			report(op, err)
			return
		}
		for i, v := range buf {
			var want float32
			for q := 0; q < h.n; q++ {
				want += intInput(q, op, i)
			}
			if v != want {
				report(op, fmt.Errorf("WRONG sum in op %d element %d: %v, want %v", op, i, v, want))
				return
			}
		}
		report(op, nil)
	}
	report(10000, fmt.Errorf("no failure after 10000 all-reduces"))
}

func helperMain(spec string) int {
	h, err := parseHelperSpec(spec)
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	nc, err := nats.Connect(h.url)
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	defer nc.Close()
	r, err := New(nc, Config{ChunkBytes: h.chunk, WindowBytes: h.windowLen, PeerTimeout: h.timeout}, nil)
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	ringLoop(r, h, func(op int, err error) {
		if err != nil {
			fmt.Printf("op %d error: %v\n", op, err)
		} else {
			fmt.Printf("op %d ok\n", op)
		}
	})
	return 0
}

// processRing runs ranks 0..n-2 in this process and rank n-1 in a child, lets them run a
// few all-reduces, applies sig to the child, and returns the in-process ranks' errors with
// the time each took to fail after the signal, and the child's output.
func processRing(t *testing.T, sig syscall.Signal, pause time.Duration) (errs []error, after []time.Duration, child string) {
	s := startServer(t, natsembed.Options{})
	const n = 3
	h := helperSpec{url: s.URL(), job: strings.ReplaceAll(t.Name(), "/", "_"), n: n, rank: n - 1,
		size: 200000, timeout: time.Second, chunk: 16 << 10, windowLen: 64 << 10}
	if raceEnabled {
		h.size = 50000
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+h.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var lines []string
	childDone := make(chan struct{})
	childOK := make(chan struct{}, 100)
	go func() {
		defer close(childDone)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if strings.HasSuffix(sc.Text(), " ok") {
				childOK <- struct{}{}
			}
		}
	}()

	errs = make([]error, n-1)
	failedAt := make([]time.Time, n-1)
	var wg sync.WaitGroup
	for rk := 0; rk < n-1; rk++ {
		nc := connect(t, s.URL())
		r, err := New(nc, Config{ChunkBytes: h.chunk, WindowBytes: h.windowLen, PeerTimeout: h.timeout}, nil)
		if err != nil {
			t.Fatal(err)
		}
		hr := h
		hr.rank = rk
		wg.Add(1)
		go func() {
			defer wg.Done()
			ringLoop(r, hr, func(op int, err error) {
				if err != nil {
					errs[rk], failedAt[rk] = err, time.Now()
				}
			})
		}()
	}
	// Let the ring complete two all-reduces, then hit the child in the middle of the next.
	for i := 0; i < 2; i++ {
		select {
		case <-childOK:
		case <-time.After(30 * time.Second):
			t.Fatal("the ring did not complete two all-reduces in 30s")
		}
	}
	time.Sleep(5 * time.Millisecond)
	signalled := time.Now()
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if sig == syscall.SIGSTOP {
		time.Sleep(pause)
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	select {
	case <-childDone:
	case <-time.After(30 * time.Second):
		t.Fatal("child still running 30s after the others failed")
	}
	_ = cmd.Wait()
	for rk := range errs {
		after = append(after, failedAt[rk].Sub(signalled))
	}
	return errs, after, strings.Join(lines, "\n")
}

func TestPeerProcessKilled(t *testing.T) {
	errs, after, child := processRing(t, syscall.SIGKILL, 0)
	for rk, err := range errs {
		t.Logf("rank %d failed %s after SIGKILL: %v", rk, after[rk].Round(time.Millisecond), err)
		if err == nil || strings.HasPrefix(err.Error(), "WRONG") {
			t.Fatalf("rank %d: %v", rk, err)
		}
		if !strings.Contains(err.Error(), "peer w") {
			t.Errorf("rank %d: error names no peer: %v", rk, err)
		}
		if after[rk] > 4*time.Second {
			t.Errorf("rank %d took %s to fail, peer timeout 1s", rk, after[rk])
		}
	}
	if strings.Contains(child, "WRONG") {
		t.Fatalf("child computed a wrong sum:\n%s", child)
	}
}

func TestPeerProcessStopped(t *testing.T) {
	// Frozen for 2.5s against a 1s peer timeout: the others must give up; once thawed the
	// child must fail or finish with the right sum, never a wrong one.
	errs, after, child := processRing(t, syscall.SIGSTOP, 2500*time.Millisecond)
	for rk, err := range errs {
		t.Logf("rank %d failed %s after SIGSTOP: %v", rk, after[rk].Round(time.Millisecond), err)
		if err == nil || strings.HasPrefix(err.Error(), "WRONG") {
			t.Fatalf("rank %d: %v", rk, err)
		}
		if after[rk] > 4*time.Second {
			t.Errorf("rank %d took %s to fail, peer timeout 1s", rk, after[rk])
		}
	}
	lines := strings.Split(child, "\n")
	t.Logf("child's last line: %s", lines[len(lines)-1])
	if strings.Contains(child, "WRONG") || !strings.Contains(lines[len(lines)-1], "error") {
		t.Fatalf("child output:\n%s", child)
	}
}
