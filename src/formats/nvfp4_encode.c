/* Whole-tensor NVFP4 encoding (formats/encode.h): ModelOpt's NVFP4QTensor
 * arithmetic as quoted in docs/export-spec.md 2.1, in the same f32 order as
 * the torch expressions, so the bytes match ModelOpt's for the same BF16
 * weights with max calibration.
 *
 * Speed: the encoder works straight from the stored BF16 (no f32 copy of the
 * tensor), in two parallel passes: the tensor amax (encode_common.c), then
 * the blocks, each row chunk widened into a small per-thread buffer.  The
 * per-block kernels are branch-free loops over fixed-size arrays that the
 * compiler vectorizes (built with -O3), plus hand-written AVX2 forms; both
 * compute the same IEEE operations as the scalar reference in nvfp4.c, so
 * the bytes are identical (tests/test_encode.c checks every path against
 * it, tests/test_formats.c the selected one against ModelOpt). */
#include "formats/encode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "formats/encode_internal.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/nvfp4.h"

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
    int avx2 = nq_enc_use_avx2();
    bool direct_bf16 = avx2 && j->w->dtype == NQ_BF16;
    const float *rows = NULL;
    if (!direct_bf16) {
        float *buf = j->buffers + (size_t)worker * ROWS_PER_CHUNK * (size_t)cols;
        rows = nq_enc_view_rows(j->w, (int64_t)begin, (int64_t)(end - begin), buf);
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
                    nq_enc_view_rows(&one, 0, 1, tmp);
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
    return nq_encode_nvfp4_view_shared(w, 0.0f, mse, threads, packed, block_scales, global_scale,
                                       st, err);
}

int nq_encode_nvfp4_view_shared(const nq_weight_view *w, float shared_amax, bool mse, int threads,
                                uint8_t *packed, uint8_t *block_scales, float *global_scale,
                                nq_encode_stats *st, nq_error *err)
{
    if (w->cols % NQ_NVFP4_BLOCK != 0)
        return nq_fail(err, "in_features %lld is not a multiple of 16", (long long)w->cols);
    float amax;
    if (nq_enc_view_amax(w, threads, &amax, err) != 0)
        return -1;
    float gs = nq_nvfp4_global_scale(shared_amax > amax ? shared_amax : amax);
    size_t nchunks = ((size_t)w->rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    float *buffers = nq_enc_worker_buffers(w, threads);
    if (!cs || !buffers) {
        free(cs);
        free(buffers);
        return nq_fail(err, "out of memory");
    }
    nvfp4_job job = {w, mse, gs, buffers, packed, block_scales, cs};
    nq_parallel_for((size_t)w->rows, ROWS_PER_CHUNK, threads, nvfp4_rows, &job);
    nq_enc_reduce_stats(cs, nchunks, st);
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
