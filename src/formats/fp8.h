/* FP8 E4M3 ("e4m3fn": no infinities, max finite 448) encoding and the
 * per-tensor FP8 scheme ModelOpt exports for quant_algo "FP8". */
#ifndef NQ_FORMATS_FP8_H
#define NQ_FORMATS_FP8_H

#include <stdint.h>
#include <string.h>

#include "formats/floatconv.h"

#define NQ_E4M3_MAX 448.0f

/* Round to nearest, ties to even; magnitudes beyond 448 saturate to 448
 * (sign kept); NaN maps to 0x7f. */
uint8_t nq_f32_to_e4m3(float f);

/* Bit arithmetic rather than frexpf/nearbyintf: the encoders call this once
 * per 16-element block (and per element for FP8), so it must be cheap. */
static inline uint8_t nq_f32_to_e4m3_inline(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return 0x7f; /* NaN */
    if (a >= 0x43e00000u) /* >= 448, infinity included: saturate */
        return sign | 0x7e;
    if (a < 0x3c800000u) {
        /* below 2^-6, the subnormal range: quantum 2^-9.  Adding and removing
         * 2^23 rounds half to even in the default rounding mode, exactly
         * (the product is below 8). */
        float q;
        memcpy(&q, &a, sizeof q);
        q *= 512.0f;
        q = (q + 8388608.0f) - 8388608.0f;
        return sign | (uint8_t)q; /* q == 8 is exactly the smallest normal */
    }
    /* normal: keep 3 mantissa bits, round half to even; a carry into the
     * exponent is the correct next binade (a < 448 cannot pass 448) */
    uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
    uint32_t exp = (r >> 23) - 127u + 7u;
    return sign | (uint8_t)((exp << 3) | ((r >> 20) & 7u));
}

/* weight_scale = amax / 448 (1.0 for an all-zero tensor, so it stays a valid
 * positive scale); the division as formats/rounding.h's mode computes it,
 * here and in the KV-cache scale. */
float nq_fp8_tensor_scale(float amax);
/* FP8 KV-cache k_scale/v_scale from the calibrated K/V amax: amax / 448,
 * unclamped, as ModelOpt >= 0.43 exports it (postprocess_state_dict; 0.42 and
 * older wrote max(amax / 448, 1)). vLLM uses any positive stored scale as is
 * and treats 0 as invalid, so an all-zero amax gets 1.0, vLLM's default. */
float nq_fp8_kv_cache_scale(float amax);
/* The stored byte of x under `scale`: e4m3(bf16(x / scale)), as ModelOpt
 * computes it for BF16 weights (see fp8.c). */
uint8_t nq_fp8_quantize_value(float x, float scale);
/* x[n] -> e4m3(x / scale) * scale through nq_fp8_quantize_value: what an
 * FP8 quantizer with `scale` passes on (W8A8 activations, the FP8 KV cache),
 * saturating at +-448 * scale.  In place. */
void nq_fp8_fake_quant(float *x, int64_t n, float scale);

static inline uint8_t nq_fp8_quantize_value_inline(float x, float scale)
{
    return nq_f32_to_e4m3_inline(nq_bf16_to_f32_inline(nq_f32_to_bf16_inline(x / scale)));
}

#endif
