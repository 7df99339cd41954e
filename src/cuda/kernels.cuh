/* The kernels of the CUDA backend (cuda.h).  Each one mirrors a loop of
 * model/layers.c, mamba2.c, attention.c or moe.c: the same formulas in
 * float32, norms summed in double, every reduction in a fixed order (no
 * atomics), so results are reproducible bit for bit. */
#ifndef NQ_CUDA_KERNELS_CUH
#define NQ_CUDA_KERNELS_CUH

#include <stddef.h>
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

/* Mamba-2 recurrence from a zero state: s = s * exp(dt*A) + (x*dt) B ;
 * y = s.C + D x, over sequences of len tokens.  Grid (ceil(hd / NQ_SCAN_W),
 * nh, samples), NQ_SCAN_W warps a block, one warp per (sequence, head,
 * channel) with the state in registers (lanes over the state).  Each tile
 * of NQ_SCAN_T steps first stages B, C, dt, exp(dt*A) and x in shared
 * memory (coalesced loads shared by the block's channels); each step's
 * s.C is left as per-lane partial sums, added in lane order after the tile
 * (no shuffle chain on the sequential path).  Dynamic shared memory:
 * nqk_scan_shared(ns) bytes; nqk_scan launches the instance with
 * ceil(ns/32) (rounded up to 1, 2, 4 or 8) state entries per lane.  state_out [samples, nh, hd, ns] or NULL. */
#define NQ_SCAN_T 32
#define NQ_SCAN_W 8
static inline size_t nqk_scan_shared(int ns)
{
    return sizeof(float) * ((size_t)2 * NQ_SCAN_T * ns + 2 * NQ_SCAN_T +
                            (size_t)2 * NQ_SCAN_T * NQ_SCAN_W + (size_t)NQ_SCAN_W * NQ_SCAN_T * 33);
}
void nqk_scan(const float *xbc, int conv_dim, int inter, int ngroups, int ns, int hd, int nh,
              const float *dt, const float *A, const float *D, int samples, int len, float *y,
              float *state_out);
/* Once per device: allows the scan instances their shared memory. */
cudaError_t nqk_scan_setup(void);

/* Causal GQA attention, tiled (flash-attention's online softmax, f32):
 * grid (ceil(len / NQ_ATT_BQ), nh, samples), 256 threads; each block
 * stages its NQ_ATT_BQ queries and then 32 keys/values at a time in shared
 * memory, each warp keeps NQ_ATT_BQ/8 queries' running max, sum and output
 * (lanes over head_dim, at most NQ_ATT_MAX_HD).  Keys are visited in
 * ascending order: a fixed summation order.  Dynamic shared memory:
 * nqk_attention_shared(hd) bytes.  Sequences of len tokens:
 * out[samples*len, nh*hd].  nqk_attention launches the instance for hd
 * (lanes own ceil(hd/32) output columns); nqk_attention_setup, once per
 * device, allows their shared memory. */
#define NQ_ATT_BQ 32
#define NQ_ATT_MAX_HD 128
static inline size_t nqk_attention_shared(int hd)
{
    return sizeof(float) * ((size_t)NQ_ATT_BQ * hd + (size_t)32 * (hd + 1) + (size_t)32 * hd +
                            (size_t)NQ_ATT_BQ * 32);
}
void nqk_attention(const float *q, const float *k, const float *v, int samples, int len, int nh,
                   int nkv, int hd, float scale, float *out);
cudaError_t nqk_attention_setup(void);

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

/* ---- the MoE router (router.cu) ---------------------------------------- */

#define NQ_CUDA_MAX_EXPERTS 256
#define NQ_CUDA_MAX_TOPK 32

/* One thread per token: nq_moe_select on sigmoid(logits[t]) -> experts
 * and weights [n, K] in selection order (as the routing hook sees them);
 * keys/vals/rw [n*K]: the token's experts in ascending order, its flat
 * index t*K+j and the matching weight (the combine's order). */
__global__ void nqk_moe_select(const float *logits, const float *bias, int n, int E, int ng,
                               int topk_group, int K, int norm, float scaling, int32_t *experts,
                               float *weights, int32_t *keys, int32_t *vals, float *rw);
/* After the sort: tok[p] = token of sorted row p, rows[t*K+j] = p. */
__global__ void nqk_moe_place(const int32_t *sorted_vals, int total, int K, int32_t *tok,
                              int32_t *rows);
/* start[e] (e = 0..E) = first sorted row of expert e. */
__global__ void nqk_moe_starts(const int32_t *sorted_keys, int total, int E, int32_t *start);
/* Stable radix sort of (key = expert, value) pairs (cub); temp == NULL
 * sets *temp_bytes. */
cudaError_t nqk_moe_sort(void *temp, size_t *temp_bytes, const int32_t *keys_in,
                         int32_t *keys_out, const int32_t *vals_in, int32_t *vals_out, int total,
                         int E);

#endif
