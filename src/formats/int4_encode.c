/* Whole-tensor INT4 encoding in the GPTQ v1 layout (formats/encode.h): the
 * scalar reference in int4.c run per group in fixed row chunks, with an AVX2
 * form that gives the same bytes and statistics (tests/test_encode.c). */
#include "formats/encode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "formats/encode_internal.h"
#include "formats/floatconv.h"
#include "formats/int4.h"

/* ---- INT4 (GPTQ layout) --------------------------------------------------- */

/* Largest magnitude of a group and (in *ref) its squared sum, 16 lanes at a
 * time then sum16: the same order in both kernels. */
static inline __attribute__((always_inline)) float int4_group_scan(const float *x, int n,
                                                                   float *ref)
{
    uint32_t mb = 0;
    float rr[16] = {0};
    for (int k0 = 0; k0 < n; k0 += 16) {
        for (int k = 0; k < 16; k++) {
            uint32_t u;
            memcpy(&u, &x[k0 + k], 4);
            u &= 0x7fffffffu;
            mb = u > mb ? u : mb;
            rr[k] += x[k0 + k] * x[k0 + k];
        }
    }
    *ref = sum16(rr);
    return nq_bits_to_f32(mb);
}

/* Packed words of one group under scale value s (words[i] holds inputs
 * 8i..8i+7, the first in the low nibble: GPTQ v1 as AutoGPTQ packs it) and
 * its squared error.  Same as nq_int4_encode_group: round half to even via
 * the 1.5*2^23 trick, exact for |q| < 2^22; q is clamped to +-16 first,
 * which the final clamp to [-8, 7] makes harmless. */
static inline __attribute__((always_inline)) float int4_group_words(const float *x, int n,
                                                                    float s, uint32_t *words)
{
    float e[16] = {0};
    uint8_t code[128];
    for (int k0 = 0; k0 < n; k0 += 16) {
        for (int k = 0; k < 16; k++) {
            float q = x[k0 + k] / s;
            q = q < -16.0f ? -16.0f : q > 16.0f ? 16.0f : q;
            q = (q + 12582912.0f) - 12582912.0f;
            q = q < -8.0f ? -8.0f : q > 7.0f ? 7.0f : q;
            code[k0 + k] = (uint8_t)(int)(q + 8.0f);
            float d = x[k0 + k] - q * s;
            e[k] += d * d;
        }
    }
    for (int w8 = 0; w8 < n / 8; w8++) {
        uint32_t word = 0;
        for (int b = 0; b < 8; b++)
            word |= (uint32_t)code[8 * w8 + b] << (4 * b);
        words[w8] = word;
    }
    return sum16(e);
}

#if NQ_HAVE_AVX2_KERNELS
/* Elements k..k+7 of a BF16 or F32 source as f32. */
NQ_AVX2 static inline __attribute__((always_inline)) __m256 load8_avx2(const unsigned char *p,
                                                                       bool bf16, int k)
{
    if (bf16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p + 2 * k))), 16));
    return _mm256_loadu_ps((const float *)(const void *)(p + 4 * k));
}

NQ_AVX2 static inline float int4_group_scan_avx2(const unsigned char *x, bool bf16, int n,
                                                 float *ref)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps(), r0 = _mm256_setzero_ps(), r1 = _mm256_setzero_ps();
    for (int k0 = 0; k0 < n; k0 += 16) {
        __m256 x0 = load8_avx2(x, bf16, k0), x1 = load8_avx2(x, bf16, k0 + 8);
        m = _mm256_max_ps(m, _mm256_max_ps(_mm256_and_ps(x0, absmask), _mm256_and_ps(x1, absmask)));
        r0 = _mm256_add_ps(r0, _mm256_mul_ps(x0, x0));
        r1 = _mm256_add_ps(r1, _mm256_mul_ps(x1, x1));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    *ref = sum16_avx2(r0, r1);
    return _mm_cvtss_f32(m4);
}

NQ_AVX2 static inline float int4_group_words_avx2(const unsigned char *x, bool bf16, int n, float s,
                                                  uint32_t *words)
{
    const __m256 sv = _mm256_set1_ps(s);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    __m256 e[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int k0 = 0; k0 < n; k0 += 16) {
        for (int h = 0; h < 2; h++) {
            __m256 xv = load8_avx2(x, bf16, k0 + 8 * h);
            __m256 q = _mm256_div_ps(xv, sv);
            q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-16.0f)), _mm256_set1_ps(16.0f));
            q = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-8.0f)), _mm256_set1_ps(7.0f));
            __m256i code = _mm256_cvttps_epi32(_mm256_add_ps(q, _mm256_set1_ps(8.0f)));
            __m256i nib = _mm256_sllv_epi32(code, shifts);
            __m128i w4 = _mm_or_si128(_mm256_castsi256_si128(nib), _mm256_extracti128_si256(nib, 1));
            w4 = _mm_or_si128(w4, _mm_unpackhi_epi64(w4, w4));
            w4 = _mm_or_si128(w4, _mm_srli_epi64(w4, 32));
            words[k0 / 8 + h] = (uint32_t)_mm_cvtsi128_si32(w4);
            __m256 d = _mm256_sub_ps(xv, _mm256_mul_ps(q, sv));
            e[h] = _mm256_add_ps(e[h], _mm256_mul_ps(d, d));
        }
    }
    return sum16_avx2(e[0], e[1]);
}
#endif

typedef struct int4_job {
    const nq_weight_view *w;
    int group;
    bool mse;
    float *buffers;
    uint32_t *word_buffers; /* per worker [cols/8][ROWS_PER_CHUNK] */
    int32_t *qweight;  /* [cols/8, rows] */
    uint16_t *scales;  /* [cols/group, rows] f16 */
    chunk_stats *stats;
} int4_job;

static inline __attribute__((always_inline)) int int4_rows_impl(void *ctx, size_t begin,
                                                                size_t end, int worker, int avx2)
{
    const int4_job *j = ctx;
    int64_t rows_total = j->w->rows, cols = j->w->cols;
    const int group = j->group;
    const int64_t groups = cols / group;
    /* the AVX2 kernels widen BF16 in registers; everything else reads f32 */
    const bool direct_bf16 = avx2 && j->w->dtype == NQ_BF16;
    const float *rows = NULL;
    if (!direct_bf16) {
        float *buf = j->buffers + (size_t)worker * ROWS_PER_CHUNK * (size_t)cols;
        rows = nq_enc_view_rows(j->w, (int64_t)begin, (int64_t)(end - begin), buf);
    }
    double sq_err = 0, sq_err_max = 0, sq_ref = 0;
    uint32_t words[16];
    float group_f32[128];
    /* qweight is [cols/8, rows]: a row's words are a whole row of qweight
     * apart, so they are gathered here and stored a chunk of rows at a time
     * (one contiguous run per qweight row instead of a TLB miss per word) */
    uint32_t *chunk_words = j->word_buffers + (size_t)worker * (size_t)(cols / 8) * ROWS_PER_CHUNK;
    for (size_t r = begin; r < end; r++) {
        float row_ref = 0;
        for (int64_t g = 0; g < groups; g++) {
            const float *x = rows ? rows + (int64_t)(r - begin) * cols + g * group : NULL;
            const unsigned char *src =
                rows ? (const unsigned char *)x
                     : (const unsigned char *)j->w->data + 2 * ((int64_t)r * cols + g * group);
            float ref, amax, err_max;
#if NQ_HAVE_AVX2_KERNELS
            if (avx2)
                amax = int4_group_scan_avx2(src, direct_bf16, group, &ref);
            else
#endif
                amax = int4_group_scan(x, group, &ref);
            uint16_t max_scale = nq_int4_scale_for_amax(amax);
#if NQ_HAVE_AVX2_KERNELS
            if (avx2)
                err_max = int4_group_words_avx2(src, direct_bf16, group,
                                                nq_f16_to_f32_inline(max_scale), words);
            else
#endif
                err_max = int4_group_words(x, group, nq_f16_to_f32_inline(max_scale), words);
            double e = err_max;
            uint16_t s = max_scale;
            if (j->mse) {
                if (!x) {
                    nq_weight_view one = {src, NQ_BF16, 1, group};
                    x = nq_enc_view_rows(&one, 0, 1, group_f32);
                }
                s = nq_int4_group_scale_mse(x, group, &e);
                if (s != max_scale)
                    int4_group_words(x, group, nq_f16_to_f32_inline(s), words);
            }
            j->scales[g * rows_total + (int64_t)r] = s;
            for (int w8 = 0; w8 < group / 8; w8++)
                chunk_words[(g * group / 8 + w8) * ROWS_PER_CHUNK + (int64_t)(r - begin)] =
                    words[w8];
            sq_err += e;
            sq_err_max += err_max;
            row_ref += ref;
        }
        sq_ref += row_ref;
    }
    for (int64_t c8 = 0; c8 < cols / 8; c8++)
        memcpy(j->qweight + c8 * rows_total + (int64_t)begin, chunk_words + c8 * ROWS_PER_CHUNK,
               (end - begin) * sizeof *chunk_words);
    chunk_stats *cs = &j->stats[begin / ROWS_PER_CHUNK];
    cs->sq_err = sq_err;
    cs->sq_err_max = sq_err_max;
    cs->sq_ref = sq_ref;
    return 0;
}

static int int4_rows(void *ctx, size_t begin, size_t end, int worker)
{
    return int4_rows_impl(ctx, begin, end, worker, 0);
}

#if NQ_HAVE_AVX2_KERNELS
NQ_AVX2 static int int4_rows_avx2(void *ctx, size_t begin, size_t end, int worker)
{
    return int4_rows_impl(ctx, begin, end, worker, 1);
}
#endif

int nq_encode_int4_view(const nq_weight_view *w, int group, bool mse, int threads,
                        int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                        nq_encode_stats *st, nq_error *err)
{
    int64_t rows = w->rows, cols = w->cols;
    if (group <= 0 || group > 128 || group % 16 != 0 || cols % group != 0 || rows % 8 != 0)
        return nq_fail(err, "shape [%lld, %lld] does not fit int4 group %d", (long long)rows,
                       (long long)cols, group);
    float amax;
    if (nq_enc_view_amax(w, threads, &amax, err) != 0 || nq_int4_check_amax(amax, err) != 0)
        return -1;
    size_t nchunks = ((size_t)rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    float *buffers = nq_enc_worker_buffers(w, threads);
    uint32_t *word_buffers = malloc((size_t)(threads < 1 ? 1 : threads) * (size_t)(cols / 8) *
                                    ROWS_PER_CHUNK * sizeof *word_buffers);
    if (!cs || !buffers || !word_buffers) {
        free(cs);
        free(buffers);
        free(word_buffers);
        return nq_fail(err, "out of memory");
    }
    int4_job job = {w, group, mse, buffers, word_buffers, qweight, scales, cs};
    nq_range_fn fn = int4_rows;
#if NQ_HAVE_AVX2_KERNELS
    if (nq_enc_use_avx2())
        fn = int4_rows_avx2;
#endif
    nq_parallel_for((size_t)rows, ROWS_PER_CHUNK, threads, fn, &job);
    nq_enc_reduce_stats(cs, nchunks, st);
    free(cs);
    free(buffers);
    free(word_buffers);
    /* symmetric: every zero point is 8, stored minus one (GPTQ v1) */
    for (int64_t k = 0; k < (cols / group) * (rows / 8); k++)
        qzeros[k] = 0x77777777;
    for (int64_t i = 0; i < cols; i++)
        g_idx[i] = (int32_t)(i / group);
    return 0;
}

int nq_encode_int4(const float *w, int64_t rows, int64_t cols, int group, bool mse, int threads,
                   int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                   nq_encode_stats *st, nq_error *err)
{
    nq_weight_view v = {w, NQ_F32, rows, cols};
    return nq_encode_int4_view(&v, group, mse, threads, qweight, qzeros, scales, g_idx, st, err);
}
