#include "formats/f16_stochastic.h"

#include "formats/floatconv.h"

uint16_t nq_f32_to_f16_sr(float x, uint32_t rand13)
{
    uint32_t bits = nq_f32_bits(x);
    uint32_t sign = bits & 0x80000000u;
    /* |x| < 2^31 as an integer, so adding 13 bits cannot overflow */
    uint32_t abs_bits = (bits & 0x7fffffffu) + (rand13 & 0x1fffu);
    uint32_t exp = (abs_bits >> 23) & 0xffu;
    uint32_t mant = abs_bits & 0x7fffffu;
    uint16_t h;
    if (exp == 0xffu)
        h = mant ? 0x7e00u : 0x7c00u;
    else if (exp > 142u)
        h = 0x7c00u;
    else if (exp < 113u)
        h = 0;
    else
        h = (uint16_t)(((exp - 112u) << 10) | (mant >> 13));
    return (uint16_t)(sign >> 16) | h;
}
