/* Machinery shared by the whole-tensor encoders of formats/ (nvfp4_encode.c,
 * fp8_encode.c, int4_encode.c; encode_common.c defines the functions): CPU
 * kernel selection, the fixed row chunks, widening the stored matrix, the
 * tensor amax, and per-lane sums in a fixed order.  Not for other modules. */
#ifndef NQ_FORMATS_ENCODE_INTERNAL_H
#define NQ_FORMATS_ENCODE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "formats/encode.h"


/* The hot loops are compiled twice on x86-64, for the baseline (SSE2) and
 * for AVX2, and the loader picks one by CPU (GCC/Clang function
 * multiversioning).  Both run the same IEEE operations in the same order
 * (ISO C mode: no FMA contraction), so the bytes do not depend on the CPU. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(NQ_NO_MULTIVERSION)
#define NQ_HOT __attribute__((target_clones("avx2", "default")))
#else
#define NQ_HOT
#endif

/* The per-block kernels additionally have hand-written AVX2 forms (the
 * auto-vectorized generic ones use 128-bit vectors and scalar packing),
 * chosen once per run by CPU.  tests/test_encode.c runs both on the same
 * data and requires identical bytes and statistics. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(NQ_NO_MULTIVERSION)
#define NQ_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#define NQ_AVX2 __attribute__((target("avx2")))
#else
#define NQ_HAVE_AVX2_KERNELS 0
#endif

/* 1 when the AVX2 kernels are to be used (nq_encode_force_generic). */
int nq_enc_use_avx2(void);

/* Rows per work item: fixed, so chunk boundaries (and the order in which
 * statistics are summed) never depend on the thread count. */
#define ROWS_PER_CHUNK 16

typedef struct chunk_stats {
    double sq_err, sq_err_max, sq_ref;
} chunk_stats;

/* Sum of 16 floats in a fixed pairwise order (vectorizable, and the same
 * result on every machine and thread count). */
static inline float sum16(float v[16])
{
    for (int k = 0; k < 8; k++)
        v[k] += v[k + 8];
    for (int k = 0; k < 4; k++)
        v[k] += v[k + 4];
    return (v[0] + v[2]) + (v[1] + v[3]);
}

void nq_enc_reduce_stats(const chunk_stats *cs, size_t nchunks, nq_encode_stats *st);

/* Rows [r0, r0+n) as f32: a pointer into the view when it already holds
 * aligned f32, else widened into `buf`. */
const float *nq_enc_view_rows(const nq_weight_view *w, int64_t r0, int64_t n, float *buf);
/* The tensor's amax, or an error naming the first Inf/NaN element (the same
 * message whatever the thread count: the chunks are searched in order). */
int nq_enc_view_amax(const nq_weight_view *w, int threads, float *amax, nq_error *err);
/* Per-thread widening buffers for the encoding pass. */
float *nq_enc_worker_buffers(const nq_weight_view *w, int threads);

#if NQ_HAVE_AVX2_KERNELS
/* Sum of the 16 lanes of (lo, hi) in sum16's order. */
NQ_AVX2 static inline float sum16_avx2(__m256 lo, __m256 hi)
{
    __m256 v8 = _mm256_add_ps(lo, hi);                                      /* v[k] + v[k+8] */
    __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
    __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));                   /* (v0+v2, v1+v3) */
    return _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1)));
}

/* E4M3 codes of 8 finite non-negative f32 magnitudes (their bits in a) and
 * the decoded values: nq_f32_to_e4m3 / nq_e4m3_to_f32 restricted to x >= 0,
 * rounding half to even and saturating at 448. */
NQ_AVX2 static inline __attribute__((always_inline)) __m256i e4m3_encode8_avx2(__m256i a,
                                                                               __m256 *value)
{
    /* normal: round to 3 mantissa bits, half to even, and rebias */
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
    __m256i rnd = _mm256_add_epi32(_mm256_add_epi32(a, _mm256_set1_epi32(0x7ffff)), odd);
    __m256i exp = _mm256_sub_epi32(_mm256_srli_epi32(rnd, 23), _mm256_set1_epi32(120));
    __m256i normal = _mm256_or_si256(_mm256_slli_epi32(exp, 3),
                                     _mm256_and_si256(_mm256_srli_epi32(rnd, 20), _mm256_set1_epi32(7)));
    /* below 2^-6 (zero included): quantum 2^-9 */
    __m256 q = _mm256_round_ps(_mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(512.0f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256i sub = _mm256_cvtps_epi32(q);
    __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3c800000), a);
    __m256i is_sat = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x43dfffff));
    __m256i code = _mm256_blendv_epi8(normal, sub, is_sub);
    code = _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7e), is_sat);
    /* decode: exponent field 0 is subnormal (code * 2^-9), else rebias */
    __m256i e4 = _mm256_srli_epi32(code, 3);
    __m256i m3 = _mm256_and_si256(code, _mm256_set1_epi32(7));
    __m256 norm_v = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_slli_epi32(_mm256_add_epi32(e4, _mm256_set1_epi32(120)), 23), _mm256_slli_epi32(m3, 20)));
    __m256 sub_v = _mm256_mul_ps(_mm256_cvtepi32_ps(code), _mm256_set1_ps(0.001953125f));
    *value = _mm256_blendv_ps(norm_v, sub_v,
                              _mm256_castsi256_ps(_mm256_cmpeq_epi32(e4, _mm256_setzero_si256())));
    return code;
}
#endif

#endif
