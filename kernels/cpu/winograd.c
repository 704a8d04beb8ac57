/* winograd.c — CPU backend: 3x3 stride-1 pad-1 ("same") convolutions by Winograd's minimal
 * filtering F(2x2, 3x3), for the forward pass, the data gradient (the forward of the flipped,
 * transposed kernel) and the weight gradient.
 *
 * Each output is cut into 2x2 tiles; tile (ty, tx) reads the 4x4 input patch at
 * (2ty-1, 2tx-1). With the transforms
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   (input, 4x4 -> 4x4)
 *   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] (kernel, 3x3 -> 4x4)
 *   A^T = [1 1 1 0; 0 1 -1 -1]                      (output, 4x4 -> 2x2)
 * a tile of the output is A^T [ (G g G^T) .* (B^T d B) ] A, summed over input channels. The
 * sum over channels of the 16 elementwise products is 16 GEMMs, [Cout, Cin] x [Cin, tiles],
 * one per transformed position t: 16 multiplies per 4 outputs instead of 36, so 2.25x fewer
 * than im2col's GEMM, for the price of transforming the input (4 floats per input float
 * instead of im2col's 9) and the output (4 per output float).
 *
 * The weight gradient is the adjoint: dg = G^T [ sum over tiles (A dY A^T) .* (B^T d B) ] G,
 * 16 GEMMs [Cout, tiles] x [tiles, Cin].
 *
 * Threads: the batch is split between teams (one OpenMP thread each, single-threaded
 * OpenBLAS inside, as in conv.c); each team transforms and multiplies nb samples at a time
 * (about WINO_COLS tiles, so that the transformed chunk stays in cache). The weight gradient
 * sums the teams' partials in a fixed order. Odd sizes are handled by zero-padding the last
 * tile's input and dropping its outputs that fall outside.
 */
#include <cblas.h>
#include <omp.h>

#include "internal.h"

extern void openblas_set_num_threads(int);
extern int openblas_get_num_threads(void);

/* Tiles (GEMM columns) per chunk... */
#ifndef WINO_COLS
#define WINO_COLS 512
#endif
/* ...and the most transformed floats one team may hold. */
#define WINO_MAX_ELEMS (8 << 20)

int gk_wino_plan(gk_wino *p, int threads, int64_t n, int64_t cin, int64_t cout, int64_t h,
		 int64_t w)
{
	int t = threads < 1 ? 1 : threads > 64 ? 64 : threads;
	if (n < t || cin < WINO_MIN_CHANNELS || cout < WINO_MIN_CHANNELS || h < 1 || w < 1)
		return 0;
	p->n = n;
	p->cin = cin;
	p->cout = cout;
	p->h = h;
	p->w = w;
	p->ho = h;
	p->wo = w;
	p->th = (h + 1) / 2;
	p->tw = (w + 1) / 2;
	p->tiles = p->th * p->tw;
	p->teams = t;
	p->per_n = (n + t - 1) / t;
	p->nb = WINO_COLS / p->tiles;
	if (p->nb < 1)
		p->nb = 1;
	if (p->nb > p->per_n)
		p->nb = p->per_n;
	p->cols = p->nb * p->tiles;
	if (16 * (cin + cout) * p->cols > WINO_MAX_ELEMS || p->cols > INT32_MAX / 16)
		return 0;
	return 1;
}

/* Per-team scratch: V [16][cin][cols], M [16][cout][cols], 4 padded input rows of
 * 2tw+2 and 2 output rows of 2tw. */
static int64_t team_scratch(const gk_wino *p)
{
	const int64_t wp = 2 * p->tw + 2;
	return 16 * (p->cin + p->cout) * p->cols + 4 * wp + 2 * 2 * p->tw + 16;
}

int64_t gk_wino_fwd_scratch(const gk_wino *p)
{
	return 16 * p->cout * p->cin + p->teams * team_scratch(p);
}

int64_t gk_wino_bwd_filter_scratch(const gk_wino *p)
{
	return p->teams * (team_scratch(p) + 16 * p->cout * p->cin);
}

static void team_samples(const gk_wino *p, int team, int64_t *lo, int64_t *hi)
{
	*lo = team * p->per_n;
	*hi = *lo + p->per_n;
	if (*hi > p->n)
		*hi = p->n;
	if (*lo > *hi)
		*lo = *hi;
}

/* kernel_transform sets u[t * ld] = (G g G^T)[t] for the 3x3 kernel g (row-major, or
 * flipped in both axes when flip != 0). */
static inline void kernel_transform(const float *g, int flip, float *u, int64_t ld)
{
	float k[9], a[12];
	for (int q = 0; q < 9; q++)
		k[q] = g[flip ? 8 - q : q];
	for (int c = 0; c < 3; c++) { /* G g: 4 rows, 3 columns */
		float g0 = k[c], g1 = k[3 + c], g2 = k[6 + c];
		a[c] = g0;
		a[3 + c] = 0.5f * (g0 + g1 + g2);
		a[6 + c] = 0.5f * (g0 - g1 + g2);
		a[9 + c] = g2;
	}
	for (int r = 0; r < 4; r++) { /* (G g) G^T */
		float g0 = a[3 * r], g1 = a[3 * r + 1], g2 = a[3 * r + 2];
		u[(4 * r + 0) * ld] = g0;
		u[(4 * r + 1) * ld] = 0.5f * (g0 + g1 + g2);
		u[(4 * r + 2) * ld] = 0.5f * (g0 - g1 + g2);
		u[(4 * r + 3) * ld] = g2;
	}
}

/* input_transform fills v[t][ci][col0 + ty*tw + tx] (row stride ldv, plane stride
 * cin*ldv) with (B^T d B)[t] of every tile of the (cin, h, w) image x. */
static void input_transform(const gk_wino *p, const float *x, float *v, int64_t ldv,
			    int64_t col0, float *rows)
{
	const int64_t h = p->h, w = p->w, tw = p->tw, wp = 2 * tw + 2, cin = p->cin;
	float *r0 = rows, *r1 = rows + wp, *r2 = rows + 2 * wp, *r3 = rows + 3 * wp;
	float *rr[4] = {r0, r1, r2, r3};
	for (int64_t ci = 0; ci < cin; ci++) {
		const float *plane = x + ci * h * w;
		for (int64_t ty = 0; ty < p->th; ty++) {
			for (int r = 0; r < 4; r++)
				wino_load_padded(rr[r], plane, 2 * ty - 1 + r, h, w, wp);
			/* B^T d over rows, in place: r0 = d0-d2, r1 = d1+d2, r2 = d2-d1, r3 = d1-d3. */
			for (int64_t c = 0; c < wp; c++) {
				float d0 = r0[c], d1 = r1[c], d2 = r2[c], d3 = r3[c];
				r0[c] = d0 - d2;
				r1[c] = d1 + d2;
				r2[c] = d2 - d1;
				r3[c] = d1 - d3;
			}
			/* (.) B over each tile's 4 columns. */
			const int64_t col = col0 + ty * tw;
			for (int i = 0; i < 4; i++) {
				const float *s = rr[i];
				float *o0 = v + ((4 * i + 0) * cin + ci) * ldv + col;
				float *o1 = v + ((4 * i + 1) * cin + ci) * ldv + col;
				float *o2 = v + ((4 * i + 2) * cin + ci) * ldv + col;
				float *o3 = v + ((4 * i + 3) * cin + ci) * ldv + col;
#pragma omp simd
				for (int64_t tx = 0; tx < tw; tx++) {
					float a = s[2 * tx], b = s[2 * tx + 1], c = s[2 * tx + 2], d = s[2 * tx + 3];
					o0[tx] = a - c;
					o1[tx] = b + c;
					o2[tx] = c - b;
					o3[tx] = b - d;
				}
			}
		}
	}
}

/* output_transform writes y (a (cout, h, w) image) = A^T M A of every tile + beta * y,
 * reading m[t][co][col0 + ty*tw + tx] (row stride ldm). */
static void output_transform(const gk_wino *p, const float *m, int64_t ldm, int64_t col0,
			     float *y, float beta, float *rows)
{
	const int64_t h = p->h, w = p->w, tw = p->tw, cout = p->cout;
	float *o0 = rows, *o1 = rows + 2 * tw;
	for (int64_t co = 0; co < cout; co++) {
		float *plane = y + co * h * w;
		for (int64_t ty = 0; ty < p->th; ty++) {
			const float *q[16];
			for (int t = 0; t < 16; t++)
				q[t] = m + (t * cout + co) * ldm + col0 + ty * tw;
#pragma omp simd
			for (int64_t tx = 0; tx < tw; tx++) {
				/* A^T M over rows, then over columns. */
				float s0[4], s1[4];
				for (int j = 0; j < 4; j++) {
					float m0 = q[j][tx], m1 = q[4 + j][tx], m2 = q[8 + j][tx], m3 = q[12 + j][tx];
					s0[j] = m0 + m1 + m2;
					s1[j] = m1 - m2 - m3;
				}
				o0[2 * tx] = s0[0] + s0[1] + s0[2];
				o0[2 * tx + 1] = s0[1] - s0[2] - s0[3];
				o1[2 * tx] = s1[0] + s1[1] + s1[2];
				o1[2 * tx + 1] = s1[1] - s1[2] - s1[3];
			}
			wino_store_rows(plane, ty, h, w, o0, o1, beta);
		}
	}
}

/* grad_transform fills g[t][co][col0 + ty*tw + tx] = (A dY A^T)[t] of every 2x2 tile of the
 * (cout, h, w) gradient dy (zero beyond the edge). */
static void grad_transform(const gk_wino *p, const float *dy, float *g, int64_t ldg, int64_t col0,
			   float *rows)
{
	const int64_t h = p->h, w = p->w, tw = p->tw, cout = p->cout;
	float *q0 = rows, *q1 = rows + 2 * tw + 2;
	for (int64_t co = 0; co < cout; co++) {
		const float *plane = dy + co * h * w;
		for (int64_t ty = 0; ty < p->th; ty++) {
			for (int r = 0; r < 2; r++)
				wino_load_grad(r ? q1 : q0, plane, 2 * ty + r, h, w, tw);
			const int64_t col = col0 + ty * tw;
			float *o[16];
			for (int t = 0; t < 16; t++)
				o[t] = g + (t * cout + co) * ldg + col;
#pragma omp simd
			for (int64_t tx = 0; tx < tw; tx++) {
				/* A dY: rows (a, a+b, a-b, -b) of the tile rows a, b; then the same on
				 * columns. */
				float a0 = q0[2 * tx], a1 = q0[2 * tx + 1], b0 = q1[2 * tx], b1 = q1[2 * tx + 1];
				float r[4][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {a0 - b0, a1 - b1}, {-b0, -b1}};
				for (int i = 0; i < 4; i++) {
					o[4 * i + 0][tx] = r[i][0];
					o[4 * i + 1][tx] = r[i][0] + r[i][1];
					o[4 * i + 2][tx] = r[i][0] - r[i][1];
					o[4 * i + 3][tx] = -r[i][1];
				}
			}
		}
	}
}

static void fwd_team(const gk_wino *p, int64_t lo, int64_t hi, const float *x, const float *u,
		     float *y, float alpha, float beta, float *scr)
{
	const int64_t cin = p->cin, cout = p->cout, cols = p->cols, tiles = p->tiles;
	float *v = scr, *m = v + 16 * cin * cols, *rows = m + 16 * cout * cols;
	for (int64_t n0 = lo; n0 < hi; n0 += p->nb) {
		int64_t nb = hi - n0 < p->nb ? hi - n0 : p->nb, nc = nb * tiles;
		for (int64_t j = 0; j < nb; j++)
			input_transform(p, x + (n0 + j) * cin * p->h * p->w, v, cols, j * tiles, rows);
		for (int t = 0; t < 16; t++)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)cout, (int)nc, (int)cin,
				    alpha, u + t * cout * cin, (int)cin, v + t * cin * cols, (int)cols, 0.0f,
				    m + t * cout * cols, (int)cols);
		for (int64_t j = 0; j < nb; j++)
			output_transform(p, m, cols, j * tiles, y + (n0 + j) * cout * p->h * p->w, beta,
					 rows);
	}
}

void gk_wino_fwd(const gk_wino *p, const float *x, const float *w, int transposed, float *y,
		 float alpha, float beta, float *scr)
{
	const int64_t cin = p->cin, cout = p->cout, per = team_scratch(p);
	float *u = scr, *teams = scr + 16 * cout * cin;
	const int par = cout * cin * 64 >= GK_PAR_MIN;
	/* U[t][co][ci]; transposed: w is [cin][cout][3][3] of the conv whose data gradient
	 * this is, read flipped. */
#pragma omp parallel for schedule(static) if (par) num_threads(p->teams)
	for (int64_t co = 0; co < cout; co++)
		for (int64_t ci = 0; ci < cin; ci++)
			kernel_transform(transposed ? w + (ci * cout + co) * 9 : w + (co * cin + ci) * 9,
					 transposed, u + co * cin + ci, cout * cin);
	int prev = openblas_get_num_threads();
	openblas_set_num_threads(1);
#pragma omp parallel num_threads(p->teams)
	{
		for (int t = omp_get_thread_num(); t < p->teams; t += omp_get_num_threads()) {
			int64_t lo, hi;
			team_samples(p, t, &lo, &hi);
			fwd_team(p, lo, hi, x, u, y, alpha, beta, teams + t * per);
		}
	}
	openblas_set_num_threads(prev);
}

/* bwd_filter_team accumulates du[t][co][ci] = sum over its samples' tiles of
 * (A dY A^T)[t] (B^T d B)[t]; returns 0 when it has no samples (du untouched). */
static int bwd_filter_team(const gk_wino *p, int64_t lo, int64_t hi, const float *x,
			   const float *dy, float *du, float *scr)
{
	const int64_t cin = p->cin, cout = p->cout, cols = p->cols, tiles = p->tiles;
	float *v = scr, *g = v + 16 * cin * cols, *rows = g + 16 * cout * cols;
	int touched = 0;
	for (int64_t n0 = lo; n0 < hi; n0 += p->nb) {
		int64_t nb = hi - n0 < p->nb ? hi - n0 : p->nb, nc = nb * tiles;
		for (int64_t j = 0; j < nb; j++) {
			input_transform(p, x + (n0 + j) * cin * p->h * p->w, v, cols, j * tiles, rows);
			grad_transform(p, dy + (n0 + j) * cout * p->h * p->w, g, cols, j * tiles, rows);
		}
		for (int t = 0; t < 16; t++)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)cout, (int)cin, (int)nc,
				    1.0f, g + t * cout * cols, (int)cols, v + t * cin * cols, (int)cols,
				    touched ? 1.0f : 0.0f, du + t * cout * cin, (int)cin);
		touched = 1;
	}
	return touched;
}

void gk_wino_bwd_filter(const gk_wino *p, const float *x, const float *dy, float *dw, float alpha,
			float beta, float *scr)
{
	const int64_t cin = p->cin, cout = p->cout, per = team_scratch(p), un = 16 * cout * cin;
	float *du = scr, *teams = scr + p->teams * un;
	int used[64] = {0};
	int prev = openblas_get_num_threads();
	openblas_set_num_threads(1);
#pragma omp parallel num_threads(p->teams)
	{
		for (int t = omp_get_thread_num(); t < p->teams; t += omp_get_num_threads()) {
			int64_t lo, hi;
			team_samples(p, t, &lo, &hi);
			used[t] = bwd_filter_team(p, lo, hi, x, dy, du + t * un, teams + t * per);
		}
#pragma omp barrier
		/* dw = alpha * G^T (sum of the teams' du) G + beta * dw, in a fixed order. */
#pragma omp for schedule(static)
		for (int64_t k = 0; k < cout * cin; k++) {
			float s[16], a[12];
			for (int t = 0; t < 16; t++) {
				float acc = 0.0f;
				for (int u = 0; u < p->teams; u++)
					if (used[u])
						acc += du[u * un + t * cout * cin + k];
				s[t] = acc;
			}
			for (int c = 0; c < 4; c++) { /* G^T S: 3 rows of 4 */
				float s0 = s[c], s1 = s[4 + c], s2 = s[8 + c], s3 = s[12 + c];
				a[c] = s0 + 0.5f * (s1 + s2);
				a[4 + c] = 0.5f * (s1 - s2);
				a[8 + c] = 0.5f * (s1 + s2) + s3;
			}
			float *o = dw + k * 9;
			for (int r = 0; r < 3; r++) { /* (G^T S) G */
				float s0 = a[4 * r], s1 = a[4 * r + 1], s2 = a[4 * r + 2], s3 = a[4 * r + 3];
				float g[3] = {s0 + 0.5f * (s1 + s2), 0.5f * (s1 - s2), 0.5f * (s1 + s2) + s3};
				for (int c = 0; c < 3; c++)
					o[3 * r + c] = beta == 0.0f ? alpha * g[c] : alpha * g[c] + beta * o[3 * r + c];
			}
		}
	}
	openblas_set_num_threads(prev);
}
