#include "formats/rounding.h"

#include <string.h>

#include "formats/floatconv.h"

static nq_rounding mode = NQ_ROUNDING_EXACT;

void nq_set_rounding(nq_rounding r)
{
    mode = r;
}

nq_rounding nq_get_rounding(void)
{
    return mode;
}

int nq_parse_rounding(const char *s, nq_rounding *r)
{
    if (strcmp(s, "exact") == 0)
        *r = NQ_ROUNDING_EXACT;
    else if (strcmp(s, "modelopt-cuda") == 0)
        *r = NQ_ROUNDING_MODELOPT_CUDA;
    else
        return -1;
    return 0;
}

const char *nq_rounding_name(nq_rounding r)
{
    return r == NQ_ROUNDING_MODELOPT_CUDA ? "modelopt-cuda" : "exact";
}

float nq_scale_div(float x, float c)
{
    if (mode == NQ_ROUNDING_MODELOPT_CUDA) {
        /* volatile: the reciprocal must be rounded to f32 on its own, not
         * folded into x / c by the compiler */
        volatile float inv = 1.0f / c;
        return x * inv;
    }
    return x / c;
}

float nq_fp8_weight_divisor(float s)
{
    if (mode == NQ_ROUNDING_MODELOPT_CUDA)
        return nq_bf16_to_f32(nq_f32_to_bf16(s));
    return s;
}
