/* nemoq eval --decode: token-by-token scoring carrying the model's state
 * equals the window protocol when nothing is emulated (the window numbers
 * are themselves checked against transformers in test_eval), the stored
 * SSM state changes what the next steps compute, and results do not depend
 * on the thread count. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval/decode.h"
#include "eval/loaded.h"
#include "eval/perplexity.h"
#include "tok/tokenizer.h"

#define TINY "models/tiny-nemotron-h"

static int32_t *calib_ids(size_t *n)
{
    nq_error err = {0};
    nq_tokenizer *tok = nq_tokenizer_load(nq_test_path(TINY "/tokenizer.json"), &err);
    assert_non_null(tok);
    size_t len;
    unsigned char *text = nq_test_read_file(nq_test_path("tests/fixtures/calib.txt"), &len);
    assert_non_null(text);
    /* a few windows' worth is plenty */
    len = len > 20000 ? 20000 : len;
    int32_t *ids = NULL;
    assert_int_equal(nq_tokenizer_encode(tok, (const char *)text, len, false, &ids, n, &err), 0);
    free(text);
    nq_tokenizer_free(tok);
    return ids;
}

static void free_results(nq_decode_result *r, int n)
{
    for (int k = 0; k < n; k++)
        nq_decode_result_free(&r[k]);
}

static void test_decode_equals_window(void **state)
{
    (void)state;
    size_t n;
    int32_t *ids = calib_ids(&n);
    nq_error err = {0};
    nq_loaded_model m, b;
    assert_int_equal(nq_loaded_open(nq_test_path(TINY), 2, &m, &err), 0);
    assert_int_equal(nq_loaded_open(nq_test_path(TINY), 2, &b, &err), 0);
    nq_eval_options wopt = {.ctx = 24, .windows = 2, .skip = 1};
    nq_eval_result w;
    assert_int_equal(nq_eval_perplexity(m.model, NULL, ids, n, &wopt, &w, &err), 0);
    const int prefills[] = {1, 7, 23};
    for (int i = 0; i < 3; i++) {
        nq_decode_options d = {.ctx = 24, .windows = 2, .skip = 1, .prefill = prefills[i],
                               .n_modes = 1, .modes = {NQ_SSM_CACHE_FP32},
                               .philox_rounds = 10, .bucket = 5};
        nq_decode_result r[1];
        if (nq_eval_decode(m.model, b.model, ids, n, &d, r, &err) != 0)
            fail_msg("%s", err.msg);
        assert_int_equal(r[0].total.predictions, w.predictions);
        if (fabs(r[0].total.nll - w.nll) > 2e-6)
            fail_msg("prefill %d: nll %.9f, window mode %.9f", prefills[i], r[0].total.nll, w.nll);
        /* the base runs with an f32 state too: same model, KL ~ 0 */
        assert_true(r[0].total.kl < 1e-9 && r[0].total.kl > -1e-9);
        assert_true(r[0].total.top1 == 1.0);
        /* buckets: ceil(23 / 5) = 5, the last holding 3 positions x 2 windows */
        assert_int_equal(r[0].n_buckets, 5);
        assert_int_equal(r[0].count[0], 10);
        assert_int_equal(r[0].count[4], 6);
        double sum = 0.0;
        for (int k = 0; k < 5; k++)
            sum += r[0].nll[k] * (double)r[0].count[k];
        assert_true(fabs(sum / (double)r[0].total.predictions - r[0].total.nll) < 1e-12);
        free_results(r, 1);
    }
    /* bad prefill: a clear error */
    nq_decode_options bad = {.ctx = 24, .windows = 1, .prefill = 24, .n_modes = 1,
                             .philox_rounds = 10, .bucket = 4};
    nq_decode_result r[1];
    assert_int_equal(nq_eval_decode(m.model, NULL, ids, n, &bad, r, &err), -1);
    assert_non_null(strstr(err.msg, "--prefill 24"));
    free_results(r, 1);
    nq_loaded_close(&m);
    nq_loaded_close(&b);
    free(ids);
}

/* fp16 and fp16-sr states move the numbers a little (not at all would mean
 * the rounding is not applied); fp16-sr repeats for a seed at any thread
 * count and changes with the seed. */
static void test_rounded_state(void **state)
{
    (void)state;
    size_t n;
    int32_t *ids = calib_ids(&n);
    nq_error err = {0};
    nq_loaded_model m1, m3, b;
    assert_int_equal(nq_loaded_open(nq_test_path(TINY), 1, &m1, &err), 0);
    assert_int_equal(nq_loaded_open(nq_test_path(TINY), 3, &m3, &err), 0);
    assert_int_equal(nq_loaded_open(nq_test_path(TINY), 2, &b, &err), 0);
    nq_decode_options d = {.ctx = 32, .windows = 1, .prefill = 4, .n_modes = 3,
                           .modes = {NQ_SSM_CACHE_FP32, NQ_SSM_CACHE_FP16, NQ_SSM_CACHE_FP16_SR},
                           .philox_rounds = 5, .seed = 42, .bucket = 8};
    nq_decode_result r1[3], r3[3], rs[3];
    assert_int_equal(nq_eval_decode(m1.model, b.model, ids, n, &d, r1, &err), 0);
    assert_int_equal(nq_eval_decode(m3.model, b.model, ids, n, &d, r3, &err), 0);
    for (int k = 0; k < 3; k++) {
        assert_true(r1[k].total.nll == r3[k].total.nll);
        assert_true(r1[k].total.kl == r3[k].total.kl);
        assert_memory_equal(r1[k].kl, r3[k].kl, 4 * sizeof(double));
    }
    assert_true(r1[0].total.kl < 1e-12);
    for (int k = 1; k < 3; k++) {
        if (!(r1[k].total.kl > 1e-12 && r1[k].total.kl < 1e-3))
            fail_msg("%s: KL %g", nq_ssm_cache_name(d.modes[k]), r1[k].total.kl);
        assert_true(r1[k].total.nll != r1[0].total.nll);
    }
    d.seed = 43;
    assert_int_equal(nq_eval_decode(m1.model, b.model, ids, n, &d, rs, &err), 0);
    assert_true(rs[1].total.kl == r1[1].total.kl); /* fp16 (RNE) has no seed */
    assert_true(rs[2].total.kl != r1[2].total.kl);
    free_results(r1, 3);
    free_results(r3, 3);
    free_results(rs, 3);
    nq_loaded_close(&m1);
    nq_loaded_close(&m3);
    nq_loaded_close(&b);
    free(ids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_equals_window),
        cmocka_unit_test(test_rounded_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
