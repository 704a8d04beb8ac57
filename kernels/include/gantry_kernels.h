/*
 * gantry_kernels.h — the one ABI every Gantry compute backend implements.
 *
 * The CPU backend (kernels/cpu) and the CUDA backend (kernels/cuda) export exactly these
 * symbols. Callers never touch buffer memory: they allocate opaque buffers through the
 * backend, move host data in and out with gk_buf_write / gk_buf_read, and describe every
 * operand with a gk_tensor (buffer, element offset, shape, strides in elements). A backend
 * may run on host or device memory; the calls are the same.
 *
 * Conventions
 *   - float32 everywhere, images NCHW.
 *   - Every call returns a gk_status. On failure the backend records a one-line message
 *     (op name, what was wrong, the shapes) readable with gk_last_error until the next call
 *     on the same context. The Go package turns status + message into an error in one place.
 *   - Strides are in elements. A stride of 0 broadcasts a dimension (used by the elementwise
 *     ops). Ops that need dense operands say so and return GK_ERR_LAYOUT otherwise.
 *   - Outputs never alias inputs unless the op says so.
 *   - A context is used by one caller thread at a time; a backend may use its own threads
 *     inside a call (the CPU backend uses OpenMP with the context's thread count).
 *   - Memory: gk_buf_alloc / gk_buf_free are the only allocation points visible to callers.
 *     Ops allocate no persistent memory; scratch space lives in the context and grows to the
 *     high-water mark, so a steady-state training step allocates nothing new.
 */
#ifndef GANTRY_KERNELS_H
#define GANTRY_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GK_ABI_VERSION 1
#define GK_MAX_DIMS 4

typedef enum gk_status {
	GK_OK = 0,
	GK_ERR_ARG = 1,         /* a scalar argument is out of range */
	GK_ERR_SHAPE = 2,       /* operand shapes do not agree */
	GK_ERR_LAYOUT = 3,      /* an operand must be dense (contiguous) and is not */
	GK_ERR_OOM = 4,         /* the backend could not allocate memory */
	GK_ERR_BACKEND = 5,     /* the backend library (BLAS, CUDA) failed */
	GK_ERR_UNSUPPORTED = 6, /* the backend does not implement this op or variant */
	GK_ERR_RANGE = 7        /* a tensor reaches outside its buffer */
} gk_status;

typedef struct gk_ctx gk_ctx; /* backend state: threads, scratch, streams, handles */
typedef struct gk_buf gk_buf; /* an allocation of float32 elements owned by the caller */

/* A view of a buffer: element offset, shape and strides (elements). ndim 0..4. */
typedef struct gk_tensor {
	gk_buf *buf;
	int64_t offset;
	int32_t ndim;
	int64_t shape[GK_MAX_DIMS];
	int64_t stride[GK_MAX_DIMS];
} gk_tensor;

/* ---- context and buffers ---------------------------------------------------------- */

/* gk_backend_name returns a static string ("cpu", "cuda"). */
const char *gk_backend_name(void);
/* threads <= 0 means the backend's default (all cores on CPU). */
gk_status gk_ctx_create(int threads, gk_ctx **out);
void gk_ctx_destroy(gk_ctx *ctx);
const char *gk_last_error(const gk_ctx *ctx);
/* gk_synchronize waits for queued work (a no-op on CPU). */
gk_status gk_synchronize(gk_ctx *ctx);
/* Bytes currently held in buffers and scratch by this context (for leak checks). */
int64_t gk_bytes_in_use(const gk_ctx *ctx);

gk_status gk_buf_alloc(gk_ctx *ctx, int64_t nelem, gk_buf **out);
void gk_buf_free(gk_ctx *ctx, gk_buf *buf);
int64_t gk_buf_len(const gk_buf *buf);
/* Copy n floats between host memory and the buffer at element offset off. */
gk_status gk_buf_write(gk_ctx *ctx, gk_buf *dst, int64_t off, const float *src, int64_t n);
gk_status gk_buf_read(gk_ctx *ctx, const gk_buf *src, int64_t off, float *dst, int64_t n);

/* ---- elementwise, copies, reductions ------------------------------------------------ */

/* y = value. */
gk_status gk_fill(gk_ctx *ctx, const gk_tensor *y, float value);
/* y = x with any strides on both sides: slices, concat (copy into offset views), transposes,
 * broadcast (stride 0 in x). Shapes must be equal. */
gk_status gk_copy(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y);

typedef enum gk_binary_op {
	GK_ADD = 0, GK_SUB = 1, GK_MUL = 2, GK_DIV = 3,
	GK_MAXIMUM = 4, GK_MINIMUM = 5
} gk_binary_op;
/* y = alpha * (a op b) + beta * y. a and b broadcast to y through stride 0 dims (the caller
 * builds the broadcast views). beta == 0 ignores y's old contents (NaN-safe). y may alias a
 * or b when the views are identical. */
gk_status gk_binary(gk_ctx *ctx, gk_binary_op op, const gk_tensor *a, const gk_tensor *b,
		    const gk_tensor *y, float alpha, float beta);

typedef enum gk_unary_op {
	GK_IDENTITY = 0, GK_SQUARE = 1, GK_SQRT = 2, GK_RSQRT = 3, GK_EXP = 4, GK_LOG = 5,
	GK_SOFTPLUS = 6, GK_SIGMOID = 7, GK_ABS = 8, GK_RECIP = 9, GK_SIGN = 10
} gk_unary_op;
/* y = alpha * f(x) + beta. y may alias x when the views are identical. */
gk_status gk_unary(gk_ctx *ctx, gk_unary_op op, const gk_tensor *x, const gk_tensor *y,
		   float alpha, float beta);

/* y = a + t * (b - a), t a scalar (progressive-growing fades, EMA). y may alias a or b. */
gk_status gk_lerp(gk_ctx *ctx, const gk_tensor *a, const gk_tensor *b, const gk_tensor *y,
		  float t);

typedef enum gk_reduce_op { GK_REDUCE_SUM = 0, GK_REDUCE_SUMSQ = 1, GK_REDUCE_MAX = 2 } gk_reduce_op;
/* y = alpha * reduce(x) over every dim where y.shape[d] == 1 and x.shape[d] > 1; other dims
 * must match. Same ndim. Sums accumulate in double in a fixed order (deterministic). */
gk_status gk_reduce(gk_ctx *ctx, gk_reduce_op op, const gk_tensor *x, const gk_tensor *y,
		    float alpha);

/* ---- GEMM (OpenBLAS / cuBLAS) ------------------------------------------------------ */

/* C = alpha * op(A) op(B) + beta * C, all 2-D, row-major with a unit inner stride; the
 * leading dimension is stride[0]. op(X) = X^T when trans_x != 0. */
gk_status gk_gemm(gk_ctx *ctx, int trans_a, int trans_b, float alpha, const gk_tensor *a,
		  const gk_tensor *b, float beta, const gk_tensor *c);

/* ---- convolution -------------------------------------------------------------------- */

/* Square kernels (k = w.shape[2] = w.shape[3]), stride 1 or 2, symmetric zero padding.
 * x [N,Cin,H,W], w [Cout,Cin,k,k], y [N,Cout,Ho,Wo], Ho = (H + 2*pad - k)/stride + 1.
 * All dense. alpha scales the result (equalised learning rate), beta accumulates. */
typedef struct gk_conv_params {
	int32_t stride;
	int32_t pad;
	float alpha;
	float beta;
} gk_conv_params;
gk_status gk_conv2d(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *w, const gk_tensor *y,
		    const gk_conv_params *p);
/* dx = alpha * conv2d^T(dy, w) + beta * dx: the gradient of gk_conv2d with respect to x, and
 * also the transposed (fractionally strided) convolution used for fused upsampling. The
 * shapes are those of the forward call (dx like x, dy like y). */
gk_status gk_conv2d_bwd_data(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *w,
			     const gk_tensor *dx, const gk_conv_params *p);
/* dw = alpha * d conv2d / d w contracted with dy + beta * dw. */
gk_status gk_conv2d_bwd_filter(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *dy,
			       const gk_tensor *dw, const gk_conv_params *p);

/* ---- FIR resampling (upfirdn2d) ------------------------------------------------------ */

/* y = downsample(filter(pad(upsample(x)))) per (n, c) plane, with a separable filter whose
 * taps are given in host memory (outer product of taps with itself, times gain).
 *   upsample: insert up-1 zeros after every input sample, both axes;
 *   pad:      pad0 zeros before and pad1 after along H, pad_x0 / pad_x1 along W (negative
 *             values crop);
 *   filter:   correlation with the 2-D filter (convolution when flip != 0);
 *   downsample: keep every down-th sample.
 * Output size: Ho = ((H*up + pad0 + pad1 - ntaps) / down) + 1, Wo likewise with pad_x0/x1.
 * x [N,C,H,W], y [N,C,Ho,Wo], dense. The gradient is the same op with up and down swapped,
 * the filter flipped and the padding mirrored (Go: kernels.FIRGradParams). The trailing pad
 * of the gradient depends on the plane size modulo down, so it can differ between H and W
 * for non-square planes: hence the per-axis pads. */
typedef struct gk_fir_params {
	int32_t up;
	int32_t down;
	int32_t pad0;
	int32_t pad1;
	int32_t flip;
	float gain;
	int32_t pad_x0;
	int32_t pad_x1;
} gk_fir_params;
gk_status gk_fir(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y, const float *taps,
		 int32_t ntaps, const gk_fir_params *p);

/* ---- fused bias + activation ------------------------------------------------------------ */

typedef enum gk_act { GK_ACT_LINEAR = 0, GK_ACT_LRELU = 1 } gk_act;
/* y = clamp(act(x + b[c]) * gain, -clamp, clamp); b (optional, may be NULL) broadcasts along
 * dim 1 of x ([N,C] or [N,C,H,W]); clamp <= 0 disables clamping. alpha is the lrelu slope
 * (>= 0). All operands dense; y may alias x (and dx may alias dy below). */
typedef struct gk_act_params {
	gk_act act;
	float alpha;
	float gain;
	float clamp;
} gk_act_params;
gk_status gk_bias_act(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *b, const gk_tensor *y,
		      const gk_act_params *p);
/* dx = dy * act'(.) * gain, and 0 where the forward output was clamped. The derivative is
 * read from the forward output y (lrelu: y > 0 -> 1, else alpha), as the sign of the output
 * equals the sign of the pre-activation. Because lrelu's derivative is piecewise constant,
 * the gradient of this op with respect to dy is this op again, and with respect to y it is
 * zero: the op is its own second-order gradient. b's gradient is the sum of dx over every
 * dim but 1 (gk_reduce). */
gk_status gk_bias_act_grad(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *y,
			   const gk_tensor *dx, const gk_act_params *p);

/* ---- normalisation and style -------------------------------------------------------- */

/* Instance norm + style modulation (AdaIN), x [N,C,H,W]:
 *   xn = (x - mean_hw) / sqrt(var_hw + eps);  y = xn * (1 + s[n,c]) + b[n,c]
 * s, b are [N,C] (either may be NULL: plain instance norm). xn [N,C,H,W] and rstd [N,C] are
 * saved for the backward pass. All operands dense. */
gk_status gk_adain(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *s, const gk_tensor *b,
		   const gk_tensor *y, const gk_tensor *xn, const gk_tensor *rstd, float eps);
/* Gradients of gk_adain: dx (required), ds and db (either may be NULL). */
gk_status gk_adain_bwd(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *xn,
		       const gk_tensor *rstd, const gk_tensor *s, const gk_tensor *dx,
		       const gk_tensor *ds, const gk_tensor *db);

/* Noise injection: y = x + w[c] * noise[n,0,h,w]; x, y [N,C,H,W], noise [N,1,H,W], w [C].
 * All operands dense; y may alias x. */
gk_status gk_noise(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *noise, const gk_tensor *w,
		   const gk_tensor *y);
/* dw[c] = alpha * sum_{n,h,w} dy[n,c,h,w] * noise[n,0,h,w] + beta * dw[c]. */
gk_status gk_noise_bwd_weight(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *noise,
			      const gk_tensor *dw, float alpha, float beta);

/* Pixel norm over dim 1: y = x / sqrt(mean_c x^2 + eps); x [N,C] or [N,C,H,W], dense. */
gk_status gk_pixel_norm(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y, float eps);
gk_status gk_pixel_norm_bwd(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *x,
			    const gk_tensor *dx, float eps);

/* Minibatch standard deviation (PG/SG): x [N,C,H,W], y [N,C+F,H,W]; y copies x and appends
 * F feature maps holding, for each group of G samples (sample n is in group n % (N/G)) and
 * each of F channel slices, the mean over (C/F,H,W) of sqrt(var_over_group + eps).
 * G = min(group, N) must divide N; F must divide C. All operands dense. */
gk_status gk_mbstd(gk_ctx *ctx, const gk_tensor *x, const gk_tensor *y, int32_t group,
		   int32_t features, float eps);
gk_status gk_mbstd_bwd(gk_ctx *ctx, const gk_tensor *dy, const gk_tensor *x,
		       const gk_tensor *dx, int32_t group, int32_t features, float eps);

/* ---- optimiser, hygiene, randomness --------------------------------------------------- */

/* Fused Adam on dense flat views of equal length:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *   p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
 * bc1 = 1 - b1^t and bc2 = 1 - b2^t are computed by the caller (pass 1 to disable). */
typedef struct gk_adam_params {
	float lr;
	float beta1;
	float beta2;
	float eps;
	float bc1;
	float bc2;
} gk_adam_params;
gk_status gk_adam(gk_ctx *ctx, const gk_tensor *p, const gk_tensor *g, const gk_tensor *m,
		  const gk_tensor *v, const gk_adam_params *ap);

/* Replace NaN by 0 and +-Inf by +-limit in place (x dense); *nonfinite (may be NULL)
 * receives how many were found. */
gk_status gk_sanitize(gk_ctx *ctx, const gk_tensor *x, float limit, int64_t *nonfinite);

/* Fill y with N(mean, std^2) samples from a counter-based generator: element i of the
 * dense view gets the sample for counter (offset + i) of stream seed, so the result does not
 * depend on the backend or the thread count. */
gk_status gk_randn(gk_ctx *ctx, const gk_tensor *y, uint64_t seed, uint64_t offset, float mean,
		   float std);

#ifdef __cplusplus
}
#endif
#endif /* GANTRY_KERNELS_H */
