/* adain.c — CPU backend: instance norm + style modulation (AdaIN) and its gradients. */
#include <math.h>

#include "internal.h"

static int is_nc(const gk_tensor *t, int64_t n, int64_t c)
{
	return t->ndim == 2 && t->shape[0] == n && t->shape[1] == c;
}

static int same_shape(const gk_tensor *a, const gk_tensor *b)
{
	if (a->ndim != b->ndim)
		return 0;
	for (int d = 0; d < a->ndim; d++)
		if (a->shape[d] != b->shape[d])
			return 0;
	return 1;
}

/* check_nc verifies an optional [N,C] operand. */
static gk_status check_nc(gk_ctx *ctx, const char *op, const char *name, const gk_tensor *t,
			  const gk_tensor *x, int optional)
{
	if (t == NULL && optional)
		return GK_OK;
	gk_status st = gk_check_dense(ctx, op, name, t);
	if (st != GK_OK)
		return st;
	if (!is_nc(t, x->shape[0], x->shape[1])) {
		char s1[96], s2[96];
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s must be [N,C] for %s",
			       name, gk_shape_str(t, s1), gk_shape_str(x, s2));
	}
	return GK_OK;
}

static gk_status check_nchw(gk_ctx *ctx, const char *op, const char *name, const gk_tensor *t,
			    const gk_tensor *like)
{
	gk_status st = gk_check_dense(ctx, op, name, t);
	if (st != GK_OK)
		return st;
	if (t->ndim != 4 || (like != NULL && !same_shape(t, like))) {
		char s1[96], s2[96];
		if (like == NULL)
			return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s must be [N,C,H,W]", name,
				       gk_shape_str(t, s1));
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s must equal %s", name, gk_shape_str(t, s1),
			       gk_shape_str(like, s2));
	}
	return GK_OK;
}

gk_status gk_adain(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *s, const gk_tensor *b,
		   const gk_tensor *y, const gk_tensor *xn, const gk_tensor *rstd, float eps)
{
	const char *op = "adain";
	gk_status st;
	if ((st = check_nchw(ctx, op, "x", x, NULL)) != GK_OK ||
	    (st = check_nchw(ctx, op, "y", y, x)) != GK_OK ||
	    (st = check_nchw(ctx, op, "xn", xn, x)) != GK_OK ||
	    (st = check_nc(ctx, op, "rstd", rstd, x, 0)) != GK_OK ||
	    (st = check_nc(ctx, op, "s", s, x, 1)) != GK_OK ||
	    (st = check_nc(ctx, op, "b", b, x, 1)) != GK_OK)
		return st;
	if (!(eps >= 0.0f) || !isfinite(eps))
		return gk_fail(ctx, GK_ERR_ARG, op, "eps %g must be >= 0", (double)eps);
	int64_t rows = x->shape[0] * x->shape[1], hw = x->shape[2] * x->shape[3];
	if (rows == 0)
		return GK_OK;
	if (hw == 0)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "x has empty images");
	const float *px = gk_ptr(x), *ps = s ? gk_ptr(s) : NULL, *pb = b ? gk_ptr(b) : NULL;
	float *py = gk_ptr(y), *pxn = gk_ptr(xn), *pr = gk_ptr(rstd);
	int64_t total = rows * hw;
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t r = 0; r < rows; r++) {
		const float *xr = px + r * hw;
		float *yr = py + r * hw, *nr = pxn + r * hw;
		double sum = 0.0;
#pragma omp simd reduction(+ : sum)
		for (int64_t i = 0; i < hw; i++)
			sum += xr[i];
		double mean = sum / (double)hw, ss = 0.0;
#pragma omp simd reduction(+ : ss)
		for (int64_t i = 0; i < hw; i++) {
			double d = (double)xr[i] - mean;
			ss += d * d;
		}
		double rs = 1.0 / sqrt(ss / (double)hw + (double)eps);
		pr[r] = (float)rs;
		/* The mean is split into a float and its residual: x - fm is exact for x near the
		 * mean, so xn keeps float accuracy even when the mean is large. */
		float fm = (float)mean, fml = (float)(mean - (double)fm), frs = (float)rs;
		float scale = ps ? 1.0f + ps[r] : 1.0f, bias = pb ? pb[r] : 0.0f;
#pragma omp simd
		for (int64_t i = 0; i < hw; i++) {
			float v = ((xr[i] - fm) - fml) * frs;
			nr[i] = v;
			yr[i] = v * scale + bias;
		}
	}
	return GK_OK;
}

gk_status gk_adain_bwd(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *xn,
		       const gk_tensor *rstd, const gk_tensor *s, const gk_tensor *dx,
		       const gk_tensor *ds, const gk_tensor *db)
{
	const char *op = "adain_bwd";
	gk_status st;
	if ((st = check_nchw(ctx, op, "xn", xn, NULL)) != GK_OK ||
	    (st = check_nchw(ctx, op, "dy", dy, xn)) != GK_OK ||
	    (st = check_nchw(ctx, op, "dx", dx, xn)) != GK_OK ||
	    (st = check_nc(ctx, op, "rstd", rstd, xn, 0)) != GK_OK ||
	    (st = check_nc(ctx, op, "s", s, xn, 1)) != GK_OK ||
	    (st = check_nc(ctx, op, "ds", ds, xn, 1)) != GK_OK ||
	    (st = check_nc(ctx, op, "db", db, xn, 1)) != GK_OK)
		return st;
	int64_t rows = xn->shape[0] * xn->shape[1], hw = xn->shape[2] * xn->shape[3];
	if (rows == 0)
		return GK_OK;
	if (hw == 0)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "xn has empty images");
	const float *pdy = gk_ptr(dy), *pxn = gk_ptr(xn), *pr = gk_ptr(rstd);
	const float *ps = s ? gk_ptr(s) : NULL;
	float *pdx = gk_ptr(dx), *pds = ds ? gk_ptr(ds) : NULL, *pdb = db ? gk_ptr(db) : NULL;
	int64_t total = rows * hw;
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t r = 0; r < rows; r++) {
		const float *gr = pdy + r * hw, *nr = pxn + r * hw;
		float *dr = pdx + r * hw;
		double sg = 0.0, sgn = 0.0;
#pragma omp simd reduction(+ : sg, sgn)
		for (int64_t i = 0; i < hw; i++) {
			sg += gr[i];
			sgn += (double)gr[i] * nr[i];
		}
		if (pds)
			pds[r] = (float)sgn;
		if (pdb)
			pdb[r] = (float)sg;
		/* dx = rstd (1+s) (dy - mean(dy) - xn mean(dy xn)) */
		float k = pr[r] * (ps ? 1.0f + ps[r] : 1.0f);
		float mg = (float)(sg / (double)hw), mgn = (float)(sgn / (double)hw);
#pragma omp simd
		for (int64_t i = 0; i < hw; i++)
			dr[i] = k * (gr[i] - mg - nr[i] * mgn);
	}
	return GK_OK;
}
