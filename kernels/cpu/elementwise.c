/* elementwise.c — CPU backend: fill, strided copy, binary/unary maps, lerp, reductions. */
#include <float.h>
#include <math.h>

#include "internal.h"

static int same_shape(const gk_tensor *a, const gk_tensor *b)
{
	if (a->ndim != b->ndim)
		return 0;
	for (int d = 0; d < a->ndim; d++)
		if (a->shape[d] != b->shape[d])
			return 0;
	return 1;
}

static gk_status shape_mismatch(gk_ctx *ctx, const char *op, const gk_tensor *a, const char *an,
				const gk_tensor *b, const char *bn)
{
	char s1[96], s2[96];
	return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s and %s %s differ", an, gk_shape_str(a, s1), bn,
		       gk_shape_str(b, s2));
}

/* Iterate the outer three dims of a 4-D view in parallel over dims 0-1 (rows of work). */
#define FOR4(V, ...)                                                                         \
	do {                                                                                 \
		int64_t _rows = (V).shape[0] * (V).shape[1];                                 \
		_Pragma("omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)") \
		for (int64_t _r = 0; _r < _rows; _r++) {                                     \
			int64_t i0 = _r / (V).shape[1], i1 = _r % (V).shape[1];              \
			for (int64_t i2 = 0; i2 < (V).shape[2]; i2++) {                      \
				__VA_ARGS__                                                      \
			}                                                                    \
		}                                                                            \
	} while (0)

gk_status gk_fill(gk_ctx *ctx, const gk_tensor *y, float value)
{
	gk_status st = gk_check_tensor(ctx, "fill", "y", y);
	if (st != GK_OK)
		return st;
	int64_t total = gk_numel(y);
	if (gk_is_dense(y)) {
		float *p = gk_ptr(y);
#pragma omp parallel for simd schedule(static) if (total >= 4 * GK_PAR_MIN) num_threads(ctx->threads)
		for (int64_t i = 0; i < total; i++)
			p[i] = value;
		return GK_OK;
	}
	gk_view4 v;
	gk_view4_of(y, &v);
	FOR4(v, {
		float *py = v.p + i0 * v.stride[0] + i1 * v.stride[1] + i2 * v.stride[2];
		for (int64_t i3 = 0; i3 < v.shape[3]; i3++)
			py[i3 * v.stride[3]] = value;
	});
	return GK_OK;
}

gk_status gk_copy(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y)
{
	gk_status st;
	if ((st = gk_check_tensor(ctx, "copy", "x", x)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "copy", "y", y)) != GK_OK)
		return st;
	if (!same_shape(x, y))
		return shape_mismatch(ctx, "copy", x, "x", y, "y");
	int64_t total = gk_numel(y);
	if (gk_is_dense(x) && gk_is_dense(y)) {
		memmove(gk_ptr(y), gk_ptr(x), (size_t)total * sizeof(float));
		return GK_OK;
	}
	gk_view4 vx, vy;
	gk_view4_of(x, &vx);
	gk_view4_of(y, &vy);
	FOR4(vy, {
		const float *px = vx.p + i0 * vx.stride[0] + i1 * vx.stride[1] + i2 * vx.stride[2];
		float *py = vy.p + i0 * vy.stride[0] + i1 * vy.stride[1] + i2 * vy.stride[2];
		if (vx.stride[3] == 1 && vy.stride[3] == 1)
			memcpy(py, px, (size_t)vy.shape[3] * sizeof(float));
		else
			for (int64_t i3 = 0; i3 < vy.shape[3]; i3++)
				py[i3 * vy.stride[3]] = px[i3 * vx.stride[3]];
	});
	return GK_OK;
}

static inline float binop(gk_binary_op op, float a, float b)
{
	switch (op) {
	case GK_ADD: return a + b;
	case GK_SUB: return a - b;
	case GK_MUL: return a * b;
	case GK_DIV: return a / b;
	case GK_MAXIMUM: return a > b ? a : b;
	default: return a < b ? a : b;
	}
}

gk_status gk_binary(gk_ctx *ctx, gk_binary_op op, const gk_tensor *a, const gk_tensor *b,
		    const gk_tensor *y, float alpha, float beta)
{
	gk_status st;
	if ((st = gk_check_tensor(ctx, "binary", "a", a)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "binary", "b", b)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "binary", "y", y)) != GK_OK)
		return st;
	if (op < GK_ADD || op > GK_MINIMUM)
		return gk_fail(ctx, GK_ERR_ARG, "binary", "unknown op %d", (int)op);
	if (!same_shape(a, y))
		return shape_mismatch(ctx, "binary", a, "a", y, "y");
	if (!same_shape(b, y))
		return shape_mismatch(ctx, "binary", b, "b", y, "y");
	int64_t total = gk_numel(y);
	if (gk_is_dense(a) && gk_is_dense(b) && gk_is_dense(y)) {
		const float *pa = gk_ptr(a), *pb = gk_ptr(b);
		float *py = gk_ptr(y);
		if (beta == 0.0f) {
#pragma omp parallel for simd schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
			for (int64_t i = 0; i < total; i++)
				py[i] = alpha * binop(op, pa[i], pb[i]);
		} else {
#pragma omp parallel for simd schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
			for (int64_t i = 0; i < total; i++)
				py[i] = alpha * binop(op, pa[i], pb[i]) + beta * py[i];
		}
		return GK_OK;
	}
	gk_view4 va, vb, vy;
	gk_view4_of(a, &va);
	gk_view4_of(b, &vb);
	gk_view4_of(y, &vy);
	FOR4(vy, {
		const float *pa = va.p + i0 * va.stride[0] + i1 * va.stride[1] + i2 * va.stride[2];
		const float *pb = vb.p + i0 * vb.stride[0] + i1 * vb.stride[1] + i2 * vb.stride[2];
		float *py = vy.p + i0 * vy.stride[0] + i1 * vy.stride[1] + i2 * vy.stride[2];
		for (int64_t i3 = 0; i3 < vy.shape[3]; i3++) {
			float r = alpha * binop(op, pa[i3 * va.stride[3]], pb[i3 * vb.stride[3]]);
			float *o = &py[i3 * vy.stride[3]];
			*o = beta == 0.0f ? r : r + beta * *o;
		}
	});
	return GK_OK;
}

static inline float unop(gk_unary_op op, float x)
{
	switch (op) {
	case GK_IDENTITY: return x;
	case GK_SQUARE: return x * x;
	case GK_SQRT: return sqrtf(x);
	case GK_RSQRT: return 1.0f / sqrtf(x);
	case GK_EXP: return expf(x);
	case GK_LOG: return logf(x);
	case GK_SOFTPLUS: return x > 0 ? x + log1pf(expf(-x)) : log1pf(expf(x));
	case GK_SIGMOID: return x >= 0 ? 1.0f / (1.0f + expf(-x)) : expf(x) / (1.0f + expf(x));
	case GK_ABS: return fabsf(x);
	case GK_RECIP: return 1.0f / x;
	default: return (float)((x > 0) - (x < 0));
	}
}

gk_status gk_unary(gk_ctx *ctx, gk_unary_op op, const gk_tensor *x, const gk_tensor *y,
		   float alpha, float beta)
{
	gk_status st;
	if ((st = gk_check_tensor(ctx, "unary", "x", x)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "unary", "y", y)) != GK_OK)
		return st;
	if (op < GK_IDENTITY || op > GK_SIGN)
		return gk_fail(ctx, GK_ERR_ARG, "unary", "unknown op %d", (int)op);
	if (!same_shape(x, y))
		return shape_mismatch(ctx, "unary", x, "x", y, "y");
	int64_t total = gk_numel(y);
	if (gk_is_dense(x) && gk_is_dense(y)) {
		const float *px = gk_ptr(x);
		float *py = gk_ptr(y);
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
		for (int64_t i = 0; i < total; i++)
			py[i] = alpha * unop(op, px[i]) + beta;
		return GK_OK;
	}
	gk_view4 vx, vy;
	gk_view4_of(x, &vx);
	gk_view4_of(y, &vy);
	FOR4(vy, {
		const float *px = vx.p + i0 * vx.stride[0] + i1 * vx.stride[1] + i2 * vx.stride[2];
		float *py = vy.p + i0 * vy.stride[0] + i1 * vy.stride[1] + i2 * vy.stride[2];
		for (int64_t i3 = 0; i3 < vy.shape[3]; i3++)
			py[i3 * vy.stride[3]] = alpha * unop(op, px[i3 * vx.stride[3]]) + beta;
	});
	return GK_OK;
}

gk_status gk_lerp(gk_ctx *ctx, const gk_tensor *a, const gk_tensor *b, const gk_tensor *y, float t)
{
	gk_status st;
	if ((st = gk_check_tensor(ctx, "lerp", "a", a)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "lerp", "b", b)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "lerp", "y", y)) != GK_OK)
		return st;
	if (!same_shape(a, y))
		return shape_mismatch(ctx, "lerp", a, "a", y, "y");
	if (!same_shape(b, y))
		return shape_mismatch(ctx, "lerp", b, "b", y, "y");
	int64_t total = gk_numel(y);
	if (gk_is_dense(a) && gk_is_dense(b) && gk_is_dense(y)) {
		const float *pa = gk_ptr(a), *pb = gk_ptr(b);
		float *py = gk_ptr(y);
#pragma omp parallel for simd schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
		for (int64_t i = 0; i < total; i++)
			py[i] = pa[i] + t * (pb[i] - pa[i]);
		return GK_OK;
	}
	gk_view4 va, vb, vy;
	gk_view4_of(a, &va);
	gk_view4_of(b, &vb);
	gk_view4_of(y, &vy);
	FOR4(vy, {
		const float *pa = va.p + i0 * va.stride[0] + i1 * va.stride[1] + i2 * va.stride[2];
		const float *pb = vb.p + i0 * vb.stride[0] + i1 * vb.stride[1] + i2 * vb.stride[2];
		float *py = vy.p + i0 * vy.stride[0] + i1 * vy.stride[1] + i2 * vy.stride[2];
		for (int64_t i3 = 0; i3 < vy.shape[3]; i3++) {
			float fa = pa[i3 * va.stride[3]], fb = pb[i3 * vb.stride[3]];
			py[i3 * vy.stride[3]] = fa + t * (fb - fa);
		}
	});
	return GK_OK;
}

gk_status gk_reduce(gk_ctx *ctx, gk_reduce_op op, const gk_tensor *x, const gk_tensor *y,
		    float alpha)
{
	gk_status st;
	if ((st = gk_check_tensor(ctx, "reduce", "x", x)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "reduce", "y", y)) != GK_OK)
		return st;
	if (op < GK_REDUCE_SUM || op > GK_REDUCE_MAX)
		return gk_fail(ctx, GK_ERR_ARG, "reduce", "unknown op %d", (int)op);
	if (x->ndim != y->ndim)
		return shape_mismatch(ctx, "reduce", x, "x", y, "y");
	for (int d = 0; d < x->ndim; d++)
		if (y->shape[d] != x->shape[d] && y->shape[d] != 1)
			return shape_mismatch(ctx, "reduce", x, "x", y, "y");
	gk_view4 vx, vy;
	gk_view4_of(x, &vx);
	gk_view4_of(y, &vy);
	/* Each output element sums its own slice of x in a fixed order (deterministic). */
	int64_t nout = gk_numel(y);
	int64_t red[4], kept[4];
	for (int d = 0; d < 4; d++) {
		int r = vy.shape[d] == 1 && vx.shape[d] != 1;
		red[d] = r ? vx.shape[d] : 1;
		kept[d] = r ? 1 : vy.shape[d];
	}
	int64_t total = gk_numel(x);
	int par = total >= GK_PAR_MIN && nout >= ctx->threads;
#pragma omp parallel for schedule(static) if (par) num_threads(ctx->threads)
	for (int64_t o = 0; o < nout; o++) {
		int64_t j3 = o % kept[3], j2 = (o / kept[3]) % kept[2];
		int64_t j1 = (o / (kept[3] * kept[2])) % kept[1], j0 = o / (kept[3] * kept[2] * kept[1]);
		const float *base = vx.p + j0 * vx.stride[0] + j1 * vx.stride[1] + j2 * vx.stride[2] +
				    j3 * vx.stride[3];
		double acc = op == GK_REDUCE_MAX ? -INFINITY : 0.0;
		for (int64_t r0 = 0; r0 < red[0]; r0++)
			for (int64_t r1 = 0; r1 < red[1]; r1++)
				for (int64_t r2 = 0; r2 < red[2]; r2++) {
					const float *p = base + r0 * vx.stride[0] + r1 * vx.stride[1] +
							 r2 * vx.stride[2];
					int64_t s3 = vx.stride[3];
					if (op == GK_REDUCE_SUM) {
						for (int64_t r3 = 0; r3 < red[3]; r3++)
							acc += p[r3 * s3];
					} else if (op == GK_REDUCE_SUMSQ) {
						for (int64_t r3 = 0; r3 < red[3]; r3++)
							acc += (double)p[r3 * s3] * p[r3 * s3];
					} else {
						for (int64_t r3 = 0; r3 < red[3]; r3++)
							if (p[r3 * s3] > acc)
								acc = p[r3 * s3];
					}
				}
		float *py = vy.p + j0 * vy.stride[0] + j1 * vy.stride[1] + j2 * vy.stride[2] + j3 * vy.stride[3];
		*py = alpha * (float)acc;
	}
	return GK_OK;
}
