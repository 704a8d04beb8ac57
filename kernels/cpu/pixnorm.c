/* pixnorm.c — CPU backend: pixel norm over channels and its gradient. */
#include <math.h>

#include "internal.h"

/* Pixels are processed in blocks so that the per-pixel sums live on the stack and the loops
 * over a block vectorise; channels are walked in order (deterministic). */
#define PN_BLOCK 256

static gk_status check(gk_ctx *ctx, const char *op, const gk_tensor *a, const char *an,
		       const gk_tensor *b, const char *bn, const gk_tensor *c, const char *cn,
		       float eps)
{
	gk_status st;
	if ((st = gk_check_dense(ctx, op, an, a)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, bn, b)) != GK_OK ||
	    (c != NULL && (st = gk_check_dense(ctx, op, cn, c)) != GK_OK))
		return st;
	int ok = (a->ndim == 2 || a->ndim == 4) && a->ndim == b->ndim && (!c || c->ndim == a->ndim);
	for (int d = 0; ok && d < a->ndim; d++)
		ok = a->shape[d] == b->shape[d] && (!c || c->shape[d] == a->shape[d]);
	if (!ok) {
		char s1[96], s2[96], s3[96];
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s, %s %s%s%s%s must be equal [N,C] or [N,C,H,W]",
			       an, gk_shape_str(a, s1), bn, gk_shape_str(b, s2), c ? ", " : "",
			       c ? cn : "", c ? gk_shape_str(c, s3) : "");
	}
	if (!(eps >= 0.0f) || !isfinite(eps))
		return gk_fail(ctx, GK_ERR_ARG, op, "eps %g must be >= 0", (double)eps);
	return GK_OK;
}

gk_status gk_pixel_norm(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y, float eps)
{
	const char *op = "pixel_norm";
	gk_status st = check(ctx, op, x, "x", y, "y", NULL, NULL, eps);
	if (st != GK_OK)
		return st;
	int64_t n = x->shape[0], c = x->shape[1], hw = x->ndim == 4 ? x->shape[2] * x->shape[3] : 1;
	if (c == 0)
		return GK_OK;
	const float *px = gk_ptr(x);
	float *py = gk_ptr(y);
	int64_t nb = (hw + PN_BLOCK - 1) / PN_BLOCK, tasks = n * nb, total = n * c * hw;
	if (hw == 1) {
		/* [N,C] or 1x1 images: one contiguous row of C per sample. */
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
		for (int64_t i = 0; i < n; i++) {
			const float *xr = px + i * c;
			float *yr = py + i * c;
			double ss = 0.0;
#pragma omp simd reduction(+ : ss)
			for (int64_t j = 0; j < c; j++)
				ss += (double)xr[j] * xr[j];
			float r = (float)(1.0 / sqrt(ss / (double)c + (double)eps));
#pragma omp simd
			for (int64_t j = 0; j < c; j++)
				yr[j] = xr[j] * r;
		}
		return GK_OK;
	}
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t task = 0; task < tasks; task++) {
		int64_t i = task / nb, p0 = (task % nb) * PN_BLOCK;
		int64_t len = hw - p0 < PN_BLOCK ? hw - p0 : PN_BLOCK;
		double acc[PN_BLOCK];
		float r[PN_BLOCK];
		for (int64_t k = 0; k < len; k++)
			acc[k] = 0.0;
		const float *xb = px + i * c * hw + p0;
		for (int64_t ch = 0; ch < c; ch++) {
			const float *xr = xb + ch * hw;
#pragma omp simd
			for (int64_t k = 0; k < len; k++)
				acc[k] += (double)xr[k] * xr[k];
		}
		for (int64_t k = 0; k < len; k++)
			r[k] = (float)(1.0 / sqrt(acc[k] / (double)c + (double)eps));
		float *yb = py + i * c * hw + p0;
		for (int64_t ch = 0; ch < c; ch++) {
			const float *xr = xb + ch * hw;
			float *yr = yb + ch * hw;
#pragma omp simd
			for (int64_t k = 0; k < len; k++)
				yr[k] = xr[k] * r[k];
		}
	}
	return GK_OK;
}

/* dx = r dy - r^3 x (sum_c dy x) / C, with r = 1/sqrt(mean_c x^2 + eps). */
gk_status gk_pixel_norm_bwd(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *x,
			    const gk_tensor *dx, float eps)
{
	const char *op = "pixel_norm_bwd";
	gk_status st = check(ctx, op, dy, "dy", x, "x", dx, "dx", eps);
	if (st != GK_OK)
		return st;
	int64_t n = x->shape[0], c = x->shape[1], hw = x->ndim == 4 ? x->shape[2] * x->shape[3] : 1;
	if (c == 0)
		return GK_OK;
	const float *pdy = gk_ptr(dy), *px = gk_ptr(x);
	float *pdx = gk_ptr(dx);
	int64_t bl = hw < PN_BLOCK ? hw : PN_BLOCK;
	int64_t nb = (hw + bl - 1) / bl, tasks = n * nb, total = n * c * hw;
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t task = 0; task < tasks; task++) {
		int64_t i = task / nb, p0 = (task % nb) * bl;
		int64_t len = hw - p0 < bl ? hw - p0 : bl;
		double ss[PN_BLOCK], sd[PN_BLOCK];
		float a[PN_BLOCK], b[PN_BLOCK];
		for (int64_t k = 0; k < len; k++)
			ss[k] = sd[k] = 0.0;
		const float *xb = px + i * c * hw + p0, *gb = pdy + i * c * hw + p0;
		for (int64_t ch = 0; ch < c; ch++) {
			const float *xr = xb + ch * hw, *gr = gb + ch * hw;
#pragma omp simd
			for (int64_t k = 0; k < len; k++) {
				ss[k] += (double)xr[k] * xr[k];
				sd[k] += (double)xr[k] * gr[k];
			}
		}
		for (int64_t k = 0; k < len; k++) {
			double r = 1.0 / sqrt(ss[k] / (double)c + (double)eps);
			a[k] = (float)r;
			b[k] = (float)(r * r * r * sd[k] / (double)c);
		}
		float *db = pdx + i * c * hw + p0;
		for (int64_t ch = 0; ch < c; ch++) {
			const float *xr = xb + ch * hw, *gr = gb + ch * hw;
			float *dr = db + ch * hw;
#pragma omp simd
			for (int64_t k = 0; k < len; k++)
				dr[k] = a[k] * gr[k] - b[k] * xr[k];
		}
	}
	return GK_OK;
}
