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

/* Polyphase bookkeeping: output o meets samples only through taps j0, j0+up, ... (those
 * with o*down + j - pad0 divisible by up), and they meet consecutive inputs i0, i0+1, ...
 * fir_phase precomputes (j0, i0) per output so that the loops divide nothing. */
typedef struct fir_phase {
	int32_t j0, i0;
} fir_phase;

static void fir_phases(const fir_axis *a, fir_phase *ph)
{
	for (int64_t o = 0; o < a->out; o++) {
		int64_t u0 = o * a->down - a->pad0;
		int64_t j0 = ((-u0) % a->up + a->up) % a->up;
		ph[o].j0 = (int32_t)j0;
		ph[o].i0 = (int32_t)((u0 + j0) / a->up);
	}
}

/* fir_span returns the input index range [lo, hi) that the W pass reads, including
 * padding, with lo <= 0 and hi >= in. */
static void fir_span(const fir_axis *a, const fir_phase *ph, int64_t nt, int64_t *lo, int64_t *hi)
{
	int64_t l = 0, h = a->in;
	for (int64_t o = 0; o < a->out; o++) {
		int64_t first = ph[o].i0, last = ph[o].i0 + (nt - 1 - ph[o].j0) / a->up;
		if (ph[o].j0 >= nt)
			continue;
		if (first < l)
			l = first;
		if (last + 1 > h)
			h = last + 1;
	}
	*lo = l;
	*hi = h;
}

/* fir_row filters one input row along W into dst[0, out). prow (hi-lo floats) receives the
 * zero-extended row so that the loops need no bounds checks; acc holds out floats and deint
 * hi-lo+down floats. */
static void fir_row(const fir_axis *a, const fir_phase *ph, const float *f, int64_t nt,
		    const float *src, float *dst, float *prow, int64_t lo, int64_t hi, float *acc,
		    float *deint)
{
	memset(prow, 0, (size_t)(hi - lo) * sizeof(float));
	memcpy(prow - lo, src, (size_t)a->in * sizeof(float));
	const int64_t out = a->out, up = a->up, down = a->down;
	if (up == 1 && down == 1) {
		for (int64_t ox = 0; ox < out; ox++)
			dst[ox] = 0.0f;
		for (int64_t j = 0; j < nt; j++) {
			const float fj = f[j];
			const float *s = prow + (ph[0].i0 - lo) + j;
#pragma omp simd
			for (int64_t ox = 0; ox < out; ox++)
				dst[ox] += fj * s[ox];
		}
		return;
	}
	if (down == 1) {
		/* Outputs p, p+up, p+2up, ... share their taps and read consecutive inputs. */
		for (int64_t p = 0; p < up && p < out; p++) {
			const int64_t m_n = (out - p + up - 1) / up;
			const float *base = prow + (ph[p].i0 - lo);
			for (int64_t m = 0; m < m_n; m++)
				acc[m] = 0.0f;
			for (int64_t j = ph[p].j0, k = 0; j < nt; j += up, k++) {
				const float fj = f[j];
				const float *s = base + k;
#pragma omp simd
				for (int64_t m = 0; m < m_n; m++)
					acc[m] += fj * s[m];
			}
			for (int64_t m = 0; m < m_n; m++)
				dst[p + m * up] = acc[m];
		}
		return;
	}
	if (up == 1) {
		/* Downsampling: split the row into its down phases so that every tap reads a
		 * contiguous run: input ox*down + base + j lies in phase (base+j) % down at
		 * ox + (base+j) / down. */
		const int64_t base = ph[0].i0 - lo, plen = hi - lo, qlen = (plen + down - 1) / down;
		for (int64_t q = 0; q < down; q++) {
			float *dq = deint + q * qlen;
			int64_t i = 0;
			for (; q + i * down < plen; i++)
				dq[i] = prow[q + i * down];
			for (; i < qlen; i++)
				dq[i] = 0.0f;
		}
		for (int64_t ox = 0; ox < out; ox++)
			dst[ox] = 0.0f;
		for (int64_t j = 0; j < nt; j++) {
			const float fj = f[j];
			const float *s = deint + ((base + j) % down) * qlen + (base + j) / down;
#pragma omp simd
			for (int64_t ox = 0; ox < out; ox++)
				dst[ox] += fj * s[ox];
		}
		return;
	}
	for (int64_t ox = 0; ox < out; ox++) {
		const float *s = prow + (ph[ox].i0 - lo);
		float v = 0.0f;
		for (int64_t j = ph[ox].j0, k = 0; j < nt; j += up, k++)
			v += f[j] * s[k];
		dst[ox] = v;
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
	/* Scratch: the phase tables (int32, one float slot each), then a [h, wo] buffer per
	 * thread. */
	/* Scratch: the phase tables (int32, one float slot each), then per thread a [h, wo]
	 * buffer, a zero-extended row and a row of accumulators. The tables come first and the
	 * span is computed from them, so the size is known before the allocation only up to
	 * the span: bound it by in + 2*(ntaps + |pad0| + |pad1|) + up*out. */
	const int64_t span_max = w + 2 * ((int64_t)ntaps + llabs(p->pad_x0) + llabs(p->pad_x1)) + wo + 2;
	const int64_t per = h * wo + 2 * span_max + wo + p->down;
	float *tmp = gk_scratch(ctx, 2 * (ho + wo) + (int64_t)threads * per);
	if (tmp == NULL)
		return gk_fail(ctx, GK_ERR_OOM, op, "out of memory for scratch (x %s)", sx);
	fir_phase *phx = (fir_phase *)tmp, *phy = phx + wo;
	fir_phases(&ax, phx);
	fir_phases(&ay, phy);
	tmp += 2 * (ho + wo);
	int64_t lo, hi;
	fir_span(&ax, phx, ntaps, &lo, &hi);
	if (hi - lo > span_max)
		return gk_fail(ctx, GK_ERR_BACKEND, op, "internal: row span %lld exceeds %lld (x %s)",
			       (long long)(hi - lo), (long long)span_max, sx);
	const float *xp = gk_ptr(x);
	float *yp = gk_ptr(y);
#pragma omp parallel num_threads(threads) if (par)
	{
		float *t = tmp + (int64_t)omp_get_thread_num() * per;
		float *prow = t + h * wo, *acc = prow + span_max, *deint = acc + wo;
#pragma omp for schedule(static)
		for (int64_t pl = 0; pl < planes; pl++) {
			const float *src = xp + pl * h * w;
			float *dst = yp + pl * ho * wo;
			for (int64_t iy = 0; iy < h; iy++)
				fir_row(&ax, phx, f, ntaps, src + iy * w, t + iy * wo, prow, lo, hi, acc,
					deint);
			for (int64_t oy = 0; oy < ho; oy++) {
				float *row = dst + oy * wo;
				for (int64_t ox = 0; ox < wo; ox++)
					row[ox] = 0.0f;
				int64_t iy = phy[oy].i0;
				for (int64_t j = phy[oy].j0; j < ntaps; j += p->up, iy++) {
					if (iy < 0 || iy >= h)
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
