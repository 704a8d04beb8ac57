/* ctx.c — CPU backend: context, buffers, errors, scratch. */
#include <omp.h>

#include "internal.h"

extern void openblas_set_num_threads(int);

const char *gk_backend_name(void) { return "cpu"; }

gk_status gk_ctx_create(int threads, gk_ctx **out)
{
	if (out == NULL)
		return GK_ERR_ARG;
	gk_ctx *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return GK_ERR_OOM;
	if (threads <= 0)
		threads = omp_get_num_procs();
	c->threads = threads;
	openblas_set_num_threads(threads);
	*out = c;
	return GK_OK;
}

void gk_ctx_destroy(gk_ctx *ctx)
{
	if (ctx == NULL)
		return;
	free(ctx->scratch);
	free(ctx);
}

const char *gk_last_error(const gk_ctx *ctx) { return ctx ? ctx->err : "no context"; }

gk_status gk_synchronize(gk_ctx *ctx)
{
	(void)ctx;
	return GK_OK;
}

int64_t gk_bytes_in_use(const gk_ctx *ctx)
{
	return ctx->buf_bytes + ctx->scratch_elems * (int64_t)sizeof(float);
}

gk_status gk_fail(gk_ctx *ctx, gk_status st, const char *op, const char *fmt, ...)
{
	int n = snprintf(ctx->err, sizeof(ctx->err), "%s: ", op);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof(ctx->err))
		vsnprintf(ctx->err + n, sizeof(ctx->err) - (size_t)n, fmt, ap);
	va_end(ap);
	return st;
}

gk_status gk_buf_alloc(gk_ctx *ctx, int64_t nelem, gk_buf **out)
{
	if (nelem < 0 || out == NULL)
		return gk_fail(ctx, GK_ERR_ARG, "buf_alloc", "invalid length %lld", (long long)nelem);
	gk_buf *b = calloc(1, sizeof(*b));
	if (b == NULL)
		return gk_fail(ctx, GK_ERR_OOM, "buf_alloc", "out of memory");
	size_t bytes = (size_t)(nelem > 0 ? nelem : 1) * sizeof(float);
	bytes = (bytes + 63) & ~(size_t)63;
	b->data = aligned_alloc(64, bytes);
	if (b->data == NULL) {
		free(b);
		return gk_fail(ctx, GK_ERR_OOM, "buf_alloc", "out of memory allocating %lld floats",
			       (long long)nelem);
	}
	b->n = nelem;
	ctx->buf_bytes += nelem * (int64_t)sizeof(float);
	*out = b;
	return GK_OK;
}

void gk_buf_free(gk_ctx *ctx, gk_buf *buf)
{
	if (buf == NULL)
		return;
	ctx->buf_bytes -= buf->n * (int64_t)sizeof(float);
	free(buf->data);
	free(buf);
}

int64_t gk_buf_len(const gk_buf *buf) { return buf ? buf->n : 0; }

gk_status gk_buf_write(gk_ctx *ctx, gk_buf *dst, int64_t off, const float *src, int64_t n)
{
	if (dst == NULL || off < 0 || n < 0 || off + n > dst->n)
		return gk_fail(ctx, GK_ERR_RANGE, "buf_write", "write of %lld at %lld outside buffer of %lld",
			       (long long)n, (long long)off, (long long)(dst ? dst->n : 0));
	if (n > 0)
		memcpy(dst->data + off, src, (size_t)n * sizeof(float));
	return GK_OK;
}

gk_status gk_buf_read(gk_ctx *ctx, const gk_buf *src, int64_t off, float *dst, int64_t n)
{
	if (src == NULL || off < 0 || n < 0 || off + n > src->n)
		return gk_fail(ctx, GK_ERR_RANGE, "buf_read", "read of %lld at %lld outside buffer of %lld",
			       (long long)n, (long long)off, (long long)(src ? src->n : 0));
	if (n > 0)
		memcpy(dst, src->data + off, (size_t)n * sizeof(float));
	return GK_OK;
}

float *gk_scratch(gk_ctx *ctx, int64_t n)
{
	if (n <= ctx->scratch_elems)
		return ctx->scratch;
	size_t bytes = ((size_t)n * sizeof(float) + 63) & ~(size_t)63;
	float *p = aligned_alloc(64, bytes);
	if (p == NULL)
		return NULL;
	free(ctx->scratch);
	ctx->scratch = p;
	ctx->scratch_elems = n;
	return p;
}

const char *gk_shape_str(const gk_tensor *t, char *out)
{
	if (t == NULL) {
		strcpy(out, "nil");
		return out;
	}
	int n = 0;
	out[n++] = '[';
	for (int d = 0; d < t->ndim && d < GK_MAX_DIMS; d++)
		n += snprintf(out + n, 96 - (size_t)n, d ? ",%lld" : "%lld", (long long)t->shape[d]);
	out[n++] = ']';
	out[n] = 0;
	return out;
}

int64_t gk_numel(const gk_tensor *t)
{
	int64_t n = 1;
	for (int d = 0; d < t->ndim; d++)
		n *= t->shape[d];
	return n;
}

int gk_is_dense(const gk_tensor *t)
{
	int64_t want = 1;
	for (int d = t->ndim - 1; d >= 0; d--) {
		if (t->shape[d] != 1 && t->stride[d] != want)
			return 0;
		want *= t->shape[d];
	}
	return 1;
}

gk_status gk_check_tensor(gk_ctx *ctx, const char *op, const char *name, const gk_tensor *t)
{
	if (t == NULL || t->buf == NULL)
		return gk_fail(ctx, GK_ERR_ARG, op, "%s is missing", name);
	if (t->ndim < 0 || t->ndim > GK_MAX_DIMS)
		return gk_fail(ctx, GK_ERR_SHAPE, op, "%s has %d dims (0..%d allowed)", name,
			       (int)t->ndim, GK_MAX_DIMS);
	int64_t lo = t->offset, hi = t->offset;
	int empty = 0;
	for (int d = 0; d < t->ndim; d++) {
		if (t->shape[d] < 0)
			return gk_fail(ctx, GK_ERR_SHAPE, op, "%s has a negative dim", name);
		if (t->shape[d] == 0)
			empty = 1;
		int64_t span = (t->shape[d] - 1) * t->stride[d];
		if (span < 0)
			lo += span;
		else
			hi += span;
	}
	if (!empty && (lo < 0 || hi >= t->buf->n)) {
		char s[96];
		return gk_fail(ctx, GK_ERR_RANGE, op, "%s %s at offset %lld reaches outside its buffer of %lld",
			       name, gk_shape_str(t, s), (long long)t->offset, (long long)t->buf->n);
	}
	return GK_OK;
}

gk_status gk_check_dense(gk_ctx *ctx, const char *op, const char *name, const gk_tensor *t)
{
	gk_status st = gk_check_tensor(ctx, op, name, t);
	if (st != GK_OK)
		return st;
	if (!gk_is_dense(t)) {
		char s[96];
		return gk_fail(ctx, GK_ERR_LAYOUT, op, "%s %s must be dense", name, gk_shape_str(t, s));
	}
	return GK_OK;
}

void gk_view4_of(const gk_tensor *t, gk_view4 *v)
{
	int pad = 4 - t->ndim;
	v->p = gk_ptr(t);
	for (int d = 0; d < 4; d++) {
		if (d < pad) {
			v->shape[d] = 1;
			v->stride[d] = 0;
		} else {
			v->shape[d] = t->shape[d - pad];
			v->stride[d] = t->stride[d - pad];
		}
	}
}
