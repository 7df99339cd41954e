#include "formats/int4.h"

#include <math.h>
#include <string.h>

#include "formats/floatconv.h"

uint16_t nq_int4_group_scale_max(const float *x, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > m)
            m = fabsf(x[i]);
    return nq_int4_scale_for_amax(m);
}


int nq_int4_check_amax(float amax, nq_error *err)
{
    if ((nq_int4_scale_for_amax(amax) & 0x7fffu) < 0x7c00u)
        return 0;
    return nq_fail(err, "largest |w| is %g, but INT4 with F16 scales holds at most about 458633 "
                        "(7 x 65504 after rounding): its scale would be infinite; keep the "
                        "module in BF16 (--exclude MODULE)",
                   (double)amax);
}

static uint8_t code_of(float x, float s)
{
    float q = nearbyintf(x / s) + 8.0f;
    return (uint8_t)(q < 0 ? 0 : q > 15 ? 15 : q);
}

double nq_int4_group_sq_error(const float *x, int n, uint16_t scale)
{
    float s = nq_f16_to_f32(scale);
    double e = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)x[i] - (double)s * ((int)code_of(x[i], s) - 8);
        e += d * d;
    }
    return e;
}

/* As in nq_nvfp4_block_scale_mse, the candidates' errors are summed side by
 * side, each in nq_int4_group_sq_error's order, so the choice is the same as
 * a candidate-by-candidate search. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(NQ_NO_MULTIVERSION)
__attribute__((target_clones("avx2", "default")))
#endif
uint16_t nq_int4_group_scale_mse(const float *x, int n, double *err)
{
    uint16_t cand[17];
    float sv[17];
    double e[17];
    int nc = 0;
    cand[nc++] = nq_int4_group_scale_max(x, n);
    float base = nq_f16_to_f32(cand[0]);
    for (int k = 31; k >= 16; k--) {
        uint16_t s = nq_f32_to_f16(base * (float)k / 32.0f);
        if (nq_f16_to_f32(s) <= 0)
            break;
        cand[nc++] = s;
    }
    for (int c = 0; c < nc; c++) {
        sv[c] = nq_f16_to_f32(cand[c]);
        e[c] = 0;
    }
    for (int i = 0; i < n; i++) {
        const float xi = x[i];
        for (int c = 0; c < nc; c++) {
            /* code_of without nearbyintf: x/s clamped to +-16 (harmless: the
             * code is clamped to [-8, 7] anyway), rounded half to even by
             * adding and removing 1.5 * 2^23 */
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
    for (int c = 1; c < nc; c++) {
        if (e[c] < best_err) {
            best_err = e[c];
            best = cand[c];
        }
    }
    *err = best_err;
    return best;
}

void nq_int4_encode_group(const float *x, int n, uint16_t scale, uint8_t *q)
{
    float s = nq_f16_to_f32(scale);
    for (int i = 0; i < n; i++)
        q[i] = code_of(x[i], s);
}

void nq_int4_pack_gptq(const uint8_t *q, int64_t out, int64_t in, int group, int32_t *qweight,
                       int32_t *qzeros, int32_t *g_idx)
{
    for (int64_t r = 0; r < in / 8; r++) {
        for (int64_t c = 0; c < out; c++) {
            uint32_t word = 0;
            for (int j = 0; j < 8; j++)
                word |= (uint32_t)(q[c * in + 8 * r + j] & 15) << (4 * j);
            qweight[r * out + c] = (int32_t)word;
        }
    }
    for (int64_t k = 0; k < (in / group) * (out / 8); k++)
        qzeros[k] = 0x77777777;
    for (int64_t i = 0; i < in; i++)
        g_idx[i] = (int32_t)(i / group);
}

int nq_int4_unpack_gptq(const void *qweight, const void *qzeros, const void *scales,
                        const void *g_idx, int64_t out, int64_t in, int group, float *w,
                        nq_error *err)
{
    const unsigned char *qw = qweight, *qz = qzeros, *sc = scales, *gi = g_idx;
    int64_t ngroups = in / group;
    for (int64_t i = 0; i < in; i++) {
        int32_t g;
        memcpy(&g, gi + 4 * i, 4);
        if (g != (int32_t)(i / group))
            return nq_fail(err, "g_idx[%lld] is %d, expected %lld (no act-order)", (long long)i, g,
                           (long long)(i / group));
    }
    for (int64_t k = 0; k < ngroups * out; k++) {
        uint16_t h;
        memcpy(&h, sc + 2 * k, 2);
        float s = nq_f16_to_f32(h);
        if (!(isfinite(s) && s > 0))
            return nq_fail(err, "scales[%lld, %lld] (group, output column) is %g, not a finite "
                                "positive scale",
                           (long long)(k / out), (long long)(k % out), s);
    }
    for (int64_t i = 0; i < in; i++) {
        int64_t g = i / group;
        for (int64_t c = 0; c < out; c++) {
            uint32_t word, zword;
            memcpy(&word, qw + 4 * ((i / 8) * out + c), 4);
            memcpy(&zword, qz + 4 * (g * (out / 8) + c / 8), 4);
            int q = (int)((word >> (4 * (i % 8))) & 15);
            int zero = (int)((zword >> (4 * (c % 8))) & 15) + 1;
            uint16_t h;
            memcpy(&h, sc + 2 * (g * out + c), 2);
            w[c * in + i] = nq_f16_to_f32(h) * (float)(q - zero);
        }
    }
    return 0;
}
