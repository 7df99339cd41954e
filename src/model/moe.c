/* The Mixture-of-Experts mixer of Nemotron-H (transformers' NemotronHMoE and
 * NemotronHTopkRouter, modeling_nemotron_h.py of 5.17).
 *
 * Checked there:
 * - router_logits = F.linear(x.float(), gate.weight.float()); scores =
 *   sigmoid(logits); e_score_correction_bias is added to the scores used to
 *   CHOOSE experts only;
 * - group score = sum of the top-2 biased scores of each of the n_group
 *   groups; the topk_group best groups stay, the other experts are masked
 *   to -inf; then topk(num_experts_per_tok) over the biased scores;
 * - the weights are the UNbiased scores of the chosen experts, divided by
 *   (their sum + 1e-20) when norm_topk_prob, then times
 *   routed_scaling_factor;
 * - each expert is down_proj(act(up_proj(x))) (no gate projection), act =
 *   mlp_hidden_act; NemotronHExperts accumulates weight * expert(x) into a
 *   zero buffer expert by expert in ascending expert index (index_add_),
 *   then the MoE adds shared_experts(x) (one NemotronHMLP of
 *   moe_shared_expert_intermediate_size; n_shared_experts is not used by
 *   transformers).
 * Ties in top-k: torch.topk(sorted=False) leaves the order of equal values
 * unspecified; we take the larger value first and, among equal values, the
 * lower index (groups and experts alike).  With sigmoid scores in f32 exact
 * ties essentially never happen except between masked (-inf) experts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/layers.h"

#define NQ_MOE_MAX_EXPERTS 4096

/* Index of the largest value not yet taken (lower index wins ties; a NaN
 * is never preferred, but something is always returned). */
static int argmax_free(const float *v, const unsigned char *taken, int count)
{
    int best = -1;
    for (int i = 0; i < count; i++) {
        if (taken[i])
            continue;
        if (best < 0 || v[i] > v[best] || (isnan(v[best]) && !isnan(v[i])))
            best = i;
    }
    return best;
}

void nq_moe_select(const nq_model_config *cfg, const float *scores, const float *score_bias,
                   int32_t *experts, float *weights)
{
    int E = cfg->n_routed_experts, ng = cfg->n_group > 0 ? cfg->n_group : 1;
    int gs = E / ng, topk = cfg->num_experts_per_tok;
    float choice[NQ_MOE_MAX_EXPERTS];
    float gscore[NQ_MOE_MAX_EXPERTS];
    unsigned char taken[NQ_MOE_MAX_EXPERTS];

    for (int e = 0; e < E; e++)
        choice[e] = scores[e] + (score_bias ? score_bias[e] : 0.0f);

    /* Group scores: sum of each group's two best biased scores. */
    for (int g = 0; g < ng; g++) {
        const float *c = choice + (size_t)g * gs;
        int pick = gs < 2 ? gs : 2;
        memset(taken, 0, (size_t)gs);
        float sum = 0.0f;
        for (int k = 0; k < pick; k++) {
            int b = argmax_free(c, taken, gs);
            taken[b] = 1;
            sum += c[b];
        }
        gscore[g] = sum;
    }
    /* Keep the topk_group best groups; mask the others' experts. */
    if (cfg->topk_group < ng) {
        memset(taken, 0, (size_t)ng);
        for (int k = 0; k < cfg->topk_group; k++)
            taken[argmax_free(gscore, taken, ng)] = 1;
        for (int g = 0; g < ng; g++)
            if (!taken[g])
                for (int e = 0; e < gs; e++)
                    choice[(size_t)g * gs + e] = -INFINITY;
    }
    memset(taken, 0, (size_t)E);
    float sum = 0.0f;
    for (int k = 0; k < topk; k++) {
        int b = argmax_free(choice, taken, E);
        taken[b] = 1;
        experts[k] = b;
        weights[k] = scores[b];
        sum += scores[b];
    }
    if (cfg->norm_topk_prob) {
        float denom = sum + 1e-20f;
        for (int k = 0; k < topk; k++)
            weights[k] /= denom;
    }
    for (int k = 0; k < topk; k++)
        weights[k] *= cfg->routed_scaling_factor;
}

int nq_moe_route(const nq_exec *ex, const nq_model_config *cfg, const nq_moe_weights *w,
                 const float *x, int n, float *logits, int32_t *experts, float *weights)
{
    int E = cfg->n_routed_experts, topk = cfg->num_experts_per_tok;
    if (E > NQ_MOE_MAX_EXPERTS)
        return nq_fail(ex->err, "%sgate: %d experts, more than the %d supported", ex->prefix, E,
                       NQ_MOE_MAX_EXPERTS);
    if (nq_linear(ex, "gate.weight", -1, NULL, x, n, cfg->hidden_size, w->gate, NULL, E, logits) != 0)
        return -1;
    float scores[NQ_MOE_MAX_EXPERTS];
    for (int t = 0; t < n; t++) {
        const float *l = logits + (size_t)t * E;
        for (int e = 0; e < E; e++)
            scores[e] = 1.0f / (1.0f + expf(-l[e]));
        nq_moe_select(cfg, scores, w->score_bias, experts + (size_t)t * topk,
                      weights + (size_t)t * topk);
    }
    if (ex->hooks && ex->hooks->routing) {
        nq_routing r = {.layer = ex->layer, .tokens = n, .top_k = topk, .n_experts = E,
                        .router_logits = logits, .experts = experts, .weights = weights};
        if (ex->hooks->routing(ex->hooks->ctx, &r, ex->err) != 0)
            return nq_fail(ex->err, "%sgate: routing hook failed", ex->prefix);
    }
    return 0;
}

int nq_moe_forward(const nq_exec *ex, const nq_model_config *cfg, const nq_moe_weights *w,
                   nq_act act, const float *x, int n, const int32_t *experts,
                   const float *weights, float *y)
{
    int H = cfg->hidden_size, E = cfg->n_routed_experts, topk = cfg->num_experts_per_tok;
    int rc = -1;
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    float *tw = malloc((size_t)n * sizeof *tw);
    float *xin = malloc((size_t)n * H * sizeof *xin);
    float *out = malloc((size_t)n * H * sizeof *out);
    if (!tok || !tw || !xin || !out) {
        nq_fail(ex->err, "%smoe: out of memory for %d tokens", ex->prefix, n);
        goto done;
    }
    memset(y, 0, (size_t)n * H * sizeof *y);
    for (int e = 0; e < E; e++) {
        int cnt = 0;
        for (int t = 0; t < n; t++)
            for (int k = 0; k < topk; k++)
                if (experts[(size_t)t * topk + k] == e) {
                    tok[cnt] = t;
                    tw[cnt] = weights[(size_t)t * topk + k];
                    memcpy(xin + (size_t)cnt * H, x + (size_t)t * H, (size_t)H * sizeof *xin);
                    cnt++;
                    break;
                }
        if (cnt == 0)
            continue;
        if (!w->experts[e].up) {
            nq_fail(ex->err, "%sexperts.%d: weights not loaded", ex->prefix, e);
            goto done;
        }
        char names[32];
        snprintf(names, sizeof names, "experts.%d.", e);
        if (nq_mlp_forward(ex, names, e, tok, &w->experts[e], act, xin, cnt, H, out) != 0)
            goto done;
        for (int r = 0; r < cnt; r++) {
            float *yr = y + (size_t)tok[r] * H;
            const float *orow = out + (size_t)r * H;
            for (int i = 0; i < H; i++)
                yr[i] += orow[i] * tw[r];
        }
    }
    if (w->shared.up) {
        if (nq_mlp_forward(ex, "shared_experts.", -1, NULL, &w->shared, act, x, n, H, out) != 0)
            goto done;
        for (size_t i = 0; i < (size_t)n * H; i++)
            y[i] += out[i];
    }
    rc = 0;
done:
    free(tok);
    free(tw);
    free(xin);
    free(out);
    return rc;
}
