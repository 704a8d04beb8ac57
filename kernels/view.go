package kernels

/*
#include "gantry_kernels.h"
*/
import "C"

import (
	"fmt"
	"strings"
)

// MaxDims is the largest rank a View may have.
const MaxDims = C.GK_MAX_DIMS

// View describes an operand: a buffer, an element offset, a shape and strides in elements.
// A stride of 0 broadcasts that dimension. Views are values; they own nothing.
type View struct {
	Buf    *Buffer
	Off    int
	Shape  []int
	Stride []int
}

// DenseStrides returns the C-contiguous strides of shape.
func DenseStrides(shape []int) []int {
	st := make([]int, len(shape))
	n := 1
	for i := len(shape) - 1; i >= 0; i-- {
		st[i] = n
		n *= shape[i]
	}
	return st
}

// Numel is the number of elements the view addresses.
func (v View) Numel() int { return Numel(v.Shape) }

// Numel is the product of shape.
func Numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// IsDense reports whether the view is C-contiguous.
func (v View) IsDense() bool {
	want := 1
	for i := len(v.Shape) - 1; i >= 0; i-- {
		if v.Shape[i] != 1 && v.Stride[i] != want {
			return false
		}
		want *= v.Shape[i]
	}
	return true
}

// ShapeString formats a shape as [a,b,c].
func ShapeString(shape []int) string {
	parts := make([]string, len(shape))
	for i, s := range shape {
		parts[i] = fmt.Sprint(s)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func (v View) String() string { return ShapeString(v.Shape) }

// Reshape returns a dense view of the same elements with another shape. v must be dense.
func (v View) Reshape(shape ...int) (View, error) {
	if !v.IsDense() {
		return View{}, fmt.Errorf("kernels: reshape %s to %s: view is not dense", v, ShapeString(shape))
	}
	if Numel(shape) != v.Numel() {
		return View{}, fmt.Errorf("kernels: reshape %s to %s: element counts differ", v, ShapeString(shape))
	}
	return View{Buf: v.Buf, Off: v.Off, Shape: append([]int(nil), shape...), Stride: DenseStrides(shape)}, nil
}

// Slice narrows dimension dim to [start, end).
func (v View) Slice(dim, start, end int) (View, error) {
	if dim < 0 || dim >= len(v.Shape) || start < 0 || end < start || end > v.Shape[dim] {
		return View{}, fmt.Errorf("kernels: slice %s dim %d [%d,%d): out of range", v, dim, start, end)
	}
	out := v.clone()
	out.Off += start * v.Stride[dim]
	out.Shape[dim] = end - start
	return out, nil
}

// Broadcast expands dimensions of size 1 to shape by giving them stride 0. Leading
// dimensions are added when shape has more.
func (v View) Broadcast(shape ...int) (View, error) {
	if len(shape) < len(v.Shape) {
		return View{}, fmt.Errorf("kernels: broadcast %s to %s: fewer dims", v, ShapeString(shape))
	}
	pad := len(shape) - len(v.Shape)
	out := View{Buf: v.Buf, Off: v.Off, Shape: append([]int(nil), shape...), Stride: make([]int, len(shape))}
	for i := range shape {
		if i < pad {
			continue
		}
		s := v.Shape[i-pad]
		switch {
		case s == shape[i]:
			out.Stride[i] = v.Stride[i-pad]
		case s == 1:
			out.Stride[i] = 0
		default:
			return View{}, fmt.Errorf("kernels: broadcast %s to %s: dim %d is %d", v, ShapeString(shape), i-pad, s)
		}
	}
	return out, nil
}

// Permute reorders the dimensions: out.Shape[i] = v.Shape[perm[i]].
func (v View) Permute(perm ...int) (View, error) {
	if len(perm) != len(v.Shape) {
		return View{}, fmt.Errorf("kernels: permute %s by %v: wrong length", v, perm)
	}
	out := View{Buf: v.Buf, Off: v.Off, Shape: make([]int, len(perm)), Stride: make([]int, len(perm))}
	seen := make([]bool, len(perm))
	for i, p := range perm {
		if p < 0 || p >= len(perm) || seen[p] {
			return View{}, fmt.Errorf("kernels: permute %s by %v: not a permutation", v, perm)
		}
		seen[p] = true
		out.Shape[i], out.Stride[i] = v.Shape[p], v.Stride[p]
	}
	return out, nil
}

// Flip reverses the listed dimensions (a view with negative strides, no copy): element i of
// a flipped dimension of size n is element n-1-i of v. The kernels read such views through
// gk_copy (and every op that accepts strided operands); ops that need dense operands get a
// copy from the caller.
func (v View) Flip(dims ...int) (View, error) {
	out := v.clone()
	seen := make([]bool, len(v.Shape))
	for _, d := range dims {
		if d < 0 || d >= len(v.Shape) || seen[d] {
			return View{}, fmt.Errorf("kernels: flip %s dims %v: dim %d out of range or repeated", v, dims, d)
		}
		seen[d] = true
		if v.Shape[d] > 0 {
			out.Off += (v.Shape[d] - 1) * v.Stride[d]
		}
		out.Stride[d] = -v.Stride[d]
	}
	return out, nil
}

func (v View) clone() View {
	return View{Buf: v.Buf, Off: v.Off, Shape: append([]int(nil), v.Shape...), Stride: append([]int(nil), v.Stride...)}
}

// desc builds the C descriptor. It reports a Go-side error for what C cannot express.
func (v View) desc(op, name string) (C.gk_tensor, error) {
	var t C.gk_tensor
	if v.Buf == nil || v.Buf.b == nil {
		return t, &Error{Op: op, Status: StatusArg, Msg: fmt.Sprintf("%s: %s has no buffer (nil or freed)", op, name)}
	}
	if len(v.Shape) > MaxDims || len(v.Stride) != len(v.Shape) {
		return t, &Error{Op: op, Status: StatusShape, Msg: fmt.Sprintf("%s: %s %s has %d dims and %d strides (at most %d dims)",
			op, name, v, len(v.Shape), len(v.Stride), MaxDims)}
	}
	t.buf = v.Buf.b
	t.offset = C.int64_t(v.Off)
	t.ndim = C.int32_t(len(v.Shape))
	for i := range v.Shape {
		t.shape[i] = C.int64_t(v.Shape[i])
		t.stride[i] = C.int64_t(v.Stride[i])
	}
	return t, nil
}

// operand names a View passed to a kernel. An optional operand with a nil Buf is passed
// as NULL.
type operand struct {
	name     string
	v        View
	optional bool
}

// in and opt build operands for run.
func in(name string, v View) operand  { return operand{name: name, v: v} }
func opt(name string, v View) operand { return operand{name: name, v: v, optional: true} }

// run converts the operands to descriptors (validating what Go can check), then calls f
// under the device lock and converts its status.
func (d *Device) run(op string, ops []operand, f func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status) error {
	descs := make([]C.gk_tensor, len(ops))
	ptrs := make([]*C.gk_tensor, len(ops))
	for i, o := range ops {
		if o.optional && o.v.Buf == nil {
			continue
		}
		t, err := o.v.desc(op, o.name)
		if err != nil {
			return err
		}
		if o.v.Buf.dev != d {
			return &Error{Op: op, Status: StatusArg, Msg: fmt.Sprintf("%s: %s belongs to another device", op, o.name)}
		}
		descs[i] = t
		ptrs[i] = &descs[i]
	}
	return d.call(op, func(c *C.gk_ctx) C.gk_status { return f(c, ptrs) })
}
