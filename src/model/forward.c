/* The Nemotron-H model: recurrent state and the block loop
 * (transformers' NemotronHModel/NemotronHBlock: x = x + mixer(norm(x)) per
 * block, then norm_f, then lm_head); the weights each block runs with come
 * from weights.c. */
#include "model/forward.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/blas.h"
#include "core/parallel.h"
#include "cuda/cuda.h"
#include "model/layers.h"
#include "model/model_internal.h"

struct nq_state {
    const nq_model *m;
    int *tokens;        /* per block: tokens consumed */
    float **conv;       /* Mamba blocks: [kernel-1, conv_dim] */
    float **ssm;        /* Mamba blocks: [heads, head_dim, state] */
    float **k, **v;     /* attention blocks: [cap, kv_heads*head_dim] */
    int *cap;
};

/* ---- model ------------------------------------------------------------ */

/* time_step_min is not part of nq_model_config, so it is read here from the
 * checkpoint's config.json (transformers also accepts the legacy name
 * mamba_dt_min); 0.001 is NemotronHConfig's default. */
static float read_dt_min(const nq_checkpoint *ck)
{
    float dt_min = 0.001f;
    if (!ck || !nq_checkpoint_dir(ck))
        return dt_min;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", nq_checkpoint_dir(ck));
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, NULL);
    if (!root)
        return dt_min;
    json_t *v = json_object_get(root, "time_step_min");
    if (!v)
        v = json_object_get(root, "mamba_dt_min");
    if (json_is_number(v))
        dt_min = (float)json_number_value(v);
    json_decref(root);
    return dt_min;
}

static int check_config(const nq_model_config *c, nq_error *err)
{
    if (!c->is_nemotron_h)
        return nq_fail(err, "config.json: model_type '%s' is not nemotron_h", c->model_type);
    if (c->num_layers <= 0 || (int)strlen(c->pattern) != c->num_layers)
        return nq_fail(err, "config.json: block pattern has %d layers", c->num_layers);
    if (c->hidden_size <= 0 || c->vocab_size <= 0)
        return nq_fail(err, "config.json: hidden_size %d / vocab_size %d", c->hidden_size,
                       c->vocab_size);
    if (nq_model_config_count(c, NQ_BLOCK_MAMBA) > 0 &&
        (c->mamba_num_heads <= 0 || c->mamba_head_dim <= 0 || c->ssm_state_size <= 0 ||
         c->n_groups <= 0 || c->mamba_num_heads % c->n_groups != 0 || c->conv_kernel < 1))
        return nq_fail(err, "config.json: Mamba-2 sizes (heads %d, head_dim %d, state %d, "
                       "n_groups %d, conv_kernel %d) are inconsistent", c->mamba_num_heads,
                       c->mamba_head_dim, c->ssm_state_size, c->n_groups, c->conv_kernel);
    if (nq_model_config_count(c, NQ_BLOCK_ATTENTION) > 0 &&
        (c->num_attention_heads <= 0 || c->num_key_value_heads <= 0 || c->head_dim <= 0 ||
         c->num_attention_heads % c->num_key_value_heads != 0))
        return nq_fail(err, "config.json: attention heads %d / kv heads %d / head_dim %d are "
                       "inconsistent", c->num_attention_heads, c->num_key_value_heads, c->head_dim);
    if (nq_model_config_count(c, NQ_BLOCK_MLP) > 0 && c->intermediate_size <= 0)
        return nq_fail(err, "config.json: intermediate_size %d", c->intermediate_size);
    if (nq_model_config_count(c, NQ_BLOCK_MOE) > 0) {
        int ng = c->n_group > 0 ? c->n_group : 1;
        if (c->n_routed_experts <= 0 || c->moe_intermediate_size <= 0 ||
            c->n_routed_experts % ng != 0 || c->topk_group < 1 || c->topk_group > ng ||
            c->num_experts_per_tok < 1 ||
            c->num_experts_per_tok > c->topk_group * (c->n_routed_experts / ng))
            return nq_fail(err, "config.json: MoE routing (%d experts, n_group %d, topk_group %d, "
                           "top-%d) is inconsistent", c->n_routed_experts, c->n_group,
                           c->topk_group, c->num_experts_per_tok);
    }
    return 0;
}

nq_model *nq_model_open(const nq_checkpoint *ck, const nq_model_config *cfg, nq_error *err)
{
    if (check_config(cfg, err) != 0)
        return NULL;
    nq_act act;
    if (nq_act_from_name(cfg->mlp_hidden_act, &act) != 0) {
        nq_fail(err, "config.json: mlp_hidden_act '%s' is not supported", cfg->mlp_hidden_act);
        return NULL;
    }
    nq_model *m = calloc(1, sizeof *m);
    if (!m || !(m->blocks = calloc((size_t)cfg->num_layers, sizeof *m->blocks))) {
        free(m);
        nq_fail(err, "model: out of memory");
        return NULL;
    }
    m->ck = ck;
    m->cfg = *cfg;
    m->act = act;
    m->provider = (nq_weight_provider){.fetch = nq_checkpoint_weight_fetch, .ctx = (void *)ck};
    m->threads = nq_default_threads();
    m->dt_min = read_dt_min(ck);
    /* one-thread BLAS (parallelism is ours, in fixed chunks) with the
     * kernels this CPU can run */
    nq_blas_init();
    if (ck && !nq_checkpoint_find(ck, "backbone.embeddings.weight") &&
        !nq_checkpoint_find(ck, "model.embeddings.weight")) {
        nq_fail(err, "backbone.embeddings.weight: tensor not found in the checkpoint");
        nq_model_close(m);
        return NULL;
    }
    return m;
}

void nq_model_close(nq_model *m)
{
    if (!m)
        return;
    nq_block_free(&m->cfg, nq_block_prefetch_join(m, -1));
    nq_blocks_drop(m, -1);
    nq_head_drop(m);
    free(m->blocks);
    free(m);
}

void nq_model_set_weights(nq_model *m, nq_weight_provider provider)
{
    nq_blocks_drop(m, -1);
    nq_head_drop(m);
    m->provider = provider;
}

void nq_model_set_threads(nq_model *m, int threads)
{
    m->threads = threads > 0 ? threads : nq_default_threads();
}

int nq_model_threads(const nq_model *m) { return m->threads; }
void nq_model_set_keep_weights(nq_model *m, bool keep) { m->keep_weights = keep; }
float nq_model_dt_min(const nq_model *m) { return m->dt_min; }
void nq_model_set_dt_min(nq_model *m, float dt_min) { m->dt_min = dt_min; }
const nq_model_config *nq_model_cfg(const nq_model *m) { return &m->cfg; }

void nq_model_set_cuda(nq_model *m, nq_cuda *g) { m->cuda = g; }
void nq_model_set_prefetch(nq_model *m, bool on) { m->prefetch = on; }

void nq_model_set_hooks(nq_model *m, const nq_forward_hooks *hooks)
{
    m->has_hooks = hooks != NULL;
    if (hooks)
        m->hooks = *hooks;
}

/* ---- state ------------------------------------------------------------ */

nq_state *nq_state_new(const nq_model *m, nq_error *err)
{
    int L = m->cfg.num_layers;
    nq_state *s = calloc(1, sizeof *s);
    if (s) {
        s->m = m;
        s->tokens = calloc((size_t)L, sizeof *s->tokens);
        s->conv = calloc((size_t)L, sizeof *s->conv);
        s->ssm = calloc((size_t)L, sizeof *s->ssm);
        s->k = calloc((size_t)L, sizeof *s->k);
        s->v = calloc((size_t)L, sizeof *s->v);
        s->cap = calloc((size_t)L, sizeof *s->cap);
    }
    if (!s || !s->tokens || !s->conv || !s->ssm || !s->k || !s->v || !s->cap) {
        nq_state_free(s);
        nq_fail(err, "state: out of memory");
        return NULL;
    }
    return s;
}

void nq_state_free(nq_state *s)
{
    if (!s)
        return;
    int L = s->m->cfg.num_layers;
    for (int l = 0; l < L; l++) {
        if (s->conv)
            free(s->conv[l]);
        if (s->ssm)
            free(s->ssm[l]);
        if (s->k)
            free(s->k[l]);
        if (s->v)
            free(s->v[l]);
    }
    free(s->tokens);
    free(s->conv);
    free(s->ssm);
    free(s->k);
    free(s->v);
    free(s->cap);
    free(s);
}

void nq_state_reset(nq_state *s)
{
    const nq_model_config *c = &s->m->cfg;
    for (int l = 0; l < c->num_layers; l++) {
        s->tokens[l] = 0;
        if (s->conv[l])
            memset(s->conv[l], 0,
                   (size_t)(c->conv_kernel - 1) * nq_mamba_conv_dim(c) * sizeof(float));
        if (s->ssm[l])
            memset(s->ssm[l], 0, (size_t)c->mamba_num_heads * c->mamba_head_dim *
                                     c->ssm_state_size * sizeof(float));
    }
}

int nq_state_tokens(const nq_state *s)
{
    return s->tokens[s->m->cfg.num_layers - 1];
}

float *nq_state_ssm(nq_state *s, int layer, size_t *n)
{
    const nq_model_config *c = &s->m->cfg;
    *n = 0;
    if (layer < 0 || layer >= c->num_layers || (nq_block_kind)c->pattern[layer] != NQ_BLOCK_MAMBA ||
        !s->ssm[layer])
        return NULL;
    *n = (size_t)c->mamba_num_heads * c->mamba_head_dim * c->ssm_state_size;
    return s->ssm[layer];
}

/* Makes sure block l's part of the state exists and can take n more tokens. */
static int state_prepare(nq_state *s, int l, int n, nq_error *err)
{
    const nq_model_config *c = &s->m->cfg;
    switch ((nq_block_kind)c->pattern[l]) {
    case NQ_BLOCK_MAMBA:
        if (!s->conv[l]) {
            size_t cn = (size_t)(c->conv_kernel - 1) * nq_mamba_conv_dim(c);
            s->conv[l] = calloc(cn ? cn : 1, sizeof(float));
            s->ssm[l] = calloc((size_t)c->mamba_num_heads * c->mamba_head_dim * c->ssm_state_size,
                               sizeof(float));
            if (!s->conv[l] || !s->ssm[l])
                return nq_fail(err, "layer %d: out of memory for the Mamba state", l);
        }
        return 0;
    case NQ_BLOCK_ATTENTION: {
        int need = s->tokens[l] + n;
        if (need <= s->cap[l])
            return 0;
        int cap = s->cap[l] * 2 > need ? s->cap[l] * 2 : need;
        if (cap < 64)
            cap = 64;
        size_t row = (size_t)c->num_key_value_heads * c->head_dim;
        float *k = realloc(s->k[l], (size_t)cap * row * sizeof *k);
        if (k)
            s->k[l] = k;
        float *v = k ? realloc(s->v[l], (size_t)cap * row * sizeof *v) : NULL;
        if (v)
            s->v[l] = v;
        if (!k || !v)
            return nq_fail(err, "layer %d: out of memory for a KV cache of %d tokens", l, cap);
        s->cap[l] = cap;
        return 0;
    }
    default:
        return 0;
    }
}

/* ---- running ---------------------------------------------------------- */

static nq_exec make_exec(nq_model *m, int layer, char *prefix, size_t prefix_size, nq_error *err)
{
    if (layer >= 0)
        snprintf(prefix, prefix_size, "backbone.layers.%d.mixer.", layer);
    else
        prefix[0] = '\0';
    return (nq_exec){.threads = m->threads, .layer = layer, .prefix = prefix,
                     .hooks = m->has_hooks ? &m->hooks : NULL, .err = err};
}

typedef struct expert_loader {
    nq_model *m;
    int layer;
    block_weights *b;
} expert_loader;

static int load_expert_cb(void *ctx, int e, nq_error *err)
{
    expert_loader *el = ctx;
    return nq_block_load_expert(el->m, el->layer, el->b, e, err);
}

/* The same block on the GPU (cuda/cuda.h), for a fresh sequence; the state
 * it leaves is the one the CPU path would, so decoding can continue on
 * the CPU. */
static int run_block_cuda(nq_model *m, int l, block_weights *b, const nq_exec *ex, float *x,
                          int n, nq_state *st)
{
    expert_loader el = {.m = m, .layer = l, .b = b};
    nq_cuda_block cb = {
        .weights_id = b->id, .kind = b->kind, .norm = b->norm, .mamba = &b->mamba,
        .attn = &b->attn, .mlp = &b->mlp, .moe = &b->moe, .act = m->act, .dt_min = m->dt_min,
        .load_expert = load_expert_cb, .load_ctx = &el,
        .conv_state = st->conv[l], .ssm_state = st->ssm[l], .k_cache = st->k[l],
        .v_cache = st->v[l],
    };
    if (nq_cuda_run_block(m->cuda, ex, &m->cfg, &cb, x, 1, n, NQ_CUDA_X_IN | NQ_CUDA_X_OUT) != 0)
        return -1;
    st->tokens[l] += n;
    return 0;
}

static int run_block(nq_model *m, int l, float *x, int n, nq_state *st, nq_error *err)
{
    const nq_model_config *c = &m->cfg;
    int H = c->hidden_size;
    if (state_prepare(st, l, n, err) != 0)
        return -1;
    block_weights *b = nq_block_get(m, l, err);
    if (!b)
        return -1;
    char prefix[96];
    nq_exec ex = make_exec(m, l, prefix, sizeof prefix, err);
    if (m->cuda && st->tokens[l] == 0)
        return run_block_cuda(m, l, b, &ex, x, n, st);
    int rc = -1;
    float *xn = malloc((size_t)n * H * sizeof *xn);
    float *y = malloc((size_t)n * H * sizeof *y);
    float *logits = NULL, *weights = NULL;
    int32_t *experts = NULL;
    if (!xn || !y) {
        nq_fail(err, "layer %d: out of memory for %d tokens", l, n);
        goto done;
    }
    nq_rmsnorm(x, b->norm, n, H, c->layer_norm_epsilon, xn);
    switch (b->kind) {
    case NQ_BLOCK_MAMBA:
        rc = nq_mamba2_forward(&ex, c, &b->mamba, m->dt_min, xn, n, st->conv[l], st->ssm[l], y);
        break;
    case NQ_BLOCK_ATTENTION:
        rc = nq_attention_forward(&ex, c, &b->attn, xn, n, st->tokens[l], st->k[l], st->v[l], y);
        break;
    case NQ_BLOCK_MLP:
        rc = nq_mlp_forward(&ex, "", -1, NULL, &b->mlp, m->act, xn, n, H, y);
        break;
    case NQ_BLOCK_MOE: {
        int E = c->n_routed_experts, K = c->num_experts_per_tok;
        logits = malloc((size_t)n * E * sizeof *logits);
        weights = malloc((size_t)n * K * sizeof *weights);
        experts = malloc((size_t)n * K * sizeof *experts);
        if (!logits || !weights || !experts) {
            nq_fail(err, "layer %d: out of memory for routing %d tokens", l, n);
            break;
        }
        if (nq_moe_route(&ex, c, &b->moe, xn, n, logits, experts, weights) != 0)
            break;
        int missing = 0;
        for (int i = 0; i < n * K && missing == 0; i++)
            if (!b->moe.experts[experts[i]].up)
                missing = nq_block_load_expert(m, l, b, experts[i], err);
        if (missing != 0)
            break;
        rc = nq_moe_forward(&ex, c, &b->moe, m->act, xn, n, experts, weights, y);
        break;
    }
    }
    if (rc == 0) {
        for (size_t i = 0; i < (size_t)n * H; i++)
            x[i] += y[i];
        st->tokens[l] += n;
    }
done:
    free(xn);
    free(y);
    free(logits);
    free(weights);
    free(experts);
    return rc;
}

int nq_model_embed(nq_model *m, const int32_t *ids, int n, float *x, nq_error *err)
{
    if (nq_head_ensure(m, true, false, err) != 0)
        return -1;
    int H = m->cfg.hidden_size;
    for (int t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= m->cfg.vocab_size)
            return nq_fail(err, "token %d: id %d outside the vocabulary of %d", t, ids[t],
                           m->cfg.vocab_size);
        memcpy(x + (size_t)t * H, m->embed + (size_t)ids[t] * H, (size_t)H * sizeof *x);
    }
    return 0;
}

int nq_model_embed_resident(nq_model *m, const int32_t *ids, size_t n, nq_error *err)
{
    if (!m->cuda)
        return nq_fail(err, "embedding: no GPU to keep the activations on");
    if (nq_head_ensure(m, true, false, err) != 0)
        return -1;
    for (size_t t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->cfg.vocab_size)
            return nq_fail(err, "token %zu: id %d outside the vocabulary of %d", t, ids[t],
                           m->cfg.vocab_size);
    return nq_cuda_resident_embed(m->cuda, m->embed, m->cfg.vocab_size, m->cfg.hidden_size, ids,
                                  n, err);
}

int nq_model_final(nq_model *m, const float *x, int n, float *normed_out, float *logits,
                   nq_error *err)
{
    if (nq_head_ensure(m, false, true, err) != 0)
        return -1;
    int H = m->cfg.hidden_size;
    if (m->cuda) {
        char prefix[8];
        nq_exec ex = make_exec(m, -1, prefix, sizeof prefix, err);
        return nq_cuda_run_final(m->cuda, &ex, &m->cfg, m->head_id, m->norm_f, m->lm_head, x, n,
                                 normed_out, logits);
    }
    float *xn = normed_out ? normed_out : malloc((size_t)n * H * sizeof *xn);
    if (!xn)
        return nq_fail(err, "norm_f: out of memory for %d tokens", n);
    nq_rmsnorm(x, m->norm_f, n, H, m->cfg.layer_norm_epsilon, xn);
    int rc = 0;
    if (logits) {
        char prefix[8];
        nq_exec ex = make_exec(m, -1, prefix, sizeof prefix, err);
        rc = nq_linear(&ex, "lm_head.weight", -1, NULL, xn, n, H, m->lm_head, NULL,
                       m->cfg.vocab_size, logits);
    }
    if (!normed_out)
        free(xn);
    return rc;
}

int nq_model_block(nq_model *m, int layer, float *x, int n, nq_state *st, nq_error *err)
{
    if (layer < 0 || layer >= m->cfg.num_layers)
        return nq_fail(err, "layer %d: outside 0..%d", layer, m->cfg.num_layers - 1);
    if (n <= 0)
        return nq_fail(err, "layer %d: %d tokens", layer, n);
    nq_state *own = st ? NULL : nq_state_new(m, err);
    if (!st && !own)
        return -1;
    int rc = run_block(m, layer, x, n, st ? st : own, err);
    nq_state_free(own);
    return rc;
}

bool nq_model_concurrent_sequences(const nq_model *m)
{
    /* Never with a GPU: its calls share one device context and scratch (and
     * the GPU runs the sequences of a call together anyway). */
    return m->threads > 1 && !m->cuda && (!m->has_hooks || m->hooks.concurrent);
}

typedef struct {
    nq_model *m;
    int layer, len;
    float *x;
    nq_error *errs;   /* one per sequence */
} blocks_job;

static int blocks_run(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    blocks_job *j = ctx;
    size_t plane = (size_t)j->len * j->m->cfg.hidden_size;
    for (size_t s = begin; s < end; s++) {
        nq_state *st = nq_state_new(j->m, &j->errs[s]);
        int rc = st ? run_block(j->m, j->layer, j->x + s * plane, j->len, st, &j->errs[s]) : -1;
        nq_state_free(st);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* The CPU path of nq_model_blocks. */
static int blocks_cpu(nq_model *m, int layer, float *x, int samples, int len, nq_error *err)
{
    size_t plane = (size_t)len * m->cfg.hidden_size;
    bool parallel = samples > 1 && nq_model_concurrent_sequences(m);
    if (!parallel) {
        for (int s = 0; s < samples; s++)
            if (nq_model_block(m, layer, x + s * plane, len, NULL, err) != 0)
                return -1;
        return 0;
    }
    /* Everything the sequences could ask the provider for is fetched first:
     * the provider is never called concurrently, and afterwards the threads
     * only read the weights.  (A MoE layer is loaded whole, as calibration
     * does anyway; one sequence at a time loads only the routed experts.) */
    block_weights *b = nq_block_get(m, layer, err);
    if (!b)
        return -1;
    if (b->kind == NQ_BLOCK_MOE)
        for (int e = 0; e < m->cfg.n_routed_experts; e++)
            if (!b->moe.experts[e].up && nq_block_load_expert(m, layer, b, e, err) != 0)
                return -1;
    nq_error *errs = calloc((size_t)samples, sizeof *errs);
    if (!errs)
        return nq_fail(err, "layer %d: out of memory", layer);
    blocks_job job = {.m = m, .layer = layer, .len = len, .x = x, .errs = errs};
    /* One sequence per item, each computed whole by one thread (the loops
     * inside run inline): the same arithmetic as one sequence at a time. */
    int rc = nq_parallel_for((size_t)samples, 1, m->threads, blocks_run, &job);
    if (rc != 0) {
        for (int s = 0; s < samples; s++)
            if (errs[s].msg[0]) {
                *err = errs[s];
                break;
            }
    }
    free(errs);
    return rc;
}

int nq_model_blocks(nq_model *m, int layer, float *x, int samples, int len, nq_error *err)
{
    return nq_model_blocks_resident(m, layer, x, samples, len, true, true, err);
}

int nq_model_blocks_resident(nq_model *m, int layer, float *x, int samples, int len, bool first,
                             bool last, nq_error *err)
{
    if (layer < 0 || layer >= m->cfg.num_layers)
        return nq_fail(err, "layer %d: outside 0..%d", layer, m->cfg.num_layers - 1);
    if (len <= 0 || samples <= 0)
        return nq_fail(err, "layer %d: %d sequences of %d tokens", layer, samples, len);
    if (!m->cuda)
        return blocks_cpu(m, layer, x, samples, len, err);
    block_weights *b = nq_block_get(m, layer, err);
    if (!b)
        return -1;
    nq_block_prefetch_start(m, layer + 1);
    char prefix[96];
    nq_exec ex = make_exec(m, layer, prefix, sizeof prefix, err);
    expert_loader el = {.m = m, .layer = layer, .b = b};
    nq_cuda_block cb = {
        .weights_id = b->id, .kind = b->kind, .norm = b->norm, .mamba = &b->mamba,
        .attn = &b->attn, .mlp = &b->mlp, .moe = &b->moe, .act = m->act, .dt_min = m->dt_min,
        .load_expert = load_expert_cb, .load_ctx = &el,
    };
    return nq_cuda_run_block(m->cuda, &ex, &m->cfg, &cb, x, samples, len,
                             (first ? NQ_CUDA_X_IN : 0u) | (last ? NQ_CUDA_X_OUT : 0u));
}

/* Embeds, runs every block and the head on a state; hidden_out as in
 * nq_model_forward. */
static int run_sequence(nq_model *m, nq_state *st, const int32_t *ids, int n, float *logits,
                        float *hidden_out, nq_error *err)
{
    if (n <= 0)
        return nq_fail(err, "forward: %d tokens", n);
    int H = m->cfg.hidden_size, L = m->cfg.num_layers;
    size_t plane = (size_t)n * H;
    float *x = malloc(plane * sizeof *x);
    if (!x)
        return nq_fail(err, "forward: out of memory for %d tokens", n);
    int rc = nq_model_embed(m, ids, n, x, err);
    if (rc == 0 && hidden_out)
        memcpy(hidden_out, x, plane * sizeof *x);
    for (int l = 0; rc == 0 && l < L; l++) {
        rc = run_block(m, l, x, n, st, err);
        if (rc == 0 && hidden_out && l + 1 < L)
            memcpy(hidden_out + (size_t)(l + 1) * plane, x, plane * sizeof *x);
    }
    if (rc == 0)
        rc = nq_model_final(m, x, n, hidden_out ? hidden_out + (size_t)L * plane : NULL, logits,
                            err);
    free(x);
    return rc;
}

int nq_model_forward(nq_model *m, const int32_t *ids, int n, float *logits, float *hidden_out,
                     nq_error *err)
{
    nq_state *st = nq_state_new(m, err);
    if (!st)
        return -1;
    int rc = run_sequence(m, st, ids, n, logits, hidden_out, err);
    nq_state_free(st);
    return rc;
}

int nq_model_step(nq_model *m, nq_state *st, const int32_t *ids, int n, float *logits,
                  nq_error *err)
{
    if (st->m != m)
        return nq_fail(err, "step: the state belongs to another model");
    return run_sequence(m, st, ids, n, logits, NULL, err);
}

double nq_model_flops_per_token(const nq_model *m, int n)
{
    const nq_model_config *c = &m->cfg;
    double H = c->hidden_size, macs = H * c->vocab_size;
    double ctx = (n + 1) / 2.0; /* mean number of keys a token attends to */
    for (int l = 0; l < c->num_layers; l++) {
        switch ((nq_block_kind)c->pattern[l]) {
        case NQ_BLOCK_MAMBA: {
            double inter = nq_mamba_intermediate(c);
            macs += H * nq_mamba_in_proj_dim(c) + inter * H;
            macs += (double)nq_mamba_conv_dim(c) * c->conv_kernel;
            macs += 2.0 * inter * c->ssm_state_size; /* state update + readout */
            break;
        }
        case NQ_BLOCK_ATTENTION: {
            double qd = (double)c->num_attention_heads * c->head_dim;
            double kvd = (double)c->num_key_value_heads * c->head_dim;
            macs += H * qd * 2 + H * kvd * 2 + 2.0 * qd * ctx;
            break;
        }
        case NQ_BLOCK_MLP:
            macs += 2.0 * H * c->intermediate_size;
            break;
        case NQ_BLOCK_MOE:
            macs += H * c->n_routed_experts;
            macs += 2.0 * H * c->moe_intermediate_size * c->num_experts_per_tok;
            macs += 2.0 * H * c->moe_shared_expert_intermediate_size;
            break;
        }
    }
    return 2.0 * macs;
}
