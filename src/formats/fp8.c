#include "formats/fp8.h"

#include "formats/floatconv.h"
#include "formats/rounding.h"

#include <math.h>
#include <string.h>

uint8_t nq_f32_to_e4m3(float f)
{
    return nq_f32_to_e4m3_inline(f);
}

float nq_fp8_tensor_scale(float amax)
{
    return amax > 0 ? nq_scale_div(amax, NQ_E4M3_MAX) : 1.0f;
}

float nq_fp8_kv_cache_scale(float amax)
{
    return amax > 0 ? nq_scale_div(amax, NQ_E4M3_MAX) : 1.0f;
}

uint8_t nq_fp8_quantize_value(float x, float scale)
{
    /* ModelOpt divides the BF16 weight tensor by the f32 scale and torch
     * keeps the tensor's dtype, so the quotient is rounded to BF16 before
     * the E4M3 cast (a double rounding that changes ~2% of the bytes;
     * tests/test_formats.c checks against ModelOpt's own export).  nemoq's
     * inputs are BF16 checkpoints, so it rounds the same way. */
    return nq_fp8_quantize_value_inline(x, scale);
}

void nq_fp8_fake_quant(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = nq_e4m3_to_f32(nq_fp8_quantize_value(x[i], scale)) * scale;
}
