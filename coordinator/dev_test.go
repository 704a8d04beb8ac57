package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/kernels"
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
