#include "formats/floatconv.h"

#include <math.h>
#include <string.h>

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float nq_bf16_to_f32(uint16_t h)
{
    return nq_bf16_to_f32_inline(h);
}

uint16_t nq_f32_to_bf16(float f)
{
    return nq_f32_to_bf16_inline(f);
}

float nq_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 */
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_to_f32(sign | 0x7f800000u | (mant << 13));
    return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t nq_f32_to_f16(float f)
{
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u)
        return sign | 0x7e00u;
    if (absu >= 0x477ff000u) /* >= 65520 rounds to inf */
        return sign | 0x7c00u;
    if (absu < 0x38800000u) {
        /* result is subnormal (or zero) in f16: quantum 2^-24 */
        float a = bits_to_f32(absu);
        float q = a * 16777216.0f; /* exact: scaling by 2^24 */
        float r = nearbyintf(q);   /* default rounding mode: ties to even */
        return sign | (uint16_t)r;
    }
    uint32_t rounding = 0xfffu + ((absu >> 13) & 1u);
    absu += rounding;
    return sign | (uint16_t)((absu - 0x38000000u) >> 13);
}

float nq_e4m3_to_f32(uint8_t b)
{
    return nq_e4m3_to_f32_inline(b);
}

float nq_e5m2_to_f32(uint8_t b)
{
    /* E5M2 is the top byte of an f16. */
    return nq_f16_to_f32((uint16_t)((uint16_t)b << 8));
}
