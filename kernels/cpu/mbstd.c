/* mbstd.c — CPU backend: minibatch standard deviation (PG/SG) and its gradient.
 *
 * With G = min(group, N) and M = N / G, sample n = g*M + m belongs to group m (SG reshapes
 * x to [G, M, F, C/F, H, W]). For each group m and feature f:
 *   stat[m,f] = mean over (c in slice f, h, w) of sqrt(var_g(x[g*M+m, c, h, w]) + eps)
 * with the population variance over the G members. y = concat(x, stat broadcast over H, W). */
#include <math.h>

#include "internal.h"

static gk_status check(gk_ctx *ctx, const char *op, const gk_tensor *x, const gk_tensor *y,
		       const char *yname, int32_t group, int32_t features, float eps,
		       int64_t *g_out)
{
	char s1[96], s2[96];
	if (x->ndim != 4 || y->ndim != 4 || y->shape[0] != x->shape[0] ||
	    y->shape[2] != x->shape[2] || y->shape[3] != x->shape[3] ||
	    (features > 0 && y->shape[1] != x->shape[1] + features))
		return gk_fail(ctx, GK_ERR_SHAPE, op, "x %s and %s %s must be [N,C,H,W] and [N,C+%d,H,W]",
			       gk_shape_str(x, s1), yname, gk_shape_str(y, s2), (int)features);
	int64_t n = x->shape[0], c = x->shape[1];
	if (group < 1)
		return gk_fail(ctx, GK_ERR_ARG, op, "group size %d must be >= 1", (int)group);
	if (features < 1 || c % features != 0)
		return gk_fail(ctx, GK_ERR_ARG, op, "features %d must be >= 1 and divide the %lld channels of x %s",
			       (int)features, (long long)c, gk_shape_str(x, s1));
	int64_t g = group < n ? group : n;
	if (n > 0 && n % g != 0)
		return gk_fail(ctx, GK_ERR_ARG, op, "group size %lld (min(group %d, N)) must divide the batch of x %s",
			       (long long)g, (int)group, gk_shape_str(x, s1));
	if (!(eps >= 0.0f) || !isfinite(eps))
		return gk_fail(ctx, GK_ERR_ARG, op, "eps %g must be >= 0", (double)eps);
	*g_out = g;
	return GK_OK;
}

gk_status gk_mbstd(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y, int32_t group,
		   int32_t features, float eps)
{
	const char *op = "mbstd";
	gk_status st;
	int64_t G;
	if ((st = gk_check_dense(ctx, op, "x", x)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "y", y)) != GK_OK ||
	    (st = check(ctx, op, x, y, "y", group, features, eps, &G)) != GK_OK)
		return st;
	int64_t n = x->shape[0], c = x->shape[1], hw = x->shape[2] * x->shape[3];
	if (n == 0 || hw == 0)
		return GK_OK;
	int64_t F = features, cf = c / F, M = n / G, cy = c + F;
	const float *px = gk_ptr(x);
	float *py = gk_ptr(y);
	int64_t total = n * c * hw;
	int par = total >= GK_PAR_MIN;
	/* The copy of x into the first C channels of y. */
#pragma omp parallel for schedule(static) if (par) num_threads(ctx->threads)
	for (int64_t i = 0; i < n; i++)
		memcpy(py + i * cy * hw, px + i * c * hw, (size_t)(c * hw) * sizeof(float));
	/* One (group, feature) statistic per task, summed in a fixed order. */
#pragma omp parallel for schedule(static) if (par && M * F > 1) num_threads(ctx->threads)
	for (int64_t task = 0; task < M * F; task++) {
		int64_t m = task / F, f = task % F;
		double acc = 0.0;
		for (int64_t ch = f * cf; ch < (f + 1) * cf; ch++) {
			for (int64_t k = 0; k < hw; k++) {
				double mu = 0.0, var = 0.0;
				for (int64_t g = 0; g < G; g++)
					mu += px[((g * M + m) * c + ch) * hw + k];
				mu /= (double)G;
				for (int64_t g = 0; g < G; g++) {
					double dv = px[((g * M + m) * c + ch) * hw + k] - mu;
					var += dv * dv;
				}
				acc += sqrt(var / (double)G + (double)eps);
			}
		}
		float stat = (float)(acc / (double)(cf * hw));
		for (int64_t g = 0; g < G; g++) {
			float *dst = py + ((g * M + m) * cy + c + f) * hw;
			for (int64_t k = 0; k < hw; k++)
				dst[k] = stat;
		}
	}
	return GK_OK;
}

/* dx = dy[:, :C] + dstat[m,f] / (C/F * HW) * (x - mu) / (G * sd), where dstat[m,f] sums the
 * appended channel f of dy over the group's samples and all pixels. */
gk_status gk_mbstd_bwd(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *x,
		       const gk_tensor *dx, int32_t group, int32_t features, float eps)
{
	const char *op = "mbstd_bwd";
	gk_status st;
	int64_t G;
	if ((st = gk_check_dense(ctx, op, "dy", dy)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "x", x)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "dx", dx)) != GK_OK ||
	    (st = check(ctx, op, x, dy, "dy", group, features, eps, &G)) != GK_OK)
		return st;
	int same = dx->ndim == 4;
	for (int d = 0; same && d < 4; d++)
		same = dx->shape[d] == x->shape[d];
	if (!same) {
		char s1[96], s2[96];
		return gk_fail(ctx, GK_ERR_SHAPE, op, "dx %s must equal x %s", gk_shape_str(dx, s1),
			       gk_shape_str(x, s2));
	}
	int64_t n = x->shape[0], c = x->shape[1], hw = x->shape[2] * x->shape[3];
	if (n == 0 || hw == 0)
		return GK_OK;
	int64_t F = features, cf = c / F, M = n / G, cy = c + F;
	const float *pdy = gk_ptr(dy), *px = gk_ptr(x);
	float *pdx = gk_ptr(dx);
	int64_t total = n * c * hw;
	int par = total >= GK_PAR_MIN;
	/* dstat per (m, f), as doubles in scratch. */
	double *dstat = (double *)gk_scratch(ctx, 2 * M * F);
	if (dstat == NULL)
		return gk_fail(ctx, GK_ERR_OOM, op, "out of scratch memory");
	for (int64_t task = 0; task < M * F; task++) {
		int64_t m = task / F, f = task % F;
		double acc = 0.0;
		for (int64_t g = 0; g < G; g++) {
			const float *src = pdy + ((g * M + m) * cy + c + f) * hw;
			for (int64_t k = 0; k < hw; k++)
				acc += src[k];
		}
		dstat[task] = acc / (double)(cf * hw);
	}
	/* Each (m, channel) task writes its own G x HW elements of dx. */
#pragma omp parallel for schedule(static) if (par) num_threads(ctx->threads)
	for (int64_t task = 0; task < M * c; task++) {
		int64_t m = task / c, ch = task % c;
		double ds = dstat[m * F + ch / cf];
		for (int64_t k = 0; k < hw; k++) {
			double mu = 0.0, var = 0.0;
			for (int64_t g = 0; g < G; g++)
				mu += px[((g * M + m) * c + ch) * hw + k];
			mu /= (double)G;
			for (int64_t g = 0; g < G; g++) {
				double dv = px[((g * M + m) * c + ch) * hw + k] - mu;
				var += dv * dv;
			}
			double coef = ds / ((double)G * sqrt(var / (double)G + (double)eps));
			for (int64_t g = 0; g < G; g++) {
				int64_t xi = ((g * M + m) * c + ch) * hw + k;
				int64_t yi = ((g * M + m) * cy + ch) * hw + k;
				pdx[xi] = (float)((double)pdy[yi] + coef * ((double)px[xi] - mu));
			}
		}
	}
	return GK_OK;
}
