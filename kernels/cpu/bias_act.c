/* bias_act.c — CPU backend: fused bias + activation (+gain, clamp) and its gradient. */
#include <math.h>

#include "internal.h"

/* rows_of splits a dense [N,C] or [N,C,H,W] tensor into N*C rows of hw elements. */
static int rows_of(const gk_tensor *t, int64_t *n, int64_t *c, int64_t *hw)
{
	if (t->ndim != 2 && t->ndim != 4)
		return 0;
	*n = t->shape[0];
	*c = t->shape[1];
	*hw = t->ndim == 4 ? t->shape[2] * t->shape[3] : 1;
	return 1;
}

static gk_status check_params(gk_ctx *ctx, const char *op, const gk_act_params *p)
{
	if (p == NULL)
		return gk_fail(ctx, GK_ERR_ARG, op, "params are missing");
	if (p->act != GK_ACT_LINEAR && p->act != GK_ACT_LRELU)
		return gk_fail(ctx, GK_ERR_ARG, op, "unknown activation %d", (int)p->act);
	if (p->act == GK_ACT_LRELU && !(p->alpha >= 0.0f))
		return gk_fail(ctx, GK_ERR_ARG, op, "lrelu slope %g must be >= 0", (double)p->alpha);
	if (!isfinite(p->gain) || isnan(p->clamp))
		return gk_fail(ctx, GK_ERR_ARG, op, "gain %g and clamp %g must be numbers",
			       (double)p->gain, (double)p->clamp);
	return GK_OK;
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

/* One contiguous run of elements sharing the bias value bv. The body is a multiply by one of
 * two constants and a clamp written as selects: no speculated FP op, so it vectorises under
 * the default -ftrapping-math. pg/ng are the gains for positive/non-positive inputs. */
static inline void act_run(const float *restrict x, float *restrict y, int64_t n, float bv,
			   float pg, float ng, float clamp)
{
	if (clamp > 0.0f) {
		float lo = -clamp;
#pragma omp simd
		for (int64_t i = 0; i < n; i++) {
			float v = x[i] + bv;
			v *= v > 0.0f ? pg : ng;
			v = v < lo ? lo : v;
			y[i] = v > clamp ? clamp : v;
		}
	} else {
#pragma omp simd
		for (int64_t i = 0; i < n; i++) {
			float v = x[i] + bv;
			y[i] = v * (v > 0.0f ? pg : ng);
		}
	}
}

gk_status gk_bias_act(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *b, const gk_tensor *y,
		      const gk_act_params *p)
{
	const char *op = "bias_act";
	gk_status st;
	if ((st = gk_check_dense(ctx, op, "x", x)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "y", y)) != GK_OK ||
	    (b != NULL && (st = gk_check_dense(ctx, op, "b", b)) != GK_OK) ||
	    (st = check_params(ctx, op, p)) != GK_OK)
		return st;
	char s1[96], s2[96], s3[96];
	int64_t n, c, hw;
	if (!rows_of(x, &n, &c, &hw) || !same_shape(x, y))
		return gk_fail(ctx, GK_ERR_SHAPE, op, "x %s and y %s must be equal [N,C] or [N,C,H,W]",
			       gk_shape_str(x, s1), gk_shape_str(y, s2));
	if (b != NULL && (b->ndim != 1 || b->shape[0] != c))
		return gk_fail(ctx, GK_ERR_SHAPE, op, "b %s must be [C] for x %s",
			       gk_shape_str(b, s3), gk_shape_str(x, s1));
	const float *px = gk_ptr(x), *pb = b ? gk_ptr(b) : NULL;
	float *py = gk_ptr(y);
	float pg = p->gain, ng = p->act == GK_ACT_LRELU ? p->alpha * p->gain : p->gain;
	float clamp = p->clamp;
	int64_t total = n * c * hw;
	if (hw == 1) {
		/* [N,C]: rows of C, the bias varies along the row. */
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
		for (int64_t i = 0; i < n; i++) {
			const float *xr = px + i * c;
			float *yr = py + i * c;
			if (pb == NULL) {
				act_run(xr, yr, c, 0.0f, pg, ng, clamp);
				continue;
			}
			float lo = clamp > 0.0f ? -clamp : -INFINITY, hi = clamp > 0.0f ? clamp : INFINITY;
#pragma omp simd
			for (int64_t j = 0; j < c; j++) {
				float v = xr[j] + pb[j];
				v *= v > 0.0f ? pg : ng;
				v = v < lo ? lo : v;
				yr[j] = v > hi ? hi : v;
			}
		}
		return GK_OK;
	}
	int64_t rows = n * c;
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t r = 0; r < rows; r++)
		act_run(px + r * hw, py + r * hw, hw, pb ? pb[r % c] : 0.0f, pg, ng, clamp);
	return GK_OK;
}

gk_status gk_bias_act_grad(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *y,
			   const gk_tensor *dx, const gk_act_params *p)
{
	const char *op = "bias_act_grad";
	gk_status st;
	if ((st = gk_check_dense(ctx, op, "dy", dy)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "y", y)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "dx", dx)) != GK_OK ||
	    (st = check_params(ctx, op, p)) != GK_OK)
		return st;
	char s1[96], s2[96], s3[96];
	int64_t n, c, hw;
	if (!rows_of(y, &n, &c, &hw) || !same_shape(dy, y) || !same_shape(dx, y))
		return gk_fail(ctx, GK_ERR_SHAPE, op,
			       "dy %s, y %s and dx %s must be equal [N,C] or [N,C,H,W]",
			       gk_shape_str(dy, s1), gk_shape_str(y, s2), gk_shape_str(dx, s3));
	const float *pdy = gk_ptr(dy), *py = gk_ptr(y);
	float *pdx = gk_ptr(dx);
	int64_t total = n * c * hw;
	/* The sign of y is the sign of the pre-activation times the sign of gain. */
	float gain = p->gain;
	float pos = gain, neg = p->act == GK_ACT_LRELU ? p->alpha * gain : gain;
	float flip = gain < 0.0f ? -1.0f : 1.0f;
	float clamp = p->clamp > 0.0f ? p->clamp : INFINITY;
#pragma omp parallel for simd schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t i = 0; i < total; i++) {
		float yy = py[i];
		float g = yy * flip > 0.0f ? pos : neg;
		float ay = yy < 0.0f ? -yy : yy;
		g = ay < clamp ? g : 0.0f;
		pdx[i] = pdy[i] * g;
	}
	return GK_OK;
}
