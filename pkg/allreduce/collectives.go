package allreduce

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// AllReduce replaces buf, on every member of g, with the element-wise sum (or mean) of all
// members' buffers. Every member must pass a buffer of the same length; the result is
// bit-identical on every member. With one member it sends nothing.
func (r *Reducer) AllReduce(ctx context.Context, g Group, buf []float32, op Op) error {
	if op != Sum && op != Mean {
		return fmt.Errorf("allreduce: unknown op %d", op)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	k, err := r.begin(g)
	if err != nil {
		return err
	}
	n := len(g.Members)
	if n == 1 {
		r.collectives.Add(1)
		return nil
	}
	rk, L := g.Rank, len(buf)
	e := r.chunk / 4 // elements per chunk
	segs := max(1, ceilDiv(ceilDiv(L, n), e))
	// chunk c of segment s covers buf[lo:hi]; short segments have empty trailing chunks.
	span := func(s, c int) (int, int) {
		slo, shi := s*L/n, (s+1)*L/n
		lo := min(shi, slo+c*e)
		return lo, min(shi, lo+e)
	}
	// Outgoing step j carries segment rank-j, incoming step j segment rank-1-j. Steps
	// 0..n-2 reduce, steps n-1..2n-3 gather; outgoing step j forwards what incoming step
	// j-1 produced, chunk by chunk.
	steps := 2 * (n - 1)
	p := plan{
		coll: CollAllReduce, length: uint64(L),
		up: mod(rk-1, n), down: mod(rk+1, n),
		nIn: steps * segs, nOut: steps * segs,
		dep: func(m int) int {
			if m < segs {
				return 0
			}
			return m - segs + 1
		},
		fill: func(dst []byte, m int) []byte {
			lo, hi := span(mod(rk-m/segs, n), m%segs)
			return appendFloat32s(dst, buf[lo:hi])
		},
		process: func(m int, payload []byte) error {
			j := m / segs
			lo, hi := span(mod(rk-1-j, n), m%segs)
			if len(payload) != 4*(hi-lo) {
				return fmt.Errorf("payload of %d bytes, want %d", len(payload), 4*(hi-lo))
			}
			dst := buf[lo:hi]
			if j >= n-1 {
				copyFloat32s(dst, payload)
				return nil
			}
			addFloat32s(dst, payload)
			if j == n-2 && op == Mean {
				d := float32(n)
				for i := range dst {
					dst[i] /= d
				}
			}
			return nil
		},
		where: func(m int) string {
			j := m / segs
			if j < n-1 {
				return fmt.Sprintf("reduce-scatter step %d/%d chunk %d/%d", j+1, n-1, m%segs+1, segs)
			}
			return fmt.Sprintf("all-gather step %d/%d chunk %d/%d", j-n+2, n-1, m%segs+1, segs)
		},
	}
	return r.run(ctx, g, k, p)
}

// Broadcast replaces buf on every member with rank 0's buf. Every member passes a buffer
// of the same length. The data flows along the chain 0 → 1 → … → N-1 in chunks, so each
// link carries the buffer once and the chain is pipelined.
func (r *Reducer) Broadcast(ctx context.Context, g Group, buf []float32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, err := r.begin(g)
	if err != nil {
		return err
	}
	n, rk, L := len(g.Members), g.Rank, len(buf)
	e := r.chunk / 4
	chunks := max(1, ceilDiv(L, e))
	span := func(c int) (int, int) { lo := min(L, c*e); return lo, min(L, lo+e) }
	p := plan{
		coll: CollBroadcast, length: uint64(L),
		up: rk - 1, down: rk + 1,
		dep: func(m int) int {
			if rk == 0 {
				return 0
			}
			return m + 1
		},
		fill: func(dst []byte, m int) []byte {
			lo, hi := span(m)
			return appendFloat32s(dst, buf[lo:hi])
		},
		process: func(m int, payload []byte) error {
			lo, hi := span(m)
			if len(payload) != 4*(hi-lo) {
				return fmt.Errorf("payload of %d bytes, want %d", len(payload), 4*(hi-lo))
			}
			copyFloat32s(buf[lo:hi], payload)
			return nil
		},
		where: func(m int) string { return fmt.Sprintf("broadcast chunk %d/%d", m+1, chunks) },
	}
	if rk > 0 {
		p.nIn = chunks
	}
	if rk < n-1 {
		p.nOut = chunks
	}
	return r.run(ctx, g, k, p)
}

// AllGather returns every member's vals, indexed by rank. Every member passes the same
// number of values, and they must fit in one message (ChunkBytes/8 values); it is meant
// for a few numbers such as losses or parameter checksums.
func (r *Reducer) AllGather(ctx context.Context, g Group, vals []float64) ([][]float64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if 8*len(vals) > r.chunk {
		return nil, fmt.Errorf("allreduce: all-gather of %d values exceeds one message (%d values)", len(vals), r.chunk/8)
	}
	k, err := r.begin(g)
	if err != nil {
		return nil, err
	}
	n, rk := len(g.Members), g.Rank
	out := make([][]float64, n)
	out[rk] = append([]float64(nil), vals...)
	// Outgoing step j carries rank-j's values, incoming step j rank-1-j's.
	p := plan{
		coll: CollAllGather, length: uint64(len(vals)),
		up: mod(rk-1, n), down: mod(rk+1, n),
		nIn: n - 1, nOut: n - 1,
		dep: func(m int) int { return m },
		fill: func(dst []byte, m int) []byte {
			for _, v := range out[mod(rk-m, n)] {
				dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
			}
			return dst
		},
		process: func(m int, payload []byte) error {
			if len(payload) != 8*len(vals) {
				return fmt.Errorf("payload of %d bytes, want %d", len(payload), 8*len(vals))
			}
			v := make([]float64, len(vals))
			for i := range v {
				v[i] = math.Float64frombits(binary.LittleEndian.Uint64(payload[8*i:]))
			}
			out[mod(rk-1-m, n)] = v
			return nil
		},
		where: func(m int) string { return fmt.Sprintf("all-gather step %d/%d", m+1, n-1) },
	}
	if err := r.run(ctx, g, k, p); err != nil {
		return nil, err
	}
	return out, nil
}

// Stream moves the traffic of an all-reduce of size float32 elements around the ring —
// the same number of messages of the same sizes, under the same flow control — without
// the dependency between steps and without arithmetic. It measures what the NATS server
// alone allows (the broker bound the benchmark compares AllReduce with).
func (r *Reducer) Stream(ctx context.Context, g Group, size int) error {
	if size < 0 {
		return fmt.Errorf("allreduce: negative stream size %d", size)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	k, err := r.begin(g)
	if err != nil {
		return err
	}
	n, rk := len(g.Members), g.Rank
	if n == 1 {
		return nil
	}
	e := r.chunk / 4
	segs := max(1, ceilDiv(ceilDiv(size, n), e))
	zeros := make([]float32, min(e, ceilDiv(size, n)))
	span := func(m int) int {
		s, c := mod(rk-m/segs, n), m%segs
		slo, shi := s*size/n, (s+1)*size/n
		lo := min(shi, slo+c*e)
		return min(shi, lo+e) - lo
	}
	msgs := 2 * (n - 1) * segs
	p := plan{
		coll: CollStream, length: uint64(size),
		up: mod(rk-1, n), down: mod(rk+1, n),
		nIn: msgs, nOut: msgs,
		dep:     func(int) int { return 0 },
		fill:    func(dst []byte, m int) []byte { return appendFloat32s(dst, zeros[:span(m)]) },
		process: func(int, []byte) error { return nil },
		where:   func(m int) string { return fmt.Sprintf("stream message %d/%d", m+1, msgs) },
	}
	return r.run(ctx, g, k, p)
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func mod(a, n int) int { return ((a % n) + n) % n }

// littleEndian says whether float32 slices already have the wire layout in memory, so that
// encoding and copying are a memmove.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// bytesOf views f as its bytes.
func bytesOf(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

func appendFloat32s(dst []byte, src []float32) []byte {
	if littleEndian {
		return append(dst, bytesOf(src)...)
	}
	n := len(dst)
	dst = append(dst, make([]byte, 4*len(src))...)
	b := dst[n:]
	for i, v := range src {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return dst
}

func addFloat32s(dst []float32, b []byte) {
	b = b[:4*len(dst)]
	for i := range dst {
		dst[i] += math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}

func copyFloat32s(dst []float32, b []byte) {
	b = b[:4*len(dst)]
	if littleEndian {
		copy(bytesOf(dst), b)
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}
