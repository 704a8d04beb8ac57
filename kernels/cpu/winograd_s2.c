/* winograd_s2.c — CPU backend: 4x4 stride-2 pad-1 convolutions (SG's fused down-conv and,
 * through the data gradient, its fused up-conv) by polyphase Winograd F(2x2, 2x2).
 *
 * Per axis, output o = 2T + r (r = 0, 1) reads x[2o-1 .. 2o+2]. Split the taps by the parity
 * of the input index: y[o] = (K1 x[2o] + K3 x[2o+2]) + (K0 x[2o-1] + K2 x[2o+1]), two 2-tap
 * convolutions of the even samples e[m] = x[2m] and the odd samples q[m] = x[2m-1]. Each is
 * F(2, 2) on a window of 3 samples: for the tile T (outputs 2T, 2T+1),
 *   even: d = (x[4T], x[4T+2], x[4T+4]),   g = (K1, K3)
 *   odd:  d = (x[4T-1], x[4T+1], x[4T+3]), g = (K0, K2)
 *   B^T d = (d0 - d1, d1, d2 - d1),  G g = (g0, g0 + g1, g1),  y = A^T m = (m0 + m1, m1 + m2).
 * In 2-D the four phase pairs share the output transform, so the sums over phases and input
 * channels are one GEMM per transformed position: 9 GEMMs [Cout, 4 Cin] x [4 Cin, tiles],
 * 9 multiplies per 2x2 output tile and input channel-phase instead of 16: 1.78x fewer than
 * the direct conv, and the transformed input is 2.25 floats per input float instead of
 * im2col's 4.
 *
 * The data gradient is the adjoint: dV = U^T (A dY A^T) (9 GEMMs [4 Cin, Cout] x
 * [Cout, tiles]), then B dV B^T added back into the input positions (neighbouring tiles
 * overlap by 2 samples). The weight gradient: dU = (A dY A^T) V^T, then dK = G^T dU G.
 * Threads and chunks as in winograd.c. Needs even input sizes (the output is half of it).
 */
#include <cblas.h>
#include <omp.h>

#include "internal.h"

#ifndef WINO2_COLS
#define WINO2_COLS 512
#endif
#define WINO2_MAX_ELEMS (8 << 20)

int gk_wino2_plan(gk_wino *p, int threads, int64_t n, int64_t cin, int64_t cout, int64_t h,
		  int64_t w)
{
	int t = threads < 1 ? 1 : threads > 64 ? 64 : threads;
	if (n < t || cin < WINO_MIN_CHANNELS || cout < WINO_MIN_CHANNELS || h < 2 || w < 2 ||
	    h % 2 || w % 2)
		return 0;
	p->n = n;
	p->cin = cin;
	p->cout = cout;
	p->h = h;
	p->w = w;
	p->ho = h / 2;
	p->wo = w / 2;
	p->th = (p->ho + 1) / 2;
	p->tw = (p->wo + 1) / 2;
	p->tiles = p->th * p->tw;
	p->teams = t;
	p->per_n = (n + t - 1) / t;
	p->nb = WINO2_COLS / p->tiles;
	if (p->nb < 1)
		p->nb = 1;
	if (p->nb > p->per_n)
		p->nb = p->per_n;
	p->cols = p->nb * p->tiles;
	if (9 * (4 * cin + cout) * p->cols > WINO2_MAX_ELEMS || p->cols > INT32_MAX / 16 ||
	    4 * cin > INT32_MAX)
		return 0;
	return 1;
}

/* Per team: V [9][4 cin][cols], G [9][cout][cols], 6 padded input rows of 4tw+2 (input
 * columns -1 .. 4tw) and 2 output rows of 2tw. */
static int64_t wpad(const gk_wino *p) { return 4 * p->tw + 2; }

static int64_t team2_scratch(const gk_wino *p)
{
	return 9 * (4 * p->cin + p->cout) * p->cols + 6 * wpad(p) + 4 * p->tw + 16;
}

int64_t gk_wino2_fwd_scratch(const gk_wino *p)
{
	return 9 * p->cout * 4 * p->cin + p->teams * team2_scratch(p);
}

int64_t gk_wino2_bwd_data_scratch(const gk_wino *p) { return gk_wino2_fwd_scratch(p); }

int64_t gk_wino2_bwd_filter_scratch(const gk_wino *p)
{
	return p->teams * (team2_scratch(p) + 9 * p->cout * 4 * p->cin);
}

static void team2_samples(const gk_wino *p, int team, int64_t *lo, int64_t *hi)
{
	*lo = team * p->per_n;
	*hi = *lo + p->per_n;
	if (*hi > p->n)
		*hi = p->n;
	if (*lo > *hi)
		*lo = *hi;
}

/* kernel index of tap u (0, 1) of phase ph (0 even, 1 odd): even (K1, K3), odd (K0, K2). */
static inline int ktap(int ph, int u) { return u == 0 ? 1 - ph : 3 - ph; }

/* weights2 sets u[t][co][ph*cin + ci] = (G g G^T)[t] of the 2x2 phase kernels of
 * k [cout][cin][4][4]. */
static void weights2(const gk_wino *p, const float *k, float *u)
{
	const int64_t cin = p->cin, cout = p->cout, kc = 4 * cin;
	const int par = cout * cin * 64 >= GK_PAR_MIN;
#pragma omp parallel for schedule(static) if (par) num_threads(p->teams)
	for (int64_t co = 0; co < cout; co++)
		for (int64_t ci = 0; ci < cin; ci++) {
			const float *kk = k + (co * cin + ci) * 16;
			for (int py = 0; py < 2; py++)
				for (int px = 0; px < 2; px++) {
					float g[2][2], a[3][2];
					for (int r = 0; r < 2; r++)
						for (int c = 0; c < 2; c++)
							g[r][c] = kk[ktap(py, r) * 4 + ktap(px, c)];
					for (int c = 0; c < 2; c++) {
						a[0][c] = g[0][c];
						a[1][c] = g[0][c] + g[1][c];
						a[2][c] = g[1][c];
					}
					float *o = u + co * kc + (py * 2 + px) * cin + ci;
					for (int i = 0; i < 3; i++) {
						o[(i * 3 + 0) * cout * kc] = a[i][0];
						o[(i * 3 + 1) * cout * kc] = a[i][0] + a[i][1];
						o[(i * 3 + 2) * cout * kc] = a[i][1];
					}
				}
		}
}

/* input2 fills v[t][ph*cin + ci][col0 + ty*tw + tx] (row stride ldv) for the (cin, h, w)
 * image x. */
static void input2(const gk_wino *p, const float *x, float *v, int64_t ldv, int64_t col0,
		   float *rows)
{
	const int64_t h = p->h, w = p->w, tw = p->tw, wp = wpad(p), cin = p->cin, kc = 4 * cin;
	float *r[6];
	for (int i = 0; i < 6; i++)
		r[i] = rows + i * wp;
	for (int64_t ci = 0; ci < cin; ci++) {
		const float *plane = x + ci * h * w;
		for (int64_t ty = 0; ty < p->th; ty++) {
			/* r[k] holds input row 4ty - 1 + k at column offset 1. */
			for (int k = 0; k < 6; k++)
				wino_load_padded(r[k], plane, 4 * ty - 1 + k, h, w, wp);
			/* Row transform per phase: even rows (1, 3, 5), odd rows (0, 2, 4) of r. */
			for (int py = 0; py < 2; py++) {
				const float *d0 = r[1 - py], *d1 = r[3 - py], *d2 = r[5 - py];
				for (int i = 0; i < 3; i++) {
					/* row i of B^T d: d0-d1, d1, d2-d1 (computed per column). */
					for (int px = 0; px < 2; px++) {
						/* even columns 4tx + (0, 2, 4) -> padded 1, 3, 5; odd
						 * 4tx + (-1, 1, 3) -> 0, 2, 4. */
						const int64_t c0 = 1 - px;
						float *o0 = v + ((i * 3 + 0) * kc + (py * 2 + px) * cin + ci) * ldv + col0 + ty * tw;
						float *o1 = v + ((i * 3 + 1) * kc + (py * 2 + px) * cin + ci) * ldv + col0 + ty * tw;
						float *o2 = v + ((i * 3 + 2) * kc + (py * 2 + px) * cin + ci) * ldv + col0 + ty * tw;
#pragma omp simd
						for (int64_t tx = 0; tx < tw; tx++) {
							const int64_t c = 4 * tx + c0;
							float a, b, e;
							if (i == 0) {
								a = d0[c] - d1[c];
								b = d0[c + 2] - d1[c + 2];
								e = d0[c + 4] - d1[c + 4];
							} else if (i == 1) {
								a = d1[c];
								b = d1[c + 2];
								e = d1[c + 4];
							} else {
								a = d2[c] - d1[c];
								b = d2[c + 2] - d1[c + 2];
								e = d2[c + 4] - d1[c + 4];
							}
							o0[tx] = a - b;
							o1[tx] = b;
							o2[tx] = e - b;
						}
					}
				}
			}
		}
	}
}

/* input2_adjoint adds B dV B^T of every tile into dx (a (cin, h, w) image, already scaled):
 * the adjoint of input2, reading dv[t][ph*cin + ci][col0 + ty*tw + tx]. */
static void input2_adjoint(const gk_wino *p, const float *dv, int64_t ldv, int64_t col0,
			   float *dx, float *rows)
{
	const int64_t h = p->h, w = p->w, tw = p->tw, wp = wpad(p), cin = p->cin, kc = 4 * cin;
	float *r[6];
	for (int i = 0; i < 6; i++)
		r[i] = rows + i * wp;
	for (int64_t ci = 0; ci < cin; ci++) {
		float *plane = dx + ci * h * w;
		for (int64_t ty = 0; ty < p->th; ty++) {
			for (int k = 0; k < 6; k++)
				memset(r[k], 0, (size_t)wp * sizeof(float));
			for (int py = 0; py < 2; py++) {
				float *d0 = r[1 - py], *d1 = r[3 - py], *d2 = r[5 - py];
				for (int i = 0; i < 3; i++) {
					for (int px = 0; px < 2; px++) {
						const int64_t c0 = 1 - px;
						const float *s0 = dv + ((i * 3 + 0) * kc + (py * 2 + px) * cin + ci) * ldv + col0 + ty * tw;
						const float *s1 = dv + ((i * 3 + 1) * kc + (py * 2 + px) * cin + ci) * ldv + col0 + ty * tw;
						const float *s2 = dv + ((i * 3 + 2) * kc + (py * 2 + px) * cin + ci) * ldv + col0 + ty * tw;
						/* Columns: (a, b, e) = (s0, s1 - s0 - s2, s2) at c, c+2, c+4
						 * (tiles overlap at c+4 = next c: a serial loop). */
						for (int64_t tx = 0; tx < tw; tx++) {
							const int64_t c = 4 * tx + c0;
							float a = s0[tx], b = s1[tx] - s0[tx] - s2[tx], e = s2[tx];
							/* Rows: row i of B^T d was (d0-d1, d1, d2-d1). */
							if (i == 0) {
								d0[c] += a, d0[c + 2] += b, d0[c + 4] += e;
								d1[c] -= a, d1[c + 2] -= b, d1[c + 4] -= e;
							} else if (i == 1) {
								d1[c] += a, d1[c + 2] += b, d1[c + 4] += e;
							} else {
								d2[c] += a, d2[c + 2] += b, d2[c + 4] += e;
								d1[c] -= a, d1[c + 2] -= b, d1[c + 4] -= e;
							}
						}
					}
				}
			}
			for (int k = 0; k < 6; k++) {
				int64_t iy = 4 * ty - 1 + k;
				if (iy < 0 || iy >= h)
					continue;
				float *dst = plane + iy * w;
				const float *src = r[k] + 1;
#pragma omp simd
				for (int64_t c = 0; c < w; c++)
					dst[c] += src[c];
			}
		}
	}
}

/* output2 writes y (a (cout, ho, wo) image) = A^T M A of every tile + beta * y. */
static void output2(const gk_wino *p, const float *m, int64_t ldm, int64_t col0, float *y,
		    float beta, float *rows)
{
	const int64_t ho = p->ho, wo = p->wo, tw = p->tw, cout = p->cout;
	float *o0 = rows, *o1 = rows + 2 * tw;
	for (int64_t co = 0; co < cout; co++) {
		float *plane = y + co * ho * wo;
		for (int64_t ty = 0; ty < p->th; ty++) {
			const float *q[9];
			for (int t = 0; t < 9; t++)
				q[t] = m + (t * cout + co) * ldm + col0 + ty * tw;
#pragma omp simd
			for (int64_t tx = 0; tx < tw; tx++) {
				float s0[3], s1[3];
				for (int j = 0; j < 3; j++) {
					s0[j] = q[j][tx] + q[3 + j][tx];
					s1[j] = q[3 + j][tx] + q[6 + j][tx];
				}
				o0[2 * tx] = s0[0] + s0[1];
				o0[2 * tx + 1] = s0[1] + s0[2];
				o1[2 * tx] = s1[0] + s1[1];
				o1[2 * tx + 1] = s1[1] + s1[2];
			}
			wino_store_rows(plane, ty, ho, wo, o0, o1, beta);
		}
	}
}

/* grad2 fills g[t][co][col0 + ty*tw + tx] = (A dY A^T)[t] of the (cout, ho, wo) gradient. */
static void grad2(const gk_wino *p, const float *dy, float *g, int64_t ldg, int64_t col0,
		  float *rows)
{
	const int64_t ho = p->ho, wo = p->wo, tw = p->tw, cout = p->cout;
	float *q0 = rows, *q1 = rows + 2 * tw + 2;
	for (int64_t co = 0; co < cout; co++) {
		const float *plane = dy + co * ho * wo;
		for (int64_t ty = 0; ty < p->th; ty++) {
			for (int rr = 0; rr < 2; rr++)
				wino_load_grad(rr ? q1 : q0, plane, 2 * ty + rr, ho, wo, tw);
			float *o[9];
			for (int t = 0; t < 9; t++)
				o[t] = g + (t * cout + co) * ldg + col0 + ty * tw;
#pragma omp simd
			for (int64_t tx = 0; tx < tw; tx++) {
				float a0 = q0[2 * tx], a1 = q0[2 * tx + 1], b0 = q1[2 * tx], b1 = q1[2 * tx + 1];
				float rw[3][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {b0, b1}};
				for (int i = 0; i < 3; i++) {
					o[3 * i + 0][tx] = rw[i][0];
					o[3 * i + 1][tx] = rw[i][0] + rw[i][1];
					o[3 * i + 2][tx] = rw[i][1];
				}
			}
		}
	}
}

static void fwd2_team(const gk_wino *p, int64_t lo, int64_t hi, const float *x, const float *u,
		      float *y, float alpha, float beta, float *scr)
{
	const int64_t kc = 4 * p->cin, cout = p->cout, cols = p->cols, tiles = p->tiles;
	float *v = scr, *m = v + 9 * kc * cols, *rows = m + 9 * cout * cols;
	for (int64_t n0 = lo; n0 < hi; n0 += p->nb) {
		int64_t nb = hi - n0 < p->nb ? hi - n0 : p->nb, nc = nb * tiles;
		for (int64_t j = 0; j < nb; j++)
			input2(p, x + (n0 + j) * p->cin * p->h * p->w, v, cols, j * tiles, rows);
		for (int t = 0; t < 9; t++)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)cout, (int)nc, (int)kc,
				    alpha, u + t * cout * kc, (int)kc, v + t * kc * cols, (int)cols, 0.0f,
				    m + t * cout * cols, (int)cols);
		for (int64_t j = 0; j < nb; j++)
			output2(p, m, cols, j * tiles, y + (n0 + j) * cout * p->ho * p->wo, beta, rows);
	}
}

void gk_wino2_fwd(const gk_wino *p, const float *x, const float *k, float *y, float alpha,
		  float beta, float *scr)
{
	const int64_t per = team2_scratch(p);
	float *u = scr, *teams = scr + 9 * p->cout * 4 * p->cin;
	weights2(p, k, u);
	int prev = openblas_get_num_threads();
	openblas_set_num_threads(1);
#pragma omp parallel num_threads(p->teams)
	{
		for (int t = omp_get_thread_num(); t < p->teams; t += omp_get_num_threads()) {
			int64_t lo, hi;
			team2_samples(p, t, &lo, &hi);
			fwd2_team(p, lo, hi, x, u, y, alpha, beta, teams + t * per);
		}
	}
	openblas_set_num_threads(prev);
}

static void bwd_data2_team(const gk_wino *p, int64_t lo, int64_t hi, const float *dy,
			   const float *u, float *dx, float alpha, float beta, float *scr)
{
	const int64_t kc = 4 * p->cin, cout = p->cout, cols = p->cols, tiles = p->tiles;
	const int64_t hw = p->h * p->w;
	float *dv = scr, *g = dv + 9 * kc * cols, *rows = g + 9 * cout * cols;
	for (int64_t n0 = lo; n0 < hi; n0 += p->nb) {
		int64_t nb = hi - n0 < p->nb ? hi - n0 : p->nb, nc = nb * tiles;
		for (int64_t j = 0; j < nb; j++)
			grad2(p, dy + (n0 + j) * cout * p->ho * p->wo, g, cols, j * tiles, rows);
		for (int t = 0; t < 9; t++)
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kc, (int)nc, (int)cout,
				    alpha, u + t * cout * kc, (int)kc, g + t * cout * cols, (int)cols, 0.0f,
				    dv + t * kc * cols, (int)cols);
		for (int64_t j = 0; j < nb; j++) {
			float *o = dx + (n0 + j) * p->cin * hw;
			if (beta == 0.0f)
				memset(o, 0, (size_t)(p->cin * hw) * sizeof(float));
			else if (beta != 1.0f)
				for (int64_t i = 0; i < p->cin * hw; i++)
					o[i] *= beta;
			input2_adjoint(p, dv, cols, j * tiles, o, rows);
		}
	}
}

void gk_wino2_bwd_data(const gk_wino *p, const float *dy, const float *k, float *dx, float alpha,
		       float beta, float *scr)
{
	const int64_t per = team2_scratch(p);
	float *u = scr, *teams = scr + 9 * p->cout * 4 * p->cin;
	weights2(p, k, u);
	int prev = openblas_get_num_threads();
	openblas_set_num_threads(1);
#pragma omp parallel num_threads(p->teams)
	{
		for (int t = omp_get_thread_num(); t < p->teams; t += omp_get_num_threads()) {
			int64_t lo, hi;
			team2_samples(p, t, &lo, &hi);
			bwd_data2_team(p, lo, hi, dy, u, dx, alpha, beta, teams + t * per);
		}
	}
	openblas_set_num_threads(prev);
}

static int bwd_filter2_team(const gk_wino *p, int64_t lo, int64_t hi, const float *x,
			    const float *dy, float *du, float *scr)
{
	const int64_t kc = 4 * p->cin, cout = p->cout, cols = p->cols, tiles = p->tiles;
	float *v = scr, *g = v + 9 * kc * cols, *rows = g + 9 * cout * cols;
	int touched = 0;
	for (int64_t n0 = lo; n0 < hi; n0 += p->nb) {
		int64_t nb = hi - n0 < p->nb ? hi - n0 : p->nb, nc = nb * tiles;
		for (int64_t j = 0; j < nb; j++) {
			input2(p, x + (n0 + j) * p->cin * p->h * p->w, v, cols, j * tiles, rows);
			grad2(p, dy + (n0 + j) * cout * p->ho * p->wo, g, cols, j * tiles, rows);
		}
		for (int t = 0; t < 9; t++)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)cout, (int)kc, (int)nc,
				    1.0f, g + t * cout * cols, (int)cols, v + t * kc * cols, (int)cols,
				    touched ? 1.0f : 0.0f, du + t * cout * kc, (int)kc);
		touched = 1;
	}
	return touched;
}

void gk_wino2_bwd_filter(const gk_wino *p, const float *x, const float *dy, float *dk,
			 float alpha, float beta, float *scr)
{
	const int64_t cin = p->cin, cout = p->cout, kc = 4 * cin, per = team2_scratch(p);
	const int64_t un = 9 * cout * kc;
	float *du = scr, *teams = scr + p->teams * un;
	int used[64] = {0};
	int prev = openblas_get_num_threads();
	openblas_set_num_threads(1);
#pragma omp parallel num_threads(p->teams)
	{
		for (int t = omp_get_thread_num(); t < p->teams; t += omp_get_num_threads()) {
			int64_t lo, hi;
			team2_samples(p, t, &lo, &hi);
			used[t] = bwd_filter2_team(p, lo, hi, x, dy, du + t * un, teams + t * per);
		}
#pragma omp barrier
		/* dk = alpha * G^T (sum of the teams' du) G + beta * dk per phase, fixed order. */
#pragma omp for schedule(static)
		for (int64_t k = 0; k < cout * cin; k++) {
			const int64_t co = k / cin, ci = k % cin;
			float *o = dk + k * 16;
			for (int py = 0; py < 2; py++)
				for (int px = 0; px < 2; px++) {
					float s[9], a[2][3];
					for (int t = 0; t < 9; t++) {
						float acc = 0.0f;
						for (int uu = 0; uu < p->teams; uu++)
							if (used[uu])
								acc += du[uu * un + (t * cout + co) * kc + (py * 2 + px) * cin + ci];
						s[t] = acc;
					}
					for (int c = 0; c < 3; c++) { /* G^T S: rows (s0+s1, s1+s2) */
						a[0][c] = s[c] + s[3 + c];
						a[1][c] = s[3 + c] + s[6 + c];
					}
					for (int r = 0; r < 2; r++) {
						float g[2] = {a[r][0] + a[r][1], a[r][1] + a[r][2]};
						for (int c = 0; c < 2; c++) {
							float *e = o + ktap(py, r) * 4 + ktap(px, c);
							*e = beta == 0.0f ? alpha * g[c] : alpha * g[c] + beta * *e;
						}
					}
				}
		}
	}
	openblas_set_num_threads(prev);
}
