// Package kernels is Gantry's compute layer: one C ABI (include/gantry_kernels.h) that every
// backend implements, the CPU backend (cpu/, GEMM through OpenBLAS, everything else ours,
// threaded with OpenMP) and, behind the `cuda` build tag, the CUDA backend. It is the only
// package of the project that imports "C".
//
// Callers never touch buffer memory: they allocate Buffers on a Device, move host data in
// and out with Write and Read, and describe each operand with a View (buffer, offset, shape,
// strides). Every op validates its operands, calls the backend once, and turns the backend's
// status into an *Error in one place (Device.check), naming the op and the shapes.
package kernels

/*
#cgo CFLAGS: -O3 -std=gnu11 -fopenmp -I${SRCDIR}/include -I${SRCDIR}/cpu -Wall -Wno-unknown-pragmas
#cgo amd64 CFLAGS: -march=x86-64-v3
#cgo LDFLAGS: -lopenblas -fopenmp -lm
#include <stdlib.h>
#include <malloc.h>
#include "gantry_kernels.h"

static long long gk_c_heap_in_use(void) {
	struct mallinfo2 mi = mallinfo2();
	return (long long)(mi.uordblks + mi.hblkhd);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
)

// Status is a backend status code.
type Status int

// Backend status codes, mirroring gk_status.
const (
	StatusOK          Status = C.GK_OK
	StatusArg         Status = C.GK_ERR_ARG
	StatusShape       Status = C.GK_ERR_SHAPE
	StatusLayout      Status = C.GK_ERR_LAYOUT
	StatusOOM         Status = C.GK_ERR_OOM
	StatusBackend     Status = C.GK_ERR_BACKEND
	StatusUnsupported Status = C.GK_ERR_UNSUPPORTED
	StatusRange       Status = C.GK_ERR_RANGE
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusArg:
		return "bad argument"
	case StatusShape:
		return "shape mismatch"
	case StatusLayout:
		return "bad layout"
	case StatusOOM:
		return "out of memory"
	case StatusBackend:
		return "backend failure"
	case StatusUnsupported:
		return "unsupported"
	case StatusRange:
		return "out of range"
	}
	return fmt.Sprintf("status %d", int(s))
}

// ErrClosed is returned by every call on a Device after Close.
var ErrClosed = errors.New("kernels: device is closed")

// Error is a failed kernel call: the op, the backend status and the backend's message,
// which names the operands and their shapes.
type Error struct {
	Op     string
	Status Status
	Msg    string
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("kernels: %s: %s", e.Op, e.Status)
	}
	return fmt.Sprintf("kernels: %s (%s)", e.Msg, e.Status)
}

// Config selects the backend's resources.
type Config struct {
	// Threads the backend may use inside one call; 0 means every core.
	Threads int
}

// Device is one backend context. Calls on a Device are serialised; a Device is safe for
// use from several goroutines, but kernels of one Device never run concurrently.
type Device struct {
	mu      sync.Mutex
	c       *C.gk_ctx
	threads int
}

// Open creates a backend context.
func Open(cfg Config) (*Device, error) {
	var c *C.gk_ctx
	if st := Status(C.gk_ctx_create(C.int(cfg.Threads), &c)); st != StatusOK {
		return nil, &Error{Op: "open", Status: st}
	}
	threads := cfg.Threads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	return &Device{c: c, threads: threads}, nil
}

// Backend names the compiled backend ("cpu" or "cuda").
func Backend() string { return C.GoString(C.gk_backend_name()) }

// Threads reports the number of threads the backend uses inside a call.
func (d *Device) Threads() int { return d.threads }

// Close releases the context. Buffers must be freed first; their memory is not reclaimed by
// Close. Close is idempotent.
func (d *Device) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c != nil {
		C.gk_ctx_destroy(d.c)
		d.c = nil
	}
}

// BytesInUse reports the bytes held by live buffers and scratch space of this device.
func (d *Device) BytesInUse() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c == nil {
		return 0
	}
	return int64(C.gk_bytes_in_use(d.c))
}

// CHeapInUse reports the bytes the C heap (glibc malloc) has handed out and not taken back,
// across the whole process: the backends' buffers, scratch and library state. Leak tests
// compare it before and after many steps.
func CHeapInUse() int64 { return int64(C.gk_c_heap_in_use()) }

// Synchronize waits for queued work (a no-op on CPU).
func (d *Device) Synchronize() error {
	return d.call("synchronize", func(c *C.gk_ctx) C.gk_status { return C.gk_synchronize(c) })
}

// call runs f under the device lock and turns its status into an error: the one place
// where backend statuses become Go errors.
func (d *Device) call(op string, f func(c *C.gk_ctx) C.gk_status) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c == nil {
		return ErrClosed
	}
	st := Status(f(d.c))
	if st == StatusOK {
		return nil
	}
	return &Error{Op: op, Status: st, Msg: C.GoString(C.gk_last_error(d.c))}
}

// Buffer is an allocation of float32 elements on a Device, owned by whoever allocated it
// and released with Free (or returned to the Arena it came from).
type Buffer struct {
	dev *Device
	b   *C.gk_buf
	n   int
}

// Alloc allocates a buffer of n float32 elements. Its contents are undefined.
func (d *Device) Alloc(n int) (*Buffer, error) {
	if n < 0 {
		return nil, &Error{Op: "alloc", Status: StatusArg, Msg: fmt.Sprintf("alloc: negative length %d", n)}
	}
	var b *C.gk_buf
	err := d.call("alloc", func(c *C.gk_ctx) C.gk_status { return C.gk_buf_alloc(c, C.int64_t(n), &b) })
	if err != nil {
		return nil, err
	}
	return &Buffer{dev: d, b: b, n: n}, nil
}

// Len is the number of elements.
func (b *Buffer) Len() int { return b.n }

// Device returns the device that owns the buffer.
func (b *Buffer) Device() *Device { return b.dev }

// Free releases the buffer; it is idempotent.
func (b *Buffer) Free() {
	if b == nil || b.b == nil {
		return
	}
	d := b.dev
	d.mu.Lock()
	if d.c != nil {
		C.gk_buf_free(d.c, b.b)
	}
	d.mu.Unlock()
	b.b = nil
}

func (b *Buffer) live(op string) error {
	if b == nil || b.b == nil {
		return &Error{Op: op, Status: StatusArg, Msg: op + ": buffer is nil or freed"}
	}
	return nil
}

// Write copies src into the buffer starting at element off.
func (b *Buffer) Write(off int, src []float32) error {
	if err := b.live("buf_write"); err != nil {
		return err
	}
	if len(src) == 0 {
		return nil
	}
	return b.dev.call("buf_write", func(c *C.gk_ctx) C.gk_status {
		return C.gk_buf_write(c, b.b, C.int64_t(off), (*C.float)(&src[0]), C.int64_t(len(src)))
	})
}

// Read copies len(dst) elements starting at element off into dst.
func (b *Buffer) Read(off int, dst []float32) error {
	if err := b.live("buf_read"); err != nil {
		return err
	}
	if len(dst) == 0 {
		return nil
	}
	return b.dev.call("buf_read", func(c *C.gk_ctx) C.gk_status {
		return C.gk_buf_read(c, b.b, C.int64_t(off), (*C.float)(&dst[0]), C.int64_t(len(dst)))
	})
}

// View returns a dense view of the first prod(shape) elements of the buffer.
func (b *Buffer) View(shape ...int) View {
	return View{Buf: b, Shape: append([]int(nil), shape...), Stride: DenseStrides(shape)}
}
