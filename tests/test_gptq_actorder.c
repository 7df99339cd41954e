/* INT4 GPTQ with act-order and static groups (nq_gptq_int4_actorder):
 * codes and scales against an independent numpy implementation of
 * AutoGPTQ's fasterquant(actorder=True, static_groups=True)
 * (tests/gen/gen_gptq_actorder_reference.py, fixture
 * tests/fixtures/gptq_actorder), the plain layout (g_idx = i / group),
 * thread independence, and that it differs from the in-order GPTQ. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algo/gptq.h"

#define R 24
#define C 192
#define G 64

static void *load(const char *name, size_t want)
{
    return nq_test_load_fixture("gptq_actorder", name, want);
}

static void test_matches_reference(void **state)
{
    (void)state;
    float *w = load("w.f32", sizeof(float) * R * C);
    double *h = load("h.f64", sizeof(double) * C * C);
    uint8_t *codes = load("codes.u8", R * C);
    uint16_t *scales = load("scales.f16", 2 * (C / G) * R);
    int32_t qw[C / 8 * R], qz[C / G * R / 8], gi[C];
    uint16_t sc[C / G * R];
    nq_gptq_stats st;
    nq_error err = {0};
    assert_int_equal(
        nq_gptq_int4_actorder(w, R, C, h, G, false, 0.01, 2, qw, qz, sc, gi, &st, &err), 0);
    assert_int_equal(st.dead_columns, 1);
    assert_memory_equal(sc, scales, sizeof sc);
    for (int k = 0; k < C; k++)
        assert_int_equal(gi[k], k / G);
    for (int k = 0; k < C / G * R / 8; k++)
        assert_int_equal((uint32_t)qz[k], 0x77777777u);
    int diff = nq_test_int4_codes_differing(qw, codes, R, C);
    /* float64 on both sides; only a rounding tie decided differently by the
     * last bit of a BLAS sum may flip a code */
    if (diff > 2)
        fail_msg("%d of %d codes differ from the reference", diff, R * C);

    /* any thread count: the same bytes; and not the in-order result */
    int32_t qw1[C / 8 * R], qz1[C / G * R / 8], gi1[C];
    uint16_t sc1[C / G * R];
    assert_int_equal(
        nq_gptq_int4_actorder(w, R, C, h, G, false, 0.01, 1, qw1, qz1, sc1, gi1, &st, &err), 0);
    assert_memory_equal(qw, qw1, sizeof qw);
    assert_int_equal(nq_gptq_int4(w, R, C, h, G, false, 0.01, 1, qw1, qz1, sc1, gi1, &st, &err),
                     0);
    assert_true(memcmp(qw, qw1, sizeof qw) != 0);
    free(w), free(h), free(codes), free(scales);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
