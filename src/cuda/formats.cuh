/* formats/ on the device (nvfp4.c, int4.c, floatconv.h, fp8.h): the same
 * float / double operations in the same order, so that the GPU's scales
 * and codes are the host's bytes.  Every .cu file that includes this must
 * be compiled with -fmad=false (CMakeLists.txt): a fused a * b + c would
 * round once where the host rounds twice. */
#ifndef NQ_CUDA_FORMATS_CUH
#define NQ_CUDA_FORMATS_CUH

#include <stdint.h>

__device__ static inline float d_bits_to_f32(uint32_t u) { return __uint_as_float(u); }

__device__ static inline uint16_t d_f32_to_f16(float f)
{
    uint32_t u = __float_as_uint(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u)
        return sign | 0x7e00u;
    if (absu >= 0x477ff000u)
        return sign | 0x7c00u;
    if (absu < 0x38800000u) {
        float a = d_bits_to_f32(absu);
        float q = a * 16777216.0f;
        float r = rintf(q);
        return sign | (uint16_t)r;
    }
    uint32_t rounding = 0xfffu + ((absu >> 13) & 1u);
    absu += rounding;
    return sign | (uint16_t)((absu - 0x38000000u) >> 13);
}

__device__ static inline float d_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return d_bits_to_f32(sign | 0x7f800000u | (mant << 13));
    return d_bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ static inline float d_e4m3_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t exp = (b >> 3) & 0xfu;
    uint32_t mant = b & 0x7u;
    if (exp == 0xf && mant == 0x7)
        return __int_as_float(0x7fffffff);
    if (exp == 0) {
        float v = (float)mant * 0.001953125f;
        return sign ? -v : v;
    }
    return d_bits_to_f32(sign | ((exp + 120u) << 23) | (mant << 20));
}

__device__ static inline uint8_t d_f32_to_e4m3(float f)
{
    uint32_t u = __float_as_uint(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return 0x7f;
    if (a >= 0x43e00000u)
        return sign | 0x7e;
    if (a < 0x3c800000u) {
        float q = __uint_as_float(a);
        q *= 512.0f;
        q = (q + 8388608.0f) - 8388608.0f;
        return sign | (uint8_t)q;
    }
    uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
    uint32_t exp = (r >> 23) - 127u + 7u;
    return sign | (uint8_t)((exp << 3) | ((r >> 20) & 7u));
}

__device__ static inline uint8_t d_e2m1_encode(float x)
{
    float a = fabsf(x);
    int ord = (a > 0.25f) + (a > 0.75f) + (a > 1.25f) + (a > 1.75f) + (a > 2.5f) + (a > 3.5f) +
              (a > 5.0f) + (a == 0.75f) + (a == 1.75f) + (a == 3.5f);
    return (uint8_t)((x < 0 ? 8 : 0) + ord);
}

__device__ static inline float d_e2m1_value(uint8_t code)
{
    const float v[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    float m = v[code & 7];
    return code & 8 ? -m : m;
}

__device__ static inline uint16_t d_int4_scale_for_amax(float m)
{
    uint16_t s = d_f32_to_f16(m > 0 ? m / 7.0f : 1.0f);
    return d_f16_to_f32(s) > 0 ? s : 0x0001;
}

__device__ static inline uint16_t d_int4_scale_max(const float *x, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > m)
            m = fabsf(x[i]);
    return d_int4_scale_for_amax(m);
}

__device__ static inline uint16_t d_int4_scale_mse(const float *x, int n)
{
    uint16_t cand[17];
    float sv[17];
    double e[17];
    int nc = 0;
    cand[nc++] = d_int4_scale_max(x, n);
    float base = d_f16_to_f32(cand[0]);
    for (int k = 31; k >= 16; k--) {
        uint16_t s = d_f32_to_f16(base * (float)k / 32.0f);
        if (d_f16_to_f32(s) <= 0)
            break;
        cand[nc++] = s;
    }
    for (int c = 0; c < nc; c++) {
        sv[c] = d_f16_to_f32(cand[c]);
        e[c] = 0;
    }
    for (int i = 0; i < n; i++) {
        const float xi = x[i];
        for (int c = 0; c < nc; c++) {
            float q = xi / sv[c];
            q = q < -16.0f ? -16.0f : q > 16.0f ? 16.0f : q;
            q = (q + 12582912.0f) - 12582912.0f;
            q = q < -8.0f ? -8.0f : q > 7.0f ? 7.0f : q;
            double d = (double)xi - (double)sv[c] * (double)q;
            e[c] += d * d;
        }
    }
    uint16_t best = cand[0];
    double best_err = e[0];
    for (int c = 1; c < nc; c++)
        if (e[c] < best_err) {
            best_err = e[c];
            best = cand[c];
        }
    return best;
}

__device__ static inline uint8_t d_int4_code(float x, float s)
{
    float q = rintf(x / s) + 8.0f;
    return (uint8_t)(q < 0 ? 0 : q > 15 ? 15 : q);
}

__device__ static inline uint8_t d_nvfp4_scale_max(const float *x, float gs)
{
    float m = 0;
    for (int i = 0; i < 16; i++)
        if (fabsf(x[i]) > m)
            m = fabsf(x[i]);
    float s = m / (6.0f * gs);
    if (s == 0)
        s = 1.0f;
    if (s < 0.001953125f)
        s = 0.001953125f;
    return d_f32_to_e4m3(s);
}

__device__ static inline uint8_t d_nvfp4_scale_mse(const float *x, float gs)
{
    uint8_t max_code = d_nvfp4_scale_max(x, gs);
    float ref = d_e4m3_to_f32(max_code);
    uint8_t cand[128];
    float denom[128];
    double e[128];
    int nc = 0;
    cand[nc++] = max_code;
    for (int code = max_code - 1; code >= 1; code--) {
        if (d_e4m3_to_f32((uint8_t)code) < 0.5f * ref)
            break;
        cand[nc++] = (uint8_t)code;
    }
    for (int code = max_code + 1; code <= 0x7e; code++) {
        if (d_e4m3_to_f32((uint8_t)code) > 1.25f * ref)
            break;
        cand[nc++] = (uint8_t)code;
    }
    for (int c = 0; c < nc; c++) {
        denom[c] = d_e4m3_to_f32(cand[c]) * gs;
        e[c] = 0;
    }
    for (int i = 0; i < 16; i++) {
        const float xi = x[i];
        for (int c = 0; c < nc; c++) {
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
    for (int c = 1; c < nc; c++)
        if (e[c] < best_err) {
            best_err = e[c];
            best = cand[c];
        }
    return best;
}

#endif
