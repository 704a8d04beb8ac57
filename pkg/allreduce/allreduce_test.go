package allreduce

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/natsembed"
	"github.com/nats-io/nats.go"
)

func startServer(t testing.TB, opts natsembed.Options) *natsembed.Server {
	t.Helper()
	s, err := natsembed.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(0), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// world is n Reducers, one connection each, on one server.
type world struct {
	conns    []*nats.Conn
	reducers []*Reducer
	members  []string
	job      string
}

func newWorld(t testing.TB, url string, n int, cfg Config) *world {
	t.Helper()
	w := &world{job: strings.ReplaceAll(t.Name(), "/", "_")}
	for i := 0; i < n; i++ {
		nc := connect(t, url)
		r, err := New(nc, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		w.conns = append(w.conns, nc)
		w.reducers = append(w.reducers, r)
		w.members = append(w.members, fmt.Sprintf("w%d", i))
	}
	return w
}

func (w *world) group(rank int, gen uint64) Group {
	return Group{Job: w.job, Generation: gen, Members: w.members, Rank: rank}
}

// each runs f for every rank concurrently and returns the errors by rank.
func (w *world) each(f func(rank int, r *Reducer) error) []error {
	errs := make([]error, len(w.reducers))
	var wg sync.WaitGroup
	for i, r := range w.reducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i, r)
		}()
	}
	wg.Wait()
	return errs
}

func noErrors(t *testing.T, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", i, err)
		}
	}
}

// intInput is an integer-valued input whose sums over a few ranks are exact in float32.
func intInput(rank, op, i int) float32 {
	return float32((i*7+rank*131+op*31)%2001 - 1000)
}

func TestAllReduceMatchesPlainSum(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	// Small chunks and window so that segments span many messages and credit matters.
	cfg := Config{ChunkBytes: 64 << 10, WindowBytes: 256 << 10, PeerTimeout: 10 * time.Second}
	sizes := []int{0, 1, 7, 1000003}
	if raceEnabled {
		sizes[3] = 100003
	}
	for n := 1; n <= 6; n++ {
		w := newWorld(t, s.URL(), n, cfg)
		for _, size := range sizes {
			for _, op := range []Op{Sum, Mean} {
				bufs := make([][]float32, n)
				for rk := range bufs {
					bufs[rk] = make([]float32, size)
					for i := range bufs[rk] {
						bufs[rk][i] = intInput(rk, 0, i)
					}
				}
				noErrors(t, w.each(func(rk int, r *Reducer) error {
					return r.AllReduce(context.Background(), w.group(rk, 1), bufs[rk], op)
				}))
				for i := 0; i < size; i++ {
					var sum float32
					for rk := 0; rk < n; rk++ {
						sum += intInput(rk, 0, i)
					}
					if op == Mean {
						sum /= float32(n)
					}
					for rk := 0; rk < n; rk++ {
						if bufs[rk][i] != sum {
							t.Fatalf("n=%d size=%d op=%d: rank %d element %d = %v, want %v", n, size, op, rk, i, bufs[rk][i], sum)
						}
					}
				}
			}
		}
	}
}

func TestAllReduceBitIdenticalAndRepeatable(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	const n, size = 5, 100003
	w := newWorld(t, s.URL(), n, Config{ChunkBytes: 16 << 10})
	rng := rand.New(rand.NewPCG(1, 2))
	inputs := make([][]float32, n)
	for rk := range inputs {
		inputs[rk] = make([]float32, size)
		for i := range inputs[rk] {
			inputs[rk][i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(8)-4)))
		}
	}
	var first []float32
	for run := 0; run < 2; run++ {
		bufs := make([][]float32, n)
		noErrors(t, w.each(func(rk int, r *Reducer) error {
			bufs[rk] = append([]float32(nil), inputs[rk]...)
			return r.AllReduce(context.Background(), w.group(rk, 1), bufs[rk], Mean)
		}))
		for rk := 1; rk < n; rk++ {
			for i := range bufs[rk] {
				if math.Float32bits(bufs[rk][i]) != math.Float32bits(bufs[0][i]) {
					t.Fatalf("run %d element %d: rank %d has %x, rank 0 has %x", run, i, rk, math.Float32bits(bufs[rk][i]), math.Float32bits(bufs[0][i]))
				}
			}
		}
		for i, v := range bufs[0] {
			var exact, mag float64
			for rk := 0; rk < n; rk++ {
				exact += float64(inputs[rk][i])
				mag += math.Abs(float64(inputs[rk][i]))
			}
			exact /= n
			// float32 rounding at each of n additions, relative to the magnitudes added.
			if math.Abs(float64(v)-exact) > 1e-6*mag {
				t.Fatalf("element %d = %v, exact mean %v", i, v, exact)
			}
		}
		if run == 0 {
			first = bufs[0]
			continue
		}
		for i := range first {
			if math.Float32bits(first[i]) != math.Float32bits(bufs[0][i]) {
				t.Fatalf("element %d differs between runs: %v then %v", i, first[i], bufs[0][i])
			}
		}
	}
}

func TestAllReduce50MBAtOneMBMaxPayload(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("50 MB all-reduce skipped in -short mode and under -race (plain go test runs it)")
	}
	s := startServer(t, natsembed.Options{MaxPayload: 1 << 20})
	const n, size = 3, 50 << 20 / 4
	w := newWorld(t, s.URL(), n, Config{})
	if c := w.reducers[0].ChunkBytes(); c > 1<<20-HeaderSize || c < 1<<19 {
		t.Fatalf("chunk of %d bytes under a 1 MiB max_payload", c)
	}
	bufs := make([][]float32, n)
	for rk := range bufs {
		bufs[rk] = make([]float32, size)
		for i := range bufs[rk] {
			bufs[rk][i] = intInput(rk, 3, i)
		}
	}
	noErrors(t, w.each(func(rk int, r *Reducer) error {
		return r.AllReduce(context.Background(), w.group(rk, 1), bufs[rk], Sum)
	}))
	for i := 0; i < size; i++ {
		want := intInput(0, 3, i) + intInput(1, 3, i) + intInput(2, 3, i)
		for rk := range bufs {
			if bufs[rk][i] != want {
				t.Fatalf("rank %d element %d = %v, want %v", rk, i, bufs[rk][i], want)
			}
		}
	}
	st := w.reducers[0].Stats()
	if want := uint64(2 * (n - 1) * size / n * 4); st.BytesSent < want-16 || st.BytesReceived < want-16 {
		t.Fatalf("stats %+v: want about %d bytes each way", st, want)
	}
}

func TestBroadcastFromRankZero(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	for n := 1; n <= 4; n++ {
		w := newWorld(t, s.URL(), n, Config{ChunkBytes: 4096, WindowBytes: 16384})
		for _, size := range []int{0, 7, 100003} {
			bufs := make([][]float32, n)
			for rk := range bufs {
				bufs[rk] = make([]float32, size)
				for i := range bufs[rk] {
					bufs[rk][i] = float32(rk*1000000 + i)
				}
			}
			noErrors(t, w.each(func(rk int, r *Reducer) error {
				return r.Broadcast(context.Background(), w.group(rk, 2), bufs[rk])
			}))
			for rk := range bufs {
				for i, v := range bufs[rk] {
					if v != float32(i) {
						t.Fatalf("n=%d size=%d: rank %d element %d = %v, want %v", n, size, rk, i, v, float32(i))
					}
				}
			}
		}
	}
}

func TestAllGather(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	for n := 1; n <= 5; n++ {
		w := newWorld(t, s.URL(), n, Config{})
		got := make([][][]float64, n)
		noErrors(t, w.each(func(rk int, r *Reducer) error {
			var err error
			got[rk], err = r.AllGather(context.Background(), w.group(rk, 1), []float64{float64(rk), -0.5 * float64(rk)})
			return err
		}))
		for rk := range got {
			for from, v := range got[rk] {
				if len(v) != 2 || v[0] != float64(from) || v[1] != -0.5*float64(from) {
					t.Fatalf("n=%d: rank %d has %v from rank %d", n, rk, v, from)
				}
			}
		}
	}
	w := newWorld(t, s.URL(), 1, Config{ChunkBytes: 64})
	if _, err := w.reducers[0].AllGather(context.Background(), w.group(0, 1), make([]float64, 9)); err == nil || !strings.Contains(err.Error(), "exceeds one message") {
		t.Fatalf("9 values in a 64-byte chunk: %v", err)
	}
}

func TestCollectivesInSequenceAcrossGenerations(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	const n = 3
	w := newWorld(t, s.URL(), n, Config{ChunkBytes: 1024})
	for gen := uint64(1); gen <= 3; gen++ {
		noErrors(t, w.each(func(rk int, r *Reducer) error {
			g := w.group(rk, gen)
			for step := 0; step < 5; step++ {
				buf := []float32{float32(rk), 1, float32(step)}
				if err := r.AllReduce(context.Background(), g, buf, Sum); err != nil {
					return err
				}
				if buf[0] != 3 || buf[1] != 3 || buf[2] != float32(3*step) {
					return fmt.Errorf("gen %d step %d: got %v", gen, step, buf)
				}
				if _, err := r.AllGather(context.Background(), g, []float64{1}); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	if st := w.reducers[1].Stats(); st.Collectives != 30 || st.Failures != 0 || st.Gaps != 0 {
		t.Fatalf("stats %+v, want 30 collectives and no failures", st)
	}
}

func TestStaleGenerationMessagesIgnored(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	const n, size = 3, 10000
	w := newWorld(t, s.URL(), n, Config{ChunkBytes: 4096})
	input := func(rk int) []float32 {
		b := make([]float32, size)
		for i := range b {
			b[i] = intInput(rk, 1, i)
		}
		return b
	}
	// Generation 1, then generation 2 once, so every member listens on generation 2.
	for gen := uint64(1); gen <= 2; gen++ {
		noErrors(t, w.each(func(rk int, r *Reducer) error {
			return r.AllReduce(context.Background(), w.group(rk, gen), input(rk), Sum)
		}))
	}
	// A zombie of generation 1 keeps sending what looks like the next all-reduce: on the
	// generation-1 subjects (nobody listens any more) and, misrouted, on the generation-2
	// subjects, where the header gives it away. It ends each burst with an abort.
	zombie := connect(t, s.URL())
	const junk = 20
	for rk, m := range w.members {
		for _, subjGen := range []uint64{1, 2} {
			for i := 0; i < junk; i++ {
				kind := KindData
				if i == junk-1 {
					kind = KindAbort
				}
				msg := AppendHeader(nil, Header{Kind: kind, Coll: CollAllReduce, Sender: uint32(mod(rk-1, n)), Index: uint32(i), Generation: 1, Op: 1, Length: size})
				msg = append(msg, make([]byte, 4096)...)
				if err := zombie.Publish(w.reducers[rk].DataSubject(w.job, subjGen, m), msg); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := zombie.Flush(); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]float32, n)
	noErrors(t, w.each(func(rk int, r *Reducer) error {
		bufs[rk] = input(rk)
		return r.AllReduce(context.Background(), w.group(rk, 2), bufs[rk], Sum)
	}))
	for rk := range bufs {
		for i, v := range bufs[rk] {
			if want := intInput(0, 1, i) + intInput(1, 1, i) + intInput(2, 1, i); v != want {
				t.Fatalf("rank %d element %d = %v, want %v", rk, i, v, want)
			}
		}
		if st := w.reducers[rk].Stats(); st.DroppedStale != junk || st.Failures != 0 {
			t.Fatalf("rank %d: stats %+v, want %d stale messages dropped and no failure", rk, st, junk)
		}
	}
	// A generation older than one already used is refused.
	err := w.reducers[0].AllReduce(context.Background(), w.group(0, 1), make([]float32, 1), Sum)
	if err == nil || !strings.Contains(err.Error(), "older than generation 2") {
		t.Fatalf("going back to generation 1: %v", err)
	}
}

func TestGapFailsTheStep(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	w := newWorld(t, s.URL(), 2, Config{ChunkBytes: 1024, PeerTimeout: 5 * time.Second})
	// Rank 0 is played by hand: it waits for rank 1's credit, then skips message 1.
	fake := connect(t, s.URL())
	credit, err := fake.SubscribeSync(w.reducers[0].CreditSubject(w.job, 1, "w0"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 2048 // 1024 per segment = 4 chunks of 256 elements
	done := make(chan error, 1)
	go func() {
		done <- w.reducers[1].AllReduce(context.Background(), w.group(1, 1), make([]float32, size), Sum)
	}()
	if _, err := credit.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no credit from rank 1: %v", err)
	}
	for _, idx := range []uint32{0, 2} {
		msg := AppendHeader(nil, Header{Kind: KindData, Coll: CollAllReduce, Sender: 0, Index: idx, Generation: 1, Op: 0, Length: size})
		msg = append(msg, make([]byte, 1024)...)
		if err := fake.Publish(w.reducers[1].DataSubject(w.job, 1, "w1"), msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "gap from peer w0 (rank 0) in reduce-scatter step 1/1 chunk 2/4: expected message 1, got 2") {
			t.Fatalf("error %v, want a gap from w0 in reduce-scatter", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("rank 1 did not notice the gap")
	}
	if st := w.reducers[1].Stats(); st.Gaps != 1 || st.Failures != 1 {
		t.Fatalf("stats %+v, want one gap and one failure", st)
	}
}

func TestSlowConsumerFailsTheStep(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	w := newWorld(t, s.URL(), 2, Config{ChunkBytes: 4096, PendingBytes: 64 << 10, PeerTimeout: 5 * time.Second})
	r := w.reducers[1]
	// A call that times out leaves rank 1 subscribed but not reading.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := r.AllReduce(ctx, w.group(1, 1), make([]float32, 2048), Sum); err == nil {
		t.Fatal("all-reduce without rank 0 succeeded")
	}
	// A rank 0 that ignores credit floods it with 160 KiB, beyond its 64 KiB pending limit.
	fake := connect(t, s.URL())
	for i := 0; i < 40; i++ {
		msg := AppendHeader(nil, Header{Kind: KindData, Coll: CollAllReduce, Sender: 0, Index: uint32(i), Generation: 1, Op: 1, Length: 2048})
		if err := fake.Publish(r.DataSubject(w.job, 1, "w1"), append(msg, make([]byte, 4096)...)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fake.Flush(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if d, _ := r.dataSub.Dropped(); d > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client dropped nothing beyond the pending limit")
		}
	}
	err := r.AllReduce(context.Background(), w.group(1, 1), make([]float32, 2048), Sum)
	if err == nil || !strings.Contains(err.Error(), "slow consumer") || !strings.Contains(err.Error(), "peer w0 (rank 0)") {
		t.Fatalf("error %v, want a slow consumer naming w0", err)
	}
	if st := r.Stats(); st.SlowConsumerDrops == 0 {
		t.Fatalf("stats %+v count no slow-consumer drops", st)
	}
}

func TestMismatchedBufferLengthsFail(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	w := newWorld(t, s.URL(), 2, Config{PeerTimeout: 5 * time.Second})
	errs := w.each(func(rk int, r *Reducer) error {
		return r.AllReduce(context.Background(), w.group(rk, 1), make([]float32, 10+rk), Sum)
	})
	for rk, err := range errs {
		if err == nil || !(strings.Contains(err.Error(), "has a buffer of") || strings.Contains(err.Error(), "gave up")) {
			t.Fatalf("rank %d: %v, want a buffer length mismatch", rk, err)
		}
	}
}

func TestSilentPeerTimesOut(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	w := newWorld(t, s.URL(), 3, Config{PeerTimeout: 300 * time.Millisecond})
	// Rank 2 never shows up.
	start := time.Now()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for rk := 0; rk < 2; rk++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[rk] = w.reducers[rk].AllReduce(context.Background(), w.group(rk, 1), make([]float32, 100), Sum)
		}()
	}
	wg.Wait()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s to give up on a 300ms peer timeout", d)
	}
	// Rank 0 waits for data from rank 2; rank 1 waits for rank 0 (which waits for rank 2)
	// or for credit from rank 2, and either may hear the other's abort first. Every error
	// names a peer, and some rank (or the abort it heard) says w2 was silent.
	for rk, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "peer w") {
			t.Fatalf("rank %d: %v, want an error naming a peer", rk, err)
		}
	}
	if all := errs[0].Error() + errs[1].Error(); !strings.Contains(all, "peer w2 (rank 2)") || !strings.Contains(all, "silent for 300ms") {
		t.Fatalf("no rank says w2 was silent for 300ms: %v / %v", errs[0], errs[1])
	}
}

func TestContextEndsCollectivePromptly(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	w := newWorld(t, s.URL(), 2, Config{PeerTimeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := w.reducers[0].AllReduce(ctx, w.group(0, 1), make([]float32, 100), Sum)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("returned after %s on a 200ms deadline", d)
	}
	if err == nil || !strings.Contains(err.Error(), "peer w1 (rank 1)") || !strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("error %v, want the deadline and peer w1", err)
	}
}

func TestPeerConnectionClosedMidStep(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	const n, victim = 4, 2
	size := 400000
	if raceEnabled {
		size = 100000
	}
	timeout := time.Second
	w := newWorld(t, s.URL(), n, Config{ChunkBytes: 16 << 10, WindowBytes: 64 << 10, PeerTimeout: timeout})
	var (
		mu      sync.Mutex
		done    = map[int]int{}
		errAt   = map[int]time.Time{}
		closeAt time.Time
	)
	errs := w.each(func(rk int, r *Reducer) error {
		buf := make([]float32, size)
		for op := 0; ; op++ {
			for i := range buf {
				buf[i] = intInput(rk, op, i)
			}
			if rk == victim && op == 3 {
				// Die in the middle of the fourth all-reduce.
				go func() {
					time.Sleep(20 * time.Millisecond)
					mu.Lock()
					closeAt = time.Now()
					mu.Unlock()
					w.conns[victim].Close()
				}()
			}
			if err := r.AllReduce(context.Background(), w.group(rk, 1), buf, Sum); err != nil {
				mu.Lock()
				errAt[rk] = time.Now()
				mu.Unlock()
				return err
			}
			for i, v := range buf {
				var want float32
				for q := 0; q < n; q++ {
					want += intInput(q, op, i)
				}
				if v != want {
					return fmt.Errorf("WRONG SUM op %d element %d: %v, want %v", op, i, v, want)
				}
			}
			mu.Lock()
			done[rk]++
			mu.Unlock()
			if op > 100 {
				return fmt.Errorf("still running after 100 all-reduces")
			}
		}
	})
	for rk, err := range errs {
		if err == nil || strings.Contains(err.Error(), "WRONG") {
			t.Fatalf("rank %d: %v", rk, err)
		}
		if rk != victim {
			if d := errAt[rk].Sub(closeAt); d > timeout+3*time.Second {
				t.Errorf("rank %d gave up %s after the close, peer timeout %s", rk, d, timeout)
			}
			if !strings.Contains(err.Error(), "peer w") {
				t.Errorf("rank %d: error names no peer: %v", rk, err)
			}
		}
		t.Logf("rank %d after %d all-reduces: %v", rk, done[rk], err)
	}
}

func TestBadInput(t *testing.T) {
	s := startServer(t, natsembed.Options{})
	nc := connect(t, s.URL())
	if _, err := New(nil, Config{}, nil); err == nil {
		t.Error("New accepted a nil connection")
	}
	if _, err := New(nc, Config{WindowBytes: -1}, nil); err == nil {
		t.Error("New accepted a negative window")
	}
	if _, err := New(nc, Config{SubjectPrefix: "a.*"}, nil); err == nil {
		t.Error("New accepted a wildcard prefix")
	}
	r, err := New(nc, Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := map[string]Group{
		"no members":     {Job: "j", Members: nil},
		"rank too large": {Job: "j", Members: []string{"a"}, Rank: 1},
		"negative rank":  {Job: "j", Members: []string{"a"}, Rank: -1},
		"duplicate":      {Job: "j", Members: []string{"a", "a"}},
		"dotted member":  {Job: "j", Members: []string{"a.b"}},
		"empty job":      {Job: "", Members: []string{"a"}},
		"wildcard job":   {Job: ">", Members: []string{"a"}},
	}
	for name, g := range cases {
		if err := r.AllReduce(ctx, g, []float32{1}, Sum); err == nil || !strings.HasPrefix(err.Error(), "allreduce: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := r.AllReduce(ctx, Group{Job: "j", Members: []string{"a"}}, []float32{1}, Op(7)); err == nil {
		t.Error("AllReduce accepted op 7")
	}
}
