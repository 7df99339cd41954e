/* The kernels of the CUDA backend (cuda.h).  Each one mirrors a loop of
 * model/layers.c, mamba2.c, attention.c or moe.c: the same formulas in
 * float32, norms summed in double, every reduction in a fixed order (no
 * atomics), so results are reproducible bit for bit. */
#ifndef NQ_CUDA_KERNELS_CUH
#define NQ_CUDA_KERNELS_CUH

#include <stdint.h>

/* Largest SSM state the scan kernel holds in registers (8 per lane). */
#define NQ_CUDA_MAX_STATE 256

/* y = weight * (x * rsqrt(mean(x^2) + eps)) per row; grid: rows, block: 256. */
__global__ void nqk_rmsnorm(const float *x, const float *w, int dim, float eps, float *y);

/* Zamba2RMSNormGated on scan[n, inter] in place: v = scan * silu(z), then
 * RMS over each group of gch channels, times w.  grid (n, groups), block 256. */
__global__ void nqk_gated_norm(float *scan, const float *proj, int proj_dim, const float *w,
                               int inter, int gch, float eps);

/* Causal depthwise conv1d over the xBC part of proj (columns off..off+conv_dim)
 * of n rows = sequences of len fresh tokens each (zero history), then SiLU:
 * xbc[n, conv_dim]. */
__global__ void nqk_conv_silu(const float *proj, int proj_dim, int off, int conv_dim,
                              const float *cw, const float *cb, int K, int n, int len, float *xbc);

/* dt[n, nh] = max(softplus(proj[:, off + h] + dt_bias[h]), dt_min). */
__global__ void nqk_dt(const float *proj, int proj_dim, int off, const float *dt_bias, int nh, int n,
                       float dt_min, float *dt);

/* Mamba-2 recurrence from a zero state, one warp per (sequence, head,
 * channel): s = s * exp(dt*A) + (x*dt) B ; y = s.C + D x, over `samples`
 * sequences of len tokens.  state_out [samples, nh, hd, ns] or NULL. */
__global__ void nqk_scan(const float *xbc, int conv_dim, int inter, int ngroups, int ns, int hd,
                         int nh, const float *dt, const float *A, const float *D, int samples,
                         int len, float *y, float *state_out);

/* Causal GQA attention, one block per (query, head, sequence), one warp
 * per key for the scores; sequences of len tokens: out[samples*len, nh*hd].
 * Dynamic shared memory: (hd + len) floats. */
__global__ void nqk_attention(const float *q, const float *k, const float *v, int len, int nh,
                              int nkv, int hd, float scale, float *out);

/* In place: act = 0 relu2, 1 relu, 2 silu, 3 gelu (erf), 4 gelu tanh
 * (model/layers.h's nq_act order). */
__global__ void nqk_act(float *x, uint64_t count, int act);

/* y[r, c] += b[c] for rows x cols. */
__global__ void nqk_add_bias(float *y, const float *b, int rows, int cols);

/* x += y. */
__global__ void nqk_add(float *x, const float *y, uint64_t count);

/* out[r, :] = x[idx[r], :] for rows r. */
__global__ void nqk_gather_rows(const float *x, const int32_t *idx, int rows, int dim, float *out);

/* y[t, i] = sum_j out[rows[t*k + j], i] * w[t*k + j] (j in ascending expert
 * order, as transformers' index_add_ accumulates) + shared[t, i] (shared
 * may be NULL). */
__global__ void nqk_moe_combine(const float *out, const int32_t *rows, const float *w, int k,
                                const float *shared, int n, int dim, float *y);

#endif
