/* Symmetric INT4 weight-only quantization in the GPTQ v1 checkpoint layout
 * (AutoGPTQ qlinear, vLLM gptq/gptq_marlin; docs/export-spec.md 4.2):
 * w = scale * (q - 8), q in 0..15, scales f16 per (group, output column). */
#ifndef NQ_FORMATS_INT4_H
#define NQ_FORMATS_INT4_H

#include <stdint.h>

#include "core/error.h"
#include "formats/floatconv.h"

/* f16 bits of amax / 7 (1.0 for an all-zero group): 7 * scale reaches the
 * largest magnitude, and -8 * scale leaves room on the negative side. */
uint16_t nq_int4_group_scale_max(const float *x, int n);
/* The same from the group's amax. */
static inline uint16_t nq_int4_scale_for_amax(float m)
{
    uint16_t s = nq_f32_to_f16_inline(m > 0 ? m / 7.0f : 1.0f);
    /* a scale that underflows f16 would decode every weight to 0 */
    return nq_f16_to_f32_inline(s) > 0 ? s : 0x0001;
}
/* GPTQ stores scales as F16: a group whose amax / 7 rounds past 65504
 * (amax above about 7 x 65519 = 458633) would get an infinite scale.
 * Fails with the amax and the limit; the caller names the module. */
int nq_int4_check_amax(float amax, nq_error *err);
double nq_int4_group_sq_error(const float *x, int n, uint16_t scale);
/* Best of the scales amax/7 * f, f = 1, 31/32, ..., 16/32 (rounded to f16),
 * by squared error; ties keep the larger scale. */
uint16_t nq_int4_group_scale_mse(const float *x, int n, double *err);
/* q[i] = clamp(round_half_even(x[i] / scale) + 8, 0, 15). */
void nq_int4_encode_group(const float *x, int n, uint16_t scale, uint8_t *q);

/* Packs codes q[out][in] into qweight [in/8, out] (bits 4j..4j+3 of word
 * (r, c) hold row 8r+j), qzeros [in/group, out/8] (zero 8 stored minus one:
 * 0x77777777) and g_idx[i] = i / group. */
void nq_int4_pack_gptq(const uint8_t *q, int64_t out, int64_t in, int group, int32_t *qweight,
                       int32_t *qzeros, int32_t *g_idx);
/* The loader's dequantization: W[c][i] = scales[g_idx[i]][c] *
 * (q[i][c] - (stored_zero + 1)). Inputs may be unaligned. Fails if g_idx is
 * not i / group or a scale is not finite and positive. */
int nq_int4_unpack_gptq(const void *qweight, const void *qzeros, const void *scales,
                        const void *g_idx, int64_t out, int64_t in, int group, float *w,
                        nq_error *err);

#endif
