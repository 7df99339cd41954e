/* Whole-tensor FP8 E4M3 per-tensor encoding (formats/encode.h): ModelOpt's
 * FP8 export (docs/export-spec.md 2.2), the same operations as the scalar
 * reference in fp8.c, with an AVX2 form that gives the same bytes
 * (tests/test_encode.c, tests/test_formats.c). */
#include "formats/encode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "formats/encode_internal.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/rounding.h"

/* ---- FP8 ------------------------------------------------------------------ */

typedef struct fp8_job {
    const nq_weight_view *w;
    float scale; /* the stored weight_scale: dequantization and the error */
    float div;   /* what the weight is divided by (nq_fp8_weight_divisor) */
    float *buffers;
    uint8_t *out;
    chunk_stats *stats;
} fp8_job;

#if NQ_HAVE_AVX2_KERNELS
/* e4m3(bf16(x / scale)) for 8 lanes and its decoded value (the scalar
 * nq_fp8_quantize_value_inline and nq_e4m3_to_f32_inline; x is finite). */
NQ_AVX2 static inline __attribute__((always_inline)) __m256i fp8_codes8_avx2(__m256 x, __m256 sv,
                                                                             __m256 *decoded)
{
    __m256i u = _mm256_castps_si256(_mm256_div_ps(x, sv));
    /* round to BF16, half to even (no NaN: x and the scale are finite) */
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
    u = _mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u));
    __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
    __m256 v;
    __m256i mag = e4m3_encode8_avx2(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), &v);
    *decoded = _mm256_or_ps(v, _mm256_castsi256_ps(_mm256_slli_epi32(sign, 24)));
    return _mm256_or_si256(mag, sign);
}

/* n / 16 groups of 16: codes to q, squared error and squares added per lane
 * (lanes 0-7 and 8-15, as the portable loop). */
NQ_AVX2 static void fp8_run_avx2(const float *x, int64_t n16, float scale, float div, uint8_t *q,
                                 float e[16], float r[16])
{
    const __m256 sv = _mm256_set1_ps(scale), dv = _mm256_set1_ps(div);
    __m256 e0 = _mm256_loadu_ps(e), e1 = _mm256_loadu_ps(e + 8);
    __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + 8);
    for (int64_t k = 0; k < n16; k += 16) {
        for (int h = 0; h < 2; h++) {
            __m256 xv = _mm256_loadu_ps(x + k + 8 * h), dec;
            __m256i c = fp8_codes8_avx2(xv, dv, &dec);
            __m256i p16 = _mm256_packus_epi32(c, c);
            __m256i p8 = _mm256_packus_epi16(p16, p16);
            uint32_t lo = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(p8));
            uint32_t hi = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(p8, 1));
            memcpy(q + k + 8 * h, &lo, 4);
            memcpy(q + k + 8 * h + 4, &hi, 4);
            __m256 d = _mm256_sub_ps(xv, _mm256_mul_ps(dec, sv));
            if (h == 0) {
                e0 = _mm256_add_ps(e0, _mm256_mul_ps(d, d));
                r0 = _mm256_add_ps(r0, _mm256_mul_ps(xv, xv));
            } else {
                e1 = _mm256_add_ps(e1, _mm256_mul_ps(d, d));
                r1 = _mm256_add_ps(r1, _mm256_mul_ps(xv, xv));
            }
        }
    }
    _mm256_storeu_ps(e, e0);
    _mm256_storeu_ps(e + 8, e1);
    _mm256_storeu_ps(r, r0);
    _mm256_storeu_ps(r + 8, r1);
}
#endif

/* Per 16-row chunk: elements k of every 16 go to lane k % 16 of the error
 * and reference sums, reduced with sum16 at the end; a tail that is not a
 * multiple of 16 is summed in double after them. */
NQ_HOT static int fp8_rows(void *ctx, size_t begin, size_t end, int worker)
{
    const fp8_job *j = ctx;
    int64_t cols = j->w->cols;
    float *buf = j->buffers + (size_t)worker * ROWS_PER_CHUNK * (size_t)cols;
    const float *rows = nq_enc_view_rows(j->w, (int64_t)begin, (int64_t)(end - begin), buf);
    int64_t n = (int64_t)(end - begin) * cols, n16 = n / 16 * 16;
    uint8_t *q = j->out + (int64_t)begin * cols;
    const float scale = j->scale, div = j->div;
    float e[16] = {0}, r[16] = {0};
#if NQ_HAVE_AVX2_KERNELS
    if (nq_enc_use_avx2()) {
        fp8_run_avx2(rows, n16, scale, div, q, e, r);
    } else
#endif
    {
        for (int64_t k = 0; k < n16; k += 16) {
            for (int i = 0; i < 16; i++) {
                float x = rows[k + i];
                uint8_t c = nq_fp8_quantize_value_inline(x, div);
                q[k + i] = c;
                float d = x - nq_e4m3_to_f32_inline(c) * scale;
                e[i] += d * d;
                r[i] += x * x;
            }
        }
    }
    double sq_err = sum16(e), sq_ref = sum16(r);
    for (int64_t k = n16; k < n; k++) {
        float x = rows[k];
        q[k] = nq_fp8_quantize_value(x, div);
        float d = x - nq_e4m3_to_f32(q[k]) * scale;
        sq_err += (double)d * d;
        sq_ref += (double)x * x;
    }
    chunk_stats *cs = &j->stats[begin / ROWS_PER_CHUNK];
    cs->sq_err = sq_err;
    cs->sq_err_max = sq_err;
    cs->sq_ref = sq_ref;
    return 0;
}

int nq_encode_fp8_view(const nq_weight_view *w, int threads, uint8_t *out, float *scale,
                       nq_encode_stats *st, nq_error *err)
{
    float amax;
    if (nq_enc_view_amax(w, threads, &amax, err) != 0)
        return -1;
    float s = nq_fp8_tensor_scale(amax), div = nq_fp8_weight_divisor(s);
    if (!(div > 0))
        /* amax below ~2e-38: torch on CUDA divides by 0 and casts the
         * infinities to FP8 NaN, a checkpoint nemoq will not write */
        return nq_fail(err, "FP8 weight_scale %g is 0 in BF16: ModelOpt's CUDA export "
                            "(--rounding modelopt-cuda) would write NaN weights; use "
                            "--rounding exact",
                       (double)s);
    size_t nchunks = ((size_t)w->rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    float *buffers = nq_enc_worker_buffers(w, threads);
    if (!cs || !buffers) {
        free(cs);
        free(buffers);
        return nq_fail(err, "out of memory");
    }
    fp8_job job = {w, s, div, buffers, out, cs};
    nq_parallel_for((size_t)w->rows, ROWS_PER_CHUNK, threads, fp8_rows, &job);
    nq_enc_reduce_stats(cs, nchunks, st);
    free(cs);
    free(buffers);
    *scale = s;
    return 0;
}

int nq_encode_fp8(const float *w, int64_t rows, int64_t cols, int threads, uint8_t *out,
                  float *scale, nq_encode_stats *st, nq_error *err)
{
    nq_weight_view v = {w, NQ_F32, rows, cols};
    return nq_encode_fp8_view(&v, threads, out, scale, st, err);
}
