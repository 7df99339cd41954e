#include "recipe/autoq.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

int64_t nq_autoq_module_bits(nq_format f, int64_t n)
{
    switch (f) {
    case NQ_FORMAT_NVFP4:
        return 4 * n + n / 2 + 64;
    case NQ_FORMAT_FP8:
        return 8 * n + 64;
    case NQ_FORMAT_INT4:
        return -1;
    case NQ_FORMAT_KEEP:
        break;
    }
    return 16 * n;
}

static bool searchable_role(nq_role r)
{
    return r == NQ_ROLE_MAMBA_PROJ || r == NQ_ROLE_ATTENTION_PROJ ||
           r == NQ_ROLE_ROUTED_EXPERTS || r == NQ_ROLE_SHARED_EXPERTS || r == NQ_ROLE_DENSE_MLP;
}

/* The group a module belongs to, as a display name (equal names = one group). */
static void group_key(const nq_plan_module *m, char *out, size_t size)
{
    const char *mixer = strstr(m->name, ".mixer.");
    int head = mixer ? (int)(mixer - m->name) + 7 : 0;
    switch (m->role) {
    case NQ_ROLE_ATTENTION_PROJ:
        if (strstr(m->name, "o_proj"))
            snprintf(out, size, "%s", m->name);
        else
            snprintf(out, size, "%.*s{q,k,v}_proj", head, m->name);
        return;
    case NQ_ROLE_ROUTED_EXPERTS:
        snprintf(out, size, "%.*sexperts.*.{up,down}_proj", head, m->name);
        return;
    case NQ_ROLE_SHARED_EXPERTS:
        snprintf(out, size, "%.*sshared_experts.{up,down}_proj", head, m->name);
        return;
    case NQ_ROLE_DENSE_MLP:
        snprintf(out, size, "%.*s{up,down}_proj", head, m->name);
        return;
    default:
        snprintf(out, size, "%s", m->name);
    }
}

static int cmp_group(const void *a, const void *b)
{
    const nq_autoq_group *x = a, *y = b;
    if (x->layer != y->layer)
        return x->layer < y->layer ? -1 : 1;
    return x->members[0] < y->members[0] ? -1 : x->members[0] > y->members[0];
}

void nq_autoq_free(nq_autoq *aq)
{
    for (size_t i = 0; i < aq->count; i++)
        free(aq->groups[i].members);
    free(aq->groups);
    memset(aq, 0, sizeof *aq);
}

int nq_autoq_build(const nq_model_config *cfg, const nq_plan *plan, const nq_recipe_rule *rules,
                   size_t nrules, const bool formats[NQ_AUTOQ_NFORMATS], bool active_moe,
                   nq_autoq *aq, nq_error *err)
{
    memset(aq, 0, sizeof *aq);
    aq->active_moe = active_moe;
    int64_t n_exp = cfg->n_routed_experts > 0 ? cfg->n_routed_experts : 1;
    int64_t top_k = cfg->num_experts_per_tok > 0 ? cfg->num_experts_per_tok : 1;
    aq->unit = active_moe ? n_exp : 1;
    aq->groups = calloc(plan->count ? plan->count : 1, sizeof *aq->groups);
    if (!aq->groups)
        return nq_fail(err, "auto-quantize: out of memory");
    for (size_t i = 0; i < plan->count; i++) {
        const nq_plan_module *m = &plan->modules[i];
        if (!m->quantizable || !searchable_role(m->role))
            continue;
        char key[256];
        group_key(m, key, sizeof key);
        nq_autoq_group *g = NULL;
        for (size_t j = 0; j < aq->count && !g; j++)
            if (strcmp(aq->groups[j].name, key) == 0)
                g = &aq->groups[j];
        if (!g) {
            g = &aq->groups[aq->count++];
            snprintf(g->name, sizeof g->name, "%s", key);
            g->layer = m->layer;
            g->weight = m->role == NQ_ROLE_ROUTED_EXPERTS && active_moe ? top_k : aq->unit;
            g->pinned_format = m->format;
            for (int f = 0; f < NQ_AUTOQ_NFORMATS; f++)
                g->allowed[f] = formats[f];
        }
        size_t *mem = realloc(g->members, (g->nmembers + 1) * sizeof *mem);
        if (!mem) {
            nq_autoq_free(aq);
            return nq_fail(err, "auto-quantize: out of memory");
        }
        g->members = mem;
        g->members[g->nmembers++] = i;
        int64_t n = m->out_features * m->in_features;
        g->params += n;
        for (int f = 0; f < NQ_AUTOQ_NFORMATS; f++)
            g->cost[f] += nq_autoq_module_bits((nq_format)f, n) * g->weight;
        if (m->in_features % 16 != 0)
            g->allowed[NQ_FORMAT_NVFP4] = false;
        for (size_t r = 0; r < nrules; r++)
            if (fnmatch(rules[r].glob, m->name, 0) == 0)
                g->pinned = true;
        if (m->format != g->pinned_format)
            g->pinned_format = (nq_format)-1; /* checked below for pinned groups */
    }
    /* layer order, then the plan's order inside a layer */
    qsort(aq->groups, aq->count, sizeof *aq->groups, cmp_group);
    for (size_t j = 0; j < aq->count; j++) {
        nq_autoq_group *g = &aq->groups[j];
        if (g->pinned && (int)g->pinned_format < 0) {
            nq_fail(err, "auto-quantize: the rules give the modules of %s different formats; "
                         "they must share one (a server fuses them)",
                    g->name);
            nq_autoq_free(aq);
            return -1;
        }
        bool any = false;
        for (int f = 0; f < NQ_AUTOQ_NFORMATS; f++)
            any |= g->allowed[f];
        if (!g->pinned && !any) {
            nq_fail(err, "auto-quantize: no allowed format fits %s (nvfp4 needs in_features "
                         "divisible by 16); allow bf16 or fp8 in --auto-formats",
                    g->name);
            nq_autoq_free(aq);
            return -1;
        }
        g->choice = g->pinned ? g->pinned_format : NQ_FORMAT_KEEP;
    }
    return 0;
}

double nq_autoq_effective_bits(const nq_autoq *aq, const nq_format *choice)
{
    double bits = 0.0, params = 0.0;
    for (size_t j = 0; j < aq->count; j++) {
        const nq_autoq_group *g = &aq->groups[j];
        if (g->pinned)
            continue;
        nq_format f = choice ? choice[j] : g->choice;
        bits += (double)g->cost[f];
        params += (double)g->params * (double)g->weight;
    }
    return params > 0 ? bits / params : 0.0;
}

double nq_autoq_plan_bits(const nq_autoq *aq, const nq_plan *plan)
{
    double bits = 0.0, params = 0.0;
    for (size_t j = 0; j < aq->count; j++) {
        const nq_autoq_group *g = &aq->groups[j];
        if (g->pinned)
            continue;
        for (size_t k = 0; k < g->nmembers; k++) {
            const nq_plan_module *m = &plan->modules[g->members[k]];
            int64_t n = m->out_features * m->in_features;
            nq_format f = m->format == NQ_FORMAT_INT4 ? NQ_FORMAT_KEEP : m->format;
            bits += (double)nq_autoq_module_bits(f, n) * (double)g->weight;
            params += (double)n * (double)g->weight;
        }
    }
    return params > 0 ? bits / params : 0.0;
}

/* ---- the exact knapsack ------------------------------------------------ */

/* A partial solution after some groups: its cost, value and how it was made
 * (the state it extends in the previous level, the choice it added). */
typedef struct state {
    int64_t cost;
    double value;
    int32_t parent;
    int32_t choice;
} state;

static int cmp_state(const void *a, const void *b)
{
    const state *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost < y->cost ? -1 : 1;
    if (x->value != y->value)
        return x->value < y->value ? -1 : 1;
    if (x->parent != y->parent)
        return x->parent < y->parent ? -1 : 1;
    return x->choice < y->choice ? -1 : x->choice > y->choice;
}

/* Exact by dominance: after each group only the Pareto-optimal partial
 * solutions are kept (none cheaper-or-equal with a lower-or-equal value
 * exists), and those that cannot fit even with the cheapest choices of the
 * remaining groups are dropped.  A dominated partial solution can never be
 * completed into a better answer than its dominator (costs and values add),
 * so the optimum survives.  No discretisation: costs are exact integers. */
#define NQ_MCKP_MAX_STATES (1u << 22)

int nq_mckp_solve(size_t n, int k, const int64_t *cost, const double *value, int64_t budget,
                  int *choice, int64_t *min_budget, nq_error *err)
{
    int64_t *suffix = malloc((n + 1) * sizeof *suffix);
    state **level = calloc(n + 1, sizeof *level);
    size_t *count = calloc(n + 1, sizeof *count);
    int rc = -1;
    if (!suffix || !level || !count) {
        nq_fail(err, "knapsack: out of memory");
        goto done;
    }
    suffix[n] = 0;
    for (size_t g = n; g-- > 0;) {
        int64_t best = -1;
        for (int c = 0; c < k; c++)
            if (cost[g * k + c] >= 0 && (best < 0 || cost[g * k + c] < best))
                best = cost[g * k + c];
        if (best < 0) {
            nq_fail(err, "knapsack: group %zu has no allowed choice", g);
            goto done;
        }
        suffix[g] = suffix[g + 1] + best;
    }
    if (suffix[0] > budget) {
        *min_budget = suffix[0];
        rc = 1;
        goto done;
    }
    level[0] = malloc(sizeof(state));
    if (!level[0]) {
        nq_fail(err, "knapsack: out of memory");
        goto done;
    }
    level[0][0] = (state){0, 0.0, -1, -1};
    count[0] = 1;
    for (size_t g = 0; g < n; g++) {
        size_t cap = count[g] * (size_t)k;
        state *next = malloc((cap ? cap : 1) * sizeof *next);
        if (!next) {
            nq_fail(err, "knapsack: out of memory");
            goto done;
        }
        size_t m = 0;
        for (size_t s = 0; s < count[g]; s++)
            for (int c = 0; c < k; c++) {
                int64_t cc = cost[g * k + c];
                if (cc < 0)
                    continue;
                int64_t nc = level[g][s].cost + cc;
                if (nc + suffix[g + 1] > budget)
                    continue;
                next[m++] = (state){nc, level[g][s].value + value[g * k + c], (int32_t)s, c};
            }
        qsort(next, m, sizeof *next, cmp_state);
        size_t kept = 0;
        for (size_t s = 0; s < m; s++)
            if (kept == 0 || next[s].value < next[kept - 1].value)
                next[kept++] = next[s];
        if (kept > NQ_MCKP_MAX_STATES) {
            free(next);
            nq_fail(err, "knapsack: more than %u Pareto-optimal partial solutions after group "
                         "%zu of %zu; the search is too large to solve exactly",
                    NQ_MCKP_MAX_STATES, g + 1, n);
            goto done;
        }
        level[g + 1] = next;
        count[g + 1] = kept;
    }
    /* sorted by cost with strictly falling values: the last has the least value */
    int32_t s = (int32_t)count[n] - 1;
    for (size_t g = n; g-- > 0;) {
        choice[g] = level[g + 1][s].choice;
        s = level[g + 1][s].parent;
    }
    rc = 0;
done:
    for (size_t g = 0; level && g <= n; g++)
        free(level[g]);
    free(level);
    free(count);
    free(suffix);
    return rc;
}

int nq_autoq_solve(nq_autoq *aq, double bits, nq_error *err)
{
    size_t n = 0;
    double params = 0.0;
    for (size_t j = 0; j < aq->count; j++)
        if (!aq->groups[j].pinned) {
            n++;
            params += (double)aq->groups[j].params * (double)aq->groups[j].weight;
        }
    if (n == 0)
        return nq_fail(err, "auto-quantize: every group is pinned by a rule; nothing to search");
    int64_t *cost = malloc(n * NQ_AUTOQ_NFORMATS * sizeof *cost);
    double *value = malloc(n * NQ_AUTOQ_NFORMATS * sizeof *value);
    int *choice = malloc(n * sizeof *choice);
    size_t *index = malloc(n * sizeof *index);
    int rc = -1;
    if (!cost || !value || !choice || !index) {
        nq_fail(err, "auto-quantize: out of memory");
        goto done;
    }
    size_t i = 0;
    for (size_t j = 0; j < aq->count; j++) {
        const nq_autoq_group *g = &aq->groups[j];
        if (g->pinned)
            continue;
        index[i] = j;
        for (int f = 0; f < NQ_AUTOQ_NFORMATS; f++) {
            cost[i * NQ_AUTOQ_NFORMATS + f] = g->allowed[f] ? g->cost[f] : -1;
            /* a measured KL can come out a hair below zero by rounding */
            value[i * NQ_AUTOQ_NFORMATS + f] = g->score[f] > 0 ? g->score[f] : 0.0;
        }
        i++;
    }
    /* the budget in the same integer units: floor(bits x weighted params) */
    int64_t budget = (int64_t)(bits * params * (1.0 + 1e-12));
    int64_t min_budget = 0;
    int r = nq_mckp_solve(n, NQ_AUTOQ_NFORMATS, cost, value, budget, choice, &min_budget, err);
    if (r < 0)
        goto done;
    if (r == 1) {
        nq_fail(err, "--auto-quantize %.4g: infeasible; the smallest feasible budget with these "
                     "formats is %.4f bits per parameter",
                bits, (double)min_budget / params + 5e-5);
        goto done;
    }
    for (i = 0; i < n; i++)
        aq->groups[index[i]].choice = (nq_format)choice[i];
    rc = 0;
done:
    free(cost);
    free(value);
    free(choice);
    free(index);
    return rc;
}

void nq_autoq_apply(const nq_autoq *aq, nq_plan *plan)
{
    for (size_t j = 0; j < aq->count; j++) {
        const nq_autoq_group *g = &aq->groups[j];
        if (g->pinned)
            continue;
        for (size_t k = 0; k < g->nmembers; k++) {
            nq_plan_module *m = &plan->modules[g->members[k]];
            m->format = g->choice;
            m->group_size = g->choice == NQ_FORMAT_NVFP4 ? 16 : 0;
            snprintf(m->reason, sizeof m->reason,
                     "auto-quantize: group %s nvfp4 %.3g, fp8 %.3g -> %s",
                     aq->proxy_scores ? "proxy" : "KL", g->score[NQ_FORMAT_NVFP4],
                     g->score[NQ_FORMAT_FP8], nq_format_name(g->choice));
        }
    }
    bool nvfp4 = nq_plan_count(plan, NQ_FORMAT_NVFP4) > 0, fp8 = nq_plan_count(plan, NQ_FORMAT_FP8) > 0;
    snprintf(plan->recipe, sizeof plan->recipe, "auto-quantize");
    plan->nnotes = 0;
    if (nvfp4 && fp8)
        snprintf(plan->notes[plan->nnotes++], sizeof plan->notes[0],
                 "nvfp4 and fp8 modules together: exported as ModelOpt MIXED_PRECISION (needs a "
                 "recent vLLM)");
}
