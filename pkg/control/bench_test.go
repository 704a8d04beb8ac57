package control

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkTermUpdate measures one fenced read-modify-write of the state record against the
// embedded etcd (fsync off): the cost of a leader's state change.
func BenchmarkTermUpdate(b *testing.B) {
	j, term := benchTerm(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := term.Update(ctx, func(s *State) error { s.Resizes++; return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = j
}

// BenchmarkCommitCheckpoint measures one fenced checkpoint commit (record + state in one
// transaction).
func BenchmarkCommitCheckpoint(b *testing.B) {
	_, term := benchTerm(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rec := CheckpointRecord{Seq: int64(i + 1), Dir: fmt.Sprintf("ckpt-%d", i+1), Nimg: int64(i+1) * 1000}
		if _, err := term.CommitCheckpoint(ctx, rec); err != nil {
			b.Fatal(err)
		}
	}
}

func benchTerm(b *testing.B) (*Job, *Term) {
	cli, err := NewClient(shared.Endpoints(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	j, err := NewJob(cli, fmt.Sprintf("bench%d", jobSeq.Add(1)), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	term, err := j.Campaign(ctx, LeaderInfo{ID: "bench"}, testTTL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); <-term.Done() })
	return j, term
}
