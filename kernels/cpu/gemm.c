/* gemm.c — CPU backend: GEMM through OpenBLAS's cblas_sgemm. */
#include <cblas.h>

#include "internal.h"

gk_status gk_gemm(gk_ctx *ctx, int trans_a, int trans_b, float alpha, const gk_tensor *a,
		  const gk_tensor *b, float beta, const gk_tensor *c)
{
	gk_status st;
	if ((st = gk_check_tensor(ctx, "gemm", "a", a)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "gemm", "b", b)) != GK_OK ||
	    (st = gk_check_tensor(ctx, "gemm", "c", c)) != GK_OK)
		return st;
	char sa[96], sb[96], sc[96];
	if (a->ndim != 2 || b->ndim != 2 || c->ndim != 2)
		return gk_fail(ctx, GK_ERR_SHAPE, "gemm", "operands must be 2-D, got a %s b %s c %s",
			       gk_shape_str(a, sa), gk_shape_str(b, sb), gk_shape_str(c, sc));
	int64_t m = trans_a ? a->shape[1] : a->shape[0];
	int64_t k = trans_a ? a->shape[0] : a->shape[1];
	int64_t kb = trans_b ? b->shape[1] : b->shape[0];
	int64_t n = trans_b ? b->shape[0] : b->shape[1];
	if (k != kb || c->shape[0] != m || c->shape[1] != n)
		return gk_fail(ctx, GK_ERR_SHAPE, "gemm",
			       "shapes do not agree: a %s%s b %s%s c %s",
			       gk_shape_str(a, sa), trans_a ? "^T" : "", gk_shape_str(b, sb),
			       trans_b ? "^T" : "", gk_shape_str(c, sc));
	if ((a->shape[1] > 1 && a->stride[1] != 1) || (b->shape[1] > 1 && b->stride[1] != 1) ||
	    (c->shape[1] > 1 && c->stride[1] != 1) ||
	    (a->shape[0] > 1 && a->stride[0] < a->shape[1]) ||
	    (b->shape[0] > 1 && b->stride[0] < b->shape[1]) ||
	    (c->shape[0] > 1 && c->stride[0] < c->shape[1]))
		return gk_fail(ctx, GK_ERR_LAYOUT, "gemm", "operands need a unit inner stride and a leading dimension >= columns");
	if (m == 0 || n == 0)
		return GK_OK;
	if (k == 0) {
		gk_tensor cc = *c;
		if (beta == 0.0f)
			return gk_fill(ctx, &cc, 0.0f);
		return gk_unary(ctx, GK_IDENTITY, &cc, &cc, beta, 0.0f);
	}
	/* A single-row operand's leading dimension is free; BLAS wants it >= its columns. */
	int lda = (int)(a->shape[0] > 1 ? a->stride[0] : a->shape[1]);
	int ldb = (int)(b->shape[0] > 1 ? b->stride[0] : b->shape[1]);
	int ldc = (int)(c->shape[0] > 1 ? c->stride[0] : c->shape[1]);
	if (lda < 1) lda = 1;
	if (ldb < 1) ldb = 1;
	if (ldc < 1) ldc = 1;
	cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
		    trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, gk_ptr(a), lda,
		    gk_ptr(b), ldb, beta, gk_ptr(c), ldc);
	return GK_OK;
}
