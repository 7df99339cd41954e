/* The CUDA backend of the forward pass: one Nemotron-H block, or the head,
 * computed on one GPU in float32 (the Linear layers' GEMMs: see
 * nq_cuda_gemm_mode).
 *
 * The layer schedule stays in model/forward.c (embeddings, blocks in order,
 * x = x + mixer(norm(x)), norm_f, lm_head); it hands each block's host
 * weights here instead of to the CPU layer functions of model/layers.h,
 * whose arithmetic these kernels mirror (same formulas, f32 with f64 norm
 * sums; only the summation order inside products differs).  The CPU path is
 * the reference the GPU tests compare against.
 *
 * Weights: a block's f32 host weights are uploaded once per weights_id (as
 * bf16 when they are exactly bf16 and the GEMM mode is a bf16 one) and
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
 * Hooks (activation / KV fake-quant, routing, any Linear-input observer) run
 * on the host: when the model has hooks, each Linear's input, the
 * keys/values and the router's decision are copied back, the hook runs on
 * that copy and a rewritten input is copied up again.  Calibration's
 * statistics have a device path instead (nq_cuda_stats_*, below), and so do
 * its encoding and GPTQ (nq_cuda_encode_nvfp4, nq_cuda_gptq).
 *
 * Determinism: no atomics; every reduction has a fixed order (the expert
 * sort is a stable radix sort); cuBLAS SGEMM with TF32 off
 * (CUBLAS_DEFAULT_MATH) and its bf16 GemmEx, atomics off, are bitwise
 * reproducible on one GPU model.  Same
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
 * chunks of whole sequences).  With NQ_CUDA_X_IN | NQ_CUDA_X_OUT the host x
 * goes through the device a chunk at a time (up, the block, back down).
 * Otherwise the residual stream lives in GPU memory: NQ_CUDA_X_IN alone
 * copies x up first (else the stream the previous call left there is used,
 * for consecutive layers over the same sequences), NQ_CUDA_X_OUT alone
 * copies the result back to x.  The hooks see a chunk's rows
 * at once (routed experts: token_index into the chunk).  The state
 * pointers of b are filled only when samples == 1.  ex: layer, name
 * prefix, hooks, err.  0 or -1. */
#define NQ_CUDA_X_IN 1u
/* Rows (tokens) per chunk of a block's input: whole sequences, at least one. */
#define NQ_CUDA_CHUNK_ROWS 32768
#define NQ_CUDA_X_OUT 2u
int nq_cuda_run_block(nq_cuda *g, const nq_exec *ex, const nq_model_config *cfg,
                      const nq_cuda_block *b, float *x, int samples, int len, unsigned flags);

/* ---- the residual stream resident on the GPU (calibration) -------------
 *
 * nq_cuda_run_block without NQ_CUDA_X_IN / NQ_CUDA_X_OUT runs on the
 * stream left on the device; with both flags set it streams the host x
 * through the device a chunk at a time instead (nothing stays resident).
 * Calibration keeps its activations resident from the embedding to the
 * last layer when they fit (calibrated_acts.c decides; S x T x hidden x 4 bytes,
 * twice when the layer's input must be kept): no host copy of them at all.
 *
 * nq_cuda_resident_embed: stream[i] = table[ids[i]] for n tokens (table:
 * host [vocab, hidden], uploaded for the call and freed; ids checked by the
 * caller).  _save / _restore: a second device array holding the layer's
 * input (allocated on the first save).  _download: the first count floats
 * of the stream to the host.  _free: both arrays. */
int nq_cuda_resident_embed(nq_cuda *g, const float *table, int64_t vocab, int hidden,
                           const int32_t *ids, size_t n, nq_error *err);
int nq_cuda_resident_save(nq_cuda *g, nq_error *err);
int nq_cuda_resident_restore(nq_cuda *g, nq_error *err);
int nq_cuda_resident_download(nq_cuda *g, float *x, size_t count, nq_error *err);
void nq_cuda_resident_free(nq_cuda *g);
/* Frees the device buffers the per-module work (encoding, output errors)
 * keeps between calls; calibration calls it after each layer. */
void nq_cuda_trim(nq_cuda *g);
/* Page-locked host memory (cudaMallocHost: uploads from it run at the
 * link's full speed), or NULL; freed with nq_cuda_host_free. */
void *nq_cuda_host_alloc(size_t bytes);
void nq_cuda_host_free(void *p);
/* Free and total device memory (cudaMemGetInfo). */
int nq_cuda_mem_info(nq_cuda *g, size_t *free_bytes, size_t *total_bytes, nq_error *err);

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

/* Rows per chunk (whole sequences, at least one): NQ_CUDA_CHUNK_ROWS
 * unless set here (0: back to it).  Tests only: smaller chunks make the
 * chunked paths run on a small model. */
void nq_cuda_set_chunk_rows(nq_cuda *g, int rows);

/* How the Linear layers multiply (gemm.cu).  NQ_GEMM_F32: cuBLAS SGEMM.
 * The bf16 modes apply to weights whose f32 values are all exactly bf16
 * (the low 16 bits of every value zero, checked at upload: a BF16
 * checkpoint's weights); those are kept on the GPU as bf16 and multiplied
 * on the tensor cores with the f32 input split into bf16 terms:
 * NQ_GEMM_BF16X3 three terms (x = x1 + x2 + x3 exactly, so every product
 * is exact and only the f32 accumulation order differs from SGEMM), one
 * GEMM per term accumulated into the output; NQ_GEMM_BF16X3K the same
 * three terms as one GEMM of depth 3 x in (the weight stored three times);
 * NQ_GEMM_BF16X2 two terms (inputs kept to 16 significant bits, relative
 * error <= 2^-17 each).  Any other weight (a merged adapter, equalized or
 * GPTQ-rewritten weights, dequantized codes) goes through SGEMM whatever
 * the mode.  The default comes from NEMOQ_CUDA_GEMM (f32|bf16x3|bf16x2|
 * bf16x3k) at nq_cuda_open, else NQ_GEMM_DEFAULT. */
typedef enum nq_cuda_gemm_mode {
    NQ_GEMM_F32 = 0,
    NQ_GEMM_BF16X3 = 1,
    NQ_GEMM_BF16X2 = 2,
    NQ_GEMM_BF16X3K = 3
} nq_cuda_gemm_mode;
#define NQ_GEMM_DEFAULT NQ_GEMM_BF16X2
/* Sets the mode; the weights already on the device are dropped (uploaded
 * again in the new form when next used). */
void nq_cuda_set_gemm_mode(nq_cuda *g, nq_cuda_gemm_mode m);
nq_cuda_gemm_mode nq_cuda_gemm_mode_get(const nq_cuda *g);
const char *nq_cuda_gemm_mode_name(nq_cuda_gemm_mode m);
/* For tests: host y[n, out] = x[n, in] w[out, in]^T through the Linear
 * layers' upload and GEMM in the current mode; *bf16 = whether w went the
 * bf16 tensor-core way. */
int nq_cuda_gemm(nq_cuda *g, const float *x, int n, int in, const float *w, int out, float *y,
                 bool *bf16, nq_error *err);

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
/* ---- calibration statistics on the GPU (cuda/stats.cu) ----------------
 *
 * Between nq_cuda_stats_begin and nq_cuda_stats_end every Linear input the
 * blocks compute (and the keys/values of attention) is reduced on the GPU
 * where it lies, instead of being copied to a host hook: per observed
 * Linear its input amax (max |x|, non-finite inputs flagged), its number of
 * rows, its first sample_rows rows (copied to the host while they come) and
 * optionally the Hessian sum X^T X in float64 (cuBLAS DSYRK over the rows
 * converted to double, which is exact for the products of floats; fixed
 * order, no atomics: the same bytes run after run); routed experts see only
 * their tokens.  The host fetches the results once per layer
 * (nq_cuda_stats_item) and the caller (calib/) turns them into its own
 * statistics.  GPU memory: in^2 x 8 bytes per observed Linear with
 * Hessians (a Nano MoE layer: about 11 GB for its 128 experts). */
typedef struct nq_cuda_stats_spec {
    /* Whether the input of the Linear `weight_name` ("...weight", in
     * features) is observed: 1 yes, 0 no, -1 error (err filled).  Asked
     * once per name. */
    int (*wanted)(void *ctx, const char *weight_name, int in_features, nq_error *err);
    void *ctx;
    bool hessians;
    int sample_rows;
} nq_cuda_stats_spec;

typedef struct nq_cuda_linear_stat {
    const char *weight_name;   /* owned by g, valid until nq_cuda_stats_end */
    int layer, expert, in_features;
    float amax;                /* max |x| over the finite inputs */
    bool nonfinite;            /* some input was NaN or infinite */
    uint64_t rows;
    const float *sample;       /* host [sample_rows, in_features], owned by g */
    int sample_rows;
} nq_cuda_linear_stat;

int nq_cuda_stats_begin(nq_cuda *g, const nq_cuda_stats_spec *spec, nq_error *err);
/* Observed Linears so far, in order of first use. */
size_t nq_cuda_stats_count(const nq_cuda *g);
/* Item i; hessian: NULL or a host [in, in] array that receives the full
 * symmetric sum (both triangles). */
int nq_cuda_stats_item(nq_cuda *g, size_t i, nq_cuda_linear_stat *out, double *hessian,
                       nq_error *err);
/* K and V amax over every attention block run since begin; *seen false
 * when none ran; *nonfinite when a key or value was NaN/infinite. */
int nq_cuda_stats_kv(nq_cuda *g, float *k_amax, float *v_amax, bool *seen, bool *nonfinite,
                     nq_error *err);
/* Frees every device and host buffer of the statistics (also at close). */
void nq_cuda_stats_end(nq_cuda *g);
/* ||X (W - Q)^T||^2 and ||X W^T||^2 for host x[rows, in], w and q [out,
 * in]: the output error of a quantized weight on sampled inputs, as
 * export/calibrated.c computes it on the CPU (products exact in double,
 * cuBLAS DGEMM; the squares summed per row on the device in the CPU's
 * order, the rows' sums on the host). */
int nq_cuda_output_error(nq_cuda *g, const float *x, int rows, const float *w, const float *q,
                         int64_t out, int64_t in, double *err_sq, double *ref_sq, nq_error *err);

/* NVFP4 round-to-nearest of w (host [out, in]) on the GPU (cuda/encode.cu):
 * the bytes of formats/nq_encode_nvfp4 (packed [out, in/2], block scales
 * [out, in/16], global scale), and stats[0..2] = sum (w - deq)^2, the same
 * with max scales, sum w^2; with x (host [rows, in], else NULL) stats[3..4]
 * = nq_cuda_output_error's two sums for the dequantized weight. */
int nq_cuda_encode_nvfp4(nq_cuda *g, const float *w, int64_t out, int64_t in, bool mse,
                         const float *x, int rows, uint8_t *packed, uint8_t *scales,
                         float *global_scale, double stats[5], nq_error *err);

/* ---- GPTQ on the GPU (cuda/gptq.cu) -------------------------------------
 *
 * The core of algo/gptq.c for one weight: U = upper Cholesky factor of the
 * inverse of (hessian + damp_abs I) through cuSOLVER (opened with dlopen
 * on first use), then the blocked column sweep (blocks of 128, group
 * scales from a block's weights as they stand at its start, or act-order's
 * static scales; error feedback through U) with the same scale searches and
 * encoders as formats/.  algo/gptq.c prepares the input (dead columns,
 * dampening, the NVFP4 global scale, act-order's permutation) and packs the
 * output; see gptq.cu for how close to the CPU's bytes this is. */
typedef struct nq_cuda_gptq_job {
    int fmt;                   /* 0 INT4, 1 NVFP4 */
    const float *w;            /* host [rows, cols] */
    int64_t rows, cols;
    const double *hessian;     /* host [cols, cols], both triangles */
    const bool *dead;          /* [cols]: zero weight column, H_ii taken as 1 */
    double damp_abs;           /* added to the diagonal */
    int group;                 /* INT4 group, 16 for NVFP4 */
    bool mse;
    float gs;                  /* NVFP4 global scale */
    /* NVFP4 scale search (nq_gptq_nvfp4_opts, --optimize): per block the
     * candidate scale with the least GPTQ loss, from the row as updated so
     * far; lo, hi the range, or four_over_six (overrides mse) */
    bool search, four_over_six;
    float lo, hi;
    /* INT4 act-order (else NULL): column i of the job is column perm[i] of
     * the weight (its code is stored there) and uses the static scale
     * static16[(perm[i] / group) * rows + row]; scales16 is not written. */
    const int64_t *perm;
    const uint16_t *static16;
    uint8_t *codes;            /* INT4 [rows, cols] 0..15; NVFP4 packed [rows, cols/2] */
    uint16_t *scales16;        /* INT4 [cols/group, rows] */
    uint8_t *scales8;          /* NVFP4 [rows, cols/16] */
    double proxy_loss;         /* out */
    int status;                /* out: 0, or 1 when the damped Hessian is not positive definite */
} nq_cuda_gptq_job;

/* 0, 1 when the damped Hessian is not positive definite (nothing written),
 * -1 on error. */
int nq_cuda_gptq(nq_cuda *g, nq_cuda_gptq_job *j, nq_error *err);
/* Several jobs, up to 8 at once on their own streams (a Nano expert alone
 * keeps a fraction of the GPU busy); each job's bytes are what
 * nq_cuda_gptq gives it.  0 (each job's status says whether its Hessian
 * was positive definite) or -1 on error. */
int nq_cuda_gptq_batch(nq_cuda *g, nq_cuda_gptq_job *jobs, size_t count, nq_error *err);

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
