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

static void test_matches_reference(void **state)
{
    (void)state;
    nq_test_gptq_case ref;
    nq_test_gptq_case_load(&ref, "gptq_actorder", R, C, G);
    float *w = ref.w;
    double *h = ref.h;
    int32_t qw[C / 8 * R], qz[C / G * R / 8], gi[C];
    uint16_t sc[C / G * R];
    nq_gptq_stats st;
    nq_error err = {0};
    assert_int_equal(
        nq_gptq_int4_actorder(w, R, C, h, G, false, 0.01, 2, qw, qz, sc, gi, &st, &err), 0);
    assert_int_equal(st.dead_columns, 1);
    assert_memory_equal(sc, ref.scales, sizeof sc);
    for (int k = 0; k < C; k++)
        assert_int_equal(gi[k], k / G);
    for (int k = 0; k < C / G * R / 8; k++)
        assert_int_equal((uint32_t)qz[k], 0x77777777u);
    nq_test_gptq_codes_match(qw, &ref);

    /* any thread count: the same bytes; and not the in-order result */
    int32_t qw1[C / 8 * R], qz1[C / G * R / 8], gi1[C];
    uint16_t sc1[C / G * R];
    assert_int_equal(
        nq_gptq_int4_actorder(w, R, C, h, G, false, 0.01, 1, qw1, qz1, sc1, gi1, &st, &err), 0);
    assert_memory_equal(qw, qw1, sizeof qw);
    assert_int_equal(nq_gptq_int4(w, R, C, h, G, false, 0.01, 1, qw1, qz1, sc1, gi1, &st, &err),
                     0);
    assert_true(memcmp(qw, qw1, sizeof qw) != 0);
    nq_test_gptq_case_free(&ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
