/* The model API around the forward pass: thread-count independence, the
 * layer-by-layer calls, weight providers (tied lm_head), observation hooks,
 * the router's grouped top-k selection (hand-computed cases) and errors. */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward.h"
#include "model/layers.h"

#define DENSE "tests/fixtures/dense"
#define TINY "models/tiny-nemotron-h"

typedef struct {
    nq_checkpoint *ck;
    nq_model_config cfg;
    int32_t *ids;
    int n;
} fixture;

/* Opens a checkpoint and its config, and takes sequence `seq` of ref_json. */
static void open_fixture(fixture *f, const char *dir, const char *ref_json, int seq)
{
    nq_error err = {0};
    f->ck = nq_checkpoint_open(nq_test_path(dir), &err);
    if (!f->ck)
        fail_msg("%s", err.msg);
    if (nq_model_config_load(nq_test_path(dir), &f->cfg, &err) != 0)
        fail_msg("%s", err.msg);
    json_t *root = json_load_file(nq_test_path(ref_json), 0, NULL);
    assert_non_null(root);
    json_t *a = json_array_get(json_object_get(root, "seqs"), (size_t)seq);
    f->n = (int)json_array_size(a);
    f->ids = malloc((size_t)f->n * sizeof *f->ids);
    for (int t = 0; t < f->n; t++)
        f->ids[t] = (int32_t)json_integer_value(json_array_get(a, (size_t)t));
    json_decref(root);
}

static void close_fixture(fixture *f)
{
    free(f->ids);
    nq_checkpoint_close(f->ck);
}

static nq_model *open_model(fixture *f, const nq_model_config *cfg)
{
    nq_error err = {0};
    nq_model *m = nq_model_open(f->ck, cfg ? cfg : &f->cfg, &err);
    if (!m)
        fail_msg("%s", err.msg);
    return m;
}

static float *forward(nq_model *m, fixture *f, float **hidden)
{
    nq_error err = {0};
    const nq_model_config *c = nq_model_cfg(m);
    float *logits = malloc((size_t)f->n * c->vocab_size * sizeof *logits);
    if (hidden)
        *hidden = malloc((size_t)(c->num_layers + 1) * f->n * c->hidden_size * sizeof **hidden);
    if (nq_model_forward(m, f->ids, f->n, logits, hidden ? *hidden : NULL, &err) != 0)
        fail_msg("%s", err.msg);
    return logits;
}

static void test_thread_count_does_not_change_results(void **state)
{
    (void)state;
    const char *dirs[2] = {TINY, DENSE};
    const char *refs[2] = {"tests/fixtures/tiny_ref.json", DENSE "/dense_ref.json"};
    for (int k = 0; k < 2; k++) {
        fixture f;
        open_fixture(&f, dirs[k], refs[k], 0);
        nq_model *m = open_model(&f, NULL);
        size_t count = (size_t)f.n * f.cfg.vocab_size;
        nq_model_set_threads(m, 1);
        float *a = forward(m, &f, NULL);
        for (int threads = 2; threads <= 3; threads++) {
            nq_model_set_threads(m, threads);
            assert_int_equal(nq_model_threads(m), threads);
            float *b = forward(m, &f, NULL);
            assert_memory_equal(a, b, count * sizeof *a);
            free(b);
        }
        free(a);
        nq_model_close(m);
        close_fixture(&f);
    }
}

/* embed -> block 0..L-1 -> final gives exactly nq_model_forward, and a
 * layer-major run over a state (prefix, then the rest) continues the
 * sequence like decoding does. */
static void test_layer_by_layer(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, DENSE, DENSE "/dense_ref.json", 1);
    nq_model *m = open_model(&f, NULL);
    int L = f.cfg.num_layers, H = f.cfg.hidden_size, V = f.cfg.vocab_size, n = f.n;
    float *hidden;
    float *ref = forward(m, &f, &hidden);
    nq_error err = {0};

    float *x = malloc((size_t)n * H * sizeof *x);
    float *normed = malloc((size_t)n * H * sizeof *normed);
    float *logits = malloc((size_t)n * V * sizeof *logits);
    assert_int_equal(nq_model_embed(m, f.ids, n, x, &err), 0);
    for (int l = 0; l < L; l++) {
        assert_int_equal(nq_model_block(m, l, x, n, NULL, &err), 0);
        if (l + 1 < L)
            assert_memory_equal(x, hidden + (size_t)(l + 1) * n * H, (size_t)n * H * sizeof *x);
    }
    assert_int_equal(nq_model_final(m, x, n, normed, logits, &err), 0);
    assert_memory_equal(normed, hidden + (size_t)L * n * H, (size_t)n * H * sizeof *x);
    assert_memory_equal(logits, ref, (size_t)n * V * sizeof *logits);

    /* Layer-major over a state: 23 tokens, then the other 34. */
    nq_state *st = nq_state_new(m, &err);
    assert_non_null(st);
    int split = 23;
    for (int part = 0; part < 2; part++) {
        int off = part ? split : 0, cnt = part ? n - split : split;
        float *xp = x + (size_t)off * H;
        assert_int_equal(nq_model_embed(m, f.ids + off, cnt, xp, &err), 0);
        for (int l = 0; l < L; l++)
            assert_int_equal(nq_model_block(m, l, xp, cnt, st, &err), 0);
        assert_int_equal(nq_state_tokens(st), off + cnt);
    }
    assert_int_equal(nq_model_final(m, x, n, NULL, logits, &err), 0);
    double worst = 0;
    for (size_t i = 0; i < (size_t)n * V; i++)
        worst = fmax(worst, fabs((double)logits[i] - ref[i]));
    printf("  layer-major with state, split 23/34: max diff %.3g\n", worst);
    assert_true(worst <= 1e-4);

    /* reset = a fresh sequence */
    nq_state_reset(st);
    assert_int_equal(nq_state_tokens(st), 0);
    assert_int_equal(nq_model_step(m, st, f.ids, n, logits, &err), 0);
    assert_memory_equal(logits, ref, (size_t)n * V * sizeof *logits);

    nq_state_free(st);
    free(x);
    free(normed);
    free(logits);
    free(ref);
    free(hidden);
    nq_model_close(m);
    close_fixture(&f);
}

/* A provider that forwards to the checkpoint, can hide lm_head.weight, and
 * counts what it served. */
typedef struct {
    nq_checkpoint *ck;
    bool hide_lm_head;
    int calls, lm_head_calls;
} wrap_provider;

static int wrap_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    wrap_provider *w = ctx;
    w->calls++;
    if (strcmp(req->name, "lm_head.weight") == 0) {
        w->lm_head_calls++;
        assert_true(req->optional);
        if (w->hide_lm_head)
            return 1;
    }
    return nq_checkpoint_weight_fetch(w->ck, req, out, err);
}

static void test_provider_and_tied_head(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, DENSE, DENSE "/dense_ref.json", 2);
    int L = f.cfg.num_layers, H = f.cfg.hidden_size, V = f.cfg.vocab_size, n = f.n;
    nq_error err = {0};

    /* The dense checkpoint says tie_word_embeddings = true but holds its own
     * lm_head.weight (transformers 5.17 never ties NemotronH): it is used. */
    wrap_provider w = {.ck = f.ck};
    nq_model *m = open_model(&f, NULL);
    nq_model_set_weights(m, (nq_weight_provider){.fetch = wrap_fetch, .ctx = &w});
    float *hidden;
    float *logits = forward(m, &f, &hidden);
    assert_int_equal(w.lm_head_calls, 1);
    assert_true(w.calls > 10);
    float *ref;
    {
        size_t len;
        ref = (float *)nq_test_read_file(nq_test_path(DENSE "/dense_logits.f32"), &len);
        assert_non_null(ref);
        size_t off = (size_t)(40 + 57) * V; /* sequence 2 follows the 40- and 57-token ones */
        for (size_t i = 0; i < (size_t)n * V; i++)
            assert_true(fabs(logits[i] - ref[off + i]) <= 2e-3);
        free(ref);
    }
    free(logits);

    /* Without lm_head.weight the embeddings serve as the head. */
    w.hide_lm_head = true;
    nq_model_set_weights(m, (nq_weight_provider){.fetch = wrap_fetch, .ctx = &w});
    logits = forward(m, &f, NULL);
    const nq_tensor *et = nq_checkpoint_find(f.ck, "backbone.embeddings.weight");
    float *emb = nq_tensor_load_f32(et, false, &err);
    assert_non_null(emb);
    const float *normed = hidden + (size_t)L * n * H;
    double worst = 0;
    for (int t = 0; t < n; t++)
        for (int v = 0; v < V; v++) {
            double dot = 0;
            for (int i = 0; i < H; i++)
                dot += (double)normed[(size_t)t * H + i] * emb[(size_t)v * H + i];
            worst = fmax(worst, fabs(dot - logits[(size_t)t * V + v]));
        }
    printf("  tied head vs normed . embeddings^T: %.3g\n", worst);
    assert_true(worst <= 1e-4);
    free(logits);
    free(emb);
    nq_model_close(m);

    /* ... but only when the config says the embeddings are tied. */
    nq_model_config untied = f.cfg;
    untied.tie_word_embeddings = false;
    m = open_model(&f, &untied);
    nq_model_set_weights(m, (nq_weight_provider){.fetch = wrap_fetch, .ctx = &w});
    float *out = malloc((size_t)n * V * sizeof *out);
    assert_int_equal(nq_model_forward(m, f.ids, n, out, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "lm_head.weight"));
    free(out);
    free(hidden);
    nq_model_close(m);
    close_fixture(&f);
}

/* ---- hooks ---- */

typedef struct {
    nq_checkpoint *ck;
    nq_model_config cfg;
    int n;
    int linear_events[16];
    int expert_rows[16];
    int routing_events[16];
    int32_t *routed[16];      /* copy of the routing decision per layer */
    float *layer0_in_proj_x;  /* copy of the first Linear's input */
    int gate_events;
    int lm_head_events;
    char bad_name[256];
} hook_log;

static int on_linear(void *ctx, const nq_linear_input *in, nq_error *err)
{
    (void)err;
    hook_log *h = ctx;
    if (!nq_checkpoint_find(h->ck, in->weight_name) && !h->bad_name[0])
        snprintf(h->bad_name, sizeof h->bad_name, "%s", in->weight_name);
    if (in->layer < 0) {
        assert_string_equal(in->weight_name, "lm_head.weight");
        h->lm_head_events++;
        return 0;
    }
    h->linear_events[in->layer]++;
    if (strstr(in->weight_name, ".gate.weight"))
        h->gate_events++;
    if (in->layer == 0 && strstr(in->weight_name, "in_proj")) {
        h->layer0_in_proj_x = malloc((size_t)in->rows * in->in_features * sizeof(float));
        memcpy(h->layer0_in_proj_x, in->x, (size_t)in->rows * in->in_features * sizeof(float));
        assert_int_equal(in->rows, h->n);
    }
    if (in->expert >= 0) {
        assert_non_null(in->token_index);
        int K = h->cfg.num_experts_per_tok;
        const int32_t *r = h->routed[in->layer];
        assert_non_null(r); /* routing is reported before the experts run */
        /* rows = exactly the tokens routed to this expert, ascending */
        int expect = 0;
        for (int t = 0; t < h->n; t++)
            for (int k = 0; k < K; k++)
                if (r[t * K + k] == in->expert) {
                    assert_true(expect < in->rows);
                    assert_int_equal(in->token_index[expect], t);
                    expect++;
                }
        assert_int_equal(expect, in->rows);
        if (strstr(in->weight_name, "up_proj"))
            h->expert_rows[in->layer] += in->rows;
    } else {
        assert_null(in->token_index);
    }
    return 0;
}

static int on_routing(void *ctx, const nq_routing *r, nq_error *err)
{
    (void)err;
    hook_log *h = ctx;
    h->routing_events[r->layer]++;
    assert_int_equal(r->tokens, h->n);
    assert_int_equal(r->top_k, h->cfg.num_experts_per_tok);
    assert_int_equal(r->n_experts, h->cfg.n_routed_experts);
    free(h->routed[r->layer]);
    h->routed[r->layer] = malloc((size_t)r->tokens * r->top_k * sizeof(int32_t));
    memcpy(h->routed[r->layer], r->experts, (size_t)r->tokens * r->top_k * sizeof(int32_t));
    for (int t = 0; t < r->tokens; t++) {
        double sum = 0;
        for (int k = 0; k < r->top_k; k++) {
            sum += r->weights[t * r->top_k + k];
            for (int j = 0; j < k; j++)
                assert_int_not_equal(r->experts[t * r->top_k + k], r->experts[t * r->top_k + j]);
        }
        /* norm_topk_prob: weights sum to routed_scaling_factor */
        assert_true(fabs(sum - h->cfg.routed_scaling_factor) < 1e-5);
    }
    return 0;
}

static int failing_hook(void *ctx, const nq_linear_input *in, nq_error *err)
{
    (void)ctx;
    return nq_fail(err, "collector full at %s", in->weight_name);
}

static void test_hooks(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, DENSE, DENSE "/dense_ref.json", 1);
    nq_model *m = open_model(&f, NULL);
    float *plain = forward(m, &f, NULL);

    hook_log h = {.ck = f.ck, .cfg = f.cfg, .n = f.n};
    nq_forward_hooks hooks = {.linear_input = on_linear, .routing = on_routing, .ctx = &h};
    nq_model_set_hooks(m, &hooks);
    float *hidden;
    float *logits = forward(m, &f, &hidden);
    /* observing changes nothing */
    assert_memory_equal(plain, logits, (size_t)f.n * f.cfg.vocab_size * sizeof *plain);
    assert_string_equal(h.bad_name, "");
    assert_int_equal(h.lm_head_events, 1);
    int K = f.cfg.num_experts_per_tok;
    for (int l = 0; l < f.cfg.num_layers; l++) {
        int hit = 0;
        switch (f.cfg.pattern[l]) {
        case 'M': assert_int_equal(h.linear_events[l], 2); break;
        case '*': assert_int_equal(h.linear_events[l], 4); break;
        case '-': assert_int_equal(h.linear_events[l], 2); break;
        case 'E':
            assert_int_equal(h.routing_events[l], 1);
            assert_int_equal(h.expert_rows[l], f.n * K);
            for (int e = 0; e < f.cfg.n_routed_experts; e++)
                for (int i = 0; i < f.n * K; i++)
                    if (h.routed[l][i] == e) {
                        hit++;
                        break;
                    }
            /* gate + 2 per expert hit + 2 shared */
            assert_int_equal(h.linear_events[l], 1 + 2 * hit + 2);
            break;
        }
    }
    assert_int_equal(h.gate_events, 2);

    /* The first Linear sees RMSNorm(embeddings) with layer 0's norm weight. */
    nq_error err = {0};
    float *nw = nq_tensor_load_f32(nq_checkpoint_find(f.ck, "backbone.layers.0.norm.weight"), false,
                                   &err);
    int H = f.cfg.hidden_size;
    for (int t = 0; t < f.n; t++) {
        const float *e = hidden + (size_t)t * H;
        double ss = 0;
        for (int i = 0; i < H; i++)
            ss += (double)e[i] * e[i];
        double r = 1.0 / sqrt(ss / H + f.cfg.layer_norm_epsilon);
        for (int i = 0; i < H; i++)
            assert_true(fabs(nw[i] * e[i] * r - h.layer0_in_proj_x[(size_t)t * H + i]) < 1e-5);
    }
    free(nw);

    /* A hook can stop the pass, and its message is the one reported. */
    nq_forward_hooks stop = {.linear_input = failing_hook};
    nq_model_set_hooks(m, &stop);
    assert_int_equal(nq_model_forward(m, f.ids, f.n, logits, NULL, &err), -1);
    assert_string_equal(err.msg, "collector full at backbone.layers.0.mixer.in_proj.weight");
    nq_model_set_hooks(m, NULL);
    nq_error_clear(&err);
    assert_int_equal(nq_model_forward(m, f.ids, f.n, logits, NULL, &err), 0);
    assert_memory_equal(plain, logits, (size_t)f.n * f.cfg.vocab_size * sizeof *plain);

    for (int l = 0; l < 16; l++)
        free(h.routed[l]);
    free(h.layer0_in_proj_x);
    free(plain);
    free(logits);
    free(hidden);
    nq_model_close(m);
    close_fixture(&f);
}

/* ---- router selection, by hand ---- */

static void test_moe_select_by_hand(void **state)
{
    (void)state;
    nq_model_config c = {0};
    c.n_routed_experts = 6;
    c.n_group = 3;          /* groups {0,1} {2,3} {4,5} */
    c.topk_group = 2;
    c.num_experts_per_tok = 2;
    c.norm_topk_prob = true;
    c.routed_scaling_factor = 2.0f;
    /* Values exact in binary so that the ties below are real ties. */
    const float scores[6] = {0.75f, 0.125f, 0.5f, 0.625f, 0.875f, 0.25f};
    const float bias[6] = {0.0f, 0.0f, 0.25f, 0.0f, -0.125f, 0.5f};
    /* choice = 0.75 0.125 | 0.75 0.625 | 0.75 0.75
     * group scores (sum of the top 2): 0.875, 1.375, 1.5 -> groups 2 and 1
     * stay, expert 0 is masked despite its 0.75.  Among 2, 4, 5 (all 0.75)
     * the lower indices win: 2, then 4.  Weights are the UNbiased scores
     * 0.5 and 0.875, normalized by 1.375 and scaled by 2. */
    int32_t ex[2];
    float w[2];
    nq_moe_select(&c, scores, bias, ex, w);
    assert_int_equal(ex[0], 2);
    assert_int_equal(ex[1], 4);
    assert_float_equal(w[0], 2.0f * 0.5f / 1.375f, 1e-6);
    assert_float_equal(w[1], 2.0f * 0.875f / 1.375f, 1e-6);

    /* All groups allowed: expert 0 ties at 0.75 and wins on index. */
    c.topk_group = 3;
    nq_moe_select(&c, scores, bias, ex, w);
    assert_int_equal(ex[0], 0);
    assert_int_equal(ex[1], 2);
    assert_float_equal(w[0], 2.0f * 0.75f / 1.25f, 1e-6);

    /* No normalization: weights are scale * score. */
    c.norm_topk_prob = false;
    nq_moe_select(&c, scores, NULL, ex, w);
    assert_int_equal(ex[0], 4);   /* 0.875 */
    assert_int_equal(ex[1], 0);   /* 0.75 */
    assert_float_equal(w[0], 1.75f, 0.0f);
    assert_float_equal(w[1], 1.5f, 0.0f);

    /* The 1e-20 of the denominator keeps all-zero scores finite. */
    c.norm_topk_prob = true;
    const float zeros[6] = {0};
    nq_moe_select(&c, zeros, NULL, ex, w);
    assert_int_equal(ex[0], 0);
    assert_int_equal(ex[1], 1);
    assert_float_equal(w[0], 0.0f, 0.0f);
}

/* ---- errors ---- */

static void test_errors(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, DENSE, DENSE "/dense_ref.json", 2);
    nq_error err = {0};
    nq_model *m = open_model(&f, NULL);
    float *logits = malloc((size_t)f.n * f.cfg.vocab_size * sizeof *logits);

    int32_t bad[2] = {5, 512};
    assert_int_equal(nq_model_forward(m, bad, 2, logits, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "id 512 outside the vocabulary of 512"));
    nq_error_clear(&err);
    assert_int_equal(nq_model_block(m, 8, logits, 1, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "layer 8"));
    nq_model_close(m);

    /* A config that disagrees with the tensors names the tensor. */
    nq_model_config c = f.cfg;
    c.intermediate_size = 161;
    m = open_model(&f, &c);
    nq_error_clear(&err);
    assert_int_equal(nq_model_forward(m, f.ids, f.n, logits, NULL, &err), -1);
    assert_string_equal(err.msg, "backbone.layers.1.mixer.up_proj.weight: shape [160,96] but the "
                                 "config implies [161,96]");
    nq_model_close(m);

    c = f.cfg;
    snprintf(c.mlp_hidden_act, sizeof c.mlp_hidden_act, "tanhshrink");
    nq_error_clear(&err);
    assert_null(nq_model_open(f.ck, &c, &err));
    assert_non_null(strstr(err.msg, "mlp_hidden_act 'tanhshrink'"));

    c = f.cfg;
    c.num_experts_per_tok = 9; /* more than topk_group (2) groups of 4 hold */
    nq_error_clear(&err);
    assert_null(nq_model_open(f.ck, &c, &err));
    assert_non_null(strstr(err.msg, "MoE routing"));

    free(logits);
    close_fixture(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thread_count_does_not_change_results),
        cmocka_unit_test(test_layer_by_layer),
        cmocka_unit_test(test_provider_and_tied_head),
        cmocka_unit_test(test_hooks),
        cmocka_unit_test(test_moe_select_by_hand),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
