/* Recipes: NVIDIA's selective layouts derived from the block pattern, the
 * int4 group-size rule, and user rules with their errors. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "recipe/plan.h"

static nq_model_config nano(void)
{
    nq_model_config cfg;
    nq_error err = {0};
    if (nq_model_config_load(nq_test_path("tests/fixtures/nemotron-3-nano-30b-a3b.config.json"),
                             &cfg, &err) != 0)
        fail_msg("%s", err.msg);
    return cfg;
}

static nq_format format_of(const nq_plan *p, const char *module)
{
    const nq_plan_module *m = nq_plan_find(p, module);
    if (!m)
        fail_msg("module %s not in the plan", module);
    return m->format;
}

static void build(const nq_model_config *cfg, const nq_checkpoint *ck, const char *preset,
                  const nq_recipe_rule *rules, size_t nrules, nq_plan *plan)
{
    nq_recipe_options opt = {.preset = preset, .rules = rules, .nrules = nrules};
    nq_error err = {0};
    if (nq_plan_build(cfg, ck, &opt, plan, &err) != 0)
        fail_msg("%s", err.msg);
}

/* NVIDIA's Nemotron 3 Nano NVFP4 exclusions, from the 52-layer pattern alone. */
static void test_nano_nvfp4_conservative(void **state)
{
    (void)state;
    nq_model_config cfg = nano();
    nq_plan p;
    build(&cfg, NULL, "nvfp4-conservative", NULL, 0, &p);
    int kept_attention[64] = {0}, kept_mamba[64] = {0}, conv_kept = 0, kept_linear = 0;
    for (size_t i = 0; i < p.count; i++) {
        const nq_plan_module *m = &p.modules[i];
        if (m->role == NQ_ROLE_CONV1D && m->format == NQ_FORMAT_KEEP)
            conv_kept++;
        if (m->format != NQ_FORMAT_KEEP)
            continue;
        if (m->role == NQ_ROLE_ATTENTION_PROJ)
            kept_attention[m->layer]++;
        if (m->role == NQ_ROLE_MAMBA_PROJ)
            kept_mamba[m->layer]++;
        if (m->quantizable)
            kept_linear++;
    }
    const int attention[] = {5, 12, 19, 26, 33, 42}, mamba[] = {4, 11, 18, 25, 32, 41};
    int na = 0, nm = 0;
    for (int l = 0; l < 52; l++) {
        na += kept_attention[l] > 0;
        nm += kept_mamba[l] > 0;
    }
    assert_int_equal(na, 6);
    assert_int_equal(nm, 6);
    for (int k = 0; k < 6; k++) {
        assert_int_equal(kept_attention[attention[k]], 4); /* q, k, v, o */
        assert_int_equal(kept_mamba[mamba[k]], 2);         /* in_proj, out_proj */
    }
    assert_int_equal(conv_kept, 23);
    assert_int_equal(format_of(&p, "lm_head"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&p, "backbone.embeddings"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&p, "backbone.layers.1.mixer.gate"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&p, "backbone.layers.0.mixer.in_proj"), NQ_FORMAT_NVFP4);
    assert_int_equal(format_of(&p, "backbone.layers.1.mixer.experts.127.down_proj"), NQ_FORMAT_NVFP4);
    assert_int_equal(format_of(&p, "backbone.layers.1.mixer.shared_experts.up_proj"), NQ_FORMAT_NVFP4);
    /* kept Linears: 6x4 attention + 6x2 Mamba + lm_head */
    assert_int_equal(kept_linear, 24 + 12 + 1);
    /* 23 MoE layers x (128 experts x 2 + 2 shared) + 17 Mamba x 2 */
    assert_int_equal(nq_plan_count(&p, NQ_FORMAT_NVFP4), 23 * 258 + 17 * 2);
    assert_true(p.kv_cache_fp8);
    nq_plan_free(&p);

    build(&cfg, NULL, "nvfp4-aggressive", NULL, 0, &p);
    assert_int_equal(format_of(&p, "backbone.layers.4.mixer.in_proj"), NQ_FORMAT_NVFP4);
    assert_int_equal(format_of(&p, "backbone.layers.5.mixer.q_proj"), NQ_FORMAT_KEEP);
    nq_plan_free(&p);

    build(&cfg, NULL, "fp8-conservative", NULL, 0, &p);
    assert_int_equal(format_of(&p, "backbone.layers.41.mixer.out_proj"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&p, "backbone.layers.39.mixer.in_proj"), NQ_FORMAT_FP8);
    assert_int_equal(nq_plan_count(&p, NQ_FORMAT_NVFP4), 0);
    nq_plan_free(&p);
    build(&cfg, NULL, "fp8-aggressive", NULL, 0, &p);
    assert_int_equal(format_of(&p, "backbone.layers.41.mixer.out_proj"), NQ_FORMAT_FP8);
    assert_int_equal(format_of(&p, "backbone.layers.42.mixer.k_proj"), NQ_FORMAT_KEEP);
    nq_plan_free(&p);
}

static void test_int4_group_size_follows_the_experts(void **state)
{
    (void)state;
    nq_model_config cfg = nano();
    nq_plan p;
    build(&cfg, NULL, "int4", NULL, 0, &p);
    /* 1856 = 29 x 64: vLLM's fused MoE needs one group size dividing it */
    assert_int_equal(p.int4_group_size, 64);
    assert_int_equal(p.nnotes, 1);
    assert_non_null(strstr(p.notes[0], "int4 group size 64 instead of 128"));
    assert_int_equal(format_of(&p, "backbone.layers.5.mixer.q_proj"), NQ_FORMAT_INT4);
    assert_int_equal(format_of(&p, "lm_head"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&p, "backbone.layers.1.mixer.gate"), NQ_FORMAT_KEEP);
    assert_false(p.kv_cache_fp8);
    nq_plan_free(&p);

    /* an explicit group size is never changed: the experts' down_proj is kept */
    nq_recipe_options opt = {.preset = "int4", .int4_group_size = 128, .int4_group_explicit = true};
    nq_error err = {0};
    assert_int_equal(nq_plan_build(&cfg, NULL, &opt, &p, &err), 0);
    assert_int_equal(p.int4_group_size, 128);
    const nq_plan_module *m = nq_plan_find(&p, "backbone.layers.1.mixer.experts.0.down_proj");
    assert_int_equal(m->format, NQ_FORMAT_KEEP);
    assert_non_null(strstr(m->reason, "not a multiple of the int4 group size 128"));
    /* ... and so are the up_proj of the same fused MoE layer */
    m = nq_plan_find(&p, "backbone.layers.1.mixer.experts.5.up_proj");
    assert_int_equal(m->format, NQ_FORMAT_KEEP);
    assert_non_null(strstr(m->reason, "fuses layer 1's experts"));
    assert_int_equal(format_of(&p, "backbone.layers.1.mixer.shared_experts.up_proj"), NQ_FORMAT_INT4);
    nq_plan_free(&p);
}

/* --int4-wide-groups: the fused MoE keeps the base the experts need (64 for
 * Nano's 1856), every other INT4 Linear the requested 128 */
static void test_int4_wide_groups(void **state)
{
    (void)state;
    nq_model_config cfg = nano();
    nq_recipe_options opt = {.preset = "int4", .int4_wide_groups = true};
    nq_plan p;
    nq_error err = {0};
    assert_int_equal(nq_plan_build(&cfg, NULL, &opt, &p, &err), 0);
    assert_int_equal(p.int4_group_size, 64);
    assert_int_equal(nq_plan_find(&p, "backbone.layers.1.mixer.experts.0.down_proj")->group_size, 64);
    assert_int_equal(nq_plan_find(&p, "backbone.layers.1.mixer.experts.0.up_proj")->group_size, 64);
    assert_int_equal(nq_plan_find(&p, "backbone.layers.1.mixer.shared_experts.down_proj")->group_size, 128);
    assert_int_equal(nq_plan_find(&p, "backbone.layers.0.mixer.in_proj")->group_size, 128);
    assert_int_equal(nq_plan_find(&p, "backbone.layers.5.mixer.q_proj")->group_size, 128);
    nq_plan_free(&p);
}

static void test_tiny_checkpoint_plan(void **state)
{
    (void)state;
    nq_error err = {0};
    nq_checkpoint *ck = nq_checkpoint_open(nq_test_path("models/tiny-nemotron-h"), &err);
    nq_model_config cfg;
    assert_int_equal(nq_model_config_load(nq_test_path("models/tiny-nemotron-h"), &cfg, &err), 0);
    nq_plan a, b;
    build(&cfg, ck, "nvfp4-conservative", NULL, 0, &a);
    build(&cfg, NULL, "nvfp4-conservative", NULL, 0, &b);
    /* the same modules, shapes and formats whether read from weights or config */
    assert_int_equal(a.count, b.count);
    for (size_t i = 0; i < a.count; i++) {
        const nq_plan_module *x = &a.modules[i];
        const nq_plan_module *y = nq_plan_find(&b, x->name);
        assert_non_null(y);
        assert_int_equal(x->out_features, y->out_features);
        assert_int_equal(x->in_features, y->in_features);
        assert_int_equal(x->format, y->format);
    }
    /* MEM*EMEM*EME: Mamba 2 and 7 feed attention 3 and 8 */
    assert_int_equal(format_of(&a, "backbone.layers.2.mixer.in_proj"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&a, "backbone.layers.7.mixer.out_proj"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&a, "backbone.layers.5.mixer.out_proj"), NQ_FORMAT_NVFP4);
    nq_plan_free(&a);
    nq_plan_free(&b);
    nq_checkpoint_close(ck);
}

static void test_user_rules(void **state)
{
    (void)state;
    nq_model_config cfg = nano();
    nq_plan p;
    nq_recipe_rule rules[3] = {
        {.glob = "backbone.layers.1.mixer.*", .keep = true},
        {.glob = "backbone.layers.4.mixer.*_proj", .format = NQ_FORMAT_FP8},
        {.glob = "*.shared_experts.*", .keep = true},
    };
    build(&cfg, NULL, "nvfp4-conservative", rules, 3, &p);
    assert_int_equal(format_of(&p, "backbone.layers.1.mixer.experts.3.up_proj"), NQ_FORMAT_KEEP);
    assert_int_equal(format_of(&p, "backbone.layers.4.mixer.in_proj"), NQ_FORMAT_FP8);
    assert_int_equal(format_of(&p, "backbone.layers.3.mixer.shared_experts.up_proj"), NQ_FORMAT_KEEP);
    assert_non_null(strstr(nq_plan_find(&p, "backbone.layers.4.mixer.in_proj")->reason, "--include"));
    assert_non_null(strstr(p.notes[0], "MIXED_PRECISION"));
    nq_plan_free(&p);

    nq_error err = {0};
    nq_recipe_rule typo = {.glob = "backbone.layer.*", .keep = true};
    nq_recipe_options opt = {.preset = "nvfp4-conservative", .rules = &typo, .nrules = 1};
    assert_int_equal(nq_plan_build(&cfg, NULL, &opt, &p, &err), -1);
    assert_non_null(strstr(err.msg, "--exclude 'backbone.layer.*' matches no module"));

    memset(&err, 0, sizeof err);
    nq_recipe_rule mix = {.glob = "*.layers.0.mixer.in_proj", .format = NQ_FORMAT_INT4};
    opt.rules = &mix;
    assert_int_equal(nq_plan_build(&cfg, NULL, &opt, &p, &err), -1);
    assert_non_null(strstr(err.msg, "mix int4"));

    memset(&err, 0, sizeof err);
    nq_recipe_rule split = {.glob = "*.layers.1.mixer.experts.7.*", .keep = true};
    opt.rules = &split;
    assert_int_equal(nq_plan_build(&cfg, NULL, &opt, &p, &err), -1);
    assert_non_null(strstr(err.msg, "fuses the routed experts of layer 1"));

    memset(&err, 0, sizeof err);
    nq_recipe_rule qkv = {.glob = "*.layers.5.mixer.k_proj", .format = NQ_FORMAT_NVFP4};
    opt.rules = &qkv;
    assert_int_equal(nq_plan_build(&cfg, NULL, &opt, &p, &err), -1);
    assert_non_null(strstr(err.msg, "q/k/v of layer 5"));

    memset(&err, 0, sizeof err);
    opt.preset = "nvfp5";
    opt.nrules = 0;
    assert_int_equal(nq_plan_build(&cfg, NULL, &opt, &p, &err), -1);
    assert_non_null(strstr(err.msg, "unknown recipe 'nvfp5'"));
}

static void test_recipe_file(void **state)
{
    (void)state;
    char *tmp = nq_test_tmpdir("recipe");
    char path[4300];
    snprintf(path, sizeof path, "%s/r.json", tmp);
    const char *text = "{\"preset\": \"nvfp4-aggressive\", \"exclude\": [\"*.layers.0.*\"],"
                       " \"include\": {\"*.layers.2.mixer.out_proj\": \"fp8\"}}";
    assert_int_equal(nq_test_write_file(path, text, strlen(text)), 0);
    const char *preset = NULL;
    nq_recipe_rule *rules = NULL;
    size_t n = 0;
    int g = 0;
    nq_error err = {0};
    assert_int_equal(nq_recipe_file_load(path, &preset, &rules, &n, &g, &err), 0);
    assert_string_equal(preset, "nvfp4-aggressive");
    assert_int_equal(n, 2);
    assert_true(rules[0].keep);
    assert_int_equal(rules[1].format, NQ_FORMAT_FP8);
    free(rules);

    const char *bad = "{\"exclude\": \"*\"}";
    assert_int_equal(nq_test_write_file(path, bad, strlen(bad)), 0);
    rules = NULL;
    n = 0;
    assert_int_equal(nq_recipe_file_load(path, &preset, &rules, &n, &g, &err), -1);
    assert_non_null(strstr(err.msg, "r.json: \"exclude\" must be a list"));
    free(rules);
    const char *unknown = "{\"exclud\": []}";
    memset(&err, 0, sizeof err);
    assert_int_equal(nq_test_write_file(path, unknown, strlen(unknown)), 0);
    assert_int_equal(nq_recipe_file_load(path, &preset, &rules, &n, &g, &err), -1);
    assert_non_null(strstr(err.msg, "unknown key \"exclud\""));
    nq_test_rmtree(tmp);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nano_nvfp4_conservative),
        cmocka_unit_test(test_int4_group_size_follows_the_experts),
        cmocka_unit_test(test_int4_wide_groups),
        cmocka_unit_test(test_tiny_checkpoint_plan),
        cmocka_unit_test(test_user_rules),
        cmocka_unit_test(test_recipe_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
