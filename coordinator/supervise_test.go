package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestSupervisorNamesTheSignal: a worker killed by a signal is reported with the signal, not
// as exit code -1 with no error.
func TestSupervisorNamesTheSignal(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "worker")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nkill -9 $$\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sup := &supervisor{bin: bin, lg: hclog.NewNullLogger(), logs: dir, procs: map[string]*os.Process{}}
	code, err := sup.runOnce("w0", nil)
	if code != -1 || err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("runOnce of a worker killed by SIGKILL: code %d, error %v; want -1 and 'signal: killed'", code, err)
	}
}

// TestSupervisedWorkerStopsWithCoordinator: when the process running the supervisor is killed
// outright, its workers are stopped by the kernel instead of running on as orphans. The test
// runs itself as that process (the helper below) and SIGKILLs it.
func TestSupervisedWorkerStopsWithCoordinator(t *testing.T) {
	if os.Getenv("GANTRY_SUPERVISOR_CHILD") != "" {
		t.Skip("helper process")
	}
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestSupervisorChildHelper$")
	child.Env = append(os.Environ(), "GANTRY_SUPERVISOR_CHILD="+dir)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	pidFile := filepath.Join(dir, "worker.pid")
	var pid int
	for deadline := time.Now().Add(30 * time.Second); pid == 0; {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper's supervisor did not start its worker")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	for deadline := time.Now().Add(10 * time.Second); ; {
		// The worker is our grandchild; once the kernel reparents and it exits, signal 0 fails
		// (or finds a zombie reaped by init shortly after).
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("worker %d still running 10 s after its coordinator was killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSupervisorChildHelper is the coordinator process of the test above.
func TestSupervisorChildHelper(t *testing.T) {
	dir := os.Getenv("GANTRY_SUPERVISOR_CHILD")
	if dir == "" {
		t.Skip("only run by TestSupervisedWorkerStopsWithCoordinator")
	}
	bin := filepath.Join(dir, "worker")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho $$ > "+filepath.Join(dir, "worker.pid")+"\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sup := &supervisor{bin: bin, lg: hclog.NewNullLogger(), logs: dir}
	sup.start(context.Background(), "w0", nil)
	time.Sleep(60 * time.Second)
}

// TestDevRefusesBusyRunDir: a second `coordinator dev` on a run directory in use is refused at
// once, naming the holder (it blocked forever on the embedded etcd's database lock).
func TestDevRefusesBusyRunDir(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockRunDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := newDevCmd()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetArgs([]string{"--run-dir", dir, "--worker-bin", "/bin/true"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(context.Background()) }()
	select {
	case err := <-done:
		want := "is in use by another coordinator dev (pid " + strconv.Itoa(os.Getpid()) + ")"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("dev on a locked run directory: %v; want %q", err, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev on a locked run directory did not return")
	}
	unlock()
	unlock2, err := lockRunDir(dir)
	if err != nil {
		t.Fatalf("the lock was not released: %v", err)
	}
	unlock2()
}
