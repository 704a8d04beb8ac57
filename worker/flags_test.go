package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/pkg/elastic"
	"github.com/gantry-ml/gantry/pkg/spec"
)

// TestWorkerRefusesBadFlags checks flags that were taken silently (a negative --stop-kimg
// trained the whole spec, a huge --threads made the OpenMP runtime abort the process, a
// misspelt --log-level logged at info): each is one line naming the flag, before any work.
func TestWorkerRefusesBadFlags(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		cmd  func() *cobra.Command
		args []string
		want string
	}{
		{newTrainCmd, []string{"--preset", "cpu-smoke", "--dataset-uri", dir, "--out", dir, "--stop-kimg", "-5"}, "--stop-kimg -5"},
		{newTrainCmd, []string{"--preset", "cpu-smoke", "--dataset-uri", dir, "--out", dir, "--stop-kimg", "NaN"}, "--stop-kimg NaN"},
		{newTrainCmd, []string{"--preset", "cpu-smoke", "--dataset-uri", dir, "--out", dir, "--threads", "100000"}, "threads = 100000: must be at most 1024"},
		{newGenerateCmd, []string{"--checkpoint", dir, "--out", filepath.Join(dir, "g.png"), "--threads", "100000"}, "--threads 100000"},
		{newGenerateCmd, []string{"--checkpoint", dir, "--out", filepath.Join(dir, "g.png"), "--threads", "-1"}, "--threads -1"},
		{newJoinCmd, []string{"--etcd", "127.0.0.1:1", "--nats", "nats://127.0.0.1:1", "--store", dir, "--job", "j", "--threads", "5000"}, "--threads 5000"},
	} {
		root := &cobra.Command{Use: "worker", SilenceUsage: true, SilenceErrors: true, PersistentPreRunE: checkLogLevel}
		root.AddCommand(c.cmd())
		root.SetOut(&bytes.Buffer{})
		root.SetErr(&bytes.Buffer{})
		name := c.cmd().Name()
		root.SetArgs(append([]string{name}, c.args...))
		err := root.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s %v: %v; want one line with %q", name, c.args, err, c.want)
		}
	}
	root := &cobra.Command{Use: "worker", SilenceUsage: true, SilenceErrors: true, PersistentPreRunE: checkLogLevel}
	root.AddCommand(newGenerateCmd())
	root.SetArgs([]string{"generate", "--checkpoint", dir, "--out", filepath.Join(dir, "g.png"), "--log-level", "verbose"})
	if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), `--log-level "verbose"`) {
		t.Errorf("--log-level verbose: %v", err)
	}
}

// TestJoinRefusesOtherJob: a --job that is not the job whose spec the store holds is refused
// at once (a mistyped name registered under a job nobody leads and waited forever).
func TestJoinRefusesOtherJob(t *testing.T) {
	dir := t.TempDir()
	s, err := spec.Preset("cpu-smoke")
	if err != nil {
		t.Fatal(err)
	}
	s.Name = "faces"
	b, err := s.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, elastic.JobFileKey), b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := newJoinCmd()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"--etcd", "127.0.0.1:1", "--nats", "nats://127.0.0.1:1", "--store", dir, "--job", "facse"})
	err = cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), `--job "facse", but the job spec in`) || !strings.Contains(err.Error(), `job "faces"`) {
		t.Errorf("join --job facse on faces' store: %v", err)
	}
}
