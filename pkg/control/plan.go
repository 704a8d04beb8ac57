package control

import "slices"

// AssignShards deals shards 0..numShards-1 to ranks 0..ranks-1 round robin: shard s goes to
// rank s mod ranks. Every shard is assigned exactly once, list lengths differ by at most one,
// each list is ascending, and the result depends only on the two counts. With more ranks than
// shards the ranks past numShards get empty lists. ranks <= 0 gives nil.
func AssignShards(numShards, ranks int) [][]int {
	if ranks <= 0 {
		return nil
	}
	out := make([][]int, ranks)
	for r := range out {
		out[r] = make([]int, 0, max(numShards, 0)/ranks+1)
	}
	for s := 0; s < numShards; s++ {
		out[s%ranks] = append(out[s%ranks], s)
	}
	return out
}

// TODO(#6): hosts that keep failing rejoin at once; elastic Horovod blacklists them with an
// exponential cool-down, which needs a per-host failure history in the state.

// change summarises what a plan did, for logging.
type change struct {
	joined, left, expired []string // member IDs
}

// plan computes the next state from the current one and the live registrations, given in
// registration order. graceful holds the IDs that announced they were leaving. The rules:
// surviving members keep their relative order; newcomers (and waiting workers) follow in
// registration order; beyond MaxWorkers they wait; below MinWorkers the job pauses (or stays
// pending if it never ran); the generation bumps when the ranked list changes; members that
// vanished without leaving count as failures. done and failed are kept.
func plan(cur State, live []WorkerInfo, graceful map[string]bool) (State, change) {
	next := cur.clone()
	var ch change
	alive := make(map[string]WorkerInfo, len(live))
	for _, w := range live {
		alive[w.ID] = w
	}

	var keep []WorkerInfo
	kept := map[string]bool{}
	for _, m := range cur.Members {
		if w, ok := alive[m.ID]; ok {
			keep = append(keep, w)
			kept[m.ID] = true
			continue
		}
		if graceful[m.ID] {
			ch.left = append(ch.left, m.ID)
		} else {
			ch.expired = append(ch.expired, m.ID)
		}
	}
	var rest []WorkerInfo
	for _, w := range live {
		if !kept[w.ID] {
			rest = append(rest, w)
		}
	}
	ranked := append(keep, rest...)
	var waiting []WorkerInfo
	if cur.MaxWorkers > 0 && len(ranked) > cur.MaxWorkers {
		waiting = slices.Clone(ranked[cur.MaxWorkers:])
		ranked = ranked[:cur.MaxWorkers]
	}

	was := cur.MemberIDs()
	now := make([]string, len(ranked))
	for i, w := range ranked {
		now[i] = w.ID
	}
	if !slices.Equal(was, now) {
		next.Generation = cur.Generation + 1
		if cur.Generation > 0 {
			next.Resizes++
		}
		next.Failures += int64(len(ch.expired))
	}
	since := map[string]int64{}
	for _, m := range cur.Members {
		since[m.ID] = m.Since
	}
	shards := AssignShards(cur.NumShards, len(ranked))
	next.Members = make([]Member, len(ranked))
	for i, w := range ranked {
		s, ok := since[w.ID]
		if !ok {
			s = next.Generation
			ch.joined = append(ch.joined, w.ID)
		}
		next.Members[i] = Member{WorkerInfo: w, Rank: i, Shards: shards[i], Since: s}
	}
	next.Waiting = waiting
	if next.Waiting == nil {
		next.Waiting = []WorkerInfo{}
	}

	switch cur.Status {
	case StatusDone, StatusFailed:
	default:
		switch {
		case len(ranked) >= max(cur.MinWorkers, 1):
			next.Status = StatusRunning
		case cur.Status == StatusRunning || cur.Status == StatusPaused:
			next.Status = StatusPaused
		default:
			next.Status = StatusPending
		}
	}
	return next, ch
}
