/* The small checks behind "checkpoints that do not lie" (issue 10):
 * the exponent-bit NaN/Inf test used on every tensor nemoq writes, against
 * hand-built values in every float dtype, and the exclude-list matcher,
 * against hand-worked vLLM decisions (substring, then fnmatch). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "io/safetensors.h"
#include "model/roles.h"

static nq_tensor tensor_of(const void *data, nq_dtype dt, int64_t rows, int64_t cols)
{
    nq_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "x";
    t.dtype = dt;
    t.ndim = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.numel = (uint64_t)(rows * cols);
    t.nbytes = t.numel * nq_dtype_size(dt);
    t.data = data;
    return t;
}

/* A non-finite element at `at` (and none before) in a tensor of n elements
 * spanning several 4096-element blocks, every dtype: the message names it. */
static void test_finite_every_dtype(void **state)
{
    (void)state;
    enum { N = 10000 };
    static unsigned char buf[N * 8 + 1];
    const struct {
        nq_dtype dt;
        const char *finite_max, *inf, *nan; /* little-endian bytes */
        size_t size;
    } cases[] = {
        {NQ_BF16, "\x7f\x7f", "\x80\x7f", "\xc0\x7f", 2},
        {NQ_F16, "\xff\x7b", "\x00\x7c", "\x00\x7e", 2},
        {NQ_F32, "\xff\xff\x7f\x7f", "\x00\x00\x80\x7f", "\x00\x00\xc0\x7f", 4},
        {NQ_F64, "\xff\xff\xff\xff\xff\xff\xef\x7f", "\x00\x00\x00\x00\x00\x00\xf0\x7f",
         "\x00\x00\x00\x00\x00\x00\xf8\x7f", 8},
        {NQ_F8_E4M3, "\x7e", NULL, "\x7f", 1},
        {NQ_F8_E5M2, "\x7b", "\x7c", "\x7e", 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t es = cases[c].size;
        /* every element the largest finite magnitude, negative every other */
        for (size_t i = 0; i < N; i++) {
            memcpy(buf + 1 + i * es, cases[c].finite_max, es);
            if (i % 2)
                buf[1 + i * es + es - 1] |= 0x80;
        }
        /* +1: unaligned, as a mapping can be */
        nq_tensor t = tensor_of(buf + 1, cases[c].dt, 100, 100);
        nq_error err = {0};
        assert_int_equal(nq_tensor_check_finite(&t, 0, N, &err), 0);
        const char *bad[2] = {cases[c].inf, cases[c].nan};
        for (int k = 0; k < 2; k++) {
            if (!bad[k])
                continue;
            size_t at = 8191; /* the last element of the second block */
            memcpy(buf + 1 + at * es, bad[k], es);
            buf[1 + at * es + es - 1] |= 0x80; /* the sign must not matter */
            nq_error_clear(&err);
            assert_int_equal(nq_tensor_check_finite(&t, 0, N, &err), -1);
            char want[128];
            snprintf(want, sizeof want, "tensor 'x': element 8191 is %s (row 81, column 91)",
                     k ? "NaN" : "infinite");
            assert_string_equal(err.msg, want);
            /* a range that stops before it passes; one starting after it too */
            assert_int_equal(nq_tensor_check_finite(&t, 0, at, &err), 0);
            assert_int_equal(nq_tensor_check_finite(&t, at + 1, N - at - 1, &err), 0);
            memcpy(buf + 1 + at * es, cases[c].finite_max, es);
        }
    }
    /* integer dtypes carry no NaN */
    memset(buf, 0xff, sizeof buf);
    nq_tensor t = tensor_of(buf, NQ_I32, 10, 10);
    nq_error err = {0};
    assert_int_equal(nq_tensor_check_finite(&t, 0, 100, &err), 0);
}

static void test_exclude_matches_like_vllm(void **state)
{
    (void)state;
    const char *m1 = "backbone.layers.1.mixer.in_proj";
    const char *m12 = "backbone.layers.12.mixer.experts.3.up_proj";
    /* exact */
    assert_true(nq_exclude_matches(m1, m1));
    /* substring: an entry inside the name */
    assert_true(nq_exclude_matches("layers.1.mixer", m1));
    assert_true(nq_exclude_matches("experts.3.", m12));
    assert_true(nq_exclude_matches("lm_head", "lm_head"));
    assert_false(nq_exclude_matches("experts.3.", "backbone.layers.12.mixer.experts.31.up_proj"));
    /* prefix wildcards cross dots and cover layers 1 and 10-19 */
    assert_true(nq_exclude_matches("backbone.layers.1*", m1));
    assert_true(nq_exclude_matches("backbone.layers.1*", m12));
    assert_false(nq_exclude_matches("backbone.layers.1*", "backbone.layers.2.mixer.in_proj"));
    assert_true(nq_exclude_matches("*.in_proj", m1));
    assert_true(nq_exclude_matches("backbone.layers.*.mixer.experts.*", m12));
    /* fnmatch is over the whole name: a pattern must match to the end */
    assert_false(nq_exclude_matches("backbone.layers.*.mixer", m1));
    /* "" is a substring of everything (vLLM then skips every layer) */
    assert_true(nq_exclude_matches("", m1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finite_every_dtype),
        cmocka_unit_test(test_exclude_matches_like_vllm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
