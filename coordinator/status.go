package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/pkg/control"
)

// statusReport is what `coordinator status --json` prints.
type statusReport struct {
	Job      string           `json:"job"`
	Leader   string           `json:"leader,omitempty"`
	State    control.State    `json:"state"`
	Progress control.Progress `json:"progress"`
}

func newStatusCmd() *cobra.Command {
	var (
		etcd, job string
		asJSON    bool
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status --etcd HOST:PORT --job NAME [--json]",
		Short: "Show a job: stage, lod, kimg, img/s, members and ranks, generation, last checkpoint",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&etcd, "etcd", "", "etcd endpoints, comma-separated host:port")
	cmd.Flags().StringVar(&job, "job", "", "job name")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if etcd == "" || job == "" {
			return fmt.Errorf("status: --etcd and --job are required")
		}
		if timeout <= 0 {
			return fmt.Errorf("status: --timeout %s: want a positive duration such as 5s", timeout)
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		cli, err := control.NewClient(strings.Split(etcd, ","), hclog.NewNullLogger())
		if err != nil {
			return err
		}
		defer cli.Close()
		j, err := control.NewJob(cli, job, hclog.NewNullLogger())
		if err != nil {
			return err
		}
		rep := statusReport{Job: job}
		if rep.State, err = j.State(ctx); err != nil {
			if errors.Is(err, control.ErrNoState) {
				return fmt.Errorf("status: job %q has no state in etcd at %s (no coordinator has led it)", job, etcd)
			}
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
				return fmt.Errorf("status: no answer from etcd at %s within %s (is it running and reachable? --timeout): %w", etcd, timeout, err)
			}
			return fmt.Errorf("status: %w", err)
		}
		rep.Progress, _ = j.Progress(ctx)
		if l, err := j.Leader(ctx); err == nil {
			rep.Leader = l.ID
		}
		if asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(rep)
		}
		printStatus(os.Stdout, rep)
		return nil
	}
	return cmd
}

func printStatus(w io.Writer, r statusReport) {
	s, p := r.State, r.Progress
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "job\t%s\n", r.Job)
	fmt.Fprintf(tw, "status\t%s\n", s.Status)
	fmt.Fprintf(tw, "leader\t%s\n", r.Leader)
	fmt.Fprintf(tw, "stage\t%s\n", p.Stage)
	fmt.Fprintf(tw, "lod\t%.3f\n", p.LOD)
	fmt.Fprintf(tw, "kimg\t%.2f\n", p.Kimg)
	fmt.Fprintf(tw, "img/s\t%.1f\n", p.ImgPerSec)
	fmt.Fprintf(tw, "generation\t%d\n", s.Generation)
	fmt.Fprintf(tw, "workers\t%d (min %d, max %d), %d waiting\n", len(s.Members), s.MinWorkers, s.MaxWorkers, len(s.Waiting))
	fmt.Fprintf(tw, "failures\t%d\n", s.Failures)
	fmt.Fprintf(tw, "resizes\t%d\n", s.Resizes)
	if c := s.Checkpoint; c != nil {
		fmt.Fprintf(tw, "checkpoint\t%s (seq %d, %.2f kimg, %s)\n", c.Dir, c.Seq, float64(c.Nimg)/1000, c.Committed.Format(time.RFC3339))
	} else {
		fmt.Fprintf(tw, "checkpoint\tnone\n")
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RANK\tWORKER\tHOST\tBACKEND\tSHARDS\tSINCE GEN")
	for _, m := range s.Members {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\n", m.Rank, m.ID, m.Host, m.Backend, len(m.Shards), m.Since)
	}
	for _, wk := range s.Waiting {
		fmt.Fprintf(tw, "-\t%s\t%s\t%s\twaiting\t\n", wk.ID, wk.Host, wk.Backend)
	}
	tw.Flush()
}
