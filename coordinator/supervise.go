package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

func numCPU() int { return runtime.NumCPU() }

// supervisor starts worker processes and restarts those that die, with a backoff, until
// they finish (exit 0) or the run stops.
type supervisor struct {
	bin     string
	lg      hclog.Logger
	logs    string
	backoff time.Duration // first restart delay, doubling up to 30 s (default 1 s)

	mu      sync.Mutex
	procs   map[string]*os.Process
	running int
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	stopped bool
	all     []string
	failed  map[string]string // worker -> the last line of its log when the supervisor gave up
}

// names lists the workers started.
func (s *supervisor) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.all...)
}

// failures lists the workers the supervisor gave up on, each with its last log line.
func (s *supervisor) failures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, n := range s.all {
		if line, ok := s.failed[n]; ok {
			out = append(out, n+": "+line)
		}
	}
	return out
}

// lastLine returns the last non-empty line of a log file (a worker's final error), or "".
func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 4096
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		_, _ = f.Seek(st.Size()-tail, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// MaxRestarts bounds how often one worker is restarted.
const maxRestarts = 5

func (s *supervisor) allDone() <-chan struct{} {
	s.once.Do(func() { s.done = make(chan struct{}) })
	return s.done
}

func (s *supervisor) start(ctx context.Context, name string, args []string) {
	s.allDone()
	s.mu.Lock()
	if s.procs == nil {
		s.procs = map[string]*os.Process{}
	}
	s.running++
	s.all = append(s.all, name)
	s.mu.Unlock()
	s.wg.Go(func() {
		defer func() {
			s.mu.Lock()
			s.running--
			if s.running == 0 {
				close(s.done)
			}
			s.mu.Unlock()
		}()
		backoff := s.backoff
		if backoff <= 0 {
			backoff = time.Second
		}
		for restarts := 0; ; restarts++ {
			code, err := s.runOnce(name, args)
			s.mu.Lock()
			stopped := s.stopped
			s.mu.Unlock()
			if stopped || ctx.Err() != nil {
				return
			}
			if err == nil && code == 0 {
				s.lg.Info("worker finished", "worker", name)
				return
			}
			logPath := filepath.Join(s.logs, name+".log")
			last := lastLine(logPath)
			if restarts >= maxRestarts {
				s.lg.Error("worker keeps failing; giving up", "worker", name, "exit_code", code, "error", err,
					"last_line", last, "log", logPath)
				s.mu.Lock()
				if s.failed == nil {
					s.failed = map[string]string{}
				}
				s.failed[name] = last
				s.mu.Unlock()
				return
			}
			s.lg.Warn("worker died; restarting", "worker", name, "exit_code", code, "error", err, "in", backoff,
				"last_line", last, "log", logPath)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	})
}

func (s *supervisor) runOnce(name string, args []string) (int, error) {
	f, err := os.OpenFile(filepath.Join(s.logs, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// A coordinator killed outright (SIGKILL, the OOM killer) takes its workers with it:
	// without this they kept retrying the dead embedded etcd and NATS forever.
	stopWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return -1, err
	}
	s.mu.Lock()
	s.procs[name] = cmd.Process
	s.mu.Unlock()
	s.lg.Info("worker started", "worker", name, "pid", cmd.Process.Pid)
	err = cmd.Wait()
	s.mu.Lock()
	delete(s.procs, name)
	s.mu.Unlock()
	if ps := cmd.ProcessState; ps != nil {
		if !ps.Exited() {
			return -1, errors.New(ps.String()) // "signal: killed"
		}
		return ps.ExitCode(), nil
	}
	return -1, err
}

// stopAll asks every worker to stop (SIGTERM), waits up to grace, then kills the rest.
func (s *supervisor) stopAll(grace time.Duration) {
	s.mu.Lock()
	s.stopped = true
	for _, p := range s.procs {
		_ = p.Signal(syscall.SIGTERM)
	}
	s.mu.Unlock()
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(grace):
		s.mu.Lock()
		for name, p := range s.procs {
			s.lg.Warn("worker did not stop; killing it", "worker", name)
			_ = p.Kill()
		}
		s.mu.Unlock()
		<-waited
	}
}
