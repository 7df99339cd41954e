/* AutoQuantize inside `nemoq quantize`: groups and costs from the plan
 * (recipe/autoq.h), sensitivities measured on the calibration text
 * (algo/sensitivity.h), the exact knapsack, and the chosen formats written
 * back into the plan, which the ordinary calibrated export then writes
 * (NVFP4 + FP8 together as ModelOpt MIXED_PRECISION). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algo/sensitivity.h"
#include "calib/calib.h"
#include "export/autoquant.h"
#include "export/calibrated.h"
#include "export/output.h"
#include "recipe/autoq.h"
#include "tok/tokenizer.h"

/* A preset's effective bits on the searchable groups, and its predicted KL
 * (the sum of the group scores for the formats it gives; NAN when a group's
 * modules get different or unscored formats). */
static double preset_bits(const nq_autoq *aq, const nq_model_config *cfg,
                          const nq_checkpoint *ck, const char *preset, double *predicted)
{
    nq_recipe_options ro = {.preset = preset};
    nq_plan p;
    nq_error e = {0};
    *predicted = NAN;
    if (nq_plan_build(cfg, ck, &ro, &p, &e) != 0)
        return 0.0;
    double b = nq_autoq_plan_bits(aq, &p), sum = 0.0;
    for (size_t j = 0; j < aq->count && !isnan(sum); j++) {
        const nq_autoq_group *g = &aq->groups[j];
        if (g->pinned)
            continue;
        nq_format f = p.modules[g->members[0]].format;
        for (size_t k = 1; k < g->nmembers; k++)
            if (p.modules[g->members[k]].format != f)
                f = NQ_FORMAT_INT4;
        sum = f == NQ_FORMAT_INT4 || (f != NQ_FORMAT_KEEP && !g->allowed[f]) ? NAN
                                                                             : sum + g->score[f];
    }
    *predicted = sum;
    nq_plan_free(&p);
    return b;
}

static double predicted_kl(const nq_autoq *aq, const nq_format *choice)
{
    double sum = 0.0;
    for (size_t j = 0; j < aq->count; j++)
        if (!aq->groups[j].pinned)
            sum += aq->groups[j].score[choice ? choice[j] : aq->groups[j].choice];
    return sum;
}

static json_t *point(double x, double y, const char *name)
{
    return json_pack("{s:f, s:f, s:s}", "x", x, "y", y, "name", name);
}

/* auto_quantize.pareto for the report (eval/report.h draws it): the
 * knapsack's answer at budgets spread from the cheapest to the dearest
 * assignment, every format alone, and the presets, each at its effective
 * bits and predicted KL (the sum of its groups' scores). */
static json_t *pareto_json(nq_autoq *aq, const char *const *names, const double *pbits,
                           const double *ppred, size_t npresets, uint64_t score_tokens,
                           double own_budget)
{
    nq_format *saved = malloc(aq->count * sizeof *saved), *uni = malloc(aq->count * sizeof *uni);
    json_t *curve = json_array(), *uniform = json_array(), *chosen = json_array();
    if (!saved || !uni || !curve || !uniform || !chosen)
        goto fail;
    for (size_t j = 0; j < aq->count; j++)
        saved[j] = aq->groups[j].choice;
    json_array_append_new(chosen, point(nq_autoq_effective_bits(aq, NULL),
                                        predicted_kl(aq, NULL), "this run's choice"));
    for (int f = NQ_FORMAT_NVFP4; f <= NQ_FORMAT_FP8; f++) {
        bool all = true;
        for (size_t j = 0; j < aq->count; j++) {
            const nq_autoq_group *g = &aq->groups[j];
            uni[j] = g->pinned ? g->choice : (nq_format)f;
            all &= g->pinned || g->allowed[f];
        }
        if (all) {
            char name[32];
            snprintf(name, sizeof name, "all %s", nq_format_name((nq_format)f));
            json_array_append_new(uniform, point(nq_autoq_effective_bits(aq, uni),
                                                 predicted_kl(aq, uni), name));
        }
    }
    /* the cheapest assignment (uni) and the dearest (left in ->choice) */
    for (size_t j = 0; j < aq->count; j++) {
        nq_autoq_group *g = &aq->groups[j];
        int c = -1, d = -1;
        for (int f = 0; f < NQ_AUTOQ_NFORMATS && !g->pinned; f++)
            if (g->allowed[f]) {
                if (c < 0 || g->cost[f] < g->cost[c])
                    c = f;
                if (d < 0 || g->cost[f] > g->cost[d])
                    d = f;
            }
        uni[j] = c < 0 ? g->choice : (nq_format)c;
        g->choice = d < 0 ? g->choice : (nq_format)d;
    }
    double lo = nq_autoq_effective_bits(aq, uni), hi = nq_autoq_effective_bits(aq, NULL);
    for (size_t i = 0; i < npresets; i++)
        if (!isnan(ppred[i]))
            json_array_append_new(uniform, point(pbits[i], ppred[i], names[i]));
    double last = -1.0;
    enum { STEPS = 40 };
    /* the grid, with the run's own budget in its place (so its choice is on the curve) */
    bool own_done = !(own_budget > lo && own_budget < hi);
    for (int k = 0; k <= STEPS; k++) {
        double budget = lo + (hi - lo) * k / STEPS;
        if (!own_done && own_budget <= budget) {
            own_done = true;
            budget = own_budget;
            k--;
        }
        nq_error e = {0};
        if (nq_autoq_solve(aq, budget, &e) != 0)
            continue;
        double b = nq_autoq_effective_bits(aq, NULL);
        if (b == last)
            continue;
        last = b;
        char name[48];
        snprintf(name, sizeof name, "budget %.3f", budget);
        json_array_append_new(curve, point(b, predicted_kl(aq, NULL), name));
    }
    for (size_t j = 0; j < aq->count; j++)
        aq->groups[j].choice = saved[j];
    free(saved);
    free(uni);
    char caption[500], tokens[64] = "scores of an earlier report";
    if (score_tokens > 0)
        snprintf(tokens, sizeof tokens, "%llu scoring tokens", (unsigned long long)score_tokens);
    snprintf(caption, sizeof caption,
             "Predicted: the sum of the %s (%s) for the "
             "formats each point assigns. The AutoQuantize curve is the exact knapsack at "
             "budgets from the cheapest to the dearest assignment; the uniform points put every "
             "searchable group in one format or follow a preset.",
             aq->proxy_scores ? "group proxies" : "measured group KLs", tokens);
    const char *what = aq->proxy_scores ? "group proxies" : "group KLs";
    char l1[80], l2[80], l3[80];
    snprintf(l1, sizeof l1, "AutoQuantize (sum of %s)", what);
    snprintf(l2, sizeof l2, "uniform formats and presets (sum of %s)", what);
    snprintf(l3, sizeof l3, "this run's choice (sum of %s)", what);
    return json_pack("{s:s, s:s, s:s, s:[{s:s, s:b, s:o}, {s:s, s:b, s:o}, {s:s, s:b, s:o}]}",
                     "caption", caption, "x_label",
                     "effective bits per parameter (searchable modules)", "y_label",
                     aq->proxy_scores ? "proxy KL (nats/token)" : "KL (nats/token)",
                     "series", "label", l1, "line", 1, "points", curve, "label", l2, "line", 0,
                     "points", uniform, "label", l3, "line", 0, "points", chosen);
fail:
    free(saved);
    free(uni);
    json_decref(curve);
    json_decref(uniform);
    json_decref(chosen);
    return NULL;
}

/* The scores of an earlier run's report (PATH.json, or its "auto_quantize"
 * object): every searched group must be there with a score for every
 * allowed format. */
static int load_scores(const char *path, bool proxy, nq_autoq *aq, nq_error *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return nq_fail(err, "--auto-scores %s: %s (line %d)", path, je.text, je.line);
    json_t *obj = json_object_get(root, "auto_quantize") ? json_object_get(root, "auto_quantize")
                                                          : root;
    json_t *groups = json_object_get(obj, "groups");
    int rc = 0;
    if (!json_is_array(groups)) {
        rc = nq_fail(err, "--auto-scores %s: no \"groups\" array (expected the JSON report of "
                          "an --auto-quantize run)",
                     path);
        goto done;
    }
    for (size_t j = 0; j < aq->count && rc == 0; j++) {
        nq_autoq_group *g = &aq->groups[j];
        if (g->pinned)
            continue;
        json_t *found = NULL, *e;
        size_t i;
        json_array_foreach(groups, i, e)
        {
            const char *name = json_string_value(json_object_get(e, "group"));
            if (name && strcmp(name, g->name) == 0)
                found = e;
        }
        if (!found) {
            rc = nq_fail(err, "--auto-scores %s: no scores for group %s", path, g->name);
            break;
        }
        static const char *kl_keys[NQ_AUTOQ_NFORMATS] = {NULL, "kl_nvfp4", "kl_fp8"};
        static const char *proxy_keys[NQ_AUTOQ_NFORMATS] = {NULL, "proxy_nvfp4", "proxy_fp8"};
        static const char *out_keys[NQ_AUTOQ_NFORMATS] = {NULL, "out_err_nvfp4", "out_err_fp8"};
        static const char *res_keys[NQ_AUTOQ_NFORMATS] = {NULL, "res_err_nvfp4", "res_err_fp8"};
        const char *const *keys = proxy ? proxy_keys : kl_keys;
        for (int f = NQ_FORMAT_NVFP4; f <= NQ_FORMAT_FP8; f++) {
            if (!g->allowed[f])
                continue;
            g->proxy[f] = json_number_value(json_object_get(found, proxy_keys[f]));
            g->out_err[f] = json_number_value(json_object_get(found, out_keys[f]));
            g->res_err[f] = json_number_value(json_object_get(found, res_keys[f]));
            json_t *v = json_object_get(found, keys[f]);
            if (!json_is_number(v) || !(json_number_value(v) >= 0)) {
                rc = nq_fail(err, "--auto-scores %s: group %s has no %s score", path, g->name,
                             keys[f]);
                break;
            }
            g->score[f] = json_number_value(v);
        }
    }
done:
    json_decref(root);
    return rc;
}

int nq_autoquantize_plan(const nq_quantize_options *opt, const nq_checkpoint *ck,
                         const nq_model_config *cfg, nq_plan *plan, nq_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", opt->in_dir);
    nq_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    nq_autoq aq = {0};
    int rc = -1;
    if (!opt->calib_path)
        return nq_fail(err, "--auto-quantize needs --calib FILE (sensitivities are measured on "
                            "the model's output over calibration text)");
    if (!(tok = nq_tokenizer_load(path, err)))
        goto done;
    int S, T;
    size_t stream;
    if (nq_calib_tokens(opt->calib_path, tok, opt->calib_samples > 0 ? opt->calib_samples : 256,
                        opt->calib_len > 0 ? opt->calib_len : 2048, &ids, &S, &T, &stream,
                        err) != 0)
        goto done;
    if (nq_autoq_build(cfg, plan, opt->recipe.rules, opt->recipe.nrules, opt->auto_formats,
                       opt->auto_active_moe, &aq, err) != 0)
        goto done;
    nq_sensitivity_options so = {.ids = ids, .samples = S, .len = T,
                                 .score_windows = opt->auto_score_windows > 0
                                                      ? opt->auto_score_windows
                                                      : 16,
                                 .mse_scales = opt->mse_scales, .gptq = opt->gptq,
                                 .gptq_damp = opt->gptq_damp,
                                 .gptq_min_rows = opt->gptq_min_rows, .threads = opt->threads,
                                 .proxy_only = opt->auto_score_proxy, .log = opt->log};
    nq_sensitivity_cost cost = {0};
    aq.proxy_scores = opt->auto_score_proxy;
    if (opt->auto_scores_path) {
        if (load_scores(opt->auto_scores_path, opt->auto_score_proxy, &aq, err) != 0)
            goto done;
    } else if (nq_sensitivity_measure(ck, cfg, plan, &aq, &so, &cost, err) != 0) {
        goto done;
    }
    if (nq_autoq_solve(&aq, opt->auto_bits, err) != 0)
        goto done;
    double eff = nq_autoq_effective_bits(&aq, NULL);
    double predicted = 0.0;
    size_t searched = 0;
    if (opt->auto_score_proxy)
        printf("auto-quantize: %zu groups (%s cost), scores = proxy: the group's residual "
               "error after its block x the layer's curvature (KL per squared perturbation), "
               "nats/token, no KL measured\n",
               aq.count, opt->auto_active_moe ? "active-moe" : "weight");
    else
        printf("auto-quantize: %zu groups (%s cost), scores = KL(float || only this group "
               "quantized) over %llu calibration tokens, nats/token\n",
               aq.count, opt->auto_active_moe ? "active-moe" : "weight",
               (unsigned long long)cost.score_tokens);
    printf("%-58s %11s %10s %10s %-6s %s\n", "group", "params",
           opt->auto_score_proxy ? "px nvfp4" : "kl nvfp4",
           opt->auto_score_proxy ? "px fp8" : "kl fp8", "choice", "bits/param");
    for (size_t j = 0; j < aq.count; j++) {
        const nq_autoq_group *g = &aq.groups[j];
        char a[32] = "-", b[32] = "-";
        if (!g->pinned && g->allowed[NQ_FORMAT_NVFP4])
            snprintf(a, sizeof a, "%.6f", g->score[NQ_FORMAT_NVFP4]);
        if (!g->pinned && g->allowed[NQ_FORMAT_FP8])
            snprintf(b, sizeof b, "%.6f", g->score[NQ_FORMAT_FP8]);
        double bits = (double)g->cost[g->choice] / ((double)g->params * (double)g->weight);
        printf("%-58s %11lld %10s %10s %-6s %.3f%s\n", g->name, (long long)g->params, a, b,
               nq_format_name(g->choice), bits, g->pinned ? " (pinned by a rule)" : "");
        if (!g->pinned) {
            predicted += g->score[g->choice];
            searched++;
        }
    }
    static const char *const presets[4] = {"nvfp4-conservative", "nvfp4-aggressive",
                                           "fp8-conservative", "fp8-aggressive"};
    double pbits[4], ppred[4];
    for (int k = 0; k < 4; k++)
        pbits[k] = preset_bits(&aq, cfg, ck, presets[k], &ppred[k]);
    double b_cons = pbits[0], b_nv = pbits[1], b_fp8c = pbits[2], b_fp8 = pbits[3];
    printf("auto-quantize: budget %.4f, chosen %.4f effective bits/param over the %zu searched "
           "groups (for reference on the same scale: nvfp4-conservative %.4f, nvfp4-aggressive "
           "%.4f, fp8-conservative %.4f, fp8-aggressive %.4f); sum of chosen scores %.6f\n",
           opt->auto_bits, eff, searched, b_cons, b_nv, b_fp8c, b_fp8, predicted);
    char gptq_note[160] = "";
    if (opt->gptq)
        snprintf(gptq_note, sizeof gptq_note,
                 "; nvfp4 scored with gptq weights (%llu encodings; %llu with too few "
                 "calibration rows by rtn+mse, as the export)",
                 (unsigned long long)cost.gptq_modules, (unsigned long long)cost.gptq_fallbacks);
    if (opt->auto_scores_path)
        printf("auto-quantize: scores read from %s\n", opt->auto_scores_path);
    else if (opt->auto_score_proxy)
        printf("auto-quantize: sensitivity cost (proxy) %llu layer evaluations of %d tokens, "
               "%.1f s (float pass %.1f s)%s\n",
               (unsigned long long)cost.layer_evals, T, cost.seconds, cost.float_pass_seconds,
               gptq_note);
    else
        printf("auto-quantize: sensitivity cost %llu layer evaluations of %d tokens, %.1f s "
               "(float pass %.1f s)%s\n",
               (unsigned long long)cost.layer_evals, T, cost.seconds, cost.float_pass_seconds,
               gptq_note);
    if (opt->auto_report) {
        json_t *groups = json_array();
        for (size_t j = 0; j < aq.count; j++) {
            const nq_autoq_group *g = &aq.groups[j];
            json_t *members = json_array();
            for (size_t k = 0; k < g->nmembers; k++)
                json_array_append_new(members, json_string(plan->modules[g->members[k]].name));
            bool sn = !g->pinned && g->allowed[NQ_FORMAT_NVFP4];
            bool sf = !g->pinned && g->allowed[NQ_FORMAT_FP8];
            bool kl = !opt->auto_score_proxy;
            json_array_append_new(
                groups, json_pack("{s:s, s:i, s:I, s:b, s:o, s:o, s:s, s:f, s:o}", "group",
                                  g->name, "layer", g->layer, "params", (json_int_t)g->params,
                                  "pinned", g->pinned, "kl_nvfp4",
                                  sn && kl ? json_real(g->score[NQ_FORMAT_NVFP4]) : json_null(),
                                  "kl_fp8",
                                  sf && kl ? json_real(g->score[NQ_FORMAT_FP8]) : json_null(),
                                  "choice",
                                  nq_format_name(g->choice), "bits_per_param",
                                  (double)g->cost[g->choice] /
                                      ((double)g->params * (double)g->weight),
                                  "modules", members));
            json_t *rec = json_array_get(groups, json_array_size(groups) - 1);
            static const char *pk[NQ_AUTOQ_NFORMATS] = {NULL, "proxy_nvfp4", "proxy_fp8"};
            static const char *ok[NQ_AUTOQ_NFORMATS] = {NULL, "out_err_nvfp4", "out_err_fp8"};
            static const char *rk[NQ_AUTOQ_NFORMATS] = {NULL, "res_err_nvfp4", "res_err_fp8"};
            for (int f = NQ_FORMAT_NVFP4; f <= NQ_FORMAT_FP8 && rec; f++) {
                bool on = !g->pinned && g->allowed[f];
                json_object_set_new(rec, pk[f], on && opt->auto_score_proxy
                                                    ? json_real(g->proxy[f])
                                                    : json_null());
                json_object_set_new(rec, ok[f], on ? json_real(g->out_err[f]) : json_null());
                json_object_set_new(rec, rk[f], on ? json_real(g->res_err[f]) : json_null());
            }
        }
        json_object_set_new(opt->auto_report, "budget_bits", json_real(opt->auto_bits));
        json_object_set_new(opt->auto_report, "effective_bits", json_real(eff));
        json_object_set_new(opt->auto_report, "cost",
                            json_string(opt->auto_active_moe ? "active-moe" : "weight"));
        json_object_set_new(opt->auto_report, "sum_of_scores", json_real(predicted));
        json_object_set_new(opt->auto_report, "score_tokens",
                            json_integer((json_int_t)cost.score_tokens));
        json_object_set_new(opt->auto_report, "layer_evaluations",
                            json_integer((json_int_t)cost.layer_evals));
        json_object_set_new(opt->auto_report, "seconds", json_real(cost.seconds));
        json_object_set_new(opt->auto_report, "scores_from",
                            opt->auto_scores_path  ? json_string(opt->auto_scores_path)
                            : opt->auto_score_proxy ? json_string("proxy")
                                                    : json_string("measured"));
        json_object_set_new(opt->auto_report, "preset_bits",
                            json_pack("{s:f, s:f, s:f, s:f}", "nvfp4-conservative", b_cons,
                                      "nvfp4-aggressive", b_nv, "fp8-conservative", b_fp8c,
                                      "fp8-aggressive", b_fp8));
        json_object_set_new(opt->auto_report, "groups", groups);
        json_t *pareto = pareto_json(&aq, presets, pbits, ppred, 4, cost.score_tokens,
                                     opt->auto_bits);
        if (!pareto) {
            nq_fail(err, "auto-quantize: out of memory");
            goto done;
        }
        json_object_set_new(opt->auto_report, "pareto", pareto);
    }
    nq_autoq_apply(&aq, plan);
    if (nq_plan_count(plan, NQ_FORMAT_NVFP4) + nq_plan_count(plan, NQ_FORMAT_FP8) == 0) {
        nq_fail(err, "--auto-quantize %.4g: the budget keeps every module in bf16; nothing to "
                     "quantize",
                opt->auto_bits);
        goto done;
    }
    rc = 0;
done:
    nq_autoq_free(&aq);
    free(ids);
    nq_tokenizer_free(tok);
    return rc;
}
