package allreduce

import (
	"context"
	"fmt"
	"testing"

	"github.com/gantry-ml/gantry/pkg/natsembed"
)

// BenchmarkAllReduce runs the ring in one process against an embedded server; b.SetBytes
// is the buffer size, so MB/s is algbw. hack/bench-allreduce.sh measures separate processes.
func BenchmarkAllReduce(b *testing.B) {
	for _, n := range []int{2, 3} {
		for _, mib := range []int{1, 8} {
			b.Run(fmt.Sprintf("N=%d/%dMiB", n, mib), func(b *testing.B) { benchRing(b, n, mib<<20/4, false) })
		}
	}
}

// BenchmarkStream moves the same traffic without arithmetic: the broker bound.
func BenchmarkStream(b *testing.B) {
	for _, n := range []int{2, 3} {
		b.Run(fmt.Sprintf("N=%d/8MiB", n), func(b *testing.B) { benchRing(b, n, 8<<20/4, true) })
	}
}

func benchRing(b *testing.B, n, size int, stream bool) {
	s := startServer(b, natsembed.Options{})
	w := newWorld(b, s.URL(), n, Config{})
	bufs := make([][]float32, n)
	for i := range bufs {
		bufs[i] = make([]float32, size)
	}
	b.SetBytes(int64(4 * size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		errs := w.each(func(rk int, r *Reducer) error {
			if stream {
				return r.Stream(context.Background(), w.group(rk, 1), size)
			}
			return r.AllReduce(context.Background(), w.group(rk, 1), bufs[rk], Mean)
		})
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}
