#include "formats/nvfp4.h"

#include <math.h>

#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/rounding.h"

static const float e2m1_values[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6,
                                      -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

float nq_e2m1_value(uint8_t code)
{
    return e2m1_values[code & 15];
}

uint8_t nq_e2m1_encode(float x)
{
    /* ModelOpt _cast_fp4: ord = searchsorted(bounds, |x|) (first bound >=
     * |x|), plus one when |x| is exactly 0.75, 1.75 or 3.5: ties go to the
     * even code.  Written as a sum of comparisons (no branches), which is
     * the same count as the search. */
    float a = fabsf(x);
    int ord = (a > 0.25f) + (a > 0.75f) + (a > 1.25f) + (a > 1.75f) + (a > 2.5f) + (a > 3.5f) +
              (a > 5.0f) + (a == 0.75f) + (a == 1.75f) + (a == 3.5f);
    return (uint8_t)((x < 0 ? 8 : 0) + ord);
}

float nq_nvfp4_global_scale(float amax)
{
    return amax > 0 ? nq_scale_div(amax, 6.0f * 448.0f) : 1.0f;
}

static float block_amax(const float *x)
{
    float m = 0;
    for (int i = 0; i < NQ_NVFP4_BLOCK; i++)
        if (fabsf(x[i]) > m)
            m = fabsf(x[i]);
    return m;
}

uint8_t nq_nvfp4_block_scale_max(const float *x, float gs)
{
    float s = block_amax(x) / (6.0f * gs);
    if (s == 0)
        s = 1.0f;
    if (s < 0.001953125f) /* clamp_(min=2**-9): the smallest e4m3 subnormal */
        s = 0.001953125f;
    return nq_f32_to_e4m3(s);
}

void nq_nvfp4_encode_block(const float *x, uint8_t scale, float gs, uint8_t packed[8])
{
    float denom = nq_e4m3_to_f32(scale) * gs;
    for (int i = 0; i < NQ_NVFP4_BLOCK; i += 2) {
        uint8_t lo = nq_e2m1_encode(x[i] / denom);
        uint8_t hi = nq_e2m1_encode(x[i + 1] / denom);
        packed[i / 2] = (uint8_t)(lo | (hi << 4));
    }
}

double nq_nvfp4_block_sq_error(const float *x, uint8_t scale, float gs)
{
    float denom = nq_e4m3_to_f32(scale) * gs;
    double e = 0;
    for (int i = 0; i < NQ_NVFP4_BLOCK; i++) {
        float d = nq_e2m1_value(nq_e2m1_encode(x[i] / denom)) * denom;
        double diff = (double)x[i] - d;
        e += diff * diff;
    }
    return e;
}

/* The candidates' errors are accumulated side by side (element by element,
 * each candidate's sum in the same sequential double order as
 * nq_nvfp4_block_sq_error), so the choice is the one a candidate-by-candidate
 * search makes, while the independent sums keep the CPU busy (one dependent
 * double add chain per candidate made this search 25x slower than
 * quantizing with max scales). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(NQ_NO_MULTIVERSION)
__attribute__((target_clones("avx2", "default")))
#endif
uint8_t nq_nvfp4_block_scale_mse(const float *x, float gs, double *err)
{
    uint8_t max_code = nq_nvfp4_block_scale_max(x, gs);
    float ref = nq_e4m3_to_f32_inline(max_code);
    /* candidates in search order: the max scale, then downwards to half of
     * it, then upwards to 5/4 of it (positive e4m3 codes are ordered like
     * their values) */
    uint8_t cand[128];
    float denom[128];
    double e[128];
    int nc = 0;
    cand[nc++] = max_code;
    for (int code = max_code - 1; code >= 1; code--) {
        if (nq_e4m3_to_f32_inline((uint8_t)code) < 0.5f * ref)
            break;
        cand[nc++] = (uint8_t)code;
    }
    for (int code = max_code + 1; code <= 0x7e; code++) {
        if (nq_e4m3_to_f32_inline((uint8_t)code) > 1.25f * ref)
            break;
        cand[nc++] = (uint8_t)code;
    }
    for (int c = 0; c < nc; c++) {
        denom[c] = nq_e4m3_to_f32_inline(cand[c]) * gs;
        e[c] = 0;
    }
    for (int i = 0; i < NQ_NVFP4_BLOCK; i++) {
        const float xi = x[i];
        for (int c = 0; c < nc; c++) {
            /* nq_e2m1_value(nq_e2m1_encode(xi / denom)) without the table */
            float a = fabsf(xi / denom[c]);
            float mag = 0.5f * (float)((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f)) +
                        (float)((a > 2.5f) + (a >= 3.5f)) + 2.0f * (float)(a > 5.0f);
            float d = (xi < 0 ? -mag : mag) * denom[c];
            double diff = (double)xi - d;
            e[c] += diff * diff;
        }
    }
    uint8_t best = max_code;
    double best_err = e[0];
    for (int c = 1; c < nc; c++) {
        if (e[c] < best_err) {
            best_err = e[c];
            best = cand[c];
        }
    }
    *err = best_err;
    return best;
}

void nq_nvfp4_decode_row(const uint8_t *packed, const uint8_t *scales, float gs, int64_t cols,
                         float *out)
{
    for (int64_t b = 0; b < cols / NQ_NVFP4_BLOCK; b++) {
        float s = nq_e4m3_to_f32(scales[b]) * gs;
        for (int i = 0; i < NQ_NVFP4_BLOCK; i += 2) {
            uint8_t byte = packed[(b * NQ_NVFP4_BLOCK + i) / 2];
            out[b * NQ_NVFP4_BLOCK + i] = nq_e2m1_value(byte & 15) * s;
            out[b * NQ_NVFP4_BLOCK + i + 1] = nq_e2m1_value(byte >> 4) * s;
        }
    }
}

static double weighted_error(const float *x, float denom, const double *hb)
{
    double d[NQ_NVFP4_BLOCK];
    for (int i = 0; i < NQ_NVFP4_BLOCK; i++)
        d[i] = (double)x[i] - (double)(nq_e2m1_value(nq_e2m1_encode(x[i] / denom)) * denom);
    double e = 0.0;
    if (!hb) {
        for (int i = 0; i < NQ_NVFP4_BLOCK; i++)
            e += d[i] * d[i];
        return e;
    }
    for (int i = 0; i < NQ_NVFP4_BLOCK; i++) {
        double r = 0.0;
        for (int j = 0; j < NQ_NVFP4_BLOCK; j++)
            r += hb[i * NQ_NVFP4_BLOCK + j] * d[j];
        e += d[i] * r;
    }
    return e;
}

uint8_t nq_nvfp4_block_scale_search(const float *x, float gs, const double *hb, float lo,
                                    float hi, int four_over_six, double *err)
{
    uint8_t max_code = nq_nvfp4_block_scale_max(x, gs);
    uint8_t cand[130];
    int nc = 0;
    cand[nc++] = max_code;
    if (four_over_six) {
        float s = block_amax(x) / (4.0f * gs);
        if (s >= 0.001953125f) {
            uint8_t c = nq_f32_to_e4m3(s);
            if (c != max_code)
                cand[nc++] = c;
        }
    } else {
        float ref = nq_e4m3_to_f32(max_code);
        for (int code = max_code - 1; code >= 1; code--) {
            if (nq_e4m3_to_f32((uint8_t)code) < lo * ref)
                break;
            cand[nc++] = (uint8_t)code;
        }
        for (int code = max_code + 1; code <= 0x7e; code++) {
            if (nq_e4m3_to_f32((uint8_t)code) > hi * ref)
                break;
            cand[nc++] = (uint8_t)code;
        }
    }
    uint8_t best = max_code;
    double best_err = 0.0;
    for (int c = 0; c < nc; c++) {
        double e = weighted_error(x, nq_e4m3_to_f32(cand[c]) * gs, hb);
        if (c == 0 || e < best_err) {
            best_err = e;
            best = cand[c];
        }
    }
    *err = best_err;
    return best;
}

void nq_nvfp4_fake_quant(float *x, int64_t n, float gs)
{
    for (int64_t b = 0; b + NQ_NVFP4_BLOCK <= n; b += NQ_NVFP4_BLOCK) {
        uint8_t packed[8];
        uint8_t scale = nq_nvfp4_block_scale_max(x + b, gs);
        nq_nvfp4_encode_block(x + b, scale, gs, packed);
        nq_nvfp4_decode_row(packed, &scale, gs, NQ_NVFP4_BLOCK, x + b);
    }
}
