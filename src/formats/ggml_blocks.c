#include "formats/ggml_blocks.h"

#include <math.h>
#include <string.h>

#include "formats/floatconv.h"

void nq_q8_0_quantize_row(const float *x, int64_t n, uint8_t *out)
{
    for (int64_t b = 0; b < n / NQ_Q8_0_BLOCK; b++) {
        const float *xb = x + b * NQ_Q8_0_BLOCK;
        uint8_t *ob = out + b * NQ_Q8_0_BYTES;
        float amax = 0.0f;
        for (int j = 0; j < NQ_Q8_0_BLOCK; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        /* exactly ggml's arithmetic: a float division, then the reciprocal */
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = nq_f32_to_f16(d);
        ob[0] = (uint8_t)h;
        ob[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < NQ_Q8_0_BLOCK; j++)
            ob[2 + j] = (uint8_t)(int8_t)roundf(xb[j] * id);
    }
}

void nq_q8_0_dequantize_row(const uint8_t *in, int64_t n, float *out)
{
    for (int64_t b = 0; b < n / NQ_Q8_0_BLOCK; b++) {
        const uint8_t *ib = in + b * NQ_Q8_0_BYTES;
        float d = nq_f16_to_f32((uint16_t)(ib[0] | ib[1] << 8));
        for (int j = 0; j < NQ_Q8_0_BLOCK; j++)
            out[b * NQ_Q8_0_BLOCK + j] = (float)(int8_t)ib[2 + j] * d;
    }
}

void nq_ggml_nvfp4_from_modelopt(const uint8_t *packed, const uint8_t *scales, int64_t cols,
                                 uint8_t *out)
{
    for (int64_t b = 0; b < cols / NQ_GGML_NVFP4_BLOCK; b++) {
        uint8_t *ob = out + b * NQ_GGML_NVFP4_BYTES;
        for (int s = 0; s < 4; s++) {
            int64_t sub = b * 4 + s;
            ob[s] = scales[sub] & 0x7f;
            const uint8_t *p = packed + sub * 8; /* ModelOpt: element 2i low, 2i+1 high */
            uint8_t v[16];
            for (int i = 0; i < 8; i++) {
                v[2 * i] = p[i] & 0x0f;
                v[2 * i + 1] = p[i] >> 4;
            }
            for (int j = 0; j < 8; j++)
                ob[4 + s * 8 + j] = (uint8_t)(v[j] | v[j + 8] << 4);
        }
    }
}

/* ggml_ue4m3_to_fp32 * 2 (ggml halves it to pair with kvalues_mxfp4, which
 * are E2M1 doubled); 0 and 0x7f decode to 0. */
static float ue4m3(uint8_t x)
{
    if (x == 0 || x == 0x7f)
        return 0.0f;
    int e = (x >> 3) & 0xf, m = x & 7;
    return e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
}

void nq_ggml_nvfp4_dequantize_row(const uint8_t *in, int64_t n, float *out)
{
    static const int8_t kv[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    for (int64_t b = 0; b < n / NQ_GGML_NVFP4_BLOCK; b++) {
        const uint8_t *ib = in + b * NQ_GGML_NVFP4_BYTES;
        for (int s = 0; s < 4; s++) {
            float d = ue4m3(ib[s]) * 0.5f;
            float *y = out + b * NQ_GGML_NVFP4_BLOCK + s * 16;
            for (int j = 0; j < 8; j++) {
                uint8_t q = ib[4 + s * 8 + j];
                y[j] = kv[q & 0xf] * d;
                y[j + 8] = kv[q >> 4] * d;
            }
        }
    }
}
