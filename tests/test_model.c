/* The forward pass against transformers' own outputs.
 *
 * References (see tests/fixtures/PROVENANCE.md and
 * tests/fixtures/dense/PROVENANCE.md): transformers 5.17 NemotronHForCausalLM,
 * float32 compute from the BF16 weights, pure-PyTorch Mamba path.
 * - models/tiny-nemotron-h (trained, pattern MEM*EMEM*EME): logits of four
 *   64-token sequences, hidden states of sequence 0;
 * - tests/fixtures/dense (random, pattern M-*EM*-E: dense MLP layers,
 *   head_dim != hidden/heads, 3 Mamba groups, conv kernel 3, SSD chunk 16 <
 *   sequence length, grouped routing n_group 3 / topk_group 2, dt clamp
 *   at time_step_min 0.01 active): logits of 3 sequences (40, 57, 2
 *   tokens), hidden states of the 57-token one. */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward.h"

/* Logits: the BF16 weights are exact in f32, so the only differences are
 * summation order (BLAS vs torch) and the sequential scan vs the chunked
 * SSD algorithm: ~1e-5 on logits of magnitude ~10-30. */
#define LOGIT_TOL 2e-3
/* Hidden states: residual stream values up to ~100 in the tiny model;
 * relative to max(1, |ref|). */
#define HIDDEN_TOL 1e-4
#define STEP_TOL 1e-4

typedef struct {
    nq_checkpoint *ck;
    nq_model_config cfg;
    nq_model *m;
    int nseq;
    int32_t *ids[8];
    int len[8];
} fixture;

static void open_fixture(fixture *f, const char *model_dir, const char *ref_json)
{
    nq_error err = {0};
    memset(f, 0, sizeof *f);
    f->ck = nq_checkpoint_open(nq_test_path(model_dir), &err);
    if (!f->ck)
        fail_msg("%s", err.msg);
    if (nq_model_config_load(nq_test_path(model_dir), &f->cfg, &err) != 0)
        fail_msg("%s", err.msg);
    f->m = nq_model_open(f->ck, &f->cfg, &err);
    if (!f->m)
        fail_msg("%s", err.msg);
    json_error_t jerr;
    json_t *root = json_load_file(nq_test_path(ref_json), 0, &jerr);
    assert_non_null(root);
    json_t *seqs = json_object_get(root, "seqs");
    f->nseq = (int)json_array_size(seqs);
    assert_true(f->nseq > 0 && f->nseq <= 8);
    for (int s = 0; s < f->nseq; s++) {
        json_t *a = json_array_get(seqs, (size_t)s);
        f->len[s] = (int)json_array_size(a);
        f->ids[s] = malloc((size_t)f->len[s] * sizeof(int32_t));
        for (int t = 0; t < f->len[s]; t++)
            f->ids[s][t] = (int32_t)json_integer_value(json_array_get(a, (size_t)t));
    }
    json_decref(root);
}

static void close_fixture(fixture *f)
{
    for (int s = 0; s < f->nseq; s++)
        free(f->ids[s]);
    nq_model_close(f->m);
    nq_checkpoint_close(f->ck);
}

static float *read_f32(const char *rel, size_t expect_count)
{
    size_t len = 0;
    unsigned char *b = nq_test_read_file(nq_test_path(rel), &len);
    assert_non_null(b);
    assert_int_equal(len, expect_count * sizeof(float));
    return (float *)b;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) /* NaN propagates as a failure */
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static double max_rel_diff(const float *a, const float *ref, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double scale = fabs((double)ref[i]) > 1.0 ? fabs((double)ref[i]) : 1.0;
        double d = fabs((double)a[i] - ref[i]) / scale;
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* Checks every sequence's logits against the reference file; returns the
 * worst error. */
static double check_logits(fixture *f, const char *ref_file)
{
    int V = f->cfg.vocab_size;
    size_t total = 0;
    for (int s = 0; s < f->nseq; s++)
        total += (size_t)f->len[s] * V;
    float *ref = read_f32(ref_file, total);
    double worst = 0.0;
    size_t off = 0;
    nq_error err = {0};
    for (int s = 0; s < f->nseq; s++) {
        float *logits = malloc((size_t)f->len[s] * V * sizeof *logits);
        if (nq_model_forward(f->m, f->ids[s], f->len[s], logits, NULL, &err) != 0)
            fail_msg("%s", err.msg);
        double d = max_abs_diff(logits, ref + off, (size_t)f->len[s] * V);
        printf("  %s seq %d (%d tokens): max |logit - ref| = %.3g\n", ref_file, s, f->len[s], d);
        if (d > worst)
            worst = d;
        off += (size_t)f->len[s] * V;
        free(logits);
    }
    free(ref);
    return worst;
}

static double check_hidden(fixture *f, int seq, const char *ref_file)
{
    int L = f->cfg.num_layers, H = f->cfg.hidden_size, n = f->len[seq];
    size_t plane = (size_t)n * H;
    float *ref = read_f32(ref_file, (size_t)(L + 1) * plane);
    float *hid = malloc((size_t)(L + 1) * plane * sizeof *hid);
    nq_error err = {0};
    if (nq_model_forward(f->m, f->ids[seq], n, NULL, hid, &err) != 0)
        fail_msg("%s", err.msg);
    double worst = 0.0;
    for (int l = 0; l <= L; l++) {
        double d = max_rel_diff(hid + l * plane, ref + l * plane, plane);
        printf("  %s entry %2d (%s): max rel err %.3g\n", ref_file, l,
               l == 0 ? "embeddings" : l == L ? "after norm_f" : (char[]){f->cfg.pattern[l - 1], 0},
               d);
        if (d > worst)
            worst = d;
    }
    free(ref);
    free(hid);
    return worst;
}

static void test_tiny_logits(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, "models/tiny-nemotron-h", "tests/fixtures/tiny_ref.json");
    assert_int_equal(f.nseq, 4);
    assert_float_equal(nq_model_dt_min(f.m), 0.001f, 0.0f);
    double worst = check_logits(&f, "tests/fixtures/tiny_logits_4x64.f32");
    assert_true(worst <= LOGIT_TOL);
    worst = check_hidden(&f, 0, "tests/fixtures/tiny_hidden_seq0.f32");
    assert_true(worst <= HIDDEN_TOL);
    close_fixture(&f);
}

static void test_dense_logits(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, "tests/fixtures/dense", "tests/fixtures/dense/dense_ref.json");
    assert_string_equal(f.cfg.pattern, "M-*EM*-E");
    assert_float_equal(nq_model_dt_min(f.m), 0.01f, 0.0f);
    double worst = check_logits(&f, "tests/fixtures/dense/dense_logits.f32");
    assert_true(worst <= LOGIT_TOL);
    worst = check_hidden(&f, 1, "tests/fixtures/dense/dense_hidden.f32");
    assert_true(worst <= HIDDEN_TOL);
    close_fixture(&f);
}

/* The dense reference was drawn so that softplus(dt + dt_bias) falls below
 * time_step_min for some heads: without the clamp the logits move far
 * beyond the tolerance, so the match above proves the clamp is right. */
static void test_dense_dt_clamp_is_exercised(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, "tests/fixtures/dense", "tests/fixtures/dense/dense_ref.json");
    nq_model_set_dt_min(f.m, 0.0f);
    int V = f.cfg.vocab_size, n = f.len[0];
    float *ref = read_f32("tests/fixtures/dense/dense_logits.f32",
                          (size_t)(f.len[0] + f.len[1] + f.len[2]) * V);
    float *logits = malloc((size_t)n * V * sizeof *logits);
    nq_error err = {0};
    assert_int_equal(nq_model_forward(f.m, f.ids[0], n, logits, NULL, &err), 0);
    double d = max_abs_diff(logits, ref, (size_t)n * V);
    printf("  without the dt clamp: max |logit - ref| = %.3g\n", d);
    assert_true(d > 100 * LOGIT_TOL);
    free(ref);
    free(logits);
    close_fixture(&f);
}

/* Feeds a sequence in pieces (sizes[] repeating) through one state and
 * compares with the full forward. */
static double step_vs_full(fixture *f, const int32_t *ids, int n, const int *sizes, int nsizes)
{
    int V = f->cfg.vocab_size;
    float *full = malloc((size_t)n * V * sizeof *full);
    float *step = malloc((size_t)n * V * sizeof *step);
    nq_error err = {0};
    if (nq_model_forward(f->m, ids, n, full, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    nq_state *st = nq_state_new(f->m, &err);
    assert_non_null(st);
    int done = 0;
    for (int i = 0; done < n; i++) {
        int k = sizes[i % nsizes];
        if (k > n - done)
            k = n - done;
        if (nq_model_step(f->m, st, ids + done, k, step + (size_t)done * V, &err) != 0)
            fail_msg("%s", err.msg);
        done += k;
        assert_int_equal(nq_state_tokens(st), done);
    }
    double d = max_abs_diff(step, full, (size_t)n * V);
    nq_state_free(st);
    free(full);
    free(step);
    return d;
}

static void test_tiny_stepwise_decoding(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, "models/tiny-nemotron-h", "tests/fixtures/tiny_ref.json");
    nq_model_set_keep_weights(f.m, true);
    static const int one[] = {1}, mixed[] = {17, 1, 2, 30};
    double d1 = step_vs_full(&f, f.ids[0], f.len[0], one, 1);
    double d2 = step_vs_full(&f, f.ids[1], f.len[1], mixed, 4);
    printf("  tiny: one token at a time %.3g, pieces 17/1/2/30 %.3g\n", d1, d2);
    assert_true(d1 <= STEP_TOL && d2 <= STEP_TOL);
    close_fixture(&f);
}

static void test_dense_stepwise_decoding(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, "tests/fixtures/dense", "tests/fixtures/dense/dense_ref.json");
    nq_model_set_keep_weights(f.m, true);
    /* 97 tokens: the KV cache grows past its first allocation (64). */
    int n = f.len[0] + f.len[1];
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    memcpy(ids, f.ids[0], (size_t)f.len[0] * sizeof *ids);
    memcpy(ids + f.len[0], f.ids[1], (size_t)f.len[1] * sizeof *ids);
    static const int one[] = {1}, mixed[] = {2, 1, 33};
    double d1 = step_vs_full(&f, ids, n, one, 1);
    double d2 = step_vs_full(&f, ids, n, mixed, 3);
    printf("  dense: one token at a time %.3g, pieces 2/1/33 %.3g\n", d1, d2);
    assert_true(d1 <= STEP_TOL && d2 <= STEP_TOL);
    free(ids);
    close_fixture(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_logits),
        cmocka_unit_test(test_dense_logits),
        cmocka_unit_test(test_dense_dt_clamp_is_exercised),
        cmocka_unit_test(test_tiny_stepwise_decoding),
        cmocka_unit_test(test_dense_stepwise_decoding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
