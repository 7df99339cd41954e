/* The CUDA backend of the forward pass: one Nemotron-H block, or the head,
 * computed on one GPU in float32.
 *
 * The layer schedule stays in model/forward.c (embeddings, blocks in order,
 * x = x + mixer(norm(x)), norm_f, lm_head); it hands each block's host
 * weights here instead of to the CPU layer functions of model/layers.h,
 * whose arithmetic these kernels mirror (same formulas, f32 with f64 norm
 * sums; only the summation order inside products differs).  The CPU path is
 * the reference the GPU tests compare against.
 *
 * Weights: a block's f32 host weights are uploaded once per weights_id and
 * kept in a small device cache (least recently used blocks dropped beyond
 * min(4 GiB, 1/16 of the GPU); NEMOQ_CUDA_WEIGHT_CACHE_MIB overrides), so
 * repeated passes over a model whose weights stay on the host do not upload
 * them again, while a streamed large model holds one block (plus the
 * cache's budget); routed experts are uploaded when a token first routes
 * to them.  The residual stream stays on the device between blocks.
 *
 * Expert routing runs on the device (router.cu): the same float operations
 * as model/moe.c's nq_moe_select in the same order (sigmoid, correction
 * bias for the choice only, group top-k, norm_topk_prob, scaling), so both
 * paths pick the same experts for the same router logits (nq_cuda_moe_select
 * lets the GPU tests check that against nq_moe_select).
 *
 * Hooks (calibration statistics, activation / KV fake-quant, routing) run on
 * the host: when the model has hooks, each Linear's input, the keys/values
 * and the router's decision are copied back, the hook runs on that copy and
 * a rewritten input is copied up again.
 *
 * Determinism: no atomics; every reduction has a fixed order (the expert
 * sort is a stable radix sort); cuBLAS SGEMM with TF32 off
 * (CUBLAS_DEFAULT_MATH) is bitwise reproducible on one GPU model.  Same
 * GPU, input and flags: the same bytes out.
 *
 * In a build without CUDA (cuda_none.c) every function below reports that
 * the build has no CUDA backend. */
#ifndef NQ_CUDA_CUDA_H
#define NQ_CUDA_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* (inside the C linkage block: the .cu files are C++ and call nq_fail) */
#include "core/error.h"
#include "model/config.h"
#include "model/layers.h"

typedef struct nq_cuda nq_cuda;

/* true when this build has the CUDA backend. */
bool nq_cuda_built(void);
/* Number of CUDA GPUs; 0 with the reason in err (no CUDA in this build, no
 * driver, no device).  Never crashes on a machine without a GPU. */
int nq_cuda_device_count(nq_error *err);
/* Opens GPU `device` (0-based) with a cuBLAS handle and a stream. */
nq_cuda *nq_cuda_open(int device, nq_error *err);
void nq_cuda_close(nq_cuda *g);
/* e.g. "cuda:0 (NVIDIA H200, 139.8 GiB)"; owned by g. */
const char *nq_cuda_describe(const nq_cuda *g);
/* Highest device memory nemoq allocated so far, in bytes (its own
 * allocations: weights, activations, scratch; not cuBLAS' workspace). */
size_t nq_cuda_peak_bytes(const nq_cuda *g);

/* One block as model/forward.c holds it. */
typedef struct nq_cuda_block {
    uint64_t weights_id;        /* new value whenever the host weights may differ */
    nq_block_kind kind;
    const float *norm;          /* [hidden] */
    const nq_mamba2_weights *mamba;
    const nq_attention_weights *attn;
    const nq_mlp_weights *mlp;
    const nq_moe_weights *moe;  /* experts[e].up == NULL: not loaded yet */
    nq_act act;
    float dt_min;
    /* Loads routed expert e into moe->experts[e] (host), 0 or -1. */
    int (*load_expert)(void *ctx, int expert, nq_error *err);
    void *load_ctx;
    /* The sequence state after the n tokens, filled for later decoding
     * steps (each may be NULL): Mamba conv [kernel-1, conv_dim] and SSM
     * [heads, head_dim, state]; attention rows 0..n-1 of the K/V caches. */
    float *conv_state, *ssm_state, *k_cache, *v_cache;
} nq_cuda_block;

/* x[samples * len, hidden] = x + mixer(norm(x)) for `samples` independent
 * FRESH sequences of len tokens each (no earlier state), run together (in
 * chunks of whole sequences).  The residual stream lives in GPU memory:
 * NQ_CUDA_X_IN copies x up first (else the stream the previous call left
 * there is used, for consecutive layers over the same sequences),
 * NQ_CUDA_X_OUT copies the result back to x.  The hooks see a chunk's rows
 * at once (routed experts: token_index into the chunk).  The state
 * pointers of b are filled only when samples == 1.  ex: layer, name
 * prefix, hooks, err.  0 or -1. */
#define NQ_CUDA_X_IN 1u
#define NQ_CUDA_X_OUT 2u
int nq_cuda_run_block(nq_cuda *g, const nq_exec *ex, const nq_model_config *cfg,
                      const nq_cuda_block *b, float *x, int samples, int len, unsigned flags);

/* normed_out[n, hidden] (may be NULL) = norm_f(x); logits[n, vocab] (may be
 * NULL) = lm_head(norm_f(x)).  head_id: new value when the head weights may
 * differ. */
int nq_cuda_run_final(nq_cuda *g, const nq_exec *ex, const nq_model_config *cfg, uint64_t head_id,
                      const float *norm_f, const float *lm_head, const float *x, int n,
                      float *normed_out, float *logits);

/* The device router alone, for tests: experts/weights [n, top_k] (in
 * selection order) for host router logits [n, n_routed_experts] and the
 * correction bias (may be NULL), as nq_moe_select gives them from
 * sigmoid(logits). */
int nq_cuda_moe_select(nq_cuda *g, const nq_model_config *cfg, const float *logits,
                       const float *score_bias, int n, int32_t *experts, float *weights,
                       nq_error *err);

/* TF32 tensor-core GEMMs (cuBLAS CUBLAS_TF32_TENSOR_OP_MATH) instead of
 * plain FP32: faster, ~1e-3 relative error per product; off by default
 * (the tests' tolerances are met with FP32).  Benchmarks only. */
void nq_cuda_set_tf32(nq_cuda *g, bool on);

/* With NEMOQ_CUDA_TIMING=1 in the environment (read by nq_cuda_open):
 * prints the wall time spent in each phase (GEMMs, scan, attention,
 * routing, uploads, host copies, time outside the backend; the device is
 * synchronized at every phase change) since the last report to stderr and
 * starts over; nq_cuda_close reports the rest.  Otherwise does nothing. */
void nq_cuda_timing_report(nq_cuda *g, const char *label);

/* ---- device selection (cuda/device.c, in every build) ---------------- */

/* spec: "cpu", "auto", "cuda" or "cuda:N".  *out = the opened GPU, or NULL
 * for the CPU ("cpu", or "auto" when no usable GPU is found).  desc gets a
 * line saying which device runs and, for auto on the CPU, why.  "cuda" on
 * a build or machine without a usable GPU is an error naming the flag. */
int nq_device_open(const char *spec, nq_cuda **out, char *desc, size_t desc_size, nq_error *err);

#ifdef __cplusplus
}
#endif

#endif
