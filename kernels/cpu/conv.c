/* conv.c — CPU backend: 2-D convolution (forward, grad input, grad weight) through
 * im2col / col2im and OpenBLAS's cblas_sgemm.
 *
 * Layout of the column matrix: rows r = (ci*k + ky)*k + kx (Cin*k*k of them), columns
 * j*HoWo + oy*Wo + ox for the nb samples j of a chunk. Several samples share one GEMM when
 * the images are small, so that OpenBLAS always sees a wide enough right-hand side
 * (at 8x8 a per-sample GEMM has 64 columns and runs at a fraction of peak). Chunks are
 * sized so that the column matrix stays within a bounded scratch area; one image too large
 * for it is done in blocks of output rows. Two special paths: same-size convs of wide images
 * run as k*k shifted GEMMs over a padded copy (no im2col), and pointwise convs to at most 8
 * channels (toRGB) run as plain streaming loops.
 *
 * Threads: with at least as many samples as threads, the batch is split between OpenMP
 * threads, each running im2col and a single-threaded OpenBLAS GEMM on its own samples and
 * scratch (no fork/join per GEMM, and no second thread pool spinning against the first);
 * the weight gradient sums per-thread partials in a fixed order. With fewer samples (batch
 * 1) OpenBLAS runs threaded and the copies run as OpenMP loops. OpenBLAS's thread count is
 * process-wide: a conv sets it to 1 for its duration and restores it, so a GEMM that another
 * Device runs at that moment from another goroutine runs single-threaded (correct, slower).
 */
#include <cblas.h>
#include <omp.h>

#include "internal.h"

extern void openblas_set_num_threads(int);
extern int openblas_get_num_threads(void);

/* Aim for at least this many GEMM columns per chunk... */
#ifndef CONV_MIN_COLS
#define CONV_MIN_COLS 1024
#endif
/* ...with the column matrix below this many floats (32 MiB). */
#define CONV_MAX_COL_ELEMS (8 << 20)

typedef struct conv_dims {
	int64_t n, cin, h, w, cout, k, ho, wo, s, p;
	int64_t ckk, howo;
} conv_dims;

/* conv_check validates the operands of one conv call. x, w, y are the forward roles: for
 * bwd_data x is dx and y is dy, for bwd_filter w is dw. */
static gk_status conv_check(gk_ctx *ctx, const char *op, const char *xn, const gk_tensor *x,
			    const char *wn, const gk_tensor *w, const char *yn, const gk_tensor *y,
			    const gk_conv_params *p, conv_dims *d)
{
	gk_status st;
	if ((st = gk_check_dense(ctx, op, xn, x)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, wn, w)) != GK_OK ||
	    (st = gk_check_dense(ctx, op, yn, y)) != GK_OK)
		return st;
	if (p == NULL)
		return gk_fail(ctx, GK_ERR_ARG, op, "params are missing");
	char sx[96], sw[96], sy[96];
	gk_shape_str(x, sx);
	gk_shape_str(w, sw);
	gk_shape_str(y, sy);
	if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s, %s %s and %s %s must all be 4-D", xn, sx,
			       wn, sw, yn, sy);
	if (p->stride != 1 && p->stride != 2)
		return gk_fail(ctx, GK_ERR_ARG, op, "stride %d (1 or 2 supported), %s %s %s %s",
			       (int)p->stride, xn, sx, wn, sw);
	if (p->pad < 0)
		return gk_fail(ctx, GK_ERR_ARG, op, "negative pad %d, %s %s %s %s", (int)p->pad, xn, sx,
			       wn, sw);
	d->n = x->shape[0];
	d->cin = x->shape[1];
	d->h = x->shape[2];
	d->w = x->shape[3];
	d->cout = w->shape[0];
	d->k = w->shape[2];
	d->s = p->stride;
	d->p = p->pad;
	if (w->shape[3] != d->k || d->k < 1)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s must be [Cout,Cin,k,k] with a square k >= 1", wn,
			       sw);
	if (w->shape[1] != d->cin)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s has %lld input channels, %s %s has %lld", wn, sw,
			       (long long)w->shape[1], xn, sx, (long long)d->cin);
	if (d->h + 2 * d->p < d->k || d->w + 2 * d->p < d->k)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s padded by %lld is smaller than the %lldx%lld kernel %s %s",
			       xn, sx, (long long)d->p, (long long)d->k, (long long)d->k, wn, sw);
	d->ho = (d->h + 2 * d->p - d->k) / d->s + 1;
	d->wo = (d->w + 2 * d->p - d->k) / d->s + 1;
	if (y->shape[0] != d->n || y->shape[1] != d->cout || y->shape[2] != d->ho ||
	    y->shape[3] != d->wo)
		return gk_fail(ctx, GK_ERR_SHAPE, op,
			       "%s %s must be [%lld,%lld,%lld,%lld] for %s %s, %s %s, stride %lld, pad %lld",
			       yn, sy, (long long)d->n, (long long)d->cout, (long long)d->ho,
			       (long long)d->wo, xn, sx, wn, sw, (long long)d->s, (long long)d->p);
	d->ckk = d->cin * d->k * d->k;
	d->howo = d->ho * d->wo;
	if (d->ckk > INT32_MAX || d->cout > INT32_MAX || d->n * d->howo > INT32_MAX)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s %s / %s %s too large for BLAS", xn, sx, wn, sw);
	return GK_OK;
}

/* conv_chunk picks how many of a thread's per_n samples share one GEMM. */
static int64_t conv_chunk(const conv_dims *d, int64_t per_n)
{
	int64_t nb = (CONV_MIN_COLS + d->howo - 1) / d->howo;
	if (nb > per_n)
		nb = per_n;
	while (nb > 1 && nb * d->howo * d->ckk > CONV_MAX_COL_ELEMS)
		nb--;
	return nb < 1 ? 1 : nb;
}

/* im2col fills col [ckk, nb*(oy1-oy0)*wo] from output rows [oy0, oy1) of samples x0
 * (dense [nb, cin, h, w]). */
static void im2col(int nt, const conv_dims *d, const float *x0, int64_t nb, float *col,
		   int64_t oy0, int64_t oy1)
{
	const int64_t k = d->k, s = d->s, p = d->p, h = d->h, w = d->w, wo = d->wo;
	const int64_t ho = oy1 - oy0, bw = ho * wo, ncols = nb * bw, rows = d->ckk * nb;
	const int par = rows * bw >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par && nt > 1) num_threads(nt)
	for (int64_t rj = 0; rj < rows; rj++) {
		int64_t r = rj / nb, j = rj % nb;
		int64_t ci = r / (k * k), ky = (r / k) % k, kx = r % k;
		const float *src = x0 + (j * d->cin + ci) * h * w;
		float *dst = col + r * ncols + j * bw;
		if (s == 1 && wo == w) {
			/* "Same" convolution: the row is the plane shifted by off, so one copy does
			 * it; shifted-in elements from a neighbouring row or outside the plane are
			 * then zeroed (columns explicitly, rows by the copy's range). */
			const int64_t hw = h * w, dx = kx - p;
			const int64_t off = (ky - p) * w + dx + oy0 * w; /* dst[i] = src[i + off] */
			int64_t a = off < 0 ? -off : 0, b = hw - off < bw ? hw - off : bw;
			if (a > bw)
				a = bw;
			if (b < a)
				b = a;
			memset(dst, 0, (size_t)a * sizeof(float));
			memcpy(dst + a, src + a + off, (size_t)(b - a) * sizeof(float));
			memset(dst + b, 0, (size_t)(bw - b) * sizeof(float));
			if (dx < 0) {
				for (int64_t oy = 0; oy < ho; oy++)
					for (int64_t ox = 0; ox < -dx && ox < wo; ox++)
						dst[oy * wo + ox] = 0.0f;
			} else if (dx > 0) {
				for (int64_t oy = 0; oy < ho; oy++)
					for (int64_t ox = wo - dx > 0 ? wo - dx : 0; ox < wo; ox++)
						dst[oy * wo + ox] = 0.0f;
			}
			continue;
		}
		/* Output columns whose input column lies inside the image: ox in [lo, hi). */
		int64_t lo = p - kx > 0 ? (p - kx + s - 1) / s : 0;
		int64_t hi = (w - 1 + p - kx) >= 0 ? (w - 1 + p - kx) / s + 1 : 0;
		if (hi > wo)
			hi = wo;
		if (lo > hi)
			lo = hi;
		for (int64_t oy = oy0; oy < oy1; oy++, dst += wo) {
			int64_t iy = oy * s - p + ky;
			if (iy < 0 || iy >= h || lo >= hi) {
				memset(dst, 0, (size_t)wo * sizeof(float));
				continue;
			}
			const float *row = src + iy * w - p + kx;
			for (int64_t ox = 0; ox < lo; ox++)
				dst[ox] = 0.0f;
			if (s == 1) {
				memcpy(dst + lo, row + lo, (size_t)(hi - lo) * sizeof(float));
			} else if (s == 2) { /* a constant stride lets the compiler vectorise */
				for (int64_t ox = lo; ox < hi; ox++)
					dst[ox] = row[2 * ox];
			} else {
				for (int64_t ox = lo; ox < hi; ox++)
					dst[ox] = row[ox * s];
			}
			for (int64_t ox = hi; ox < wo; ox++)
				dst[ox] = 0.0f;
		}
	}
}

/* col2im adds col [ckk, nb*howo] into dx0 (dense [nb, cin, h, w]) after scaling dx0 by
 * beta (beta 0 overwrites). One thread owns each (sample, channel) plane. */
static void col2im(int nt, const conv_dims *d, const float *col, int64_t nb, float *dx0,
		   float beta)
{
	const int64_t k = d->k, s = d->s, p = d->p, h = d->h, w = d->w, ho = d->ho, wo = d->wo;
	const int64_t ncols = nb * d->howo, planes = nb * d->cin;
	const int par = planes * d->howo * k * k >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par && nt > 1) num_threads(nt)
	for (int64_t pl = 0; pl < planes; pl++) {
		int64_t j = pl / d->cin, ci = pl % d->cin;
		float *dst = dx0 + (j * d->cin + ci) * h * w;
		if (beta == 0.0f)
			memset(dst, 0, (size_t)(h * w) * sizeof(float));
		else if (beta != 1.0f)
			for (int64_t i = 0; i < h * w; i++)
				dst[i] *= beta;
		for (int64_t ky = 0; ky < k; ky++) {
			for (int64_t kx = 0; kx < k; kx++) {
				const float *src = col + ((ci * k + ky) * k + kx) * ncols + j * d->howo;
				int64_t lo = p - kx > 0 ? (p - kx + s - 1) / s : 0;
				int64_t hi = (w - 1 + p - kx) >= 0 ? (w - 1 + p - kx) / s + 1 : 0;
				if (hi > wo)
					hi = wo;
				if (lo >= hi)
					continue;
				for (int64_t oy = 0; oy < ho; oy++) {
					int64_t iy = oy * s - p + ky;
					if (iy < 0 || iy >= h)
						continue;
					float *row = dst + iy * w - p + kx;
					const float *sr = src + oy * wo;
					if (s == 1) {
						for (int64_t ox = lo; ox < hi; ox++)
							row[ox] += sr[ox];
					} else if (s == 2) {
						for (int64_t ox = lo; ox < hi; ox++)
							row[2 * ox] += sr[ox];
					} else {
						for (int64_t ox = lo; ox < hi; ox++)
							row[ox * s] += sr[ox];
					}
				}
			}
		}
	}
}

/* gather_chunk copies nb samples of a dense [.., c, hw] tensor into [c, nb*hw]. */
static void gather_chunk(int nt, const float *src, int64_t nb, int64_t c, int64_t hw,
			 float *dst)
{
	const int par = nb * c * hw >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par && nt > 1) num_threads(nt)
	for (int64_t cj = 0; cj < c * nb; cj++) {
		int64_t ci = cj / nb, j = cj % nb;
		memcpy(dst + ci * nb * hw + j * hw, src + (j * c + ci) * hw, (size_t)hw * sizeof(float));
	}
}

/* scatter_chunk writes dst[j, c, hw] = src[c, j*hw] + beta * dst (beta 0 overwrites). */
static void scatter_chunk(int nt, const float *src, int64_t nb, int64_t c, int64_t hw,
			  float *dst, float beta)
{
	const int par = nb * c * hw >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par && nt > 1) num_threads(nt)
	for (int64_t cj = 0; cj < c * nb; cj++) {
		int64_t ci = cj / nb, j = cj % nb;
		const float *s = src + ci * nb * hw + j * hw;
		float *o = dst + (j * c + ci) * hw;
		if (beta == 0.0f)
			memcpy(o, s, (size_t)hw * sizeof(float));
		else
			for (int64_t i = 0; i < hw; i++)
				o[i] = s[i] + beta * o[i];
	}
}


/* A conv plan: teams threads each own per_n consecutive samples (the last ones fewer,
 * possibly none) and process them nb at a time. inner is the thread count each team may use
 * inside its copies (1 when the batch is split, all threads otherwise). */
typedef struct conv_plan {
	int teams, inner;
	int64_t per_n, nb;
	int64_t rb; /* output rows per im2col block: ho, or fewer for one large image */
} conv_plan;

static conv_plan conv_plan_of(gk_ctx *ctx, const conv_dims *d)
{
	conv_plan pl;
	int t = ctx->threads < 1 ? 1 : ctx->threads > 64 ? 64 : ctx->threads;
	pl.teams = d->n >= t ? t : 1;
	pl.inner = pl.teams > 1 ? 1 : t;
	pl.per_n = (d->n + pl.teams - 1) / pl.teams;
	pl.nb = conv_chunk(d, pl.per_n);
	/* A single image whose column matrix exceeds the bound is done in blocks of rows. */
	pl.rb = d->ho;
	if (pl.nb == 1 && d->ckk * d->howo > CONV_MAX_COL_ELEMS && d->wo > 0) {
		pl.rb = CONV_MAX_COL_ELEMS / (d->ckk * d->wo);
		if (pl.rb < 1)
			pl.rb = 1;
	}
	return pl;
}

static void team_range(const conv_plan *pl, const conv_dims *d, int team, int64_t *lo, int64_t *hi)
{
	*lo = team * pl->per_n;
	*hi = *lo + pl->per_n;
	if (*hi > d->n)
		*hi = d->n;
	if (*lo > *hi)
		*lo = *hi;
}

/* With several teams, OpenBLAS runs single-threaded inside each; blas_enter returns the
 * thread count to restore. */
static int blas_enter(const conv_plan *pl)
{
	int prev = openblas_get_num_threads();
	openblas_set_num_threads(pl->teams > 1 ? 1 : pl->inner);
	return prev;
}

static void blas_leave(int prev) { openblas_set_num_threads(prev); }

static int is_pointwise(const conv_dims *d) { return d->k == 1 && d->s == 1 && d->p == 0; }

/* wino_of plans a Winograd run (winograd.c) for 3x3 stride-1 pad-1 convs of enough channels
 * and samples; x/y are the forward roles (for the data gradient, cin and cout swap). */
static int wino_of(gk_ctx *ctx, const conv_dims *d, int transposed, gk_wino *wp)
{
#ifdef GK_NO_WINOGRAD
	(void)ctx, (void)d, (void)transposed, (void)wp;
	return 0;
#else
	if (d->k != 3 || d->s != 1 || d->p != 1)
		return 0;
	return gk_wino_plan(wp, ctx->threads, d->n, transposed ? d->cout : d->cin,
			    transposed ? d->cin : d->cout, d->h, d->w);
#endif
}

/* wino2_of plans a polyphase Winograd run (winograd_s2.c) for 4x4 stride-2 pad-1 convs of
 * even-sized inputs (forward roles in all three passes). */
static int wino2_of(gk_ctx *ctx, const conv_dims *d, gk_wino *wp)
{
#ifdef GK_NO_WINOGRAD
	(void)ctx, (void)d, (void)wp;
	return 0;
#else
	if (d->k != 4 || d->s != 2 || d->p != 1)
		return 0;
	return gk_wino2_plan(wp, ctx->threads, d->n, d->cin, d->cout, d->h, d->w);
#endif
}

/* ---- "same" convolutions as k*k shifted GEMMs ---------------------------------------
 * For stride 1 and output size = input size, copy each image once into a zero-padded plane
 * of width Wp = w + 2p; then output position q = oy*Wp + ox reads tap (ky, kx) at
 * q + ky*Wp + kx of the padded plane, so each tap is a plain GEMM over a shifted view
 * (K = Cin) accumulated into a [Cout, h*Wp] buffer, and the 2p junk columns of each row
 * are dropped when it is copied out. This reads the image once instead of k*k times
 * (im2col), at the price of computing the junk columns: worth it for wide images. */
#ifndef CONV_SHIFT_MIN_W
#define CONV_SHIFT_MIN_W 24
#endif

static int use_shift(const conv_dims *d, const conv_plan *pl)
{
	if (d->s != 1 || d->k < 2 || d->wo != d->w || d->ho != d->h || pl->nb != 1 ||
	    d->w < CONV_SHIFT_MIN_W)
		return 0;
	const int64_t wp = d->w + 2 * d->p, hp = d->h + 2 * d->p;
	return d->cin * (hp * wp + d->k) + d->cout * d->h * wp <= CONV_MAX_COL_ELEMS;
}

static int64_t shift_scratch(const conv_dims *d)
{
	const int64_t wp = d->w + 2 * d->p, hp = d->h + 2 * d->p;
	return d->k * d->k * d->cout * d->cin + d->cin * (hp * wp + d->k) + d->cout * d->h * wp;
}

static void fwd_shift_range(const conv_dims *d, int64_t lo, int64_t hi, const float *x,
			    const float *wmat, float *y, float alpha, float beta, float *scr)
{
	const int64_t k = d->k, kk = k * k, p = d->p, h = d->h, w = d->w;
	const int64_t wp = w + 2 * p, hp = h + 2 * p, plane = hp * wp + k, nq = h * wp;
	const int64_t cin = d->cin, cout = d->cout;
	float *wt = scr;                  /* [kk][cout][cin] */
	float *xp = wt + kk * cout * cin; /* [cin][plane] */
	float *out = xp + cin * plane;    /* [cout][h*wp] */
	for (int64_t co = 0; co < cout; co++)
		for (int64_t ci = 0; ci < cin; ci++)
			for (int64_t t = 0; t < kk; t++)
				wt[(t * cout + co) * cin + ci] = wmat[co * d->ckk + ci * kk + t];
	memset(xp, 0, (size_t)(cin * plane) * sizeof(float));
	for (int64_t n = lo; n < hi; n++) {
		const float *xs = x + n * cin * h * w;
		for (int64_t ci = 0; ci < cin; ci++)
			for (int64_t iy = 0; iy < h; iy++)
				memcpy(xp + ci * plane + (iy + p) * wp + p, xs + (ci * h + iy) * w,
				       (size_t)w * sizeof(float));
		for (int64_t t = 0; t < kk; t++)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)cout, (int)nq, (int)cin,
				    alpha, wt + t * cout * cin, (int)cin, xp + (t / k) * wp + (t % k),
				    (int)plane, t == 0 ? 0.0f : 1.0f, out, (int)nq);
		float *ys = y + n * cout * h * w;
		for (int64_t co = 0; co < cout; co++)
			for (int64_t oy = 0; oy < h; oy++) {
				const float *src = out + co * nq + oy * wp;
				float *dst = ys + (co * h + oy) * w;
				if (beta == 0.0f)
					memcpy(dst, src, (size_t)w * sizeof(float));
				else
					for (int64_t ox = 0; ox < w; ox++)
						dst[ox] = src[ox] + beta * dst[ox];
			}
	}
}

/* fwd_scratch is the scratch one team of conv_forward needs, in floats. */
static int64_t fwd_scratch(const conv_dims *d, const conv_plan *pl)
{
	const int64_t ncols = pl->nb * pl->rb * d->wo;
	const int direct = pl->nb == 1;
	int64_t n = (is_pointwise(d) && direct ? 0 : d->ckk * ncols) + (direct ? 0 : d->cout * ncols);
	if (use_shift(d, pl) && shift_scratch(d) > n)
		n = shift_scratch(d);
	return n;
}

/* fwd_range computes y = alpha * conv(x, w) + beta * y for samples [lo, hi). wmat is the
 * weight as a [cout, ckk] row-major matrix; scr holds fwd_scratch floats. One sample at a
 * time (direct), the GEMM writes straight into y, a block of output rows at a time. */
static void fwd_range(const conv_dims *d, const conv_plan *pl, int64_t lo, int64_t hi,
		      const float *x, const float *wmat, float *y, float alpha, float beta, float *scr)
{
	const int64_t nb = pl->nb, ncols = nb * d->howo;
	const int direct = nb == 1;
	const int pw = is_pointwise(d), nt = pl->inner;
	float *col = scr;
	if (use_shift(d, pl)) {
		fwd_shift_range(d, lo, hi, x, wmat, y, alpha, beta, scr);
		return;
	}
	if (direct) {
		for (int64_t n = lo; n < hi; n++) {
			const float *xs = x + n * d->cin * d->h * d->w;
			float *ys = y + n * d->cout * d->howo;
			if (pw) {
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d->cout,
					    (int)d->howo, (int)d->ckk, alpha, wmat, (int)d->ckk, xs,
					    (int)d->howo, beta, ys, (int)d->howo);
				continue;
			}
			for (int64_t oy0 = 0; oy0 < d->ho; oy0 += pl->rb) {
				int64_t oy1 = oy0 + pl->rb < d->ho ? oy0 + pl->rb : d->ho;
				int64_t cols = (oy1 - oy0) * d->wo;
				im2col(nt, d, xs, 1, col, oy0, oy1);
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d->cout,
					    (int)cols, (int)d->ckk, alpha, wmat, (int)d->ckk, col, (int)cols,
					    beta, ys + oy0 * d->wo, (int)d->howo);
			}
		}
		return;
	}
	float *out = col + d->ckk * ncols;
	for (int64_t n0 = lo; n0 < hi; n0 += nb) {
		int64_t m = hi - n0 < nb ? hi - n0 : nb, cols = m * d->howo;
		const float *xs = x + n0 * d->cin * d->h * d->w;
		if (pw)
			gather_chunk(nt, xs, m, d->cin, d->howo, col);
		else
			im2col(nt, d, xs, m, col, 0, d->ho);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d->cout, (int)cols,
			    (int)d->ckk, alpha, wmat, (int)d->ckk, col, (int)cols, 0.0f, out, (int)cols);
		scatter_chunk(nt, out, m, d->cout, d->howo, y + n0 * d->cout * d->howo, beta);
	}
}

/* conv_forward runs fwd_range over the plan's teams; scr holds teams * fwd_scratch. */
static void conv_forward(const conv_dims *d, const conv_plan *pl, const float *x,
			 const float *wmat, float *y, float alpha, float beta, float *scr)
{
	const int64_t per = fwd_scratch(d, pl);
	int prev = blas_enter(pl);
	if (pl->teams == 1) {
		fwd_range(d, pl, 0, d->n, x, wmat, y, alpha, beta, scr);
	} else {
#pragma omp parallel num_threads(pl->teams)
		{
			/* A thread may run several teams if OpenMP grants fewer threads. */
			for (int t = omp_get_thread_num(); t < pl->teams; t += omp_get_num_threads()) {
				int64_t lo, hi;
				team_range(pl, d, t, &lo, &hi);
				fwd_range(d, pl, lo, hi, x, wmat, y, alpha, beta, scr + t * per);
			}
		}
	}
	blas_leave(prev);
}

static gk_status scratch_oom(gk_ctx *ctx, const char *op, int64_t n)
{
	return gk_fail(ctx, GK_ERR_OOM, op, "out of memory for %lld floats of scratch", (long long)n);
}

/* scale_or_zero sets t = beta * t (beta 0 writes zeros). */
static gk_status scale_or_zero(gk_ctx *ctx, const gk_tensor *t, float beta)
{
	gk_tensor c = *t;
	return beta == 0.0f ? gk_fill(ctx, &c, 0.0f) : gk_unary(ctx, GK_IDENTITY, &c, &c, beta, 0.0f);
}

/* ---- pointwise convolutions with few output channels (toRGB) ----------------------------
 * A 1x1 conv to 3 channels is a GEMM with 3 rows: BLAS packing costs more than the
 * arithmetic, and the op is bound by reading x once. These loops stream x (or write dx)
 * once, with the few output rows held in L1. */
#define PW_SMALL_MAX 8
#define PW_BLOCK 512

static int pw_small(const conv_dims *d) { return is_pointwise(d) && d->cout <= PW_SMALL_MAX; }

/* y[n,co,:] = alpha * sum_ci w[co,ci] x[n,ci,:] + beta * y */
static void pw_small_fwd(gk_ctx *ctx, const conv_dims *d, const float *x, const float *w, float *y,
			 float alpha, float beta)
{
	const int64_t hw = d->howo, nblk = (hw + PW_BLOCK - 1) / PW_BLOCK, co_n = d->cout;
	const int par = d->n * d->cin * hw * co_n >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par) num_threads(ctx->threads)
	for (int64_t nb = 0; nb < d->n * nblk; nb++) {
		int64_t n = nb / nblk, b0 = (nb % nblk) * PW_BLOCK;
		int64_t len = hw - b0 < PW_BLOCK ? hw - b0 : PW_BLOCK;
		float acc[PW_SMALL_MAX][PW_BLOCK];
		for (int64_t co = 0; co < co_n; co++)
			memset(acc[co], 0, (size_t)len * sizeof(float));
		for (int64_t ci = 0; ci < d->cin; ci++) {
			const float *xr = x + (n * d->cin + ci) * hw + b0;
			for (int64_t co = 0; co < co_n; co++) {
				const float wv = w[co * d->cin + ci];
				float *a = acc[co];
#pragma omp simd
				for (int64_t i = 0; i < len; i++)
					a[i] += wv * xr[i];
			}
		}
		for (int64_t co = 0; co < co_n; co++) {
			float *yr = y + (n * co_n + co) * hw + b0;
			const float *a = acc[co];
			if (beta == 0.0f)
				for (int64_t i = 0; i < len; i++)
					yr[i] = alpha * a[i];
			else
				for (int64_t i = 0; i < len; i++)
					yr[i] = alpha * a[i] + beta * yr[i];
		}
	}
}

/* dx[n,ci,:] = alpha * sum_co w[co,ci] dy[n,co,:] + beta * dx */
static void pw_small_bwd_data(gk_ctx *ctx, const conv_dims *d, const float *dy, const float *w,
			      float *dx, float alpha, float beta)
{
	const int64_t hw = d->howo, co_n = d->cout;
	const int par = d->n * d->cin * hw * co_n >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par) num_threads(ctx->threads)
	for (int64_t nc = 0; nc < d->n * d->cin; nc++) {
		int64_t n = nc / d->cin, ci = nc % d->cin;
		float *o = dx + nc * hw;
		if (beta == 0.0f)
			memset(o, 0, (size_t)hw * sizeof(float));
		else if (beta != 1.0f)
			for (int64_t i = 0; i < hw; i++)
				o[i] *= beta;
		for (int64_t co = 0; co < co_n; co++) {
			const float wv = alpha * w[co * d->cin + ci];
			const float *g = dy + (n * co_n + co) * hw;
#pragma omp simd
			for (int64_t i = 0; i < hw; i++)
				o[i] += wv * g[i];
		}
	}
}

/* dw[co,ci] = alpha * sum_{n,hw} dy[n,co,:] x[n,ci,:] + beta * dw, summed per sample in
 * float and across samples in double (a fixed order, whatever the thread count). */
static void pw_small_bwd_filter(gk_ctx *ctx, const conv_dims *d, const float *x, const float *dy,
				float *dw, float alpha, float beta)
{
	const int64_t hw = d->howo, co_n = d->cout;
	const int par = d->n * d->cin * hw * co_n >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par) num_threads(ctx->threads)
	for (int64_t ci = 0; ci < d->cin; ci++) {
		double tot[PW_SMALL_MAX] = {0};
		for (int64_t n = 0; n < d->n; n++) {
			const float *xr = x + (n * d->cin + ci) * hw;
			for (int64_t co = 0; co < co_n; co++) {
				const float *g = dy + (n * co_n + co) * hw;
				float s = 0.0f;
#pragma omp simd reduction(+ : s)
				for (int64_t i = 0; i < hw; i++)
					s += g[i] * xr[i];
				tot[co] += s;
			}
		}
		for (int64_t co = 0; co < co_n; co++) {
			float *o = dw + co * d->cin + ci;
			float v = (float)(alpha * tot[co]);
			*o = beta == 0.0f ? v : v + beta * *o;
		}
	}
}

gk_status gk_conv2d(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *w, const gk_tensor *y,
		    const gk_conv_params *p)
{
	conv_dims d;
	gk_status st = conv_check(ctx, "conv2d", "x", x, "w", w, "y", y, p, &d);
	if (st != GK_OK)
		return st;
	if (d.n == 0 || d.cout == 0 || d.howo == 0)
		return GK_OK;
	if (d.cin == 0)
		return scale_or_zero(ctx, y, p->beta);
	if (pw_small(&d)) {
		pw_small_fwd(ctx, &d, gk_ptr(x), gk_ptr(w), gk_ptr(y), p->alpha, p->beta);
		return GK_OK;
	}
	gk_wino wp;
	if (wino_of(ctx, &d, 0, &wp)) {
		int64_t need = gk_wino_fwd_scratch(&wp);
		float *scr = gk_scratch(ctx, need);
		if (scr == NULL)
			return scratch_oom(ctx, "conv2d", need);
		gk_wino_fwd(&wp, gk_ptr(x), gk_ptr(w), 0, gk_ptr(y), p->alpha, p->beta, scr);
		return GK_OK;
	}
	if (wino2_of(ctx, &d, &wp)) {
		int64_t need = gk_wino2_fwd_scratch(&wp);
		float *scr = gk_scratch(ctx, need);
		if (scr == NULL)
			return scratch_oom(ctx, "conv2d", need);
		gk_wino2_fwd(&wp, gk_ptr(x), gk_ptr(w), gk_ptr(y), p->alpha, p->beta, scr);
		return GK_OK;
	}
	conv_plan pl = conv_plan_of(ctx, &d);
	int64_t need = pl.teams * fwd_scratch(&d, &pl);
	float *scr = gk_scratch(ctx, need > 0 ? need : 1);
	if (scr == NULL)
		return scratch_oom(ctx, "conv2d", need);
	conv_forward(&d, &pl, gk_ptr(x), gk_ptr(w), gk_ptr(y), p->alpha, p->beta, scr);
	return GK_OK;
}

/* bwd_data_range: for samples [lo, hi), col = alpha * w^T dy, then col2im into dx. */
static void bwd_data_range(const conv_dims *d, const conv_plan *pl, int64_t lo, int64_t hi,
			   const float *dy, const float *wp, float *dx, float alpha, float beta,
			   float *scr)
{
	const int64_t nb = pl->nb, ncols = nb * d->howo;
	const int direct = nb == 1, nt = pl->inner;
	float *col = scr, *g = scr + d->ckk * ncols;
	for (int64_t n0 = lo; n0 < hi; n0 += nb) {
		int64_t m = hi - n0 < nb ? hi - n0 : nb, cols = m * d->howo;
		const float *dys = dy + n0 * d->cout * d->howo;
		const float *b = dys;
		if (!direct) {
			gather_chunk(nt, dys, m, d->cout, d->howo, g);
			b = g;
		}
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d->ckk, (int)cols, (int)d->cout,
			    alpha, wp, (int)d->ckk, b, (int)cols, 0.0f, col, (int)cols);
		col2im(nt, d, col, m, dx + n0 * d->cin * d->h * d->w, beta);
	}
}

gk_status gk_conv2d_bwd_data(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *w,
			     const gk_tensor *dx, const gk_conv_params *p)
{
	const char *op = "conv2d_bwd_data";
	conv_dims d;
	gk_status st = conv_check(ctx, op, "dx", dx, "w", w, "dy", dy, p, &d);
	if (st != GK_OK)
		return st;
	if (d.n == 0 || d.cin == 0 || d.h * d.w == 0)
		return GK_OK;
	if (d.cout == 0 || d.howo == 0)
		return scale_or_zero(ctx, dx, p->beta);
	const float *wp = gk_ptr(w);
	if (pw_small(&d)) {
		pw_small_bwd_data(ctx, &d, gk_ptr(dy), wp, gk_ptr(dx), p->alpha, p->beta);
		return GK_OK;
	}
	gk_wino wino;
	if (wino_of(ctx, &d, 1, &wino)) {
		int64_t need = gk_wino_fwd_scratch(&wino);
		float *scr = gk_scratch(ctx, need);
		if (scr == NULL)
			return scratch_oom(ctx, op, need);
		gk_wino_fwd(&wino, gk_ptr(dy), wp, 1, gk_ptr(dx), p->alpha, p->beta, scr);
		return GK_OK;
	}
	if (wino2_of(ctx, &d, &wino)) {
		int64_t need = gk_wino2_bwd_data_scratch(&wino);
		float *scr = gk_scratch(ctx, need);
		if (scr == NULL)
			return scratch_oom(ctx, op, need);
		gk_wino2_bwd_data(&wino, gk_ptr(dy), wp, gk_ptr(dx), p->alpha, p->beta, scr);
		return GK_OK;
	}
	if (d.s == 1 && d.p <= d.k - 1) {
		/* Stride 1: the gradient is a forward convolution of dy with the flipped,
		 * transposed kernel w'[ci,co,ky,kx] = w[co,ci,k-1-ky,k-1-kx] and pad k-1-p, which
		 * reads through im2col instead of scattering through col2im. */
		conv_dims t = d;
		t.cin = d.cout;
		t.h = d.ho;
		t.w = d.wo;
		t.cout = d.cin;
		t.p = d.k - 1 - d.p;
		t.ho = d.h;
		t.wo = d.w;
		t.ckk = t.cin * t.k * t.k;
		t.howo = t.ho * t.wo;
		conv_plan pl = conv_plan_of(ctx, &t);
		const int64_t kk = d.k * d.k, wn = d.cout * d.cin * kk;
		const int64_t need = wn + pl.teams * fwd_scratch(&t, &pl);
		float *wt = gk_scratch(ctx, need);
		if (wt == NULL)
			return scratch_oom(ctx, op, need);
		for (int64_t co = 0; co < d.cout; co++)
			for (int64_t ci = 0; ci < d.cin; ci++)
				for (int64_t q = 0; q < kk; q++)
					wt[(ci * d.cout + co) * kk + (kk - 1 - q)] = wp[(co * d.cin + ci) * kk + q];
		conv_forward(&t, &pl, gk_ptr(dy), wt, gk_ptr(dx), p->alpha, p->beta, wt + wn);
		return GK_OK;
	}
	/* General stride: col = w^T dy per chunk, then col2im into dx.
	 * TODO(#2): block this path by output rows like the forward: one huge image needs
	 * ckk*Ho*Wo floats of scratch here (67 MB for a 64-channel 4x4 stride-2 conv at 256 px). */
	conv_plan pl = conv_plan_of(ctx, &d);
	const int64_t ncols = pl.nb * d.howo;
	const int64_t per = d.ckk * ncols + (pl.nb == 1 ? 0 : d.cout * ncols);
	float *scr = gk_scratch(ctx, pl.teams * per);
	if (scr == NULL)
		return scratch_oom(ctx, op, pl.teams * per);
	int prev = blas_enter(&pl);
	if (pl.teams == 1) {
		bwd_data_range(&d, &pl, 0, d.n, gk_ptr(dy), wp, gk_ptr(dx), p->alpha, p->beta, scr);
	} else {
#pragma omp parallel num_threads(pl.teams)
		{
			for (int t = omp_get_thread_num(); t < pl.teams; t += omp_get_num_threads()) {
				int64_t lo, hi;
				team_range(&pl, &d, t, &lo, &hi);
				bwd_data_range(&d, &pl, lo, hi, gk_ptr(dy), wp, gk_ptr(dx), p->alpha,
					       p->beta, scr + t * per);
			}
		}
	}
	blas_leave(prev);
	return GK_OK;
}

/* bwd_filter_range: acc = alpha * sum over samples [lo, hi) of dy col^T + beta * acc.
 * Returns 0 when the range is empty (acc untouched). */
static int bwd_filter_range(const conv_dims *d, const conv_plan *pl, int64_t lo, int64_t hi,
			    const float *x, const float *dy, float *acc, float alpha, float beta,
			    float *scr)
{
	const int64_t nb = pl->nb, ncols = nb * d->howo;
	const int direct = nb == 1, pw = is_pointwise(d), nt = pl->inner;
	float *col = scr;
	int touched = 0;
	if (direct) {
		for (int64_t n = lo; n < hi; n++) {
			const float *xs = x + n * d->cin * d->h * d->w;
			const float *dys = dy + n * d->cout * d->howo;
			if (pw) {
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d->cout,
					    (int)d->ckk, (int)d->howo, alpha, dys, (int)d->howo, xs,
					    (int)d->howo, touched ? 1.0f : beta, acc, (int)d->ckk);
				touched = 1;
				continue;
			}
			for (int64_t oy0 = 0; oy0 < d->ho; oy0 += pl->rb) {
				int64_t oy1 = oy0 + pl->rb < d->ho ? oy0 + pl->rb : d->ho;
				int64_t cols = (oy1 - oy0) * d->wo;
				im2col(nt, d, xs, 1, col, oy0, oy1);
				/* acc[cout, ckk] += dy[cout, block] * col[ckk, block]^T */
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d->cout,
					    (int)d->ckk, (int)cols, alpha, dys + oy0 * d->wo, (int)d->howo,
					    col, (int)cols, touched ? 1.0f : beta, acc, (int)d->ckk);
				touched = 1;
			}
		}
		return touched;
	}
	float *g = col + d->ckk * ncols;
	for (int64_t n0 = lo; n0 < hi; n0 += nb) {
		int64_t m = hi - n0 < nb ? hi - n0 : nb, cols = m * d->howo;
		const float *xs = x + n0 * d->cin * d->h * d->w;
		gather_chunk(nt, dy + n0 * d->cout * d->howo, m, d->cout, d->howo, g);
		if (pw)
			gather_chunk(nt, xs, m, d->cin, d->howo, col);
		else
			im2col(nt, d, xs, m, col, 0, d->ho);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d->cout, (int)d->ckk, (int)cols,
			    alpha, g, (int)cols, col, (int)cols, touched ? 1.0f : beta, acc, (int)d->ckk);
		touched = 1;
	}
	return touched;
}

gk_status gk_conv2d_bwd_filter(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *dy,
			       const gk_tensor *dw, const gk_conv_params *p)
{
	const char *op = "conv2d_bwd_filter";
	conv_dims d;
	gk_status st = conv_check(ctx, op, "x", x, "dw", dw, "dy", dy, p, &d);
	if (st != GK_OK)
		return st;
	if (d.cout == 0 || d.ckk == 0)
		return GK_OK;
	if (d.n == 0 || d.howo == 0)
		return scale_or_zero(ctx, dw, p->beta);
	if (pw_small(&d)) {
		pw_small_bwd_filter(ctx, &d, gk_ptr(x), gk_ptr(dy), gk_ptr(dw), p->alpha, p->beta);
		return GK_OK;
	}
	gk_wino wino;
	if (wino_of(ctx, &d, 0, &wino)) {
		int64_t need = gk_wino_bwd_filter_scratch(&wino);
		float *scr = gk_scratch(ctx, need);
		if (scr == NULL)
			return scratch_oom(ctx, op, need);
		gk_wino_bwd_filter(&wino, gk_ptr(x), gk_ptr(dy), gk_ptr(dw), p->alpha, p->beta, scr);
		return GK_OK;
	}
	if (wino2_of(ctx, &d, &wino)) {
		int64_t need = gk_wino2_bwd_filter_scratch(&wino);
		float *scr = gk_scratch(ctx, need);
		if (scr == NULL)
			return scratch_oom(ctx, op, need);
		gk_wino2_bwd_filter(&wino, gk_ptr(x), gk_ptr(dy), gk_ptr(dw), p->alpha, p->beta, scr);
		return GK_OK;
	}
	conv_plan pl = conv_plan_of(ctx, &d);
	const int64_t wn = d.cout * d.ckk;
	const int64_t per = fwd_scratch(&d, &pl); /* the same col and gather buffers */
	/* Team 0 accumulates into dw; the others into partials after the per-team scratch. */
	const int64_t need = pl.teams * per + (pl.teams - 1) * wn;
	float *scr = gk_scratch(ctx, need > 0 ? need : 1);
	if (scr == NULL)
		return scratch_oom(ctx, op, need);
	float *partial = scr + pl.teams * per;
	float *dwp = gk_ptr(dw);
	int prev = blas_enter(&pl);
	if (pl.teams == 1) {
		bwd_filter_range(&d, &pl, 0, d.n, gk_ptr(x), gk_ptr(dy), dwp, p->alpha, p->beta, scr);
	} else {
		int used[64] = {0};
		const int teams = pl.teams;
#pragma omp parallel num_threads(teams)
		{
			for (int t = omp_get_thread_num(); t < teams; t += omp_get_num_threads()) {
				int64_t lo, hi;
				team_range(&pl, &d, t, &lo, &hi);
				float *acc = t == 0 ? dwp : partial + (t - 1) * wn;
				used[t] = bwd_filter_range(&d, &pl, lo, hi, gk_ptr(x), gk_ptr(dy), acc,
							   p->alpha, t == 0 ? p->beta : 0.0f,
							   scr + t * per);
			}
#pragma omp barrier
#pragma omp for schedule(static)
			for (int64_t i = 0; i < wn; i++) {
				float s = dwp[i];
				for (int u = 1; u < teams; u++)
					if (used[u])
						s += partial[(u - 1) * wn + i];
				dwp[i] = s;
			}
		}
	}
	blas_leave(prev);
	return GK_OK;
}
