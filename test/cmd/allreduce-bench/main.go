// Command allreduce-bench measures pkg/allreduce across separate processes: for each world
// size it starts that many member processes against one NATS server and times the ring
// all-reduce beside the broker's own bound — the same traffic streamed without arithmetic
// or dependencies between steps. `make bench-allreduce` runs it through
// hack/bench-allreduce.sh.
//
//	allreduce-bench run [-n 2,3,4] [-sizes-mib 1,8,64] [-url nats://...]
//
// Without -url the NATS server runs embedded in the driver process, which is separate from
// the members. The members are this binary started as `allreduce-bench member ...`.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/pkg/allreduce"
	"github.com/gantry-ml/gantry/pkg/natsembed"
	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: allreduce-bench run|member [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runDriver(os.Args[2:])
	case "member":
		err = runMember(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (want run or member)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "allreduce-bench:", err)
		os.Exit(1)
	}
}

// result is what rank 0 reports for one buffer size.
type result struct {
	N         int     `json:"n"`
	Bytes     int     `json:"bytes"`
	Iters     int     `json:"iters"`
	AllReduce float64 `json:"allreduce_s"` // median over iterations of the slowest rank
	Stream    float64 `json:"stream_s"`
	// Efficiency is the median over iterations of stream time / all-reduce time; the two
	// run back to back in each iteration, so they share the machine's load of the moment.
	Efficiency float64 `json:"efficiency"`
	Chunk      int     `json:"chunk_bytes"`
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad list element %q in %q", f, s)
		}
		out = append(out, v)
	}
	return out, nil
}

func runDriver(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	ns := fs.String("n", "2,3,4", "world sizes (member processes)")
	sizes := fs.String("sizes-mib", "1,8,64", "buffer sizes in MiB")
	url := fs.String("url", "", "NATS server to use; empty starts one in this process")
	maxPayload := fs.Int("max-payload", 1<<20, "max_payload of the embedded server, bytes")
	window := fs.Int("window-bytes", 0, "all-reduce window (0: package default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	worlds, err := parseInts(*ns)
	if err != nil {
		return err
	}
	if _, err := parseInts(*sizes); err != nil {
		return err
	}
	if *url == "" {
		srv, err := natsembed.Start(natsembed.Options{MaxPayload: int32(*maxPayload)})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		*url = srv.URL()
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var results []result
	for _, n := range worlds {
		var cmds []*exec.Cmd
		var out *bufio.Scanner
		for rk := 0; rk < n; rk++ {
			cmd := exec.Command(self, "member", "-url", *url, "-n", strconv.Itoa(n), "-rank", strconv.Itoa(rk),
				"-sizes-mib", *sizes, "-job", fmt.Sprintf("bench%d", n), "-window-bytes", strconv.Itoa(*window))
			cmd.Stderr = os.Stderr
			if rk == 0 {
				pipe, err := cmd.StdoutPipe()
				if err != nil {
					return err
				}
				out = bufio.NewScanner(pipe)
			}
			if err := cmd.Start(); err != nil {
				return err
			}
			cmds = append(cmds, cmd)
		}
		for out.Scan() {
			var r result
			if err := json.Unmarshal(out.Bytes(), &r); err != nil {
				return fmt.Errorf("member 0 printed %q: %w", out.Text(), err)
			}
			results = append(results, r)
			fmt.Fprintf(os.Stderr, "bench-allreduce: N=%d %d MiB done\n", r.N, r.Bytes>>20)
		}
		var errs []error
		for rk, cmd := range cmds {
			if err := cmd.Wait(); err != nil {
				errs = append(errs, fmt.Errorf("member %d of %d: %w", rk, n, err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	printTable(results)
	return nil
}

func printTable(results []result) {
	fmt.Println("| N | size | time | algbw | busbw | broker aggregate | broker-bound time | efficiency |")
	fmt.Println("|--:|-----:|-----:|------:|------:|-----------------:|------------------:|-----------:|")
	for _, r := range results {
		size := float64(r.Bytes)
		n := float64(r.N)
		algbw := size / r.AllReduce
		busbw := algbw * 2 * (n - 1) / n
		// Every byte of the ring crosses the one server: 2(N-1)*size in all.
		aggregate := 2 * (n - 1) * size / r.Stream
		bound := 2 * (n - 1) * size / aggregate
		fmt.Printf("| %d | %d MiB | %.1f ms | %.3f GB/s | %.3f GB/s | %.3f GB/s | %.1f ms | %.2f |\n",
			r.N, r.Bytes>>20, r.AllReduce*1e3, algbw/1e9, busbw/1e9, aggregate/1e9, bound*1e3, r.Efficiency)
	}
}

func runMember(args []string) error {
	fs := flag.NewFlagSet("member", flag.ContinueOnError)
	url := fs.String("url", "", "NATS server")
	n := fs.Int("n", 0, "world size")
	rank := fs.Int("rank", -1, "this member's rank")
	sizes := fs.String("sizes-mib", "1,8,64", "buffer sizes in MiB")
	job := fs.String("job", "bench", "job name")
	window := fs.Int("window-bytes", 0, "all-reduce window")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mibs, err := parseInts(*sizes)
	if err != nil {
		return err
	}
	if *n < 1 || *rank < 0 || *rank >= *n {
		return fmt.Errorf("member: rank %d of %d", *rank, *n)
	}
	nc, err := nats.Connect(*url, nats.Name(fmt.Sprintf("allreduce-bench-%d", *rank)))
	if err != nil {
		return fmt.Errorf("member %d: connect %s: %w", *rank, *url, err)
	}
	defer nc.Close()
	log := hclog.New(&hclog.LoggerOptions{Name: fmt.Sprintf("member%d", *rank), Level: hclog.Warn, Output: os.Stderr})
	r, err := allreduce.New(nc, allreduce.Config{PeerTimeout: time.Minute, WindowBytes: *window}, log)
	if err != nil {
		return err
	}
	g := allreduce.Group{Job: *job, Generation: 1, Rank: *rank}
	for i := 0; i < *n; i++ {
		g.Members = append(g.Members, fmt.Sprintf("m%d", i))
	}
	ctx := context.Background()
	for _, mib := range mibs {
		elems := mib << 20 / 4
		buf := make([]float32, elems)
		for i := range buf {
			buf[i] = float32(i%1000) * 1e-3
		}
		iters := max(5, min(30, 256/mib))
		if _, err := r.AllGather(ctx, g, []float64{0}); err != nil { // everyone is up
			return err
		}
		// One untimed round each warms the connections and the allocator.
		if err := r.Stream(ctx, g, elems); err != nil {
			return err
		}
		if err := r.AllReduce(ctx, g, buf, allreduce.Mean); err != nil {
			return err
		}
		ar := make([]float64, iters)
		st := make([]float64, iters)
		for it := 0; it < iters; it++ {
			if _, err := r.AllGather(ctx, g, []float64{0}); err != nil {
				return err
			}
			t0 := time.Now()
			if err := r.Stream(ctx, g, elems); err != nil {
				return err
			}
			st[it] = time.Since(t0).Seconds()
			if _, err := r.AllGather(ctx, g, []float64{0}); err != nil {
				return err
			}
			t0 = time.Now()
			if err := r.AllReduce(ctx, g, buf, allreduce.Mean); err != nil {
				return err
			}
			ar[it] = time.Since(t0).Seconds()
		}
		all, err := r.AllGather(ctx, g, append(ar, st...))
		if err != nil {
			return err
		}
		if *rank == 0 {
			// Per iteration the slowest rank's time, then medians over iterations.
			slowest := func(off int) []float64 {
				per := make([]float64, iters)
				for it := range per {
					for _, v := range all {
						per[it] = max(per[it], v[off+it])
					}
				}
				return per
			}
			median := func(v []float64) float64 {
				v = slices.Clone(v)
				slices.Sort(v)
				return v[len(v)/2]
			}
			arT, stT := slowest(0), slowest(iters)
			eff := make([]float64, iters)
			for it := range eff {
				eff[it] = stT[it] / arT[it]
			}
			res := result{N: *n, Bytes: mib << 20, Iters: iters, AllReduce: median(arT), Stream: median(stT),
				Efficiency: median(eff), Chunk: r.ChunkBytes()}
			b, _ := json.Marshal(res)
			fmt.Println(string(b))
		}
	}
	return nil
}
