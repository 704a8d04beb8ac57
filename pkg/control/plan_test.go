package control

import (
	"fmt"
	"slices"
	"testing"
)

func TestAssignShards(t *testing.T) {
	cases := []struct {
		shards, ranks int
		want          [][]int
	}{
		{0, 2, [][]int{{}, {}}},
		{1, 1, [][]int{{0}}},
		{4, 2, [][]int{{0, 2}, {1, 3}}},
		{5, 2, [][]int{{0, 2, 4}, {1, 3}}},
		{7, 3, [][]int{{0, 3, 6}, {1, 4}, {2, 5}}},
		{2, 4, [][]int{{0}, {1}, {}, {}}}, // more ranks than shards
		{3, 0, nil},
		{3, -1, nil},
	}
	for _, c := range cases {
		got := AssignShards(c.shards, c.ranks)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("AssignShards(%d, %d) = %v, want %v", c.shards, c.ranks, got, c.want)
		}
	}
}

func TestAssignShardsProperties(t *testing.T) {
	for shards := 0; shards <= 40; shards++ {
		for ranks := 1; ranks <= 12; ranks++ {
			got := AssignShards(shards, ranks)
			if len(got) != ranks {
				t.Fatalf("(%d,%d): %d lists", shards, ranks, len(got))
			}
			seen := make([]int, shards)
			lo, hi := shards, 0
			for _, l := range got {
				lo, hi = min(lo, len(l)), max(hi, len(l))
				if !slices.IsSorted(l) {
					t.Fatalf("(%d,%d): list %v not ascending", shards, ranks, l)
				}
				for _, s := range l {
					seen[s]++
				}
			}
			if hi-lo > 1 {
				t.Fatalf("(%d,%d): sizes from %d to %d", shards, ranks, lo, hi)
			}
			for s, n := range seen {
				if n != 1 {
					t.Fatalf("(%d,%d): shard %d assigned %d times", shards, ranks, s, n)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(AssignShards(shards, ranks)) {
				t.Fatalf("(%d,%d): not deterministic", shards, ranks)
			}
		}
	}
}

func workers(names ...string) []WorkerInfo {
	out := make([]WorkerInfo, len(names))
	for i, n := range names {
		out[i] = WorkerInfo{ID: n}
	}
	return out
}

func stateWith(status Status, gen int64, min, max int, members ...string) State {
	s := State{Status: status, Generation: gen, MinWorkers: min, MaxWorkers: max, NumShards: 6}
	for i, m := range members {
		s.Members = append(s.Members, Member{WorkerInfo: WorkerInfo{ID: m}, Rank: i, Since: 1})
	}
	return s
}

func TestPlan(t *testing.T) {
	cases := []struct {
		name     string
		cur      State
		live     []string
		graceful []string
		members  []string
		waiting  []string
		status   Status
		gen      int64
		failures int64
		resizes  int64
	}{
		{name: "first formation", cur: stateWith(StatusPending, 0, 2, 0),
			live: []string{"a", "b", "c"}, members: []string{"a", "b", "c"}, status: StatusRunning, gen: 1},
		{name: "below min stays pending", cur: stateWith(StatusPending, 0, 2, 0),
			live: []string{"a"}, members: []string{"a"}, status: StatusPending, gen: 1},
		{name: "no change no bump", cur: stateWith(StatusRunning, 3, 1, 0, "a", "b"),
			live: []string{"a", "b"}, members: []string{"a", "b"}, status: StatusRunning, gen: 3},
		{name: "survivors keep order, newcomer appended", cur: stateWith(StatusRunning, 3, 1, 0, "c", "a", "b"),
			live: []string{"a", "b", "d", "c"}, members: []string{"c", "a", "b", "d"}, status: StatusRunning, gen: 4, resizes: 1},
		{name: "expired member is a failure", cur: stateWith(StatusRunning, 3, 1, 0, "a", "b", "c"),
			live: []string{"a", "c"}, members: []string{"a", "c"}, status: StatusRunning, gen: 4, failures: 1, resizes: 1},
		{name: "leaving member is not a failure", cur: stateWith(StatusRunning, 3, 1, 0, "a", "b", "c"),
			live: []string{"a", "c"}, graceful: []string{"b"}, members: []string{"a", "c"}, status: StatusRunning, gen: 4, resizes: 1},
		{name: "rank 0 lost, oldest survivor takes it", cur: stateWith(StatusRunning, 3, 1, 0, "a", "b", "c"),
			live: []string{"b", "c"}, members: []string{"b", "c"}, status: StatusRunning, gen: 4, failures: 1, resizes: 1},
		{name: "above max waits", cur: stateWith(StatusRunning, 1, 1, 2, "a", "b"),
			live: []string{"a", "b", "c", "d"}, members: []string{"a", "b"}, waiting: []string{"c", "d"}, status: StatusRunning, gen: 1},
		{name: "waiting worker promoted", cur: func() State {
			s := stateWith(StatusRunning, 1, 1, 2, "a", "b")
			s.Waiting = workers("c")
			return s
		}(), live: []string{"a", "c"}, members: []string{"a", "c"}, status: StatusRunning, gen: 2, failures: 1, resizes: 1},
		{name: "max lowered", cur: stateWith(StatusRunning, 1, 1, 2, "a", "b", "c"),
			live: []string{"a", "b", "c"}, members: []string{"a", "b"}, waiting: []string{"c"}, status: StatusRunning, gen: 2, resizes: 1},
		{name: "below min pauses", cur: stateWith(StatusRunning, 2, 2, 0, "a", "b"),
			live: []string{"b"}, members: []string{"b"}, status: StatusPaused, gen: 3, failures: 1, resizes: 1},
		{name: "paused resumes", cur: stateWith(StatusPaused, 3, 2, 0, "b"),
			live: []string{"b", "e"}, members: []string{"b", "e"}, status: StatusRunning, gen: 4, resizes: 1},
		{name: "done is kept", cur: stateWith(StatusDone, 3, 2, 0, "a", "b"),
			live: []string{"a"}, members: []string{"a"}, status: StatusDone, gen: 4, failures: 1, resizes: 1},
		{name: "all gone", cur: stateWith(StatusRunning, 3, 1, 0, "a"),
			live: nil, members: []string{}, status: StatusPaused, gen: 4, failures: 1, resizes: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := map[string]bool{}
			for _, id := range c.graceful {
				g[id] = true
			}
			next, _ := plan(c.cur, workers(c.live...), g)
			if got := next.MemberIDs(); !slices.Equal(got, c.members) {
				t.Errorf("members %v, want %v", got, c.members)
			}
			if got := ids(next.Waiting); !slices.Equal(got, c.waiting) && !(len(got) == 0 && len(c.waiting) == 0) {
				t.Errorf("waiting %v, want %v", got, c.waiting)
			}
			if next.Status != c.status || next.Generation != c.gen || next.Failures != c.failures || next.Resizes != c.resizes {
				t.Errorf("status %s gen %d failures %d resizes %d; want %s %d %d %d",
					next.Status, next.Generation, next.Failures, next.Resizes, c.status, c.gen, c.failures, c.resizes)
			}
			want := AssignShards(next.NumShards, len(next.Members))
			for i, m := range next.Members {
				if m.Rank != i || !slices.Equal(m.Shards, want[i]) {
					t.Errorf("member %s: rank %d shards %v; want %d %v", m.ID, m.Rank, m.Shards, i, want[i])
				}
			}
			// Members carried over keep the generation they joined in.
			for _, m := range next.Members {
				if _, was := c.cur.Member(m.ID); was && m.Since != 1 {
					t.Errorf("member %s: since %d, want 1", m.ID, m.Since)
				}
				if _, was := c.cur.Member(m.ID); !was && m.Since != next.Generation {
					t.Errorf("new member %s: since %d, want %d", m.ID, m.Since, next.Generation)
				}
			}
		})
	}
}
