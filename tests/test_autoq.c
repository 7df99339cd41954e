/* AutoQuantize allocation: the knapsack is optimal (brute force on random
 * instances), infeasible budgets name the least feasible one, groups and
 * exact bit costs on the bundled model, active-moe weighting, pinned groups;
 * and the MIXED_PRECISION metadata resolved the way vLLM's
 * ModelOptMixedPrecisionConfig resolves it (direct name, fused q/k/v that
 * must agree, FusedMoE experts found by prefix). */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/metadata.h"
#include "recipe/autoq.h"

/* ---- knapsack vs brute force ------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* Minimum value over every assignment with cost <= budget; -1 if none. */
static double brute(size_t n, int k, const int64_t *cost, const double *value, int64_t budget,
                    int64_t *min_cost)
{
    size_t total = 1;
    for (size_t g = 0; g < n; g++)
        total *= (size_t)k;
    double best = -1.0;
    *min_cost = -1;
    for (size_t code = 0; code < total; code++) {
        size_t c = code;
        int64_t cs = 0;
        double v = 0.0;
        bool ok = true;
        for (size_t g = 0; g < n; g++) {
            int ch = (int)(c % (size_t)k);
            c /= (size_t)k;
            if (cost[g * k + ch] < 0)
                ok = false;
            cs += cost[g * k + ch];
            v += value[g * k + ch];
        }
        if (!ok)
            continue;
        if (*min_cost < 0 || cs < *min_cost)
            *min_cost = cs;
        if (cs <= budget && (best < 0 || v < best))
            best = v;
    }
    return best;
}

static void test_knapsack_is_optimal(void **state)
{
    (void)state;
    enum { K = 3 };
    for (int trial = 0; trial < 400; trial++) {
        size_t n = 1 + rnd() % 8;
        int64_t cost[8 * K];
        double value[8 * K];
        for (size_t g = 0; g < n; g++)
            for (int c = 0; c < K; c++) {
                /* small costs collide often (ties and dominance); some
                 * choices are not allowed */
                cost[g * K + c] = trial % 2 ? (int64_t)(rnd() % 12) : (int64_t)(rnd() % 100000);
                if (c > 0 && rnd() % 7 == 0)
                    cost[g * K + c] = -1;
                value[g * K + c] = trial % 3 == 0 ? (double)(rnd() % 4) : (rnd() % 100000) / 7e4;
            }
        int64_t lo = 0, hi = 0;
        for (size_t g = 0; g < n; g++) {
            int64_t mn = -1, mx = 0;
            for (int c = 0; c < K; c++) {
                int64_t v = cost[g * K + c];
                if (v >= 0 && (mn < 0 || v < mn))
                    mn = v;
                mx = v > mx ? v : mx;
            }
            lo += mn;
            hi += mx;
        }
        int64_t budget = lo - 2 + (int64_t)(rnd() % (uint64_t)(hi - lo + 5));
        int64_t bmin;
        double want = brute(n, K, cost, value, budget, &bmin);
        int choice[8];
        int64_t min_budget = 0;
        nq_error err = {0};
        int rc = nq_mckp_solve(n, K, cost, value, budget, choice, &min_budget, &err);
        if (want < 0) {
            assert_int_equal(rc, 1);
            assert_int_equal(min_budget, bmin);
            continue;
        }
        assert_int_equal(rc, 0);
        int64_t cs = 0;
        double v = 0.0;
        for (size_t g = 0; g < n; g++) {
            assert_true(cost[g * K + choice[g]] >= 0);
            cs += cost[g * K + choice[g]];
            v += value[g * K + choice[g]];
        }
        assert_true(cs <= budget);
        if (fabs(v - want) > 1e-12)
            fail_msg("trial %d: knapsack value %.17g, brute force %.17g", trial, v, want);
    }
}

/* ---- groups and costs on the bundled model ------------------------------ */

static void tiny(nq_model_config *cfg, nq_checkpoint **ck, const nq_recipe_rule *rules,
                 size_t nrules, nq_plan *plan)
{
    nq_error err = {0};
    if (nq_model_config_load(nq_test_path("models/tiny-nemotron-h"), cfg, &err) != 0)
        fail_msg("%s", err.msg);
    *ck = nq_checkpoint_open(nq_test_path("models/tiny-nemotron-h"), &err);
    nq_recipe_options opt = {.preset = "nvfp4-aggressive", .rules = rules, .nrules = nrules};
    if (!*ck || nq_plan_build(cfg, *ck, &opt, plan, &err) != 0)
        fail_msg("%s", err.msg);
}

static const nq_autoq_group *find_group(const nq_autoq *aq, const char *name)
{
    for (size_t i = 0; i < aq->count; i++)
        if (strcmp(aq->groups[i].name, name) == 0)
            return &aq->groups[i];
    fail_msg("no group %s", name);
    return NULL;
}

static void test_groups_and_costs(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_checkpoint *ck;
    nq_plan plan;
    tiny(&cfg, &ck, NULL, 0, &plan);
    bool all[3] = {true, true, true};
    nq_autoq aq;
    nq_error err = {0};
    assert_int_equal(nq_autoq_build(&cfg, &plan, NULL, 0, all, false, &aq, &err), 0);
    /* MEM*EMEM*EME: 5 Mamba x (in, out) + 5 MoE x (experts, shared) + 2 x (qkv, o) */
    assert_int_equal(aq.count, 24);
    const nq_autoq_group *qkv = find_group(&aq, "backbone.layers.3.mixer.{q,k,v}_proj");
    assert_int_equal(qkv->nmembers, 3);
    const nq_autoq_group *ex = find_group(&aq, "backbone.layers.1.mixer.experts.*.{up,down}_proj");
    assert_int_equal(ex->nmembers, 32); /* 16 experts x up, down */
    assert_int_equal(find_group(&aq, "backbone.layers.1.mixer.shared_experts.{up,down}_proj")->nmembers, 2);
    assert_int_equal(find_group(&aq, "backbone.layers.3.mixer.o_proj")->nmembers, 1);
    /* in_proj 1160 x 256: hand-computed bits */
    const nq_autoq_group *in = find_group(&aq, "backbone.layers.0.mixer.in_proj");
    assert_int_equal(in->params, 296960);
    assert_int_equal(in->cost[NQ_FORMAT_KEEP], 16 * 296960);
    assert_int_equal(in->cost[NQ_FORMAT_NVFP4], 4 * 296960 + 296960 / 16 * 8 + 64);
    assert_int_equal(in->cost[NQ_FORMAT_FP8], 8 * 296960 + 64);
    /* experts: 32 modules of 192 x 256 */
    assert_int_equal(ex->params, 32 * 49152);
    assert_int_equal(ex->cost[NQ_FORMAT_FP8], 32 * (8 * 49152 + 64));
    /* groups come in layer order */
    for (size_t i = 1; i < aq.count; i++)
        assert_true(aq.groups[i - 1].layer <= aq.groups[i].layer);
    /* all-nvfp4 on the searchable modules is 4.5 bits plus the scalars */
    nq_format f[24];
    for (int i = 0; i < 24; i++)
        f[i] = NQ_FORMAT_NVFP4;
    double b = nq_autoq_effective_bits(&aq, f);
    assert_true(b > 4.5 && b < 4.502);
    nq_autoq_free(&aq);

    /* active-moe: routed experts weigh top_k / n_experts = 4 / 16 */
    assert_int_equal(nq_autoq_build(&cfg, &plan, NULL, 0, all, true, &aq, &err), 0);
    assert_int_equal(aq.unit, 16);
    ex = find_group(&aq, "backbone.layers.1.mixer.experts.*.{up,down}_proj");
    in = find_group(&aq, "backbone.layers.0.mixer.in_proj");
    assert_int_equal(ex->weight, 4);
    assert_int_equal(ex->cost[NQ_FORMAT_KEEP], 4 * 16 * 32 * 49152);
    assert_int_equal(in->cost[NQ_FORMAT_KEEP], 16 * 16 * 296960);
    nq_autoq_free(&aq);
    nq_plan_free(&plan);
    nq_checkpoint_close(ck);
}

static void test_solve_budget_and_pins(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_checkpoint *ck;
    nq_plan plan;
    nq_recipe_rule rules[1] = {{.glob = "backbone.layers.3.mixer.[qkv]_proj", .format = NQ_FORMAT_FP8}};
    tiny(&cfg, &ck, rules, 1, &plan);
    bool all[3] = {true, true, true};
    nq_autoq aq;
    nq_error err = {0};
    assert_int_equal(nq_autoq_build(&cfg, &plan, rules, 1, all, false, &aq, &err), 0);
    const nq_autoq_group *qkv = find_group(&aq, "backbone.layers.3.mixer.{q,k,v}_proj");
    assert_true(qkv->pinned);
    assert_int_equal(qkv->choice, NQ_FORMAT_FP8);
    /* scores: nvfp4 costs 1e-3 everywhere, fp8 1e-4; bf16 0 */
    for (size_t i = 0; i < aq.count; i++) {
        aq.groups[i].score[NQ_FORMAT_NVFP4] = 1e-3 * (1 + (double)i / 10);
        aq.groups[i].score[NQ_FORMAT_FP8] = 1e-4;
    }
    /* below the all-nvfp4 minimum: the error names it */
    double min_bits = 0;
    {
        nq_format f[32];
        for (size_t i = 0; i < aq.count; i++)
            f[i] = NQ_FORMAT_NVFP4;
        min_bits = nq_autoq_effective_bits(&aq, f);
    }
    assert_int_equal(nq_autoq_solve(&aq, 4.0, &err), -1);
    char want[64];
    snprintf(want, sizeof want, "smallest feasible budget with these formats is %.4f", min_bits + 5e-5);
    if (!strstr(err.msg, "infeasible") || !strstr(err.msg, want))
        fail_msg("message '%s' lacks '%s'", err.msg, want);
    memset(&err, 0, sizeof err);
    assert_int_equal(nq_autoq_solve(&aq, min_bits, &err), 0);
    for (size_t i = 0; i < aq.count; i++)
        if (!aq.groups[i].pinned)
            assert_int_equal(aq.groups[i].choice, NQ_FORMAT_NVFP4);
    /* 8 bits: every group fits fp8 (8 bits + scalars is just above 8, so one
     * group at least stays nvfp4); 16 bits: all bf16 */
    assert_int_equal(nq_autoq_solve(&aq, 8.5, &err), 0);
    assert_true(nq_autoq_effective_bits(&aq, NULL) <= 8.5);
    assert_int_equal(nq_autoq_solve(&aq, 16.0, &err), 0);
    for (size_t i = 0; i < aq.count; i++)
        if (!aq.groups[i].pinned)
            assert_int_equal(aq.groups[i].choice, NQ_FORMAT_KEEP);
    nq_autoq_free(&aq);

    /* a rule that splits a group is refused */
    nq_plan_free(&plan);
    nq_checkpoint_close(ck);
    nq_recipe_rule split[1] = {{.glob = "backbone.layers.1.mixer.shared_experts.up_proj", .format = NQ_FORMAT_FP8}};
    tiny(&cfg, &ck, split, 1, &plan);
    assert_int_equal(nq_autoq_build(&cfg, &plan, split, 1, all, false, &aq, &err), -1);
    if (!strstr(err.msg, "shared_experts"))
        fail_msg("%s", err.msg);
    assert_non_null(strstr(err.msg, "must share one"));
    nq_plan_free(&plan);
    nq_checkpoint_close(ck);
}

/* ---- MIXED_PRECISION as vLLM resolves it --------------------------------- */

/* vLLM ModelOptMixedPrecisionConfig._resolve_quant_algo, for the module
 * prefixes its NemotronH model asks about: 1. direct lookup; 2. fused
 * qkv_proj from q/k/v, which must agree (else vLLM raises); 3. any key that
 * starts with prefix + "." (FusedMoE experts).  NULL: unquantized. */
static const char *vllm_resolve(json_t *layers, const char *prefix, bool *conflict)
{
    json_t *e = json_object_get(layers, prefix);
    if (e)
        return json_string_value(json_object_get(e, "quant_algo"));
    size_t n = strlen(prefix);
    if (n > 9 && strcmp(prefix + n - 9, ".qkv_proj") == 0) {
        const char *algo = NULL;
        const char *shards[3] = {"q_proj", "k_proj", "v_proj"};
        for (int s = 0; s < 3; s++) {
            char name[300];
            snprintf(name, sizeof name, "%.*s.%s", (int)(n - 9), prefix, shards[s]);
            json_t *x = json_object_get(layers, name);
            const char *a = x ? json_string_value(json_object_get(x, "quant_algo")) : NULL;
            if (a && algo && strcmp(a, algo) != 0)
                *conflict = true;
            if (a)
                algo = a;
        }
        if (algo)
            return algo;
    }
    const char *key;
    json_t *val;
    json_object_foreach(layers, key, val)
    {
        if (strncmp(key, prefix, n) == 0 && key[n] == '.')
            return json_string_value(json_object_get(val, "quant_algo"));
    }
    return NULL;
}

static const char *algo_of(nq_format f)
{
    return f == NQ_FORMAT_NVFP4 ? "NVFP4" : f == NQ_FORMAT_FP8 ? "FP8" : NULL;
}

static void test_mixed_precision_schema(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_checkpoint *ck;
    nq_plan plan;
    tiny(&cfg, &ck, NULL, 0, &plan);
    bool all[3] = {true, true, true};
    nq_autoq aq;
    nq_error err = {0};
    assert_int_equal(nq_autoq_build(&cfg, &plan, NULL, 0, all, false, &aq, &err), 0);
    /* a mix of all three formats */
    for (size_t i = 0; i < aq.count; i++)
        aq.groups[i].choice = (nq_format)(i % 3);
    nq_autoq_apply(&aq, &plan);
    nq_export_info info = {.kv_cache_fp8 = true};
    json_t *doc = nq_modelopt_quant_config(&plan, &info);
    json_t *q = json_object_get(doc, "quantization");
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "producer"), "name")),
                        "modelopt");
    assert_string_equal(json_string_value(json_object_get(q, "quant_algo")), "MIXED_PRECISION");
    assert_string_equal(json_string_value(json_object_get(q, "kv_cache_quant_algo")), "FP8");
    assert_null(json_object_get(q, "exclude_modules"));
    json_t *layers = json_object_get(q, "quantized_layers");
    assert_true(json_object_size(layers) > 0);
    const char *key;
    json_t *val;
    json_object_foreach(layers, key, val)
    {
        const nq_plan_module *m = nq_plan_find(&plan, key);
        assert_non_null(m); /* HF module names */
        const char *a = json_string_value(json_object_get(val, "quant_algo"));
        assert_string_equal(a, algo_of(m->format));
        if (m->format == NQ_FORMAT_NVFP4)
            assert_int_equal(json_integer_value(json_object_get(val, "group_size")), 16);
        else
            assert_null(json_object_get(val, "group_size"));
    }
    /* every module vLLM builds resolves to the plan's format */
    for (size_t j = 0; j < aq.count; j++) {
        const nq_autoq_group *g = &aq.groups[j];
        const nq_plan_module *m0 = &plan.modules[g->members[0]];
        char prefix[300];
        if (strstr(g->name, "{q,k,v}"))
            snprintf(prefix, sizeof prefix, "backbone.layers.%d.mixer.qkv_proj", g->layer);
        else if (strstr(g->name, "experts.*"))
            snprintf(prefix, sizeof prefix, "backbone.layers.%d.mixer.experts", g->layer);
        else
            prefix[0] = '\0';
        bool conflict = false;
        if (prefix[0]) {
            const char *a = vllm_resolve(layers, prefix, &conflict);
            assert_false(conflict);
            if (algo_of(g->choice))
                assert_string_equal(a, algo_of(g->choice));
            else
                assert_null(a);
        }
        for (size_t k = 0; k < g->nmembers; k++) {
            const nq_plan_module *m = &plan.modules[g->members[k]];
            assert_int_equal(m->format, m0->format);
            if (!prefix[0]) {
                const char *a = vllm_resolve(layers, m->name, &conflict);
                if (algo_of(m->format))
                    assert_string_equal(a, algo_of(m->format));
                else
                    assert_null(a);
            }
        }
    }
    /* routers and lm_head stay unquantized */
    assert_null(vllm_resolve(layers, "lm_head", &(bool){false}));
    assert_null(vllm_resolve(layers, "backbone.layers.1.mixer.gate", &(bool){false}));
    json_decref(doc);
    nq_autoq_free(&aq);
    nq_plan_free(&plan);
    nq_checkpoint_close(ck);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_knapsack_is_optimal),
        cmocka_unit_test(test_groups_and_costs),
        cmocka_unit_test(test_solve_budget_and_pins),
        cmocka_unit_test(test_mixed_precision_schema),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
