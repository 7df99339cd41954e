/* GPTQ: codes and scales against an independent numpy implementation of the
 * reference algorithm (tests/gen/gen_gptq_reference.py, fixture in
 * tests/fixtures/gptq), the defining property (less output error than
 * round-to-nearest on correlated inputs, INT4 and NVFP4), the identity
 * Hessian giving round-to-nearest exactly, thread independence, and errors. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algo/gptq.h"
#include "formats/encode.h"
#include "formats/floatconv.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"

#define R 24
#define C 192
#define G 64

static void *load(const char *name, size_t want)
{
    return nq_test_load_fixture("gptq", name, want);
}

static void test_int4_matches_reference(void **state)
{
    (void)state;
    nq_test_gptq_case ref;
    nq_test_gptq_case_load(&ref, "gptq", R, C, G);
    int32_t qw[C / 8 * R], qz[C / G * R / 8], gi[C];
    uint16_t sc[C / G * R];
    nq_gptq_stats st;
    nq_error err = {0};
    assert_int_equal(
        nq_gptq_int4(ref.w, R, C, ref.h, G, false, 0.01, 2, qw, qz, sc, gi, &st, &err), 0);
    assert_int_equal(st.dead_columns, 1);
    assert_memory_equal(sc, ref.scales, sizeof sc);
    nq_test_gptq_codes_match(qw, &ref);
    nq_test_gptq_case_free(&ref);
}

/* ||(W - Q) X^T||^2 through H = X^T X: trace((W-Q) H (W-Q)^T). */
static double output_err(const float *w, const float *q, const double *h, int rows, int cols)
{
    double total = 0.0;
    double *d = malloc((size_t)cols * sizeof *d);
    for (int r = 0; r < rows; r++) {
        for (int k = 0; k < cols; k++)
            d[k] = (double)w[r * cols + k] - q[r * cols + k];
        for (int a = 0; a < cols; a++) {
            double s = 0.0;
            for (int b = 0; b < cols; b++)
                s += h[a * cols + b] * d[b];
            total += d[a] * s;
        }
    }
    free(d);
    return total;
}

static void test_beats_round_to_nearest(void **state)
{
    (void)state;
    float *w = load("w.f32", sizeof(float) * R * C);
    double *h = load("h.f64", sizeof(double) * C * C);
    float *q = malloc(sizeof(float) * R * C);
    nq_error err = {0};
    nq_gptq_stats st;
    nq_encode_stats es;
    /* INT4 */
    int32_t qw[C / 8 * R], qz[C / G * R / 8], gi[C];
    uint16_t sc[C / G * R];
    assert_int_equal(nq_encode_int4(w, R, C, G, false, 1, qw, qz, sc, gi, &es, &err), 0);
    assert_int_equal(nq_int4_unpack_gptq(qw, qz, sc, gi, R, C, G, q, &err), 0);
    double rtn = output_err(w, q, h, R, C);
    assert_int_equal(nq_gptq_int4(w, R, C, h, G, false, 0.01, 1, qw, qz, sc, gi, &st, &err), 0);
    assert_int_equal(nq_int4_unpack_gptq(qw, qz, sc, gi, R, C, G, q, &err), 0);
    double gptq = output_err(w, q, h, R, C);
    assert_int_equal(nq_gptq_int4(w, R, C, h, G, true, 0.01, 1, qw, qz, sc, gi, &st, &err), 0);
    assert_int_equal(nq_int4_unpack_gptq(qw, qz, sc, gi, R, C, G, q, &err), 0);
    double gptq_mse = output_err(w, q, h, R, C);
    print_message("int4 output error: rtn %.4g, gptq %.4g (%.0f%% less), gptq+mse %.4g\n", rtn,
                  gptq, 100 * (1 - gptq / rtn), gptq_mse);
    assert_true(gptq < 0.8 * rtn);
    assert_true(gptq_mse < 1.1 * gptq);
    /* NVFP4 */
    uint8_t packed[R * C / 2], bs[R * C / 16];
    float gs;
    assert_int_equal(nq_encode_nvfp4(w, R, C, false, 1, packed, bs, &gs, &es, &err), 0);
    for (int r = 0; r < R; r++)
        nq_nvfp4_decode_row(packed + r * C / 2, bs + r * C / 16, gs, C, q + r * C);
    rtn = output_err(w, q, h, R, C);
    assert_int_equal(nq_gptq_nvfp4(w, R, C, h, false, 0.01, 1, 0.0f, packed, bs, &gs, &st, &err), 0);
    for (int r = 0; r < R; r++)
        nq_nvfp4_decode_row(packed + r * C / 2, bs + r * C / 16, gs, C, q + r * C);
    gptq = output_err(w, q, h, R, C);
    print_message("nvfp4 output error: rtn %.4g, gptq %.4g (%.0f%% less)\n", rtn, gptq,
                  100 * (1 - gptq / rtn));
    assert_true(gptq < 0.8 * rtn);
    free(w), free(h), free(q);
}

/* With H = I nothing propagates (U is diagonal): GPTQ is round-to-nearest,
 * byte for byte, and the same for 1 and 3 threads. */
static void test_identity_hessian_is_rtn(void **state)
{
    (void)state;
    float *w = load("w.f32", sizeof(float) * R * C);
    double *h = calloc(C * C, sizeof *h);
    for (int i = 0; i < C; i++)
        h[i * C + i] = 1.0;
    nq_error err = {0};
    nq_gptq_stats st;
    nq_encode_stats es;
    uint8_t p1[R * C / 2], b1[R * C / 16], p2[R * C / 2], b2[R * C / 16], p3[R * C / 2],
        b3[R * C / 16];
    float g1, g2, g3;
    assert_int_equal(nq_encode_nvfp4(w, R, C, true, 1, p1, b1, &g1, &es, &err), 0);
    assert_int_equal(nq_gptq_nvfp4(w, R, C, h, true, 0.01, 1, 0.0f, p2, b2, &g2, &st, &err), 0);
    assert_int_equal(nq_gptq_nvfp4(w, R, C, h, true, 0.01, 3, 0.0f, p3, b3, &g3, &st, &err), 0);
    assert_true(g1 == g2 && g2 == g3);
    assert_memory_equal(p1, p2, sizeof p1);
    assert_memory_equal(b1, b2, sizeof b1);
    assert_memory_equal(p2, p3, sizeof p2);
    assert_memory_equal(b2, b3, sizeof b2);
    int32_t qa[C / 8 * R], za[C / G * R / 8], ga[C], qb[C / 8 * R], zb[C / G * R / 8], gb[C];
    uint16_t sa[C / G * R], sb[C / G * R];
    assert_int_equal(nq_encode_int4(w, R, C, G, false, 1, qa, za, sa, ga, &es, &err), 0);
    assert_int_equal(nq_gptq_int4(w, R, C, h, G, false, 0.01, 2, qb, zb, sb, gb, &st, &err), 0);
    assert_memory_equal(qa, qb, sizeof qa);
    assert_memory_equal(sa, sb, sizeof sa);
    free(w), free(h);
}

static void test_thread_independence_and_errors(void **state)
{
    (void)state;
    float *w = load("w.f32", sizeof(float) * R * C);
    double *h = load("h.f64", sizeof(double) * C * C);
    nq_error err = {0};
    nq_gptq_stats st;
    int32_t q1[C / 8 * R], z1[C / G * R / 8], g1[C], q2[C / 8 * R], z2[C / G * R / 8], g2[C];
    uint16_t s1[C / G * R], s2[C / G * R];
    assert_int_equal(nq_gptq_int4(w, R, C, h, G, true, 0.01, 1, q1, z1, s1, g1, &st, &err), 0);
    assert_int_equal(nq_gptq_int4(w, R, C, h, G, true, 0.01, 2, q2, z2, s2, g2, &st, &err), 0);
    assert_memory_equal(q1, q2, sizeof q1);
    assert_memory_equal(s1, s2, sizeof s1);
    /* an indefinite Hessian: more dampening, reported */
    double *bad = malloc(sizeof(double) * C * C);
    memcpy(bad, h, sizeof(double) * C * C);
    bad[0 * C + 1] = bad[1 * C + 0] = 10.0 * (bad[0] + bad[C + 1]);
    assert_int_equal(nq_gptq_int4(w, R, C, bad, G, false, 0.01, 1, q1, z1, s1, g1, &st, &err), 0);
    assert_true(st.damp > 0.01);
    /* a NaN on the diagonal, and a group that does not fit */
    bad[5 * C + 5] = NAN;
    assert_int_equal(nq_gptq_int4(w, R, C, bad, G, false, 0.01, 1, q1, z1, s1, g1, &st, &err), -1);
    assert_non_null(strstr(err.msg, "Hessian diagonal 5"));
    assert_int_equal(nq_gptq_int4(w, R, C, h, 48, false, 0.01, 1, q1, z1, s1, g1, &st, &err), -1);
    free(w), free(h), free(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int4_matches_reference),
        cmocka_unit_test(test_beats_round_to_nearest),
        cmocka_unit_test(test_identity_hessian_is_rtn),
        cmocka_unit_test(test_thread_independence_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
