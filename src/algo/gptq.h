/* GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
 * Generative Pre-trained Transformers", 2022), as the reference
 * implementation (IST-DASLab/gptq `fasterquant`, AutoGPTQ's
 * `GPTQ.fasterquant`) computes it:
 *
 *   H = sum x x^T over the Linear's calibration inputs (any positive
 *   multiple: only its direction matters); dead inputs (H_ii = 0) get
 *   H_ii = 1 and a zero weight column; H += percdamp * mean(diag H) * I;
 *   U = upper Cholesky factor of H^-1; columns are quantized left to right
 *   in blocks of 128 and each column's error, divided by U_ii, is spread
 *   over the not yet quantized columns of its block (and, lazily, over the
 *   rest at the end of the block) through row i of U.
 *
 * The scale of a group (INT4: `group` columns; NVFP4: 16) is chosen when the
 * group's first column comes up, from the weights as updated so far (max or
 * mse, the same functions as round-to-nearest uses), as the reference does
 * without static groups.  The NVFP4 global scale is fixed beforehand from
 * the original weight's amax.  (Act-order: nq_gptq_int4_actorder below;
 * the stored layout stays the plain one every loader reads.)
 *
 * Rows are independent given U: they are processed in fixed chunks of rows,
 * in parallel, so the output is byte-identical for any thread count.  When
 * the damped H is not positive definite the dampening is multiplied by 10
 * (up to 4 times) and st->damp says what was used. */
#ifndef NQ_ALGO_GPTQ_H
#define NQ_ALGO_GPTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct nq_gptq_stats {
    double damp;          /* the dampening fraction finally used */
    int dead_columns;     /* inputs never active in calibration */
    double proxy_loss;    /* sum of the reference's Losses: sum (w - q)^2 / U_ii^2 / 2 */
} nq_gptq_stats;

/* INT4 symmetric, GPTQ v1 layout as nq_encode_int4 writes it. */
int nq_gptq_int4(const float *w, int64_t rows, int64_t cols, const double *hessian, int group,
                 bool mse, double percdamp, int threads, int32_t *qweight, int32_t *qzeros,
                 uint16_t *scales, int32_t *g_idx, nq_gptq_stats *st, nq_error *err);

/* The same with act-order and static groups (AutoGPTQ desc_act=True,
 * static_groups=True): every group's scale is fixed first from the original
 * weights (dead inputs zeroed), then the columns are quantized in order of
 * decreasing H_ii (ties by index) with the usual error feedback, each with
 * its own group's fixed scale.  The order only decides which columns
 * compensate for which: codes, scales, qzeros and g_idx (i / group) are
 * stored in the plain column order, so the checkpoint is the same
 * desc_act=false layout vLLM's gptq_marlin loads without a g_idx
 * permutation. */
int nq_gptq_int4_actorder(const float *w, int64_t rows, int64_t cols, const double *hessian,
                          int group, bool mse, double percdamp, int threads, int32_t *qweight,
                          int32_t *qzeros, uint16_t *scales, int32_t *g_idx, nq_gptq_stats *st,
                          nq_error *err);

/* NVFP4 as nq_encode_nvfp4 writes it; the global scale from max(amax,
 * shared_amax) as nq_encode_nvfp4_view_shared. */
int nq_gptq_nvfp4(const float *w, int64_t rows, int64_t cols, const double *hessian, bool mse,
                  double percdamp, int threads, float shared_amax, uint8_t *packed,
                  uint8_t *block_scales, float *global_scale, nq_gptq_stats *st, nq_error *err);

/* Options of the NVFP4 GPTQ beyond the reference (--optimize, algo/optimize.h). */
typedef struct nq_gptq_nvfp4_opts {
    bool mse;             /* plain MSE block scales, as --weight-scale mse */
    /* Output-aware block scales: when a block's first column comes up, every
     * candidate E4M3 scale (decoded value in [lo, hi] x the max scale of the
     * block's weights as updated so far; with four_over_six: mapped to 6 or
     * to 4) is tried by running the block's 16 columns of GPTQ with it, and
     * the one with the least GPTQ loss sum ((w - q) / U_ii)^2 — the exact
     * increase of the layer's output error once the later columns have
     * compensated — is kept.  Overrides mse; four_over_six implies it. */
    bool search;
    float lo, hi;
    bool four_over_six;
    /* weight_scale_2 = amax / (6 x scale_max): 448 is ModelOpt's default,
     * 256 its four-over-six setting (room for blocks scaled to 4). */
    float scale_max;
    float shared_amax;    /* as nq_gptq_nvfp4's (fused siblings' common amax), or 0 */
} nq_gptq_nvfp4_opts;

int nq_gptq_nvfp4_ex(const float *w, int64_t rows, int64_t cols, const double *hessian,
                     const nq_gptq_nvfp4_opts *o, double percdamp, int threads, uint8_t *packed,
                     uint8_t *block_scales, float *global_scale, nq_gptq_stats *st,
                     nq_error *err);
/* The same on a GPU (cuda/cuda.h, nq_cuda_gptq): the inverse Cholesky and
 * the column sweep run there (gpu NULL: on the CPU, as above).  Same
 * algorithm; only the order of the sums inside the factorizations and the
 * block updates can differ (see cuda/gptq.cu); the NVFP4 scale searches
 * of nq_gptq_nvfp4_ex (nq_gptq_nvfp4_ex_on) and act-order run there too. */
struct nq_cuda;
int nq_gptq_int4_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                    const double *hessian, int group, bool mse, double percdamp, int threads,
                    int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                    nq_gptq_stats *st, nq_error *err);
int nq_gptq_int4_actorder_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                             const double *hessian, int group, bool mse, double percdamp,
                             int threads, int32_t *qweight, int32_t *qzeros, uint16_t *scales,
                             int32_t *g_idx, nq_gptq_stats *st, nq_error *err);
int nq_gptq_nvfp4_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                     const double *hessian, bool mse, double percdamp, int threads,
                     float shared_amax, uint8_t *packed, uint8_t *block_scales,
                     float *global_scale, nq_gptq_stats *st, nq_error *err);
int nq_gptq_nvfp4_ex_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                        const double *hessian, const nq_gptq_nvfp4_opts *o, double percdamp,
                        int threads, uint8_t *packed, uint8_t *block_scales, float *global_scale,
                        nq_gptq_stats *st, nq_error *err);

/* Several weights of one format at once (a MoE layer's experts): on a GPU
 * they run together (nq_cuda_gptq_batch, several streams), which one
 * expert alone cannot; each item's bytes are what the one-weight call
 * gives it.  Inputs: w, rows, cols, hessian (and shared_amax for NVFP4);
 * outputs: the format's arrays, which the caller allocates as for the
 * one-weight call, and st (and global_scale). */
typedef struct nq_gptq_item {
    const float *w;
    int64_t rows, cols;
    const double *hessian;
    float shared_amax;                  /* NVFP4 */
    uint8_t *packed, *block_scales;     /* NVFP4 */
    float global_scale;                 /* NVFP4, out */
    int32_t *qweight, *qzeros, *g_idx;  /* INT4 */
    uint16_t *scales;                   /* INT4 */
    nq_gptq_stats st;                   /* out */
    const char *name;                   /* NULL, or named in the errors of this item */
} nq_gptq_item;

int nq_gptq_nvfp4_batch_on(struct nq_cuda *gpu, nq_gptq_item *items, size_t count, bool mse,
                           double percdamp, int threads, nq_error *err);
/* With nq_gptq_nvfp4_ex's options (o->shared_amax unused: each item's). */
int nq_gptq_nvfp4_ex_batch_on(struct nq_cuda *gpu, nq_gptq_item *items, size_t count,
                              const nq_gptq_nvfp4_opts *o, double percdamp, int threads,
                              nq_error *err);
int nq_gptq_int4_batch_on(struct nq_cuda *gpu, nq_gptq_item *items, size_t count, int group,
                          bool mse, bool act_order, double percdamp, int threads, nq_error *err);

#endif
