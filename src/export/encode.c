/* Whole-tensor NVFP4 / FP8 / INT4 encoding and decoding (see encode.h).
 *
 * The arithmetic follows ModelOpt's NVFP4QTensor and FP8 export as quoted in
 * docs/export-spec.md sections 2.1-2.2 (NVIDIA/Model-Optimizer
 * modelopt/torch/quantization/qtensor/nvfp4_tensor.py): every scale is
 * computed in f32 in the same order as the torch expressions, so the bytes
 * match ModelOpt's for the same BF16 weights with max calibration.
 *
 * Speed: quantizing a 59 GB checkpoint should cost little more than reading
 * it, so the encoders work straight from the stored BF16 (no f32 copy of the
 * tensor), in two parallel passes: the tensor amax (integer max over the
 * magnitude bits, which also finds Inf/NaN), then the blocks, each row chunk
 * widened into a small per-thread buffer that stays in cache.  The per-block
 * kernels below are branch-free loops over fixed-size arrays so that the
 * compiler vectorizes them (this file is built with -O3); they compute the
 * same IEEE operations as the scalar reference functions in formats/, so the
 * bytes are identical (tests/test_encode.c checks every path against those
 * functions, tests/test_formats.c the selected one against ModelOpt). */
#include "export/encode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/nvfp4.h"
#include "formats/int4.h"

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

static int kernel_override = -1; /* nq_encode_force_generic */

void nq_encode_force_generic(bool generic)
{
    kernel_override = generic ? 0 : -1;
}

/* 1 when the AVX2 kernels are to be used. */
static int use_avx2(void)
{
#if NQ_HAVE_AVX2_KERNELS
    if (kernel_override == 0)
        return 0;
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

/* Rows per work item: fixed, so chunk boundaries (and the order in which
 * statistics are summed) never depend on the thread count. */
#define ROWS_PER_CHUNK 16

typedef struct chunk_stats {
    double sq_err, sq_err_max, sq_ref;
} chunk_stats;

static void reduce_stats(const chunk_stats *cs, size_t nchunks, nq_encode_stats *st)
{
    nq_encode_stats s = {0};
    for (size_t c = 0; c < nchunks; c++) {
        s.sq_err += cs[c].sq_err;
        s.sq_err_max_scale += cs[c].sq_err_max;
        s.sq_ref += cs[c].sq_ref;
    }
    if (st)
        *st = s;
}

/* Sum of 16 floats in a fixed pairwise order (vectorizable, and the same
 * result on every machine and thread count). */
static float sum16(float v[16])
{
    for (int k = 0; k < 8; k++)
        v[k] += v[k + 8];
    for (int k = 0; k < 4; k++)
        v[k] += v[k + 4];
    return (v[0] + v[2]) + (v[1] + v[3]);
}

/* ---- the source matrix ------------------------------------------------------ */

static bool view_dtype_ok(nq_dtype d)
{
    return d == NQ_BF16 || d == NQ_F16 || d == NQ_F32;
}

/* Rows [r0, r0+n) as f32: a pointer into the view when it already holds
 * aligned f32, else widened into `buf`. */
NQ_HOT static const float *view_rows(const nq_weight_view *w, int64_t r0, int64_t n, float *buf)
{
    const unsigned char *p = (const unsigned char *)w->data;
    uint64_t first = (uint64_t)(r0 * w->cols), count = (uint64_t)(n * w->cols);
    if (w->dtype == NQ_F32) {
        if (((uintptr_t)p & 3) == 0)
            return (const float *)(const void *)p + first;
        memcpy(buf, p + 4 * first, 4 * count);
    } else if (w->dtype == NQ_BF16) {
        p += 2 * first;
        for (uint64_t k = 0; k < count; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            buf[k] = nq_bf16_to_f32_inline(h);
        }
    } else {
        p += 2 * first;
        for (uint64_t k = 0; k < count; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            buf[k] = nq_f16_to_f32_inline(h);
        }
    }
    return buf;
}

/* Pass one: the largest magnitude, as the bits of a non-negative float of
 * the view's dtype (for non-negative IEEE values the integer order is the
 * numeric order), per row chunk. */
typedef struct amax_job {
    const nq_weight_view *w;
    uint32_t *chunk_max;
} amax_job;

NQ_HOT static int amax_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    amax_job *j = ctx;
    const unsigned char *p = (const unsigned char *)j->w->data;
    uint64_t first = (uint64_t)begin * (uint64_t)j->w->cols;
    uint64_t count = (uint64_t)(end - begin) * (uint64_t)j->w->cols;
    uint32_t m = 0;
    if (j->w->dtype == NQ_F32) {
        p += 4 * first;
        for (uint64_t k = 0; k < count; k++) {
            uint32_t u;
            memcpy(&u, p + 4 * k, 4);
            u &= 0x7fffffffu;
            m = u > m ? u : m;
        }
    } else {
        p += 2 * first;
        uint16_t m16 = 0;
        for (uint64_t k = 0; k < count; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            h &= 0x7fffu;
            m16 = h > m16 ? h : m16;
        }
        m = m16;
    }
    j->chunk_max[begin / ROWS_PER_CHUNK] = m;
    return 0;
}

/* The tensor's amax, or an error naming the first Inf/NaN element (the same
 * message whatever the thread count: the chunks are searched in order). */
static int view_amax(const nq_weight_view *w, int threads, float *amax, nq_error *err)
{
    if (!view_dtype_ok(w->dtype))
        return nq_fail(err, "internal: cannot encode from %s", nq_dtype_name(w->dtype));
    size_t nchunks = ((size_t)w->rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    uint32_t *cm = calloc(nchunks ? nchunks : 1, sizeof *cm);
    if (!cm)
        return nq_fail(err, "out of memory");
    amax_job job = {w, cm};
    nq_parallel_for((size_t)w->rows, ROWS_PER_CHUNK, threads, amax_rows, &job);
    uint32_t inf_bits = w->dtype == NQ_F32 ? 0x7f800000u : w->dtype == NQ_BF16 ? 0x7f80u : 0x7c00u;
    uint32_t m = 0;
    for (size_t c = 0; c < nchunks; c++) {
        if (cm[c] >= inf_bits) {
            float buf_one;
            int64_t r0 = (int64_t)c * ROWS_PER_CHUNK;
            int64_t n = w->rows - r0 < ROWS_PER_CHUNK ? w->rows - r0 : ROWS_PER_CHUNK;
            for (int64_t k = 0; k < n * w->cols; k++) {
                nq_weight_view one = *w;
                one.cols = 1;
                float v = *view_rows(&one, r0 * w->cols + k, 1, &buf_one);
                if (!isfinite(v)) {
                    free(cm);
                    return nq_fail(err, "element %llu is %s",
                                   (unsigned long long)(r0 * w->cols + k),
                                   isnan(v) ? "NaN" : "infinite");
                }
            }
        }
        m = cm[c] > m ? cm[c] : m;
    }
    free(cm);
    *amax = w->dtype == NQ_F32 ? nq_bits_to_f32(m)
            : w->dtype == NQ_BF16 ? nq_bf16_to_f32_inline((uint16_t)m)
                                  : nq_f16_to_f32_inline((uint16_t)m);
    return 0;
}

/* Per-thread widening buffers for pass two. */
static float *worker_buffers(const nq_weight_view *w, int threads)
{
    int t = threads < 1 ? 1 : threads;
    return malloc((size_t)t * ROWS_PER_CHUNK * (size_t)w->cols * sizeof(float));
}

/* ---- NVFP4 ---------------------------------------------------------------- */

/* NVFP4 rows with ModelOpt's max scales.  A row kernel writes the codes and
 * E4M3 block scales of one row and returns, in *row_err and *row_ref, the
 * squared error and the squared sum, accumulated per lane (element k of each
 * block into lane k) and reduced with sum16 at the end of the row: the
 * generic and AVX2 kernels use exactly this order, so the statistics too are
 * identical on every machine. */

/* ModelOpt's block scale from the block amax: the same operations as
 * nq_nvfp4_block_scale_max. */
static inline __attribute__((always_inline)) uint8_t nvfp4_scale_code(float amax, float six_gs)
{
    float s = amax / six_gs;
    if (s == 0)
        s = 1.0f;
    if (s < 0.001953125f)
        s = 0.001953125f;
    return nq_f32_to_e4m3_inline(s);
}

/* E2M1 codes of one block under `denom` (packed two per byte, element 2i in
 * the low nibble); adds the squared errors and squares to e[16] / r[16]. */
static inline __attribute__((always_inline)) void
nvfp4_block_codes(const float *x, float denom, uint8_t packed[8], float e[16], float r[16])
{
    uint8_t code[16];
    for (int k = 0; k < 16; k++) {
        float q = x[k] / denom;
        float a = fabsf(q);
        /* thresholds passed; ties at 0.75, 1.75 and 3.5 round up to the
         * even code (see nq_e2m1_encode) */
        int lo = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f);
        int hi = (a > 2.5f) + (a >= 3.5f);
        int top = a > 5.0f;
        code[k] = (uint8_t)(lo + hi + top + (x[k] < 0 ? 8 : 0));
        float mag = 0.5f * (float)lo + (float)hi + 2.0f * (float)top;
        float d = fabsf(x[k]) - mag * denom;
        e[k] += d * d;
        r[k] += x[k] * x[k];
    }
    for (int k = 0; k < 8; k++)
        packed[k] = (uint8_t)(code[2 * k] | (code[2 * k + 1] << 4));
}

static inline __attribute__((always_inline)) void
nvfp4_row_generic(const float *row, int64_t blocks, float six_gs, float gs, uint8_t *codes,
                  uint8_t *scales, float *row_err, float *row_ref)
{
    float e[16] = {0}, r[16] = {0};
    for (int64_t b = 0; b < blocks; b++) {
        const float *x = row + b * NQ_NVFP4_BLOCK;
        uint32_t mb = 0;
        for (int k = 0; k < 16; k++) {
            uint32_t u;
            memcpy(&u, &x[k], 4);
            u &= 0x7fffffffu;
            mb = u > mb ? u : mb;
        }
        uint8_t sc = nvfp4_scale_code(nq_bits_to_f32(mb), six_gs);
        scales[b] = sc;
        nvfp4_block_codes(x, nq_e4m3_to_f32_inline(sc) * gs, codes + 8 * b, e, r);
    }
    *row_err = sum16(e);
    *row_ref = sum16(r);
}

#if NQ_HAVE_AVX2_KERNELS
/* Sum of the 16 lanes of (lo, hi) in sum16's order. */
NQ_AVX2 static inline float sum16_avx2(__m256 lo, __m256 hi)
{
    __m256 v8 = _mm256_add_ps(lo, hi);                                      /* v[k] + v[k+8] */
    __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
    __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));                   /* (v0+v2, v1+v3) */
    return _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1)));
}

/* The 16 elements of block b as f32 (BF16 widened in registers). */
NQ_AVX2 static inline __attribute__((always_inline)) void
load_block_avx2(const unsigned char *p, bool bf16, int64_t b, __m256 *x0, __m256 *x1)
{
    if (bf16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * b));
        *x0 = _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
        *x1 = _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
    } else {
        *x0 = _mm256_loadu_ps((const float *)(const void *)(p + 64 * b));
        *x1 = _mm256_loadu_ps((const float *)(const void *)(p + 64 * b + 32));
    }
}

/* nvfp4_block_codes with AVX2: same operations. */
NQ_AVX2 static inline __attribute__((always_inline)) void
nvfp4_block_codes_avx2(__m256 x0, __m256 x1, __m256 dv, uint8_t packed[8], __m256 e[2],
                       __m256 r[2])
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 magnitudes = _mm256_setr_ps(0, 0.5f, 1, 1.5f, 2, 3, 4, 6);
    const __m256 xs[2] = {x0, x1};
    __m256i codes[2];
    for (int h = 0; h < 2; h++) {
        __m256 ax = _mm256_and_ps(xs[h], absmask);
        /* |x| / d == |x / d| exactly: IEEE division is sign-symmetric */
        __m256 a = _mm256_div_ps(ax, dv);
        __m256i ord = _mm256_setzero_si256();
#define NQ_STEP(cmp, t) \
    ord = _mm256_sub_epi32(ord, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(t), cmp)))
        NQ_STEP(_CMP_GT_OQ, 0.25f);
        NQ_STEP(_CMP_GE_OQ, 0.75f);
        NQ_STEP(_CMP_GT_OQ, 1.25f);
        NQ_STEP(_CMP_GE_OQ, 1.75f);
        NQ_STEP(_CMP_GT_OQ, 2.5f);
        NQ_STEP(_CMP_GE_OQ, 3.5f);
        NQ_STEP(_CMP_GT_OQ, 5.0f);
#undef NQ_STEP
        __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(xs[h], _mm256_setzero_ps(), _CMP_LT_OQ));
        codes[h] = _mm256_or_si256(ord, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
        __m256 mag = _mm256_permutevar8x32_ps(magnitudes, ord);
        __m256 d = _mm256_sub_ps(ax, _mm256_mul_ps(mag, dv));
        e[h] = _mm256_add_ps(e[h], _mm256_mul_ps(d, d));
        r[h] = _mm256_add_ps(r[h], _mm256_mul_ps(xs[h], xs[h]));
    }
    /* pair (even, odd) lanes into one byte: in each 64-bit lane the odd
     * code moves to bits 4-7 of the even one */
    __m256i p0 = _mm256_or_si256(codes[0], _mm256_srli_epi64(codes[0], 28));
    __m256i p1 = _mm256_or_si256(codes[1], _mm256_srli_epi64(codes[1], 28));
    /* bytes 0 and 8 of each 128-bit lane hold two packed bytes; route them
     * to output positions 0-1 / 2-3 (p0) and 4-5 / 6-7 (p1) */
    const __m256i route0 = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                            -1, -1, -1, -1, 0, 8, -1, -1, -1, -1, -1, -1, -1, -1,
                                            -1, -1, -1, -1);
    const __m256i route1 = _mm256_setr_epi8(-1, -1, -1, -1, 0, 8, -1, -1, -1, -1, -1, -1, -1, -1,
                                            -1, -1, -1, -1, -1, -1, -1, -1, 0, 8, -1, -1, -1, -1,
                                            -1, -1, -1, -1);
    __m256i both = _mm256_or_si256(_mm256_shuffle_epi8(p0, route0), _mm256_shuffle_epi8(p1, route1));
    __m128i bytes = _mm_or_si128(_mm256_castsi256_si128(both), _mm256_extracti128_si256(both, 1));
    _mm_storel_epi64((__m128i *)(void *)packed, bytes);
}

/* Block amax of one block (exact: no NaN here). */
NQ_AVX2 static inline __attribute__((always_inline)) __m256 block_absmax_avx2(__m256 x0, __m256 x1)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    return _mm256_max_ps(_mm256_and_ps(x0, absmask), _mm256_and_ps(x1, absmask));
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

/* nvfp4_scale_code for 8 blocks at once (lanes), and the decoded scales
 * times gs.  Inputs are >= 0 and finite; same results as the scalar code
 * (nq_f32_to_e4m3 / nq_e4m3_to_f32 restricted to positive values). */
NQ_AVX2 static inline __attribute__((always_inline)) __m256i
scale_codes8_avx2(__m256 amax, float six_gs, float gs, __m256 *denom)
{
    __m256 s = _mm256_div_ps(amax, _mm256_set1_ps(six_gs));
    s = _mm256_blendv_ps(s, _mm256_set1_ps(1.0f), _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ));
    s = _mm256_max_ps(s, _mm256_set1_ps(0.001953125f));
    __m256 v;
    __m256i code = e4m3_encode8_avx2(_mm256_castps_si256(s), &v);
    *denom = _mm256_mul_ps(v, _mm256_set1_ps(gs));
    return code;
}

/* Lane i of the result: max over the 8 lanes of m[i]. */
NQ_AVX2 static inline __attribute__((always_inline)) __m256 hmax8x8_avx2(const __m256 m[8])
{
    __m256 s01 = _mm256_max_ps(_mm256_unpacklo_ps(m[0], m[1]), _mm256_unpackhi_ps(m[0], m[1]));
    __m256 s23 = _mm256_max_ps(_mm256_unpacklo_ps(m[2], m[3]), _mm256_unpackhi_ps(m[2], m[3]));
    __m256 s45 = _mm256_max_ps(_mm256_unpacklo_ps(m[4], m[5]), _mm256_unpackhi_ps(m[4], m[5]));
    __m256 s67 = _mm256_max_ps(_mm256_unpacklo_ps(m[6], m[7]), _mm256_unpackhi_ps(m[6], m[7]));
    __m256 s0123 = _mm256_max_ps(_mm256_shuffle_ps(s01, s23, 0x44), _mm256_shuffle_ps(s01, s23, 0xee));
    __m256 s4567 = _mm256_max_ps(_mm256_shuffle_ps(s45, s67, 0x44), _mm256_shuffle_ps(s45, s67, 0xee));
    return _mm256_max_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                         _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

/* A row: block scales eight blocks at a time, then the codes. */
NQ_AVX2 static inline __attribute__((always_inline)) void
nvfp4_row_avx2(const void *src, bool bf16, int64_t blocks, float six_gs, float gs, uint8_t *codes,
               uint8_t *scales, float *row_err, float *row_ref)
{
    const unsigned char *p = src;
    __m256 e[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 r[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t b = 0;
    for (; b + 8 <= blocks; b += 8) {
        __m256 m[8], x0, x1;
        for (int i = 0; i < 8; i++) {
            load_block_avx2(p, bf16, b + i, &x0, &x1);
            m[i] = block_absmax_avx2(x0, x1);
        }
        __m256 dn;
        __m256i sc = scale_codes8_avx2(hmax8x8_avx2(m), six_gs, gs, &dn);
        float denom[8];
        uint32_t code[8];
        _mm256_storeu_ps(denom, dn);
        _mm256_storeu_si256((__m256i *)(void *)code, sc);
        for (int i = 0; i < 8; i++) {
            scales[b + i] = (uint8_t)code[i];
            load_block_avx2(p, bf16, b + i, &x0, &x1);
            nvfp4_block_codes_avx2(x0, x1, _mm256_set1_ps(denom[i]), codes + 8 * (b + i), e, r);
        }
    }
    for (; b < blocks; b++) {
        __m256 x0, x1;
        load_block_avx2(p, bf16, b, &x0, &x1);
        __m256 m = block_absmax_avx2(x0, x1);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        uint8_t sc = nvfp4_scale_code(_mm_cvtss_f32(m4), six_gs);
        scales[b] = sc;
        nvfp4_block_codes_avx2(x0, x1, _mm256_set1_ps(nq_e4m3_to_f32_inline(sc) * gs),
                               codes + 8 * b, e, r);
    }
    *row_err = sum16_avx2(e[0], e[1]);
    *row_ref = sum16_avx2(r[0], r[1]);
}

NQ_AVX2 static void nvfp4_row_avx2_f32(const float *row, int64_t blocks, float six_gs, float gs,
                                       uint8_t *codes, uint8_t *scales, float *err, float *ref)
{
    nvfp4_row_avx2(row, false, blocks, six_gs, gs, codes, scales, err, ref);
}

NQ_AVX2 static void nvfp4_row_avx2_bf16(const void *row, int64_t blocks, float six_gs, float gs,
                                        uint8_t *codes, uint8_t *scales, float *err, float *ref)
{
    nvfp4_row_avx2(row, true, blocks, six_gs, gs, codes, scales, err, ref);
}
#endif

typedef struct nvfp4_job {
    const nq_weight_view *w;
    bool mse;
    float global_scale;
    float *buffers;
    uint8_t *packed, *scales;
    chunk_stats *stats;
} nvfp4_job;

static int nvfp4_rows(void *ctx, size_t begin, size_t end, int worker)
{
    const nvfp4_job *j = ctx;
    int64_t cols = j->w->cols, blocks = cols / NQ_NVFP4_BLOCK;
    const float gs = j->global_scale, six_gs = 6.0f * gs;
    const bool mse = j->mse;
    int avx2 = use_avx2();
    bool direct_bf16 = avx2 && j->w->dtype == NQ_BF16;
    const float *rows = NULL;
    if (!direct_bf16) {
        float *buf = j->buffers + (size_t)worker * ROWS_PER_CHUNK * (size_t)cols;
        rows = view_rows(j->w, (int64_t)begin, (int64_t)(end - begin), buf);
    }
    /* locals, not j->stats: the byte stores below may alias anything, which
     * would force every accumulator through memory */
    double sq_err = 0, sq_err_max = 0, sq_ref = 0;
    for (size_t r = begin; r < end; r++) {
        const float *row = rows ? rows + (int64_t)(r - begin) * cols : NULL;
        uint8_t *codes = j->packed + (int64_t)r * cols / 2;
        uint8_t *scales = j->scales + (int64_t)r * blocks;
        float row_err, row_ref;
#if NQ_HAVE_AVX2_KERNELS
        if (direct_bf16)
            nvfp4_row_avx2_bf16((const unsigned char *)j->w->data + 2 * (int64_t)r * cols, blocks,
                                six_gs, gs, codes, scales, &row_err, &row_ref);
        else if (avx2)
            nvfp4_row_avx2_f32(row, blocks, six_gs, gs, codes, scales, &row_err, &row_ref);
        else
#endif
            nvfp4_row_generic(row, blocks, six_gs, gs, codes, scales, &row_err, &row_ref);
        if (mse) {
            /* the searched scale replaces the max one (needs f32 rows) */
            float tmp[NQ_NVFP4_BLOCK];
            for (int64_t b = 0; b < blocks; b++) {
                const float *x = row ? row + b * NQ_NVFP4_BLOCK : tmp;
                if (!row) {
                    nq_weight_view one = {(const unsigned char *)j->w->data +
                                              2 * ((int64_t)r * cols + b * NQ_NVFP4_BLOCK),
                                          NQ_BF16, 1, NQ_NVFP4_BLOCK};
                    view_rows(&one, 0, 1, tmp);
                }
                double err;
                uint8_t best = nq_nvfp4_block_scale_mse(x, gs, &err);
                nq_nvfp4_encode_block(x, best, gs, codes + b * 8);
                scales[b] = best;
                sq_err += err;
            }
        } else {
            sq_err += row_err;
        }
        sq_err_max += row_err;
        sq_ref += row_ref;
    }
    chunk_stats *cs = &j->stats[begin / ROWS_PER_CHUNK];
    cs->sq_err = sq_err;
    cs->sq_err_max = sq_err_max;
    cs->sq_ref = sq_ref;
    return 0;
}

int nq_encode_nvfp4_view(const nq_weight_view *w, bool mse, int threads, uint8_t *packed,
                         uint8_t *block_scales, float *global_scale, nq_encode_stats *st,
                         nq_error *err)
{
    if (w->cols % NQ_NVFP4_BLOCK != 0)
        return nq_fail(err, "in_features %lld is not a multiple of 16", (long long)w->cols);
    float amax;
    if (view_amax(w, threads, &amax, err) != 0)
        return -1;
    float gs = nq_nvfp4_global_scale(amax);
    size_t nchunks = ((size_t)w->rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    float *buffers = worker_buffers(w, threads);
    if (!cs || !buffers) {
        free(cs);
        free(buffers);
        return nq_fail(err, "out of memory");
    }
    nvfp4_job job = {w, mse, gs, buffers, packed, block_scales, cs};
    nq_parallel_for((size_t)w->rows, ROWS_PER_CHUNK, threads, nvfp4_rows, &job);
    reduce_stats(cs, nchunks, st);
    free(cs);
    free(buffers);
    *global_scale = gs;
    return 0;
}

int nq_encode_nvfp4(const float *w, int64_t rows, int64_t cols, bool mse, int threads,
                    uint8_t *packed, uint8_t *block_scales, float *global_scale,
                    nq_encode_stats *st, nq_error *err)
{
    nq_weight_view v = {w, NQ_F32, rows, cols};
    return nq_encode_nvfp4_view(&v, mse, threads, packed, block_scales, global_scale, st, err);
}

/* ---- FP8 ------------------------------------------------------------------ */

typedef struct fp8_job {
    const nq_weight_view *w;
    float scale;
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
NQ_AVX2 static void fp8_run_avx2(const float *x, int64_t n16, float scale, uint8_t *q, float e[16],
                                 float r[16])
{
    const __m256 sv = _mm256_set1_ps(scale);
    __m256 e0 = _mm256_loadu_ps(e), e1 = _mm256_loadu_ps(e + 8);
    __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + 8);
    for (int64_t k = 0; k < n16; k += 16) {
        for (int h = 0; h < 2; h++) {
            __m256 xv = _mm256_loadu_ps(x + k + 8 * h), dec;
            __m256i c = fp8_codes8_avx2(xv, sv, &dec);
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
    const float *rows = view_rows(j->w, (int64_t)begin, (int64_t)(end - begin), buf);
    int64_t n = (int64_t)(end - begin) * cols, n16 = n / 16 * 16;
    uint8_t *q = j->out + (int64_t)begin * cols;
    const float scale = j->scale;
    float e[16] = {0}, r[16] = {0};
#if NQ_HAVE_AVX2_KERNELS
    if (use_avx2()) {
        fp8_run_avx2(rows, n16, scale, q, e, r);
    } else
#endif
    {
        for (int64_t k = 0; k < n16; k += 16) {
            for (int i = 0; i < 16; i++) {
                float x = rows[k + i];
                uint8_t c = nq_fp8_quantize_value_inline(x, scale);
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
        q[k] = nq_fp8_quantize_value(x, scale);
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
    if (view_amax(w, threads, &amax, err) != 0)
        return -1;
    float s = nq_fp8_tensor_scale(amax);
    size_t nchunks = ((size_t)w->rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    float *buffers = worker_buffers(w, threads);
    if (!cs || !buffers) {
        free(cs);
        free(buffers);
        return nq_fail(err, "out of memory");
    }
    fp8_job job = {w, s, buffers, out, cs};
    nq_parallel_for((size_t)w->rows, ROWS_PER_CHUNK, threads, fp8_rows, &job);
    reduce_stats(cs, nchunks, st);
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
        rows = view_rows(j->w, (int64_t)begin, (int64_t)(end - begin), buf);
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
                    x = view_rows(&one, 0, 1, group_f32);
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
    if (view_amax(w, threads, &amax, err) != 0 || nq_int4_check_amax(amax, err) != 0)
        return -1;
    size_t nchunks = ((size_t)rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    float *buffers = worker_buffers(w, threads);
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
    if (use_avx2())
        fn = int4_rows_avx2;
#endif
    nq_parallel_for((size_t)rows, ROWS_PER_CHUNK, threads, fn, &job);
    reduce_stats(cs, nchunks, st);
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

/* ---- reading back ---------------------------------------------------------- */

static const nq_tensor *companion(const nq_checkpoint *ck, const char *module, const char *suffix)
{
    char name[600];
    snprintf(name, sizeof name, "%s.%s", module, suffix);
    return nq_checkpoint_find(ck, name);
}

nq_stored_format nq_stored_format_of(const nq_checkpoint *ck, const char *module)
{
    if (companion(ck, module, "qweight"))
        return NQ_STORED_GPTQ;
    const nq_tensor *w = companion(ck, module, "weight");
    if (!w)
        return NQ_STORED_NONE;
    if (companion(ck, module, "weight_scale_2"))
        return NQ_STORED_NVFP4;
    if (w->dtype == NQ_F8_E4M3)
        return NQ_STORED_FP8;
    return nq_dtype_is_float(w->dtype) ? NQ_STORED_FLOAT : NQ_STORED_NONE;
}

static int expect(const nq_tensor *t, const char *module, const char *suffix, nq_dtype dt,
                  int ndim, int64_t a, int64_t b, nq_error *err)
{
    if (!t)
        return nq_fail(err, "%s: missing %s", module, suffix);
    bool ok = t->dtype == dt && (ndim == 0 ? t->numel == 1 && t->ndim <= 1 : t->ndim == ndim);
    if (ok && ndim >= 1 && t->shape[0] != a)
        ok = false;
    if (ok && ndim == 2 && t->shape[1] != b)
        ok = false;
    if (!ok)
        return nq_fail(err, "%s.%s: expected %s %s[%lld%s%.0lld], found %s with %d dims", module,
                       suffix, nq_dtype_name(dt), ndim == 0 ? "scalar " : "", (long long)a,
                       ndim == 2 ? ", " : "", ndim == 2 ? (long long)b : 0LL,
                       nq_dtype_name(t->dtype), t->ndim);
    return 0;
}

static int positive_scalar(const nq_tensor *t, const char *module, float *v, nq_error *err)
{
    memcpy(v, t->data, sizeof *v);
    if (!(isfinite(*v) && *v > 0))
        return nq_fail(err, "%s.%s: scale %g is not finite and positive", module,
                       strrchr(t->name, '.') + 1, *v);
    return 0;
}

float *nq_decode_module(const nq_checkpoint *ck, const char *module, int gptq_group,
                        int64_t *rows, int64_t *cols, nq_error *err)
{
    nq_stored_format f = nq_stored_format_of(ck, module);
    float *out = NULL;
    if (f == NQ_STORED_NVFP4) {
        const nq_tensor *w = companion(ck, module, "weight");
        const nq_tensor *s = companion(ck, module, "weight_scale");
        const nq_tensor *s2 = companion(ck, module, "weight_scale_2");
        if (w->ndim != 2 || w->dtype != NQ_U8) {
            nq_fail(err, "%s.weight: NVFP4 weight must be U8 [out, in/2]", module);
            return NULL;
        }
        int64_t o = w->shape[0], i = w->shape[1] * 2;
        float gs;
        if (i % 16 != 0 || expect(s, module, "weight_scale", NQ_F8_E4M3, 2, o, i / 16, err) ||
            expect(s2, module, "weight_scale_2", NQ_F32, 0, 0, 0, err) ||
            positive_scalar(s2, module, &gs, err))
            return NULL;
        for (uint64_t k = 0; k < s->numel; k++) {
            float v = nq_e4m3_to_f32(s->data[k]);
            if (!(isfinite(v) && v > 0)) {
                nq_fail(err, "%s.weight_scale: block scale %llu is %g", module,
                        (unsigned long long)k, v);
                return NULL;
            }
        }
        out = malloc((size_t)(o * i) * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        for (int64_t r = 0; r < o; r++)
            nq_nvfp4_decode_row(w->data + r * i / 2, s->data + r * i / 16, gs, i, out + r * i);
        *rows = o;
        *cols = i;
    } else if (f == NQ_STORED_FP8) {
        const nq_tensor *w = companion(ck, module, "weight");
        const nq_tensor *s = companion(ck, module, "weight_scale");
        float scale;
        if (w->ndim != 2) {
            nq_fail(err, "%s.weight: FP8 weight must be 2-D", module);
            return NULL;
        }
        if (expect(s, module, "weight_scale", NQ_F32, 0, 0, 0, err) ||
            positive_scalar(s, module, &scale, err))
            return NULL;
        out = malloc(w->numel * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        for (uint64_t k = 0; k < w->numel; k++) {
            if ((w->data[k] & 0x7f) == 0x7f) { /* E4M3's only NaN encoding */
                free(out);
                nq_fail(err, "tensor '%s.weight': element %llu (row %llu, column %llu) is NaN "
                             "(E4M3 code 0x%02x)",
                        module, (unsigned long long)k,
                        (unsigned long long)(k / (uint64_t)w->shape[1]),
                        (unsigned long long)(k % (uint64_t)w->shape[1]), w->data[k]);
                return NULL;
            }
            out[k] = nq_e4m3_to_f32(w->data[k]) * scale;
        }
        *rows = w->shape[0];
        *cols = w->shape[1];
    } else if (f == NQ_STORED_GPTQ) {
        const nq_tensor *qw = companion(ck, module, "qweight");
        const nq_tensor *qz = companion(ck, module, "qzeros");
        const nq_tensor *sc = companion(ck, module, "scales");
        const nq_tensor *gi = companion(ck, module, "g_idx");
        if (qw->ndim != 2 || qw->dtype != NQ_I32 || !sc || sc->ndim != 2) {
            nq_fail(err, "%s: GPTQ qweight must be I32 [in/8, out] with 2-D scales", module);
            return NULL;
        }
        int64_t i = qw->shape[0] * 8, o = qw->shape[1];
        int64_t ngroups = sc->shape[0];
        if (ngroups <= 0 || i % ngroups != 0) {
            nq_fail(err, "%s.scales: %lld groups do not divide in_features %lld", module,
                    (long long)ngroups, (long long)i);
            return NULL;
        }
        int g = (int)(i / ngroups);
        (void)gptq_group; /* per-module `dynamic` overrides may differ from it */
        if (expect(sc, module, "scales", NQ_F16, 2, ngroups, o, err) ||
            expect(qz, module, "qzeros", NQ_I32, 2, ngroups, o / 8, err) ||
            expect(gi, module, "g_idx", NQ_I32, 1, i, 0, err))
            return NULL;
        out = malloc((size_t)(o * i) * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        if (nq_int4_unpack_gptq(qw->data, qz->data, sc->data, gi->data, o, i, g, out, err) != 0) {
            nq_error_name(err, "module", module);
            free(out);
            return NULL;
        }
        *rows = o;
        *cols = i;
    } else {
        nq_fail(err, "%s: not stored in a quantized format", module);
    }
    return out;
}
