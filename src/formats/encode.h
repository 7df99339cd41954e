/* Whole-tensor encoders used by the exporters (each defined beside its
 * format's scalar reference: nvfp4_encode.c, fp8_encode.c, int4_encode.c):
 * they split a Linear weight [rows = out_features, cols = in_features] into
 * fixed row chunks, run the per-block functions of formats/ on them in
 * parallel, and reduce error statistics in chunk order, so the bytes and the
 * numbers never depend on the thread count. */
#ifndef NQ_FORMATS_ENCODE_H
#define NQ_FORMATS_ENCODE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/dtype.h"

typedef struct nq_encode_stats {
    double sq_err;           /* sum of (w - dequant(w))^2 with the chosen scales */
    double sq_err_max_scale; /* the same with plain max scales (for the mse report) */
    double sq_ref;           /* sum of w^2 */
} nq_encode_stats;

/* A Linear weight as stored, row-major [rows = out, cols = in], in BF16,
 * F16 or F32 (for example straight from a safetensors mapping: no alignment
 * is assumed).  The *_view encoders read it in place. */
typedef struct nq_weight_view {
    const void *data;
    nq_dtype dtype;
    int64_t rows, cols;
} nq_weight_view;

/* The encoders stop at the first Inf or NaN element ("element N is NaN") and
 * produce the same bytes and statistics for any thread count. */

/* NVFP4 (ModelOpt): packed [rows, cols/2], block_scales E4M3 [rows, cols/16],
 * *global_scale = amax / (6 * 448). cols % 16 == 0. */
int nq_encode_nvfp4(const float *w, int64_t rows, int64_t cols, bool mse, int threads,
                    uint8_t *packed, uint8_t *block_scales, float *global_scale,
                    nq_encode_stats *st, nq_error *err);
int nq_encode_nvfp4_view(const nq_weight_view *w, bool mse, int threads, uint8_t *packed,
                         uint8_t *block_scales, float *global_scale, nq_encode_stats *st,
                         nq_error *err);
/* The same with the global scale computed from max(own amax, shared_amax):
 * the q/k/v of an attention layer share one (ModelOpt's
 * preprocess_linear_fusion; vLLM's fused qkv_proj keeps a single
 * weight_scale_2). */
int nq_encode_nvfp4_view_shared(const nq_weight_view *w, float shared_amax, bool mse, int threads,
                                uint8_t *packed, uint8_t *block_scales, float *global_scale,
                                nq_encode_stats *st, nq_error *err);
/* max |w| (an error naming the element for Inf or NaN). */
int nq_weight_view_amax(const nq_weight_view *w, int threads, float *amax, nq_error *err);
/* FP8 E4M3 per tensor: out [rows, cols], *scale = amax / 448. */
int nq_encode_fp8(const float *w, int64_t rows, int64_t cols, int threads, uint8_t *out,
                  float *scale, nq_encode_stats *st, nq_error *err);
int nq_encode_fp8_view(const nq_weight_view *w, int threads, uint8_t *out, float *scale,
                       nq_encode_stats *st, nq_error *err);
/* INT4 symmetric, GPTQ v1 layout: qweight [cols/8, rows], qzeros
 * [cols/group, rows/8], scales F16 [cols/group, rows], g_idx [cols].
 * group: 16..128, a multiple of 16 dividing cols. */
int nq_encode_int4(const float *w, int64_t rows, int64_t cols, int group, bool mse, int threads,
                   int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                   nq_encode_stats *st, nq_error *err);
int nq_encode_int4_view(const nq_weight_view *w, int group, bool mse, int threads,
                        int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                        nq_encode_stats *st, nq_error *err);

/* Tests: true makes the encoders use their portable kernels even where the
 * CPU has faster ones (they must give the same bytes and statistics). */
void nq_encode_force_generic(bool generic);

#endif
