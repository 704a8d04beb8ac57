package kernels

import (
	"fmt"
	"sync"
)

// Arena recycles buffers by exact length so that a steady-state training step, which asks
// for the same sizes every step, allocates nothing new after its first step. Buffers handed
// out by Get stay valid until Reset (which takes them all back) or Put.
type Arena struct {
	dev *Device

	mu     sync.Mutex
	free   map[int][]*Buffer
	out    []*Buffer
	allocs int64 // buffers ever allocated by this arena
	gets   int64
}

// NewArena returns an empty arena on dev.
func NewArena(dev *Device) *Arena {
	return &Arena{dev: dev, free: make(map[int][]*Buffer)}
}

// Get returns a buffer of exactly n elements, reusing a free one when there is one.
// Contents are undefined.
func (a *Arena) Get(n int) (*Buffer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gets++
	if l := a.free[n]; len(l) > 0 {
		b := l[len(l)-1]
		a.free[n] = l[:len(l)-1]
		a.out = append(a.out, b)
		return b, nil
	}
	b, err := a.dev.Alloc(n)
	if err != nil {
		return nil, fmt.Errorf("kernels: arena: %w", err)
	}
	a.allocs++
	a.out = append(a.out, b)
	return b, nil
}

// Reset takes back every buffer handed out since the last Reset. Views of them must not be
// used afterwards.
func (a *Arena) Reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.out {
		a.free[b.n] = append(a.free[b.n], b)
	}
	a.out = a.out[:0]
}

// Allocs reports how many buffers the arena has allocated from its device in its lifetime;
// it stops growing once a workload reaches its steady state.
func (a *Arena) Allocs() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.allocs
}

// Close frees every buffer the arena holds, handed out or not.
func (a *Arena) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.out {
		b.Free()
	}
	for n, l := range a.free {
		for _, b := range l {
			b.Free()
		}
		delete(a.free, n)
	}
	a.out = nil
}
