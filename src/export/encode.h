/* Whole-tensor encoders and decoders used by the exporters and by verify:
 * they split a Linear weight [rows = out_features, cols = in_features] into
 * fixed row chunks, run the per-block functions of formats/ on them in
 * parallel, and reduce error statistics in chunk order, so the bytes and the
 * numbers never depend on the thread count. */
#ifndef NQ_EXPORT_ENCODE_H
#define NQ_EXPORT_ENCODE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "io/safetensors.h"

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

/* The format a checkpoint stores module `module` in, from its tensors. */
typedef enum nq_stored_format {
    NQ_STORED_NONE,  /* no such module */
    NQ_STORED_FLOAT, /* plain float weight */
    NQ_STORED_NVFP4,
    NQ_STORED_FP8,
    NQ_STORED_GPTQ,
} nq_stored_format;
nq_stored_format nq_stored_format_of(const nq_checkpoint *ck, const char *module);

/* Dequantizes module `module` of ck into a malloc'd f32 [rows, cols] (its
 * logical [out, in] weight), validating every companion tensor's dtype and
 * shape and that scales are finite and positive.  gptq_group is the group
 * size from quantize_config.json (used to check g_idx; 0 to infer). */
float *nq_decode_module(const nq_checkpoint *ck, const char *module, int gptq_group,
                        int64_t *rows, int64_t *cols, nq_error *err);

#endif
