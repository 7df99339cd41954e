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

static inline uint32_t nq_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline uint16_t nq_f32_to_f16_inline(float f)
{
    uint32_t u = nq_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u)
        return sign | 0x7e00u;
    if (absu >= 0x477ff000u) /* >= 65520 rounds to inf */
        return sign | 0x7c00u;
    if (absu < 0x38800000u) {
        /* result is subnormal (or zero) in f16: quantum 2^-24 */
        float a = nq_bits_to_f32(absu);
        float q = a * 16777216.0f; /* exact: scaling by 2^24 */
        float r = nearbyintf(q);   /* default rounding mode: ties to even */
        return sign | (uint16_t)r;
    }
    uint32_t rounding = 0xfffu + ((absu >> 13) & 1u);
    absu += rounding;
    return sign | (uint16_t)((absu - 0x38000000u) >> 13);
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

static inline float nq_f16_to_f32_inline(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return nq_bits_to_f32(sign | 0x7f800000u | (mant << 13));
    return nq_bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
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
