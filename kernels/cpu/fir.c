/* fir.c — CPU backend: FIR resampling (upfirdn2d) with a separable filter.
 *
 * Each (n, c) plane is filtered along W first, on the H input rows only (the zero rows that
 * upsampling inserts contribute nothing), into a per-thread [H, Wo] buffer; the H pass then
 * combines those rows into the output rows, vectorised along W. Planes run in parallel.
 */
#include <omp.h>

#include "internal.h"

#define FIR_MAX_TAPS 64

typedef struct fir_axis {
	int64_t in, out;   /* input and output length */
	int64_t up, down;  /* resampling factors */
	int64_t pad0;      /* zeros before (negative crops) */
} fir_axis;

/* fir_out is the output length of one axis, or -1 when the padded signal is shorter than
 * the filter. */
static int64_t fir_out(int64_t in, int64_t up, int64_t down, int64_t pad0, int64_t pad1,
		       int64_t ntaps)
{
	int64_t len = in * up + pad0 + pad1 - ntaps;
	if (len < 0)
		return -1;
	return len / down + 1;
}

/* fir_source maps tap j of output o to its input index, or -1 when the tap falls on an
 * inserted zero or on padding. */
static inline int64_t fir_source(const fir_axis *a, int64_t o, int64_t j)
{
	int64_t u = o * a->down + j - a->pad0; /* index into the upsampled signal */
	if (u < 0 || u >= a->in * a->up || u % a->up != 0)
		return -1;
	return u / a->up;
}

/* fir_row filters one input row along W: dst[ox] = sum_j f[j] * src[source(ox, j)]. */
static void fir_row(const fir_axis *a, const float *f, int64_t nt, const float *src, float *dst)
{
	for (int64_t ox = 0; ox < a->out; ox++)
		dst[ox] = 0.0f;
	if (a->up == 1) {
		for (int64_t j = 0; j < nt; j++) {
			/* ix = ox*down + j - pad0 in [0, in) */
			int64_t off = j - a->pad0;
			int64_t lo = off >= 0 ? 0 : (-off + a->down - 1) / a->down;
			int64_t hi = a->in - 1 - off >= 0 ? (a->in - 1 - off) / a->down + 1 : 0;
			if (hi > a->out)
				hi = a->out;
			const float fj = f[j];
			if (a->down == 1) {
				const float *s = src + off;
#pragma omp simd
				for (int64_t ox = lo; ox < hi; ox++)
					dst[ox] += fj * s[ox];
			} else {
				for (int64_t ox = lo; ox < hi; ox++)
					dst[ox] += fj * src[ox * a->down + off];
			}
		}
		return;
	}
	for (int64_t ox = 0; ox < a->out; ox++) {
		float acc = 0.0f;
		for (int64_t j = 0; j < nt; j++) {
			int64_t ix = fir_source(a, ox, j);
			if (ix >= 0)
				acc += f[j] * src[ix];
		}
		dst[ox] = acc;
	}
}

gk_status gk_fir(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y, const float *taps,
		 int32_t ntaps, const gk_fir_params *p)
{
	const char *op = "fir";
	gk_status st;
	if ((st = gk_check_dense(ctx, op, "x", x)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, "y", y)) != GK_OK)
		return st;
	char sx[96], sy[96];
	gk_shape_str(x, sx);
	gk_shape_str(y, sy);
	if (p == NULL)
		return gk_fail(ctx, GK_ERR_ARG, op, "params are missing");
	if (taps == NULL || ntaps < 1 || ntaps > FIR_MAX_TAPS)
		return gk_fail(ctx, GK_ERR_ARG, op, "need 1..%d filter taps, got %d (x %s)", FIR_MAX_TAPS,
			       taps == NULL ? 0 : (int)ntaps, sx);
	if (p->up < 1 || p->down < 1)
		return gk_fail(ctx, GK_ERR_ARG, op, "up %d and down %d must be >= 1 (x %s)", (int)p->up,
			       (int)p->down, sx);
	if (x->ndim != 4 || y->ndim != 4)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "x %s and y %s must be 4-D [N,C,H,W]", sx, sy);
	const int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], w = x->shape[3];
	const int64_t ho = fir_out(h, p->up, p->down, p->pad0, p->pad1, ntaps);
	const int64_t wo = fir_out(w, p->up, p->down, p->pad_x0, p->pad_x1, ntaps);
	if (ho < 1 || wo < 1)
		return gk_fail(ctx, GK_ERR_SHAPE, op,
			       "x %s upsampled by %d and padded by (%d,%d)/(%d,%d) is shorter than the %d-tap filter",
			       sx, (int)p->up, (int)p->pad0, (int)p->pad1, (int)p->pad_x0, (int)p->pad_x1,
			       (int)ntaps);
	if (y->shape[0] != n || y->shape[1] != c || y->shape[2] != ho || y->shape[3] != wo)
		return gk_fail(ctx, GK_ERR_SHAPE, op,
			       "y %s must be [%lld,%lld,%lld,%lld] for x %s, up %d, down %d, pad (%d,%d)/(%d,%d), %d taps",
			       sy, (long long)n, (long long)c, (long long)ho, (long long)wo, sx, (int)p->up,
			       (int)p->down, (int)p->pad0, (int)p->pad1, (int)p->pad_x0, (int)p->pad_x1,
			       (int)ntaps);
	const int64_t planes = n * c;
	if (planes == 0)
		return GK_OK;

	float f[FIR_MAX_TAPS];
	for (int j = 0; j < ntaps; j++)
		f[j] = p->flip ? taps[ntaps - 1 - j] : taps[j];
	const fir_axis ax = {w, wo, p->up, p->down, p->pad_x0};
	const fir_axis ay = {h, ho, p->up, p->down, p->pad0};
	const float gain = p->gain;

	int threads = ctx->threads < 1 ? 1 : ctx->threads;
	const int par = planes * (h * wo + ho * wo) * ntaps >= GK_PAR_MIN && planes > 1;
	if (!par)
		threads = 1;
	float *tmp = gk_scratch(ctx, (int64_t)threads * h * wo);
	if (tmp == NULL)
		return gk_fail(ctx, GK_ERR_OOM, op, "out of memory for scratch (x %s)", sx);
	const float *xp = gk_ptr(x);
	float *yp = gk_ptr(y);
#pragma omp parallel num_threads(threads) if (par)
	{
		float *t = tmp + (int64_t)omp_get_thread_num() * h * wo;
#pragma omp for schedule(static)
		for (int64_t pl = 0; pl < planes; pl++) {
			const float *src = xp + pl * h * w;
			float *dst = yp + pl * ho * wo;
			for (int64_t iy = 0; iy < h; iy++)
				fir_row(&ax, f, ntaps, src + iy * w, t + iy * wo);
			for (int64_t oy = 0; oy < ho; oy++) {
				float *row = dst + oy * wo;
				for (int64_t ox = 0; ox < wo; ox++)
					row[ox] = 0.0f;
				for (int64_t j = 0; j < ntaps; j++) {
					int64_t iy = fir_source(&ay, oy, j);
					if (iy < 0)
						continue;
					const float fj = f[j] * gain;
					const float *tr = t + iy * wo;
#pragma omp simd
					for (int64_t ox = 0; ox < wo; ox++)
						row[ox] += fj * tr[ox];
				}
			}
		}
	}
	return GK_OK;
}
