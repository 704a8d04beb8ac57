package kernels

/*
#include "gantry_kernels.h"
*/
import "C"

// BinaryOp selects the arithmetic of Binary.
type BinaryOp int

// Binary ops.
const (
	Add     BinaryOp = C.GK_ADD
	Sub     BinaryOp = C.GK_SUB
	Mul     BinaryOp = C.GK_MUL
	Div     BinaryOp = C.GK_DIV
	Maximum BinaryOp = C.GK_MAXIMUM
	Minimum BinaryOp = C.GK_MINIMUM
)

// UnaryOp selects the function of Unary.
type UnaryOp int

// Unary ops.
const (
	Identity UnaryOp = C.GK_IDENTITY
	Square   UnaryOp = C.GK_SQUARE
	Sqrt     UnaryOp = C.GK_SQRT
	Rsqrt    UnaryOp = C.GK_RSQRT
	Exp      UnaryOp = C.GK_EXP
	Log      UnaryOp = C.GK_LOG
	Softplus UnaryOp = C.GK_SOFTPLUS
	Sigmoid  UnaryOp = C.GK_SIGMOID
	Abs      UnaryOp = C.GK_ABS
	Recip    UnaryOp = C.GK_RECIP
	Sign     UnaryOp = C.GK_SIGN
)

// ReduceOp selects the reduction of Reduce.
type ReduceOp int

// Reductions.
const (
	ReduceSum   ReduceOp = C.GK_REDUCE_SUM
	ReduceSumSq ReduceOp = C.GK_REDUCE_SUMSQ
	ReduceMax   ReduceOp = C.GK_REDUCE_MAX
)

// Fill sets every element of y to value.
func (d *Device) Fill(y View, value float32) error {
	return d.run("fill", []operand{in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_fill(c, t[0], C.float(value))
	})
}

// Copy copies x into y (equal shapes, any strides): slices, concatenation into offset
// views, transposes and broadcasts (stride 0 in x).
func (d *Device) Copy(x, y View) error {
	return d.run("copy", []operand{in("x", x), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_copy(c, t[0], t[1])
	})
}

// Binary computes y = alpha*(a op b) + beta*y; a and b must have y's shape (broadcast them
// with View.Broadcast). beta 0 ignores y's old contents.
func (d *Device) Binary(op BinaryOp, a, b, y View, alpha, beta float32) error {
	return d.run("binary", []operand{in("a", a), in("b", b), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_binary(c, C.gk_binary_op(op), t[0], t[1], t[2], C.float(alpha), C.float(beta))
	})
}

// Unary computes y = alpha*f(x) + beta.
func (d *Device) Unary(op UnaryOp, x, y View, alpha, beta float32) error {
	return d.run("unary", []operand{in("x", x), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_unary(c, C.gk_unary_op(op), t[0], t[1], C.float(alpha), C.float(beta))
	})
}

// Lerp computes y = a + tt*(b - a).
func (d *Device) Lerp(a, b, y View, tt float32) error {
	return d.run("lerp", []operand{in("a", a), in("b", b), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_lerp(c, t[0], t[1], t[2], C.float(tt))
	})
}

// Reduce computes y = alpha * reduce(x) over every dim where y has size 1 and x does not.
func (d *Device) Reduce(op ReduceOp, x, y View, alpha float32) error {
	return d.run("reduce", []operand{in("x", x), in("y", y)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_reduce(c, C.gk_reduce_op(op), t[0], t[1], C.float(alpha))
	})
}

// Gemm computes c = alpha*op(a)*op(b) + beta*c on 2-D row-major views.
func (d *Device) Gemm(transA, transB bool, alpha float32, a, b View, beta float32, cc View) error {
	return d.run("gemm", []operand{in("a", a), in("b", b), in("c", cc)}, func(c *C.gk_ctx, t []*C.gk_tensor) C.gk_status {
		return C.gk_gemm(c, cbool(transA), cbool(transB), C.float(alpha), t[0], t[1], C.float(beta), t[2])
	})
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
