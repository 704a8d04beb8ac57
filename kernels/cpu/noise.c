/* noise.c — CPU backend: per-pixel noise injection with a per-channel weight. */
#include "internal.h"

static gk_status check(gk_ctx *ctx, const char *op, const gk_tensor *x, const char *xname,
		       const gk_tensor *noise, const gk_tensor *w, const char *wname)
{
	gk_status st;
	if ((st = gk_check_dense(ctx, op, xname, x)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "noise", noise)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, wname, w)) != GK_OK)
		return st;
	char s1[96], s2[96], s3[96];
	if (x->ndim != 4 || noise->ndim != 4 || w->ndim != 1 || noise->shape[0] != x->shape[0] ||
	    noise->shape[1] != 1 || noise->shape[2] != x->shape[2] || noise->shape[3] != x->shape[3] ||
	    w->shape[0] != x->shape[1])
		return gk_fail(ctx, GK_ERR_SHAPE, op, "want %s [N,C,H,W], noise [N,1,H,W], %s [C]; got %s %s, noise %s, %s %s",
			       xname, wname, xname, gk_shape_str(x, s1), gk_shape_str(noise, s2), wname,
			       gk_shape_str(w, s3));
	return GK_OK;
}

gk_status gk_noise(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *noise, const gk_tensor *w,
		   const gk_tensor *y)
{
	const char *op = "noise";
	gk_status st;
	if ((st = check(ctx, op, x, "x", noise, w, "w")) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "y", y)) != GK_OK)
		return st;
	int same = y->ndim == 4;
	for (int d = 0; same && d < 4; d++)
		same = y->shape[d] == x->shape[d];
	if (!same) {
		char s1[96], s2[96];
		return gk_fail(ctx, GK_ERR_SHAPE, op, "y %s must equal x %s", gk_shape_str(y, s1),
			       gk_shape_str(x, s2));
	}
	int64_t n = x->shape[0], c = x->shape[1], hw = x->shape[2] * x->shape[3];
	const float *px = gk_ptr(x), *pn = gk_ptr(noise), *pw = gk_ptr(w);
	float *py = gk_ptr(y);
	int64_t rows = n * c, total = rows * hw;
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t r = 0; r < rows; r++) {
		const float *xr = px + r * hw, *nr = pn + (r / c) * hw;
		float *yr = py + r * hw;
		float wc = pw[r % c];
#pragma omp simd
		for (int64_t i = 0; i < hw; i++)
			yr[i] = xr[i] + wc * nr[i];
	}
	return GK_OK;
}

gk_status gk_noise_bwd_weight(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *noise,
			      const gk_tensor *dw, float alpha, float beta)
{
	const char *op = "noise_bwd_weight";
	gk_status st;
	if ((st = check(ctx, op, dy, "dy", noise, dw, "dw")) != GK_OK)
		return st;
	int64_t n = dy->shape[0], c = dy->shape[1], hw = dy->shape[2] * dy->shape[3];
	const float *pdy = gk_ptr(dy), *pn = gk_ptr(noise);
	float *pdw = gk_ptr(dw);
	int64_t total = n * c * hw;
	/* One channel per task, samples in a fixed order: deterministic for any thread count. */
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN && c > 1) num_threads(ctx->threads)
	for (int64_t ch = 0; ch < c; ch++) {
		double acc = 0.0;
		for (int64_t i = 0; i < n; i++) {
			const float *g = pdy + (i * c + ch) * hw, *nz = pn + i * hw;
			double part = 0.0;
#pragma omp simd reduction(+ : part)
			for (int64_t k = 0; k < hw; k++)
				part += (double)g[k] * nz[k];
			acc += part;
		}
		float r = alpha * (float)acc;
		pdw[ch] = beta == 0.0f ? r : r + beta * pdw[ch];
	}
	return GK_OK;
}
