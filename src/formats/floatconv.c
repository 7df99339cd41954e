#include "formats/floatconv.h"

#include <math.h>
#include <string.h>

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
    return nq_f16_to_f32_inline(h);
}

uint16_t nq_f32_to_f16(float f)
{
    return nq_f32_to_f16_inline(f);
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
