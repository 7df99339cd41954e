/* The whole-tensor encoders (the *_encode.c files in src/formats) and the write queue.
 *
 * The encoders have two kernels per format on x86-64 (portable C and AVX2)
 * and read BF16 / F16 / F32 sources in place.  tests/test_formats.c checks
 * the bytes against ModelOpt's own export through whichever kernel this CPU
 * selects; here every other path must give the same bytes AND the same
 * statistics, and both are checked against the scalar per-block reference
 * functions of src/formats/ (the ones the hand-computed vectors pin down):
 *   - portable kernel == AVX2 kernel (nq_encode_force_generic),
 *   - BF16 / F16 views == F32 arrays of the same values,
 *   - 1, 2 and 3 threads,
 *   - shapes whose row count is not a multiple of the 16-row chunk and whose
 *     block count is not a multiple of the 8-block batch. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/encode.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"
#include "io/write_queue.h"
#include "io/writer.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static double gaussian(void)
{
    double u = uniform(), v = uniform();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* BF16 weights (held as their f32 values and their BF16 bits) with the
 * awkward cases mixed in: zero blocks, -0, single outliers, rows of tiny
 * values (subnormal E4M3 block scales), exact E2M1 tie points. */
typedef struct {
    int64_t rows, cols;
    float *f32;
    uint16_t *bf16;
} matrix;

static matrix make_matrix(int64_t rows, int64_t cols, int kind)
{
    matrix m = {rows, cols, malloc((size_t)(rows * cols) * sizeof(float)),
                malloc((size_t)(rows * cols) * sizeof(uint16_t))};
    for (int64_t r = 0; r < rows; r++) {
        double row_scale = (r % 7 == 3) ? 1e-6 : (r % 11 == 5) ? 40.0 : (r % 5 == 1) ? 2e-3 : 0.02;
        for (int64_t c = 0; c < cols; c++) {
            double v = gaussian() * row_scale;
            if (kind == 1 && uniform() < 0.01)
                v *= 50; /* heavy tail */
            if ((c / 16) % 13 == 4)
                v = 0; /* zero block */
            if ((c / 16) % 17 == 9 && c % 16 == 0)
                v = -0.0;
            if ((c / 16) % 19 == 2)
                v = (double)(c % 8) * 0.25 * row_scale; /* ties after scaling */
            uint16_t h = nq_f32_to_bf16((float)v);
            m.bf16[r * cols + c] = h;
            m.f32[r * cols + c] = nq_bf16_to_f32(h);
        }
    }
    return m;
}

static void free_matrix(matrix *m)
{
    free(m->f32);
    free(m->bf16);
}

typedef struct {
    uint8_t *packed, *scales;
    float gs;
    nq_encode_stats st;
} nvfp4_out;

static nvfp4_out nvfp4_run(const matrix *m, bool bf16, bool mse, int threads)
{
    nvfp4_out o = {.packed = malloc((size_t)(m->rows * m->cols / 2)),
                   .scales = malloc((size_t)(m->rows * m->cols / 16))};
    nq_weight_view v = {bf16 ? (const void *)m->bf16 : (const void *)m->f32, bf16 ? NQ_BF16 : NQ_F32,
                        m->rows, m->cols};
    nq_error err = {0};
    assert_int_equal(nq_encode_nvfp4_view(&v, mse, threads, o.packed, o.scales, &o.gs, &o.st, &err), 0);
    return o;
}

static void nvfp4_same(const matrix *m, const nvfp4_out *a, const nvfp4_out *b)
{
    assert_memory_equal(a->packed, b->packed, (size_t)(m->rows * m->cols / 2));
    assert_memory_equal(a->scales, b->scales, (size_t)(m->rows * m->cols / 16));
    assert_true(a->gs == b->gs);
    assert_true(a->st.sq_err == b->st.sq_err);
    assert_true(a->st.sq_err_max_scale == b->st.sq_err_max_scale);
    assert_true(a->st.sq_ref == b->st.sq_ref);
}

static void nvfp4_free(nvfp4_out *o)
{
    free(o->packed);
    free(o->scales);
}

/* Every path gives the same NVFP4 bytes and statistics, and they agree with
 * the per-block reference functions and with a double-precision error
 * computed from the decoded weights. */
static void test_nvfp4_paths_agree(void **state)
{
    (void)state;
    /* 116 blocks per row (14 batches of 8 and a tail of 4), 37 rows (two
     * chunks of 16 and one of 5); 64 blocks (no tail), 18 rows */
    const int64_t shapes[][2] = {{37, 1856}, {18, 1024}, {3, 16}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        for (int kind = 0; kind < 2; kind++) {
            matrix m = make_matrix(shapes[si][0], shapes[si][1], kind);
            nvfp4_out ref = nvfp4_run(&m, false, false, 1);
            /* the reference functions of formats/, block by block */
            for (int64_t r = 0; r < m.rows; r++) {
                for (int64_t b = 0; b < m.cols / 16; b++) {
                    const float *x = m.f32 + r * m.cols + b * 16;
                    uint8_t sc = nq_nvfp4_block_scale_max(x, ref.gs), codes[8];
                    nq_nvfp4_encode_block(x, sc, ref.gs, codes);
                    assert_int_equal(ref.scales[r * (m.cols / 16) + b], sc);
                    assert_memory_equal(ref.packed + (r * m.cols + b * 16) / 2, codes, 8);
                }
            }
            /* statistics against the decoded weights, in double */
            float *row = malloc((size_t)m.cols * sizeof *row);
            double sq_err = 0, sq_ref = 0;
            for (int64_t r = 0; r < m.rows; r++) {
                nq_nvfp4_decode_row(ref.packed + r * m.cols / 2, ref.scales + r * (m.cols / 16), ref.gs,
                                    m.cols, row);
                for (int64_t c = 0; c < m.cols; c++) {
                    double x = m.f32[r * m.cols + c];
                    sq_err += (x - row[c]) * (x - row[c]);
                    sq_ref += x * x;
                }
            }
            free(row);
            assert_true(fabs(ref.st.sq_ref - sq_ref) <= 1e-5 * sq_ref);
            assert_true(fabs(ref.st.sq_err - sq_err) <= 1e-4 * sq_err + 1e-30);
            assert_true(ref.st.sq_err == ref.st.sq_err_max_scale);
            for (int generic = 0; generic < 2; generic++) {
                nq_encode_force_generic(generic);
                for (int threads = 1; threads <= 3; threads++) {
                    for (int bf16 = 0; bf16 < 2; bf16++) {
                        nvfp4_out o = nvfp4_run(&m, bf16, false, threads);
                        nvfp4_same(&m, &ref, &o);
                        nvfp4_free(&o);
                    }
                }
            }
            nq_encode_force_generic(false);
            nvfp4_free(&ref);
            free_matrix(&m);
        }
    }
}

/* --weight-scale mse: never worse than max, on every path identical. */
static void test_nvfp4_mse_paths_agree(void **state)
{
    (void)state;
    matrix m = make_matrix(21, 1856, 1);
    nvfp4_out ref = nvfp4_run(&m, false, true, 1);
    assert_true(ref.st.sq_err <= ref.st.sq_err_max_scale);
    assert_true(ref.st.sq_err < 0.99 * ref.st.sq_err_max_scale);
    for (int generic = 0; generic < 2; generic++) {
        nq_encode_force_generic(generic);
        for (int bf16 = 0; bf16 < 2; bf16++) {
            nvfp4_out o = nvfp4_run(&m, bf16, true, 2);
            nvfp4_same(&m, &ref, &o);
            nvfp4_free(&o);
        }
    }
    nq_encode_force_generic(false);
    nvfp4_free(&ref);
    free_matrix(&m);
}

typedef struct {
    int32_t *qw, *qz, *gi;
    uint16_t *sc;
    nq_encode_stats st;
} int4_out;

static int4_out int4_run(const matrix *m, int group, bool bf16, bool mse, int threads)
{
    int64_t o = m->rows, i = m->cols;
    int4_out r = {.qw = malloc((size_t)(i / 8 * o) * 4),
                  .qz = malloc((size_t)(i / group * o / 8) * 4),
                  .gi = malloc((size_t)i * 4),
                  .sc = malloc((size_t)(i / group * o) * 2)};
    nq_weight_view v = {bf16 ? (const void *)m->bf16 : (const void *)m->f32, bf16 ? NQ_BF16 : NQ_F32,
                        o, i};
    nq_error err = {0};
    assert_int_equal(
        nq_encode_int4_view(&v, group, mse, threads, r.qw, r.qz, r.sc, r.gi, &r.st, &err), 0);
    return r;
}

static void int4_same(const matrix *m, int group, const int4_out *a, const int4_out *b)
{
    int64_t o = m->rows, i = m->cols;
    assert_memory_equal(a->qw, b->qw, (size_t)(i / 8 * o) * 4);
    assert_memory_equal(a->qz, b->qz, (size_t)(i / group * o / 8) * 4);
    assert_memory_equal(a->sc, b->sc, (size_t)(i / group * o) * 2);
    assert_memory_equal(a->gi, b->gi, (size_t)i * 4);
    assert_true(a->st.sq_err == b->st.sq_err);
    assert_true(a->st.sq_err_max_scale == b->st.sq_err_max_scale);
    assert_true(a->st.sq_ref == b->st.sq_ref);
}

static void int4_free(int4_out *r)
{
    free(r->qw);
    free(r->qz);
    free(r->gi);
    free(r->sc);
}

static void test_int4_paths_agree(void **state)
{
    (void)state;
    const int groups[] = {32, 64, 128};
    for (int gi = 0; gi < 3; gi++) {
        int g = groups[gi];
        int64_t cols = g == 128 ? 1024 : 1856 / 64 * 64;
        matrix m = make_matrix(40, cols, 1);
        int4_out ref = int4_run(&m, g, false, false, 1);
        /* against the per-group reference functions and the GPTQ packing */
        uint8_t *codes = malloc((size_t)(m.rows * m.cols));
        for (int64_t r = 0; r < m.rows; r++) {
            for (int64_t k = 0; k < m.cols / g; k++) {
                const float *x = m.f32 + r * m.cols + k * g;
                uint16_t s = nq_int4_group_scale_max(x, g);
                assert_int_equal(ref.sc[k * m.rows + r], s);
                nq_int4_encode_group(x, g, s, codes + r * m.cols + k * g);
            }
        }
        int32_t *qw = malloc((size_t)(m.cols / 8 * m.rows) * 4), *qz = malloc((size_t)(m.cols / g * m.rows / 8) * 4),
                *gx = malloc((size_t)m.cols * 4);
        nq_int4_pack_gptq(codes, m.rows, m.cols, g, qw, qz, gx);
        assert_memory_equal(qw, ref.qw, (size_t)(m.cols / 8 * m.rows) * 4);
        assert_memory_equal(qz, ref.qz, (size_t)(m.cols / g * m.rows / 8) * 4);
        assert_memory_equal(gx, ref.gi, (size_t)m.cols * 4);
        free(qw);
        free(qz);
        free(gx);
        free(codes);
        for (int generic = 0; generic < 2; generic++) {
            nq_encode_force_generic(generic);
            for (int threads = 1; threads <= 3; threads++) {
                for (int bf16 = 0; bf16 < 2; bf16++) {
                    int4_out o = int4_run(&m, g, bf16, false, threads);
                    int4_same(&m, g, &ref, &o);
                    int4_free(&o);
                }
            }
            int4_out a = int4_run(&m, g, false, true, 1), b = int4_run(&m, g, true, true, 2);
            int4_same(&m, g, &a, &b);
            assert_true(a.st.sq_err <= a.st.sq_err_max_scale);
            int4_free(&a);
            int4_free(&b);
        }
        nq_encode_force_generic(false);
        int4_free(&ref);
        free_matrix(&m);
    }
}

/* FP8: every byte is nq_fp8_quantize_value of its weight (the function the
 * ModelOpt fixtures pin down), on every path; shapes with a tail that is not
 * a multiple of 16 elements. */
static void test_fp8_paths_agree(void **state)
{
    (void)state;
    const int64_t shapes[][2] = {{37, 100}, {16, 1856}, {3, 8}};
    for (size_t si = 0; si < 3; si++) {
        matrix m = make_matrix(shapes[si][0], shapes[si][1], 1);
        size_t n = (size_t)(m.rows * m.cols);
        uint8_t *ref = malloc(n), *q = malloc(n);
        float s_ref, s;
        nq_encode_stats st_ref, st;
        nq_error err = {0};
        assert_int_equal(nq_encode_fp8(m.f32, m.rows, m.cols, 1, ref, &s_ref, &st_ref, &err), 0);
        double sq_err = 0;
        for (size_t k = 0; k < n; k++) {
            assert_int_equal(ref[k], nq_fp8_quantize_value(m.f32[k], s_ref));
            double d = (double)m.f32[k] - (double)nq_e4m3_to_f32(ref[k]) * s_ref;
            sq_err += d * d;
        }
        assert_true(fabs(st_ref.sq_err - sq_err) <= 1e-4 * sq_err);
        for (int generic = 0; generic < 2; generic++) {
            nq_encode_force_generic(generic);
            for (int threads = 1; threads <= 3; threads += 2) {
                for (int bf16 = 0; bf16 < 2; bf16++) {
                    nq_weight_view v = {bf16 ? (const void *)m.bf16 : (const void *)m.f32,
                                        bf16 ? NQ_BF16 : NQ_F32, m.rows, m.cols};
                    assert_int_equal(nq_encode_fp8_view(&v, threads, q, &s, &st, &err), 0);
                    assert_memory_equal(q, ref, n);
                    assert_true(s == s_ref && st.sq_err == st_ref.sq_err &&
                                st.sq_ref == st_ref.sq_ref);
                }
            }
        }
        nq_encode_force_generic(false);
        free(ref);
        free(q);
        free_matrix(&m);
    }
}

/* FP8 and F16 sources: the view reads F16 in place too. */
static void test_fp8_and_f16_views(void **state)
{
    (void)state;
    matrix m = make_matrix(19, 96, 0);
    uint16_t *f16 = malloc((size_t)(m.rows * m.cols) * 2);
    float *back = malloc((size_t)(m.rows * m.cols) * 4);
    for (int64_t k = 0; k < m.rows * m.cols; k++) {
        f16[k] = nq_f32_to_f16(m.f32[k]);
        back[k] = nq_f16_to_f32(f16[k]);
    }
    uint8_t *q1 = malloc((size_t)(m.rows * m.cols)), *q2 = malloc((size_t)(m.rows * m.cols));
    float s1, s2;
    nq_encode_stats a, b;
    nq_error err = {0};
    nq_weight_view vf = {back, NQ_F32, m.rows, m.cols}, vh = {f16, NQ_F16, m.rows, m.cols};
    assert_int_equal(nq_encode_fp8_view(&vf, 1, q1, &s1, &a, &err), 0);
    assert_int_equal(nq_encode_fp8_view(&vh, 3, q2, &s2, &b, &err), 0);
    assert_memory_equal(q1, q2, (size_t)(m.rows * m.cols));
    assert_true(s1 == s2 && a.sq_err == b.sq_err && a.sq_ref == b.sq_ref);
    uint8_t *p1 = malloc((size_t)(m.rows * m.cols / 2)), *p2 = malloc((size_t)(m.rows * m.cols / 2));
    uint8_t *b1 = malloc((size_t)(m.rows * m.cols / 16)), *b2 = malloc((size_t)(m.rows * m.cols / 16));
    assert_int_equal(nq_encode_nvfp4_view(&vf, false, 1, p1, b1, &s1, &a, &err), 0);
    assert_int_equal(nq_encode_nvfp4_view(&vh, false, 2, p2, b2, &s2, &b, &err), 0);
    assert_memory_equal(p1, p2, (size_t)(m.rows * m.cols / 2));
    assert_memory_equal(b1, b2, (size_t)(m.rows * m.cols / 16));
    free(p1);
    free(p2);
    free(b1);
    free(b2);
    free(q1);
    free(q2);
    free(f16);
    free(back);
    free_matrix(&m);
}

/* The first non-finite element is named the same way whatever the dtype,
 * the thread count and the chunk it falls in; unaligned F32 sources (as in
 * a mapping) are read correctly. */
static void test_nonfinite_named(void **state)
{
    (void)state;
    matrix m = make_matrix(40, 64, 0);
    const int64_t bad[] = {5, 16 * 64 + 3, 39 * 64 + 63};
    for (size_t k = 0; k < 3; k++) {
        for (int nan = 0; nan < 2; nan++) {
            matrix c = make_matrix(40, 64, 0);
            c.f32[bad[k]] = nan ? NAN : -INFINITY;
            c.bf16[bad[k]] = nan ? 0x7fc0 : 0xff80;
            /* a later bad element must not be the one reported */
            c.f32[39 * 64 + 63] = NAN;
            c.bf16[39 * 64 + 63] = 0x7fc0;
            char want[64];
            snprintf(want, sizeof want, "element %lld is %s", (long long)bad[k],
                     nan || bad[k] == 39 * 64 + 63 ? "NaN" : "infinite");
            for (int threads = 1; threads <= 2; threads++) {
                for (int bf16 = 0; bf16 < 2; bf16++) {
                    nq_weight_view v = {bf16 ? (const void *)c.bf16 : (const void *)c.f32,
                                        bf16 ? NQ_BF16 : NQ_F32, c.rows, c.cols};
                    uint8_t packed[40 * 32], scales[40 * 4];
                    float gs;
                    nq_error err = {0};
                    assert_int_equal(nq_encode_nvfp4_view(&v, false, threads, packed, scales, &gs,
                                                          NULL, &err),
                                     -1);
                    assert_string_equal(err.msg, want);
                }
            }
            free_matrix(&c);
        }
    }
    /* unaligned F32 */
    unsigned char *raw = malloc((size_t)(m.rows * m.cols) * 4 + 1);
    memcpy(raw + 1, m.f32, (size_t)(m.rows * m.cols) * 4);
    nq_weight_view va = {raw + 1, NQ_F32, m.rows, m.cols}, vb = {m.f32, NQ_F32, m.rows, m.cols};
    uint8_t p1[40 * 32], p2[40 * 32], s1[40 * 4], s2[40 * 4];
    float g1, g2;
    nq_error err = {0};
    assert_int_equal(nq_encode_nvfp4_view(&va, false, 2, p1, s1, &g1, NULL, &err), 0);
    assert_int_equal(nq_encode_nvfp4_view(&vb, false, 1, p2, s2, &g2, NULL, &err), 0);
    assert_memory_equal(p1, p2, sizeof p1);
    assert_memory_equal(s1, s2, sizeof s1);
    free(raw);
    free_matrix(&m);
}

/* The MSE searches sum every candidate's error side by side; they must pick
 * what the plain candidate-by-candidate search (written out here as the
 * specification: max scale first, then down to 1/2 and up to 5/4 for NVFP4,
 * amax/7 * k/32 for k = 31..16 for INT4, strictly smaller error wins) picks,
 * with the same error. */
static uint8_t nvfp4_mse_by_hand(const float *x, float gs, double *err)
{
    uint8_t best = nq_nvfp4_block_scale_max(x, gs);
    double best_err = nq_nvfp4_block_sq_error(x, best, gs);
    float ref = nq_e4m3_to_f32(best);
    uint8_t max_code = best;
    for (int code = max_code - 1; code >= 1 && nq_e4m3_to_f32((uint8_t)code) >= 0.5f * ref; code--) {
        double e = nq_nvfp4_block_sq_error(x, (uint8_t)code, gs);
        if (e < best_err) {
            best_err = e;
            best = (uint8_t)code;
        }
    }
    for (int code = max_code + 1; code <= 0x7e && nq_e4m3_to_f32((uint8_t)code) <= 1.25f * ref;
         code++) {
        double e = nq_nvfp4_block_sq_error(x, (uint8_t)code, gs);
        if (e < best_err) {
            best_err = e;
            best = (uint8_t)code;
        }
    }
    *err = best_err;
    return best;
}

static uint16_t int4_mse_by_hand(const float *x, int n, double *err)
{
    uint16_t best = nq_int4_group_scale_max(x, n);
    double best_err = nq_int4_group_sq_error(x, n, best);
    float base = nq_f16_to_f32(best);
    for (int k = 31; k >= 16; k--) {
        uint16_t sc = nq_f32_to_f16(base * (float)k / 32.0f);
        if (nq_f16_to_f32(sc) <= 0)
            break;
        double e = nq_int4_group_sq_error(x, n, sc);
        if (e < best_err) {
            best_err = e;
            best = sc;
        }
    }
    *err = best_err;
    return best;
}

static void test_mse_search_matches_plain_search(void **state)
{
    (void)state;
    matrix m = make_matrix(64, 1024, 1);
    float gs = 0.0123f;
    int changed = 0;
    for (int64_t b = 0; b < 64 * 1024 / 16; b++) {
        const float *x = m.f32 + 16 * b;
        double e1, e2;
        uint8_t a = nq_nvfp4_block_scale_mse(x, gs, &e1), h = nvfp4_mse_by_hand(x, gs, &e2);
        assert_int_equal(a, h);
        assert_true(e1 == e2);
        changed += a != nq_nvfp4_block_scale_max(x, gs);
    }
    assert_true(changed > 100); /* the search does move scales */
    /* exact E2M1 ties under the neighbouring candidates: the max scale is
     * code M (x[0] = 6 * e4m3(M) * gs), the others sit on the tie points of
     * codes M-1 .. M-3 (all products exact in f32) */
    const float ties[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    const float gs2 = 0.0625f;
    for (int code = 0x20; code <= 0x60; code++) {
        for (int d = 1; d <= 3; d++) {
            float x[16];
            x[0] = 6.0f * nq_e4m3_to_f32((uint8_t)code) * gs2;
            for (int k = 1; k < 16; k++)
                x[k] = (k % 2 ? -1.0f : 1.0f) * ties[k % 7] * nq_e4m3_to_f32((uint8_t)(code - d)) * gs2;
            double e1, e2;
            uint8_t a = nq_nvfp4_block_scale_mse(x, gs2, &e1), h = nvfp4_mse_by_hand(x, gs2, &e2);
            assert_int_equal(nq_nvfp4_block_scale_max(x, gs2), code);
            assert_int_equal(a, h);
            assert_true(e1 == e2);
        }
    }
    changed = 0;
    for (int g = 32; g <= 128; g *= 2) {
        for (int64_t k = 0; k < 64 * 1024 / g; k++) {
            const float *x = m.f32 + g * k;
            double e1, e2;
            uint16_t a = nq_int4_group_scale_mse(x, g, &e1), h = int4_mse_by_hand(x, g, &e2);
            assert_int_equal(a, h);
            assert_true(e1 == e2);
            changed += a != nq_int4_group_scale_max(x, g);
        }
    }
    assert_true(changed > 100);
    free_matrix(&m);
}

/* The write queue writes pieces in order, frees what it owns, and reports a
 * failed write (here: more bytes than declared) at the next push or at the
 * finish, with the writer's message. */
static void test_write_queue(void **state)
{
    (void)state;
    char *dir = nq_test_tmpdir("write_queue");
    char out[4096];
    snprintf(out, sizeof out, "%s/out", dir);
    nq_writer_options wo = {.out_dir = out};
    nq_error err = {0};
    nq_writer *w = nq_writer_create(&wo, &err);
    assert_non_null(w);
    int64_t shape[1] = {4};
    assert_int_equal(nq_writer_declare(w, "a", NQ_F32, 1, shape, &err), 0);
    assert_int_equal(nq_writer_begin(w, &err), 0);
    nq_write_queue *q = nq_write_queue_start(w, &err);
    assert_non_null(q);
    float *owned = malloc(8);
    owned[0] = 1;
    owned[1] = 2;
    static const float tail[2] = {3, 4};
    nq_write_piece ok[2] = {{owned, 8, true}, {tail, 8, false}};
    assert_int_equal(nq_write_queue_push(q, ok, 2, NULL, &err), 0);
    /* beyond the declared 16 bytes: the writer refuses */
    nq_write_piece extra = {tail, 8, false};
    int rc = nq_write_queue_push(q, &extra, 1, NULL, &err);
    for (int k = 0; k < 3 && rc == 0; k++) {
        float *more = malloc(4);
        nq_write_piece p = {more, 4, true};
        rc = nq_write_queue_push(q, &p, 1, NULL, &err); /* owned pieces freed even on refusal */
    }
    nq_error fin = {0};
    int frc = nq_write_queue_finish(q, &fin);
    assert_true(rc != 0 || frc != 0);
    const char *msg = rc != 0 ? err.msg : fin.msg;
    assert_non_null(strstr(msg, "beyond the declared tensors"));
    nq_writer_free(w);
    nq_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nvfp4_paths_agree),
        cmocka_unit_test(test_nvfp4_mse_paths_agree),
        cmocka_unit_test(test_int4_paths_agree),
        cmocka_unit_test(test_fp8_paths_agree),
        cmocka_unit_test(test_fp8_and_f16_views),
        cmocka_unit_test(test_nonfinite_named),
        cmocka_unit_test(test_mse_search_matches_plain_search),
        cmocka_unit_test(test_write_queue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
