/* optim.c — CPU backend: fused Adam, non-finite sanitising, counter-based normal samples. */
#include <math.h>

#include "internal.h"

static gk_status check_flat(gk_ctx *ctx, const char *op, const char *name, const gk_tensor *t,
			    const gk_tensor *like)
{
	gk_status st = gk_check_dense(ctx, op, name, t);
	if (st != GK_OK)
		return st;
	if (like != NULL && gk_numel(t) != gk_numel(like)) {
		char s1[96], s2[96];
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s and p %s differ in length", name,
			       gk_shape_str(t, s1), gk_shape_str(like, s2));
	}
	return GK_OK;
}

/* adam_run updates one chunk. (sqrtf stays scalar: cgo does not allow -fno-math-errno; the
 * op is memory-bound regardless.) */
static void
adam_run(float *restrict pp, const float *restrict pg, float *restrict pm, float *restrict pv,
	 int64_t n, float b1, float b2, float eps, float step, float ibc2)
{
#pragma omp simd
	for (int64_t i = 0; i < n; i++) {
		float gi = pg[i];
		float mi = b1 * pm[i] + (1.0f - b1) * gi;
		float vi = b2 * pv[i] + (1.0f - b2) * gi * gi;
		pm[i] = mi;
		pv[i] = vi;
		pp[i] -= step * mi / (sqrtf(vi * ibc2) + eps);
	}
}

gk_status gk_adam(gk_ctx *ctx, const gk_tensor *p, const gk_tensor *g, const gk_tensor *m,
		  const gk_tensor *v, const gk_adam_params *ap)
{
	const char *op = "adam";
	gk_status st;
	if ((st = check_flat(ctx, op, "p", p, NULL)) != GK_OK ||
	    (st = check_flat(ctx, op, "g", g, p)) != GK_OK ||
	    (st = check_flat(ctx, op, "m", m, p)) != GK_OK ||
	    (st = check_flat(ctx, op, "v", v, p)) != GK_OK)
		return st;
	if (ap == NULL)
		return gk_fail(ctx, GK_ERR_ARG, op, "params are missing");
	if (!isfinite(ap->lr) || !(ap->beta1 >= 0.0f && ap->beta1 < 1.0f) ||
	    !(ap->beta2 >= 0.0f && ap->beta2 < 1.0f) || !(ap->eps >= 0.0f) ||
	    !(ap->bc1 > 0.0f && ap->bc1 <= 1.0f) || !(ap->bc2 > 0.0f && ap->bc2 <= 1.0f))
		return gk_fail(ctx, GK_ERR_ARG, op,
			       "lr %g beta1 %g beta2 %g eps %g bc1 %g bc2 %g: betas must be in [0,1), bias corrections in (0,1]",
			       (double)ap->lr, (double)ap->beta1, (double)ap->beta2, (double)ap->eps,
			       (double)ap->bc1, (double)ap->bc2);
	int64_t total = gk_numel(p);
	float step = ap->lr / ap->bc1, ibc2 = 1.0f / ap->bc2;
	int64_t chunk = 16384, nchunks = (total + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t k = 0; k < nchunks; k++) {
		int64_t lo = k * chunk, len = total - lo < chunk ? total - lo : chunk;
		adam_run(gk_ptr(p) + lo, gk_ptr(g) + lo, gk_ptr(m) + lo, gk_ptr(v) + lo, len,
			 ap->beta1, ap->beta2, ap->eps, step, ibc2);
	}
	return GK_OK;
}

gk_status gk_sanitize(gk_ctx *ctx, const gk_tensor *x, float limit, int64_t *nonfinite)
{
	const char *op = "sanitize";
	gk_status st = gk_check_dense(ctx, op, "x", x);
	if (st != GK_OK)
		return st;
	if (!(limit >= 0.0f) || !isfinite(limit))
		return gk_fail(ctx, GK_ERR_ARG, op, "limit %g must be finite and >= 0", (double)limit);
	int64_t total = gk_numel(x), count = 0;
	float *px = gk_ptr(x);
	/* isfinite on the bit pattern: exponent all ones means NaN or Inf. Branch-free. */
#pragma omp parallel for simd schedule(static) reduction(+ : count) if (total >= GK_PAR_MIN) num_threads(ctx->threads)
	for (int64_t i = 0; i < total; i++) {
		float v = px[i];
		uint32_t u;
		memcpy(&u, &v, sizeof(u));
		int bad = (u & 0x7f800000u) == 0x7f800000u;
		int nan = bad && (u & 0x007fffffu) != 0;
		float rep = nan ? 0.0f : (v > 0.0f ? limit : -limit);
		px[i] = bad ? rep : v;
		count += bad;
	}
	if (nonfinite != NULL)
		*nonfinite = count;
	return GK_OK;
}

/* Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so that element i's
 * sample depends only on (seed, offset + i). */
static inline void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1)
{
	for (int r = 0; r < 10; r++) {
		uint64_t p0 = (uint64_t)0xD2511F53u * ctr[0];
		uint64_t p1 = (uint64_t)0xCD9E8D57u * ctr[2];
		uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
		uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
		uint32_t c1 = ctr[1], c3 = ctr[3];
		ctr[0] = hi1 ^ c1 ^ k0;
		ctr[1] = lo1;
		ctr[2] = hi0 ^ c3 ^ k1;
		ctr[3] = lo0;
		k0 += 0x9E3779B9u;
		k1 += 0xBB67AE85u;
	}
}

/* gk_normal_at returns the standard normal sample for counter ctr of stream seed: Box-Muller
 * on two 53-bit uniforms made from the four output words; u1 in (0,1] keeps log finite. */
static inline double gk_normal_at(uint64_t seed, uint64_t ctr)
{
	uint32_t c[4] = {(uint32_t)ctr, (uint32_t)(ctr >> 32), 0, 0};
	philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
	uint64_t a = ((uint64_t)c[0] << 32 | c[1]) >> 11;
	uint64_t b = ((uint64_t)c[2] << 32 | c[3]) >> 11;
	const double inv53 = 1.0 / 9007199254740992.0;
	double u1 = ((double)a + 1.0) * inv53, u2 = (double)b * inv53;
	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

gk_status gk_randn(gk_ctx *ctx, const gk_tensor *y, uint64_t seed, uint64_t offset, float mean,
		   float std)
{
	const char *op = "randn";
	gk_status st = gk_check_dense(ctx, op, "y", y);
	if (st != GK_OK)
		return st;
	if (!isfinite(mean) || !isfinite(std) || std < 0.0f)
		return gk_fail(ctx, GK_ERR_ARG, op, "mean %g and std %g must be finite, std >= 0",
			       (double)mean, (double)std);
	int64_t total = gk_numel(y);
	float *py = gk_ptr(y);
	/* Each sample costs ~100 ns, so threads pay off early. */
#pragma omp parallel for schedule(static) if (total >= 4096) num_threads(ctx->threads)
	for (int64_t i = 0; i < total; i++)
		py[i] = (float)((double)mean + (double)std * gk_normal_at(seed, offset + (uint64_t)i));
	return GK_OK;
}
