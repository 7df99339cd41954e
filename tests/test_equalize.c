/* --equalize: the scale search against an independent numpy implementation
 * (tests/gen/gen_equalize_reference.py, fixture tests/fixtures/equalize),
 * the served (W4A4) objective's search against another
 * (tests/gen/gen_equalize_served_reference.py, numpy + torch's E4M3 cast,
 * fixture tests/fixtures/equalize_served),
 * and the pairs folded into the bundled model with arbitrary scales leaving
 * its float logits unchanged (to float32 rounding), also after the kept
 * tensors (norms, router) are rounded to BF16 as the checkpoint stores
 * them, with the size of that rounding's effect bounded. */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algo/equalize.h"
#include "export/equalize.h"
#include "formats/encode.h"
#include "formats/floatconv.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"
#include "model/config.h"
#include "model/forward.h"

static void *load(const char *name, size_t want)
{
    return nq_test_load_fixture("equalize", name, want);
}

static int qdq_int4(void *ctx, const float *w, int64_t rows, int64_t cols, float *out,
                    nq_error *err)
{
    int group = *(int *)ctx;
    int32_t *qw = malloc((size_t)(cols / 8 * rows) * 4), *qz = malloc((size_t)(cols / group * rows / 8) * 4);
    int32_t *gi = malloc((size_t)cols * 4);
    uint16_t *sc = malloc((size_t)(cols / group * rows) * 2);
    nq_encode_stats st;
    int rc = nq_encode_int4(w, rows, cols, group, false, 1, qw, qz, sc, gi, &st, err);
    if (rc == 0)
        rc = nq_int4_unpack_gptq(qw, qz, sc, gi, rows, cols, group, out, err);
    free(qw), free(qz), free(gi), free(sc);
    return rc;
}

static void test_search_matches_reference(void **state)
{
    (void)state;
    enum { R1 = 24, R2 = 16, C = 64 };
    int group = 32;
    float *w1 = load("w1.f32", sizeof(float) * R1 * C), *w2 = load("w2.f32", sizeof(float) * R2 * C);
    double *h1 = load("h1.f64", sizeof(double) * C * C), *h2 = load("h2.f64", sizeof(double) * C * C);
    double *rms = load("rms.f64", sizeof(double) * C);
    float *ref = load("c.f32", sizeof(float) * C);
    json_t *cs = json_load_file(nq_test_path("tests/fixtures/equalize/case.json"), 0, NULL);
    assert_non_null(cs);
    nq_eq_consumer cons[2] = {
        {.w = w1, .rows = R1, .hessian = h1, .qdq = qdq_int4, .qdq_ctx = &group},
        {.w = w2, .rows = R2, .hessian = h2, .qdq = qdq_int4, .qdq_ctx = &group},
    };
    float c[C];
    nq_eq_result res;
    nq_error err = {0};
    assert_int_equal(nq_equalize_search(cons, 2, C, rms, 10, c, &res, &err), 0);
    assert_true(res.alpha > 0); /* the fixture's outlier channels call for scaling */
    assert_float_equal(res.alpha, json_real_value(json_object_get(cs, "alpha")), 1e-12);
    double eb = json_real_value(json_object_get(cs, "err_best"));
    double ei = json_real_value(json_object_get(cs, "err_identity"));
    assert_float_equal(res.err_best, eb, 1e-9 * eb);
    assert_float_equal(res.err_identity, ei, 1e-9 * ei);
    assert_true(res.err_best < 0.5 * res.err_identity);
    for (int k = 0; k < C; k++)
        assert_float_equal(c[k], ref[k], 1e-6 * ref[k]);
    /* alpha = 0 is the identity */
    nq_equalize_scales(rms, C, 0.0, c);
    for (int k = 0; k < C; k++)
        assert_float_equal(c[k], 1.0f, 0.0f);
    json_decref(cs);
    free(w1), free(w2), free(h1), free(h2), free(rms), free(ref);
}

/* ---- float invariance on the bundled model ------------------------------ */

typedef struct table {
    const nq_checkpoint *ck;
    char (*name)[256];
    float **w;
    int n, cap;
} table;

static float *table_get(table *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->name[i], name) == 0)
            return t->w[i];
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->name = realloc(t->name, (size_t)t->cap * sizeof *t->name);
        t->w = realloc(t->w, (size_t)t->cap * sizeof *t->w);
    }
    nq_error err = {0};
    const nq_tensor *x = nq_checkpoint_find(t->ck, name);
    assert_non_null(x);
    snprintf(t->name[t->n], sizeof *t->name, "%s", name);
    t->w[t->n] = nq_tensor_load_f32(x, true, &err);
    assert_non_null(t->w[t->n]);
    return t->w[t->n++];
}

static int table_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    table *t = ctx;
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->name[i], req->name) == 0) {
            memcpy(out, t->w[i], req->numel * sizeof *out);
            return 0;
        }
    return nq_checkpoint_weight_fetch((void *)t->ck, req, out, err);
}

static void table_free(table *t)
{
    for (int i = 0; i < t->n; i++)
        free(t->w[i]);
    free(t->name);
    free(t->w);
}

static float *logits_of(nq_model *m, const int32_t *ids, int n, int V)
{
    nq_error err = {0};
    float *l = malloc((size_t)n * V * sizeof *l);
    if (nq_model_forward(m, ids, n, l, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    return l;
}

/* mean KL(p_ref || p) over positions, nats */
static double mean_kl(const float *ref, const float *l, int n, int V)
{
    double tot = 0;
    for (int t = 0; t < n; t++) {
        const float *a = ref + (size_t)t * V, *b = l + (size_t)t * V;
        double ma = a[0], mb = b[0], sa = 0, sb = 0, k = 0;
        for (int v = 1; v < V; v++)
            ma = fmax(ma, a[v]), mb = fmax(mb, b[v]);
        for (int v = 0; v < V; v++)
            sa += exp(a[v] - ma), sb += exp(b[v] - mb);
        for (int v = 0; v < V; v++) {
            double la = a[v] - ma - log(sa), lb = b[v] - mb - log(sb);
            k += exp(la) * (la - lb);
        }
        tot += k;
    }
    return tot / n;
}

static void test_pairs_leave_float_model_unchanged(void **state)
{
    (void)state;
    nq_error err = {0};
    const char *dir = nq_test_path("models/tiny-nemotron-h");
    nq_checkpoint *ck = nq_checkpoint_open(dir, &err);
    assert_non_null(ck);
    nq_model_config cfg;
    assert_int_equal(nq_model_config_load(dir, &cfg, &err), 0);
    int32_t ids[48];
    for (int t = 0; t < 48; t++)
        ids[t] = (int32_t)((t * 2654435761u) % (unsigned)cfg.vocab_size);
    int V = cfg.vocab_size, n = 48;
    nq_model *m = nq_model_open(ck, &cfg, &err);
    assert_non_null(m);
    float *ref = logits_of(m, ids, n, V);

    table tab = {.ck = ck};
    int norm_pairs = 0, gated = 0, relu2 = 0, readers = 0;
    uint32_t seed = 12345;
    for (int l = 0; l < cfg.num_layers; l++) {
        nq_eq_pair *p;
        int np;
        assert_int_equal(nq_eq_layer_pairs(&cfg, ck, l, &p, &np, &err), 0);
        for (int i = 0; i < np; i++) {
            float *c = malloc((size_t)p[i].cols * sizeof *c);
            for (int64_t k = 0; k < p[i].cols; k++) {
                seed = seed * 1664525u + 1013904223u;
                c[k] = (float)exp2(4.0 * (seed >> 8) / 16777216.0 - 2.0);   /* 1/4 .. 4 */
            }
            nq_eq_apply_src(&p[i], table_get(&tab, p[i].src), c);
            for (int r = 0; r < p[i].n; r++) {
                const nq_tensor *t = nq_checkpoint_find(ck, p[i].readers[r]);
                nq_eq_apply_reader(table_get(&tab, p[i].readers[r]), t->shape[0], p[i].cols, c);
            }
            readers += p[i].n;
            relu2 += p[i].kind == NQ_EQ_RELU2 && p[i].relu2;
            gated += p[i].kind == NQ_EQ_GATED && strstr(p[i].src, "mixer.norm.weight");
            norm_pairs += p[i].kind == NQ_EQ_NORM && !strstr(p[i].src, "mixer.");
            free(c);
        }
        nq_eq_pairs_free(p, np);
    }
    /* 12 blocks (5 Mamba, 5 MoE of 16 experts + a shared one, 2 attention):
     * a norm pair each, a gated pair per Mamba block, 17 relu^2 pairs per
     * MoE block; norm readers 5 in_proj + 2 x 3 q/k/v + 5 x (router + 17) */
    assert_int_equal(norm_pairs, 12);
    assert_int_equal(gated, 5);
    assert_int_equal(relu2, 5 * 17);
    assert_int_equal(readers, 5 + 6 + 5 * 18 + 5 + 5 * 17);

    nq_model_set_weights(m, (nq_weight_provider){.fetch = table_fetch, .ctx = &tab});
    float *eq = logits_of(m, ids, n, V);
    double worst = 0, mag = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) {
        worst = fmax(worst, fabs((double)eq[i] - ref[i]));
        mag = fmax(mag, fabs((double)ref[i]));
    }
    /* float32 rounding only: far below any quantization effect */
    if (worst > 2e-4 * mag)
        fail_msg("equalized logits differ by %g (max |logit| %g)", worst, mag);

    /* what the checkpoint stores: the kept tensors (norms, router) in BF16 */
    for (int i = 0; i < tab.n; i++) {
        const nq_tensor *t = nq_checkpoint_find(ck, tab.name[i]);
        if (strstr(tab.name[i], "norm.weight") || strstr(tab.name[i], "gate.weight"))
            for (uint64_t k = 0; k < t->numel; k++)
                tab.w[i][k] = nq_bf16_to_f32(nq_f32_to_bf16(tab.w[i][k]));
    }
    nq_model_set_weights(m, (nq_weight_provider){.fetch = table_fetch, .ctx = &tab});
    float *eqb = logits_of(m, ids, n, V);
    double kl = mean_kl(ref, eqb, n, V);
    /* BF16 keeps 8 bits of mantissa: the logits move, by much less than
     * 4-bit weights move them (KL 1e-2 here) */
    printf("equalize: BF16 rounding of rescaled norms/router: KL %.3g nats/token\n", kl);
    assert_true(kl > 0 && kl < 1e-4);

    free(ref), free(eq), free(eqb);
    table_free(&tab);
    nq_model_close(m);
    nq_checkpoint_close(ck);
}


/* ---- the served (W4A4) objective ----------------------------------------- */

static void *load_served(const char *name, size_t want)
{
    return nq_test_load_fixture("equalize_served", name, want);
}

/* NVFP4 round-to-nearest with max scales, dequantized */
static int qdq_nvfp4(void *ctx, const float *w, int64_t rows, int64_t cols, float *out,
                     nq_error *err)
{
    (void)ctx;
    uint8_t *packed = malloc((size_t)(rows * cols / 2)), *sc = malloc((size_t)(rows * cols / 16));
    float gs;
    nq_encode_stats st;
    int rc = nq_encode_nvfp4(w, rows, cols, false, 1, packed, sc, &gs, &st, err);
    for (int64_t r = 0; rc == 0 && r < rows; r++)
        nq_nvfp4_decode_row(packed + r * cols / 2, sc + r * cols / 16, gs, cols, out + r * cols);
    free(packed), free(sc);
    return rc;
}

static void test_served_search_matches_reference(void **state)
{
    (void)state;
    json_t *cs = json_load_file(nq_test_path("tests/fixtures/equalize_served/case.json"), 0, NULL);
    assert_non_null(cs);
    int64_t C = json_integer_value(json_object_get(cs, "cols"));
    nq_eq_sample_consumer cons[3];
    float *w[3], *x[3];
    for (int j = 0; j < 3; j++) {
        char wn[32], xn[32];
        int64_t r = json_integer_value(json_array_get(json_object_get(cs, "rows"), j));
        int64_t xr = json_integer_value(json_array_get(json_object_get(cs, "xrows"), j));
        snprintf(wn, sizeof wn, "w%d.f32", j + 1);
        snprintf(xn, sizeof xn, "x%d.f32", j + 1);
        w[j] = load_served(wn, sizeof(float) * (size_t)(r * C));
        x[j] = load_served(xn, sizeof(float) * (size_t)(xr * C));
        cons[j] = (nq_eq_sample_consumer){
            .w = w[j], .rows = r, .x = x[j], .xrows = (int)xr,
            .act_nvfp4 = json_is_true(json_array_get(json_object_get(cs, "act_nvfp4"), j)),
            .qdq = qdq_nvfp4};
    }
    float *ref = load_served("c.f32", sizeof(float) * (size_t)C);
    double *rms = load_served("rms.f64", sizeof(double) * (size_t)C);
    float *c = malloc(sizeof(float) * (size_t)C);
    nq_eq_result res;
    nq_error err = {0};
    int grid = (int)json_integer_value(json_object_get(cs, "grid"));
    assert_int_equal(nq_equalize_search_served(cons, 3, C, rms, grid, c, &res, &err), 0);
    assert_false(res.identity);
    assert_float_equal(res.alpha, json_real_value(json_object_get(cs, "alpha")), 1e-12);
    /* float32 products against float64: the errors agree to 1e-4 */
    double eb = json_real_value(json_object_get(cs, "err_best"));
    double ei = json_real_value(json_object_get(cs, "err_identity"));
    assert_float_equal(res.err_best, eb, 1e-4 * eb);
    assert_float_equal(res.err_identity, ei, 1e-4 * ei);
    for (int64_t k = 0; k < C; k++)
        assert_float_equal(c[k], ref[k], 1e-6 * ref[k]);
    /* channels alike: every candidate is the identity, the first is kept */
    double *flat = malloc(sizeof(double) * (size_t)C);
    for (int64_t k = 0; k < C; k++)
        flat[k] = 2.0;
    assert_int_equal(nq_equalize_search_served(cons, 3, C, flat, grid, c, &res, &err), 0);
    assert_true(res.identity);
    assert_float_equal(res.err_best, ei, 1e-4 * ei);
    for (int64_t k = 0; k < C; k++)
        assert_float_equal(c[k], 1.0f, 0.0f);
    /* NVFP4 activations need whole blocks */
    nq_eq_sample_consumer one = cons[0];
    one.xrows = 1;
    assert_int_equal(nq_equalize_search_served(&one, 1, 40, flat, grid, c, &res, &err), -1);
    assert_non_null(strstr(err.msg, "NVFP4 blocks"));
    free(flat), free(c), free(ref), free(rms);
    for (int j = 0; j < 3; j++)
        free(w[j]), free(x[j]);
    json_decref(cs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_matches_reference),
        cmocka_unit_test(test_served_search_matches_reference),
        cmocka_unit_test(test_pairs_leave_float_model_unchanged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
