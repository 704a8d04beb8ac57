/* internal.h — shared helpers of the CPU backend (not part of the ABI). */
#ifndef GANTRY_CPU_INTERNAL_H
#define GANTRY_CPU_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gantry_kernels.h"

struct gk_buf {
	float *data;
	int64_t n;
};

struct gk_ctx {
	int threads;
	char err[512];
	int64_t buf_bytes;     /* bytes held by live buffers */
	float *scratch;        /* grows to the high-water mark, freed with the context */
	int64_t scratch_elems;
};

/* Work below this many elements runs on one thread: on 2 cores the fork/join costs more. */
#define GK_PAR_MIN 32768

/* gk_fail records "op: message" and returns st. */
gk_status gk_fail(gk_ctx *ctx, gk_status st, const char *op, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* gk_shape_str writes "[a,b,c]" into out (at least 96 bytes) and returns out. */
const char *gk_shape_str(const gk_tensor *t, char *out);
/* gk_check_tensor verifies that t is non-NULL, has a buffer, ndim in 0..4, non-negative
 * shape, and that every addressed element lies inside the buffer. */
gk_status gk_check_tensor(gk_ctx *ctx, const char *op, const char *name, const gk_tensor *t);
/* gk_is_dense reports whether t is C-contiguous. */
int gk_is_dense(const gk_tensor *t);
int64_t gk_numel(const gk_tensor *t);
/* gk_ptr returns the address of t's first element. */
static inline float *gk_ptr(const gk_tensor *t) { return t->buf->data + t->offset; }
/* gk_scratch returns at least n floats of context scratch (contents undefined), or NULL. */
float *gk_scratch(gk_ctx *ctx, int64_t n);
/* gk_check_dense combines gk_check_tensor with a contiguity requirement. */
gk_status gk_check_dense(gk_ctx *ctx, const char *op, const char *name, const gk_tensor *t);
/* Views padded to 4 dims (leading dims of size 1), for the generic strided loops. */
typedef struct gk_view4 {
	float *p;
	int64_t shape[4];
	int64_t stride[4];
} gk_view4;
void gk_view4_of(const gk_tensor *t, gk_view4 *v);

/* Winograd F(2x2, 3x3) for 3x3 stride-1 pad-1 convolutions (winograd.c). A plan splits the
 * batch between threads; gk_wino_plan returns 0 when the conv is not worth it or too large
 * (then conv.c's im2col paths run): fewer samples than threads or fewer channels than
 * WINO_MIN_CHANNELS. Forward roles: x [n,cin,h,w], y [n,cout,h,w]. */
#ifndef WINO_MIN_CHANNELS
#define WINO_MIN_CHANNELS 16
#endif
typedef struct gk_wino {
	int64_t n, cin, cout, h, w;
	int64_t ho, wo;        /* output size: h, w (3x3 stride 1) or h/2, w/2 (4x4 stride 2) */
	int64_t th, tw, tiles; /* 2x2 output tiles: rows, columns, per image */
	int teams;             /* threads, each owning per_n samples */
	int64_t per_n, nb;     /* samples per team and per chunk */
	int64_t cols;          /* tiles per chunk: nb * tiles */
} gk_wino;
int gk_wino_plan(gk_wino *p, int threads, int64_t n, int64_t cin, int64_t cout, int64_t h,
		 int64_t w);
int64_t gk_wino_fwd_scratch(const gk_wino *p);
int64_t gk_wino_bwd_filter_scratch(const gk_wino *p);
/* y = alpha * conv3x3(x, w) + beta * y. transposed != 0: w is [cin][cout][3][3], the kernel
 * of the conv whose data gradient this computes, read transposed and flipped. */
void gk_wino_fwd(const gk_wino *p, const float *x, const float *w, int transposed, float *y,
		 float alpha, float beta, float *scr);
/* dw = alpha * d<conv3x3(x, w), dy>/dw + beta * dw. */
void gk_wino_bwd_filter(const gk_wino *p, const float *x, const float *dy, float *dw, float alpha,
			float beta, float *scr);

/* Row staging shared by the Winograd transforms (winograd.c, winograd_s2.c). */

/* wino_load_padded copies input row iy of a (h, w) plane into row[1..w], zero elsewhere in
 * row[0..wp); rows outside the plane are all zeros (the pad-1 border). */
static inline void wino_load_padded(float *row, const float *plane, int64_t iy, int64_t h,
				    int64_t w, int64_t wp)
{
	if (iy < 0 || iy >= h) {
		memset(row, 0, (size_t)wp * sizeof(float));
		return;
	}
	row[0] = 0.0f;
	memcpy(row + 1, plane + iy * w, (size_t)w * sizeof(float));
	for (int64_t c = w + 1; c < wp; c++)
		row[c] = 0.0f;
}

/* wino_load_grad copies gradient row oy of a (h, w) plane into row[0..w) with one zero after
 * it when the tiles overhang (w < 2*tw); rows past the plane are zeros. */
static inline void wino_load_grad(float *row, const float *plane, int64_t oy, int64_t h,
				  int64_t w, int64_t tw)
{
	if (oy >= h) {
		memset(row, 0, (size_t)(2 * tw) * sizeof(float));
		return;
	}
	memcpy(row, plane + oy * w, (size_t)w * sizeof(float));
	if (w < 2 * tw)
		row[w] = 0.0f;
}

/* wino_store_rows writes the two output rows o0, o1 of tile row ty into a (h, w) plane as
 * dst = src + beta * dst, dropping a row past the plane. */
static inline void wino_store_rows(float *plane, int64_t ty, int64_t h, int64_t w,
				   const float *o0, const float *o1, float beta)
{
	for (int r = 0; r < 2; r++) {
		int64_t oy = 2 * ty + r;
		if (oy >= h)
			break;
		const float *src = r ? o1 : o0;
		float *dst = plane + oy * w;
		if (beta == 0.0f)
			memcpy(dst, src, (size_t)w * sizeof(float));
		else
			for (int64_t ox = 0; ox < w; ox++)
				dst[ox] = src[ox] + beta * dst[ox];
	}
}

/* The same for 4x4 stride-2 pad-1 convs of even-sized inputs by polyphase F(2x2, 2x2)
 * (winograd_s2.c): x [n,cin,h,w], y [n,cout,h/2,w/2], k [cout,cin,4,4]. */
int gk_wino2_plan(gk_wino *p, int threads, int64_t n, int64_t cin, int64_t cout, int64_t h,
		  int64_t w);
int64_t gk_wino2_fwd_scratch(const gk_wino *p);
int64_t gk_wino2_bwd_data_scratch(const gk_wino *p);
int64_t gk_wino2_bwd_filter_scratch(const gk_wino *p);
void gk_wino2_fwd(const gk_wino *p, const float *x, const float *k, float *y, float alpha,
		  float beta, float *scr);
void gk_wino2_bwd_data(const gk_wino *p, const float *dy, const float *k, float *dx, float alpha,
		       float beta, float *scr);
void gk_wino2_bwd_filter(const gk_wino *p, const float *x, const float *dy, float *dk,
			 float alpha, float beta, float *scr);

#endif
