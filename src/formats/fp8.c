#include "formats/fp8.h"

#include "formats/floatconv.h"

#include <math.h>
#include <string.h>

uint8_t nq_f32_to_e4m3(float f)
{
    if (isnan(f))
        return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= NQ_E4M3_MAX)
        return sign | 0x7e;
    if (a < 0.015625f) {
        /* subnormal range (below 2^-6): quantum 2^-9, round half to even */
        float q = nearbyintf(a * 512.0f);
        return sign | (uint8_t)q; /* q == 8 lands exactly on the smallest normal */
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    /* 3 mantissa bits: value = (1 + k/8) * 2^(e-1) */
    float scaled = m * 16.0f; /* in [8, 16) */
    float r = nearbyintf(scaled);
    if (r == 16.0f) {
        r = 8.0f;
        e++;
    }
    int biased = e - 1 + 7;
    if (biased > 15 || (biased == 15 && r - 8.0f > 6.0f))
        return sign | 0x7e;
    return sign | (uint8_t)(biased << 3) | (uint8_t)(r - 8.0f);
}

float nq_fp8_tensor_scale(float amax)
{
    return amax > 0 ? amax / NQ_E4M3_MAX : 1.0f;
}

uint8_t nq_fp8_quantize_value(float x, float scale)
{
    /* ModelOpt divides the BF16 weight tensor by the f32 scale and torch
     * keeps the tensor's dtype, so the quotient is rounded to BF16 before
     * the E4M3 cast (a double rounding that changes ~2% of the bytes;
     * tests/test_formats.c checks against ModelOpt's own export).  nemoq's
     * inputs are BF16 checkpoints, so it rounds the same way. */
    return nq_f32_to_e4m3(nq_bf16_to_f32(nq_f32_to_bf16(x / scale)));
}
