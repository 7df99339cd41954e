/* AutoQuantize, the allocation half: which modules must share a format
 * (groups), what each format costs in bits, and the exact choice of one
 * format per group that minimises the summed sensitivity under a bit budget
 * (a multiple-choice knapsack).  The sensitivities themselves are measured
 * by algo/sensitivity.h; export/autoquant.c ties the two to the plan.
 *
 * Groups (servers fuse these, so they must share one format): q/k/v of an
 * attention layer; all routed experts of a MoE layer, up and down together
 * (one FusedMoE); a shared expert's up and down; a dense MLP's up and down.
 * Mamba in_proj, out_proj and attention o_proj are groups of their own.
 * Embeddings, lm_head, routers and conv1d are never searched.  A group any
 * of whose modules a user rule (--include/--exclude) names is pinned to the
 * format the plan gives it and costs nothing against the budget.
 *
 * Cost, in bits, counted exactly so that the knapsack works on integers:
 *   bf16  16 n
 *   nvfp4 4 n + 8 n/16 (one E4M3 scale per 16) + 2 x 32 (weight_scale_2, input_scale)
 *   fp8   8 n + 2 x 32 (weight_scale, input_scale)
 * for a module of n weights.  With --auto-cost active-moe every routed
 * expert's bits and weights count top_k / n_experts (what one token reads);
 * to stay in integers all costs are then multiplied by n_experts and routed
 * experts' by top_k. */
#ifndef NQ_RECIPE_AUTOQ_H
#define NQ_RECIPE_AUTOQ_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "model/config.h"
#include "recipe/plan.h"

/* Candidate formats are indexed by nq_format: KEEP (bf16), NVFP4, FP8. */
#define NQ_AUTOQ_NFORMATS 3

typedef struct nq_autoq_group {
    char name[256];          /* "backbone.layers.3.mixer.{q,k,v}_proj", ... */
    int layer;
    size_t *members;         /* indices into plan->modules */
    size_t nmembers;
    int64_t params;          /* weights of all members */
    int64_t weight;          /* cost multiplier (1, or top_k / n_experts x n_experts) */
    bool pinned;             /* a user rule names a member: not searched */
    nq_format pinned_format;
    bool allowed[NQ_AUTOQ_NFORMATS];
    int64_t cost[NQ_AUTOQ_NFORMATS];   /* bits x weight */
    double score[NQ_AUTOQ_NFORMATS];   /* sensitivity (KL nats/token); bf16 0 */
    /* Cheaper measures (algo/sensitivity.h): the group's Linear output error
     * and its block's residual-stream error per token, and the proxy score
     * (residual error x the layer's curvature; --auto-score proxy only) */
    double out_err[NQ_AUTOQ_NFORMATS], res_err[NQ_AUTOQ_NFORMATS];
    double proxy[NQ_AUTOQ_NFORMATS];
    nq_format choice;
} nq_autoq_group;

typedef struct nq_autoq {
    nq_autoq_group *groups;
    size_t count;
    bool active_moe;
    int64_t unit;            /* cost of one parameter-weight unit: n_experts (active-moe) or 1 */
    bool proxy_scores;       /* scores are the proxy, not KL (for the reasons) */
} nq_autoq;

/* Bits of one module of n weights in format f (exact; see above). */
int64_t nq_autoq_module_bits(nq_format f, int64_t n);

/* Groups of plan (built with user rules applied; rules: to find pinned
 * groups).  formats: which of nvfp4/fp8/bf16 may be chosen (indexed by
 * nq_format).  Caller frees with nq_autoq_free. */
int nq_autoq_build(const nq_model_config *cfg, const nq_plan *plan, const nq_recipe_rule *rules,
                   size_t nrules, const bool formats[NQ_AUTOQ_NFORMATS], bool active_moe,
                   nq_autoq *aq, nq_error *err);
void nq_autoq_free(nq_autoq *aq);

/* Effective bits per parameter of the searchable groups for the formats in
 * choice[] (one per group, NULL: each group's ->choice), and the same for a
 * plan's formats (to place presets on the same scale). */
double nq_autoq_effective_bits(const nq_autoq *aq, const nq_format *choice);
double nq_autoq_plan_bits(const nq_autoq *aq, const nq_plan *plan);

/* Picks each searchable group's format: minimum total score with
 * effective bits <= bits.  An infeasible budget fails naming the smallest
 * feasible one. */
int nq_autoq_solve(nq_autoq *aq, double bits, nq_error *err);

/* Sets the plan's formats (and reasons) from the groups' choices. */
void nq_autoq_apply(const nq_autoq *aq, nq_plan *plan);

/* The exact multiple-choice knapsack on its own (for tests): n groups of k
 * choices, cost[g*k+c] (< 0: not allowed), value[g*k+c] >= 0; minimise the
 * summed value with summed cost <= budget.  choice[n] receives the answer.
 * Returns 0; 1 when infeasible (*min_budget = the least feasible budget);
 * -1 on error (out of memory, search too large). */
int nq_mckp_solve(size_t n, int k, const int64_t *cost, const double *value, int64_t budget,
                  int *choice, int64_t *min_budget, nq_error *err);

#endif
