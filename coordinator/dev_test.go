package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
)

// TestDevRefusesBadFlags checks that `coordinator dev` refuses flags it cannot run with before
// it starts anything: one line naming the flag, and no run directory left in the working
// directory.
func TestDevRefusesBadFlags(t *testing.T) {
	dir := t.TempDir()
	other := "cuda"
	if kernels.Backend() == "cuda" {
		other = "cpu"
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--run-dir", ""}, "--run-dir is empty"},
		{[]string{"--ttl", "0s"}, "--ttl 0s"},
		{[]string{"--ttl", "-1s"}, "--ttl -1s"},
		{[]string{"--smoke", "--smoke-swd-drop", "1.5"}, "--smoke-swd-drop 1.5"},
		{[]string{"--smoke", "--smoke-swd-drop", "-0.1"}, "--smoke-swd-drop -0.1"},
		{[]string{"--device", other, "--worker-bin", "/bin/true"}, `device = "` + other + `": the workers are built with the ` + kernels.Backend() + ` backend`},
		{[]string{"--data", "fashion-mnist", "--dataset-uri", dir}, "--data fashion-mnist and dataset.uri " + dir},
		{[]string{"--worker-bin", filepath.Join(dir, "no-such-worker")}, "--worker-bin " + filepath.Join(dir, "no-such-worker")},
	} {
		cmd := newDevCmd()
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		args := append([]string{"--run-dir", filepath.Join(dir, "run")}, c.args...)
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("dev %v: %v; want one line with %q", c.args, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "run", "etcd")); !os.IsNotExist(err) {
		t.Errorf("a refused dev run started etcd in %s", filepath.Join(dir, "run"))
	}
}

// TestNumShardsRefusesOtherShape checks that the leader refuses a dataset whose images do not
// have the job's resolution and channels, naming both (workers failed on their first minibatch).
func TestNumShardsRefusesOtherShape(t *testing.T) {
	data := grayDataset(t, 4)
	s, err := spec.Preset("cpu-smoke")
	if err != nil {
		t.Fatal(err)
	}
	s.Dataset.URI = strings.TrimPrefix(data.URI(), "file://")
	if n, err := numShards(context.Background(), s, store.Config{}); err != nil || n != 1 {
		t.Fatalf("numShards of a matching dataset: %d, %v", n, err)
	}
	s.Dataset.Channels = 3
	_, err = numShards(context.Background(), s, store.Config{})
	if err == nil || !strings.Contains(err.Error(), "holds 32x32 images with 1 channel(s); the job has dataset.resolution 32 and dataset.channels 3") {
		t.Errorf("numShards with channels 3 on a gray dataset: %v", err)
	}
}

// TestDevRefusesOtherArchitecture: a run directory whose last committed checkpoint was
// trained with other architecture fields is refused before any server or worker starts,
// naming the checkpoint and the fields; the same spec passes.
func TestDevRefusesOtherArchitecture(t *testing.T) {
	ctx := context.Background()
	out := dirStore(t)
	dir, mb := saveObjects(t, out, 1, 1000)
	if err := checkpoint.CommitManifest(ctx, out, dir, mb); err != nil {
		t.Fatal(err)
	}
	if err := checkResumable(ctx, out, "runs/x", spec.Defaults()); err != nil {
		t.Errorf("same spec refused: %v", err)
	}
	s := spec.Defaults()
	s.Model.MappingLayers = 2
	err := checkResumable(ctx, out, "runs/x", s)
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "model.mapping_layers (checkpoint 8, job 2)") ||
		strings.Contains(err.Error(), "\n") {
		t.Errorf("other mapping_layers: got %v; want one line naming %s and model.mapping_layers", err, dir)
	}
	if err := checkResumable(ctx, dirStore(t), "runs/y", s); err != nil {
		t.Errorf("empty run directory refused: %v", err)
	}
}

// TestSupervisorReportsFailures: a worker that keeps failing is given up on after
// maxRestarts restarts, and the supervisor reports the last line of its log (its error).
func TestSupervisorReportsFailures(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "worker")
	script := "#!/bin/sh\necho 'some log line'\necho 'worker: checkpoint: bad thing happened'\nexit 3\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sup := &supervisor{bin: bin, lg: hclog.NewNullLogger(), logs: dir, backoff: time.Millisecond}
	sup.start(context.Background(), "w0", nil)
	select {
	case <-sup.allDone():
	case <-time.After(30 * time.Second):
		t.Fatal("the supervisor did not give up on a worker that always fails")
	}
	got := sup.failures()
	if len(got) != 1 || got[0] != "w0: worker: checkpoint: bad thing happened" {
		t.Errorf("failures %q", got)
	}
	if n := strings.Count(readFile(t, filepath.Join(dir, "w0.log")), "bad thing"); n != maxRestarts+1 {
		t.Errorf("worker ran %d times, want %d", n, maxRestarts+1)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
