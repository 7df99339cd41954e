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

/* NVFP4 (ModelOpt): packed [rows, cols/2], block_scales E4M3 [rows, cols/16],
 * *global_scale = amax / (6 * 448). cols % 16 == 0. */
int nq_encode_nvfp4(const float *w, int64_t rows, int64_t cols, bool mse, int threads,
                    uint8_t *packed, uint8_t *block_scales, float *global_scale,
                    nq_encode_stats *st, nq_error *err);
/* FP8 E4M3 per tensor: out [rows, cols], *scale = amax / 448. */
int nq_encode_fp8(const float *w, int64_t rows, int64_t cols, int threads, uint8_t *out,
                  float *scale, nq_encode_stats *st, nq_error *err);
/* INT4 symmetric, GPTQ v1 layout: qweight [cols/8, rows], qzeros
 * [cols/group, rows/8], scales F16 [cols/group, rows], g_idx [cols]. */
int nq_encode_int4(const float *w, int64_t rows, int64_t cols, int group, bool mse, int threads,
                   int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                   nq_encode_stats *st, nq_error *err);

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
