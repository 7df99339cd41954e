/* Scalar conversions between f32 and the narrow float types stored in
 * checkpoints.  Decoders are exact.  Encoders round to nearest, ties to even,
 * the way PyTorch's .to(dtype) does. */
#ifndef NQ_FORMATS_FLOATCONV_H
#define NQ_FORMATS_FLOATCONV_H

#include <math.h>
#include <stdint.h>
#include <string.h>

float nq_bf16_to_f32(uint16_t h);
uint16_t nq_f32_to_bf16(float f);  /* RNE; NaN stays NaN (quiet) */
float nq_f16_to_f32(uint16_t h);
uint16_t nq_f32_to_f16(float f);   /* RNE; overflow -> inf */
/* OCP FP8 E4M3 "fn": no infinities, 0x7f/0xff are NaN, max finite 448. */
float nq_e4m3_to_f32(uint8_t b);
/* OCP FP8 E5M2: IEEE-like, with inf and NaN, max finite 57344. */
float nq_e5m2_to_f32(uint8_t b);

/* Inline forms for the encoders' inner loops (the functions above call
 * them). */
static inline float nq_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float nq_e4m3_to_f32_inline(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t exp = (b >> 3) & 0xfu;
    uint32_t mant = b & 0x7u;
    if (exp == 0xf && mant == 0x7)
        return sign ? -NAN : NAN;
    if (exp == 0) {
        float v = (float)mant * 0.001953125f; /* subnormal: mant/8 * 2^-6, exact */
        return sign ? -v : v;
    }
    /* rebias 7 -> 127 and widen the mantissa: exact */
    return nq_bits_to_f32(sign | ((exp + 120u) << 23) | (mant << 20));
}

static inline float nq_bf16_to_f32_inline(uint16_t h)
{
    return nq_bits_to_f32((uint32_t)h << 16);
}

static inline uint16_t nq_f32_to_bf16_inline(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN, sign kept */
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)((u + rounding) >> 16);
}

#endif
