package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

func numCPU() int { return runtime.NumCPU() }

// supervisor starts worker processes and restarts those that die, with a backoff, until
// they finish (exit 0) or the run stops.
type supervisor struct {
	bin  string
	lg   hclog.Logger
	logs string

	mu      sync.Mutex
	procs   map[string]*os.Process
	running int
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	stopped bool
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
		backoff := time.Second
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
			if restarts >= maxRestarts {
				s.lg.Error("worker keeps failing; giving up", "worker", name, "exit_code", code, "error", err,
					"log", filepath.Join(s.logs, name+".log"))
				return
			}
			s.lg.Warn("worker died; restarting", "worker", name, "exit_code", code, "error", err, "in", backoff,
				"log", filepath.Join(s.logs, name+".log"))
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
	if cmd.ProcessState != nil {
		return cmd.ProcessState.ExitCode(), nil
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
