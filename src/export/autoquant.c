/* AutoQuantize inside `nemoq quantize`: groups and costs from the plan
 * (recipe/autoq.h), sensitivities measured on the calibration text
 * (algo/sensitivity.h), the exact knapsack, and the chosen formats written
 * back into the plan, which the ordinary calibrated export then writes
 * (NVFP4 + FP8 together as ModelOpt MIXED_PRECISION). */
#include <jansson.h>
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

static double preset_bits(const nq_autoq *aq, const nq_model_config *cfg,
                          const nq_checkpoint *ck, const char *preset)
{
    nq_recipe_options ro = {.preset = preset};
    nq_plan p;
    nq_error e = {0};
    if (nq_plan_build(cfg, ck, &ro, &p, &e) != 0)
        return 0.0;
    double b = nq_autoq_plan_bits(aq, &p);
    nq_plan_free(&p);
    return b;
}

/* The scores of an earlier run's report (PATH.json, or its "auto_quantize"
 * object): every searched group must be there with a score for every
 * allowed format. */
static int load_scores(const char *path, nq_autoq *aq, nq_error *err)
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
        static const char *keys[NQ_AUTOQ_NFORMATS] = {NULL, "kl_nvfp4", "kl_fp8"};
        for (int f = NQ_FORMAT_NVFP4; f <= NQ_FORMAT_FP8; f++) {
            if (!g->allowed[f])
                continue;
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
                                 .mse_scales = opt->mse_scales, .threads = opt->threads,
                                 .log = opt->log};
    nq_sensitivity_cost cost = {0};
    if (opt->auto_scores_path) {
        if (load_scores(opt->auto_scores_path, &aq, err) != 0)
            goto done;
    } else if (nq_sensitivity_measure(ck, cfg, plan, &aq, &so, &cost, err) != 0) {
        goto done;
    }
    if (nq_autoq_solve(&aq, opt->auto_bits, err) != 0)
        goto done;
    double eff = nq_autoq_effective_bits(&aq, NULL);
    double predicted = 0.0;
    size_t searched = 0;
    printf("auto-quantize: %zu groups (%s cost), scores = KL(float || only this group "
           "quantized) over %llu calibration tokens, nats/token\n",
           aq.count, opt->auto_active_moe ? "active-moe" : "weight",
           (unsigned long long)cost.score_tokens);
    printf("%-58s %11s %10s %10s %-6s %s\n", "group", "params", "kl nvfp4", "kl fp8", "choice",
           "bits/param");
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
    double b_cons = preset_bits(&aq, cfg, ck, "nvfp4-conservative");
    double b_nv = preset_bits(&aq, cfg, ck, "nvfp4-aggressive");
    double b_fp8 = preset_bits(&aq, cfg, ck, "fp8-aggressive");
    double b_fp8c = preset_bits(&aq, cfg, ck, "fp8-conservative");
    printf("auto-quantize: budget %.4f, chosen %.4f effective bits/param over the %zu searched "
           "groups (for reference on the same scale: nvfp4-conservative %.4f, nvfp4-aggressive "
           "%.4f, fp8-conservative %.4f, fp8-aggressive %.4f); sum of chosen scores %.6f\n",
           opt->auto_bits, eff, searched, b_cons, b_nv, b_fp8c, b_fp8, predicted);
    if (opt->auto_scores_path)
        printf("auto-quantize: scores read from %s\n", opt->auto_scores_path);
    else
        printf("auto-quantize: sensitivity cost %llu layer evaluations of %d tokens, %.1f s "
               "(float pass %.1f s)%s\n",
               (unsigned long long)cost.layer_evals, T, cost.seconds, cost.float_pass_seconds,
               opt->gptq ? "; note: scores use round-to-nearest weights, not GPTQ" : "");
    if (opt->auto_report) {
        json_t *groups = json_array();
        for (size_t j = 0; j < aq.count; j++) {
            const nq_autoq_group *g = &aq.groups[j];
            json_t *members = json_array();
            for (size_t k = 0; k < g->nmembers; k++)
                json_array_append_new(members, json_string(plan->modules[g->members[k]].name));
            bool sn = !g->pinned && g->allowed[NQ_FORMAT_NVFP4];
            bool sf = !g->pinned && g->allowed[NQ_FORMAT_FP8];
            json_array_append_new(
                groups, json_pack("{s:s, s:i, s:I, s:b, s:o, s:o, s:s, s:f, s:o}", "group",
                                  g->name, "layer", g->layer, "params", (json_int_t)g->params,
                                  "pinned", g->pinned, "kl_nvfp4",
                                  sn ? json_real(g->score[NQ_FORMAT_NVFP4]) : json_null(),
                                  "kl_fp8", sf ? json_real(g->score[NQ_FORMAT_FP8]) : json_null(),
                                  "choice",
                                  nq_format_name(g->choice), "bits_per_param",
                                  (double)g->cost[g->choice] /
                                      ((double)g->params * (double)g->weight),
                                  "modules", members));
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
                            opt->auto_scores_path ? json_string(opt->auto_scores_path)
                                                  : json_string("measured"));
        json_object_set_new(opt->auto_report, "preset_bits",
                            json_pack("{s:f, s:f, s:f, s:f}", "nvfp4-conservative", b_cons,
                                      "nvfp4-aggressive", b_nv, "fp8-conservative", b_fp8c,
                                      "fp8-aggressive", b_fp8));
        json_object_set_new(opt->auto_report, "groups", groups);
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
