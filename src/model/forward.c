/* The Nemotron-H model: weights per block through a provider, recurrent
 * state, and the block loop (transformers' NemotronHModel/NemotronHBlock:
 * x = x + mixer(norm(x)) per block, then norm_f, then lm_head). */
#include "model/forward.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/blas.h"
#include "core/parallel.h"
#include "cuda/cuda.h"
#include "model/layers.h"

typedef struct block_weights {
    uint64_t id;        /* unique per load: the CUDA backend's cache key */
    nq_block_kind kind;
    float *norm;
    nq_mamba2_weights mamba;
    nq_attention_weights attn;
    nq_mlp_weights mlp;
    nq_moe_weights moe;
} block_weights;

struct nq_model {
    const nq_checkpoint *ck;
    nq_model_config cfg;
    nq_weight_provider provider;
    int threads;
    bool keep_weights;
    bool has_hooks;
    nq_forward_hooks hooks;
    float dt_min;
    nq_act act;
    float *embed;       /* [vocab, hidden], loaded on first use */
    float *norm_f;      /* [hidden] */
    float *lm_head;     /* [vocab, hidden]; == embed when tied */
    uint64_t head_id;   /* unique per load of norm_f / lm_head */
    block_weights **blocks;
    nq_cuda *cuda;      /* borrowed; NULL: the CPU runs everything */
    /* nq_model_set_prefetch: the next block loaded on a host thread */
    bool prefetch;
    bool pf_active;     /* a thread was started and not joined yet */
    int pf_layer;
    pthread_t pf_thread;
    nq_weight_provider pf_provider;
    block_weights *pf_block;  /* its result (NULL: failed) */
    nq_error pf_err;
};

/* Process-wide, so that models sharing one GPU never share a cache key. */
static uint64_t next_weights_id(void)
{
    static uint64_t counter;
    return __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
}

struct nq_state {
    const nq_model *m;
    int *tokens;        /* per block: tokens consumed */
    float **conv;       /* Mamba blocks: [kernel-1, conv_dim] */
    float **ssm;        /* Mamba blocks: [heads, head_dim, state] */
    float **k, **v;     /* attention blocks: [cap, kv_heads*head_dim] */
    int *cap;
};

/* ---- weights ---------------------------------------------------------- */

/* Large tensors are widened to f32 (and checked for NaN/Inf) in slices on
 * all cores: a Nano-size MoE layer is 1.3 G values, and one core takes
 * seconds to read them.  Elementwise, so the result does not depend on the
 * thread count. */
#define FETCH_SLICE ((size_t)1 << 18)

typedef struct {
    const nq_tensor *t;
    float *out;
    size_t numel;
    uint64_t *first_bad;  /* per slice: first non-finite index, or numel */
} fetch_job;

static int fetch_slices(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    fetch_job *j = ctx;
    for (size_t s = begin; s < end; s++) {
        size_t lo = s * FETCH_SLICE, hi = lo + FETCH_SLICE < j->numel ? lo + FETCH_SLICE : j->numel;
        nq_error e = {0};
        if (j->t) { /* reading */
            if (nq_tensor_read_f32(j->t, lo, hi - lo, j->out + lo, &e) != 0)
                return -1;
            continue;
        }
        j->first_bad[s] = j->numel;
        for (size_t i = lo; i < hi; i++)
            if (!isfinite(j->out[i])) {
                j->first_bad[s] = i;
                break;
            }
    }
    return 0;
}

/* Reads t into out in parallel slices, or (t == NULL) finds the first
 * non-finite element of out (*bad, numel if none).  -1: a read failed
 * (read t serially to get its error) or no memory. */
static int fetch_parallel(const nq_tensor *t, float *out, size_t numel, int threads,
                          uint64_t *bad)
{
    size_t slices = (numel + FETCH_SLICE - 1) / FETCH_SLICE;
    uint64_t *fb = malloc(slices * sizeof *fb);
    if (!fb)
        return -1;
    fetch_job j = {.t = t, .out = out, .numel = numel, .first_bad = fb};
    int rc = nq_parallel_for(slices, 1, threads, fetch_slices, &j);
    *bad = numel;
    for (size_t s = 0; rc == 0 && !t && s < slices; s++)
        if (fb[s] < *bad) {
            *bad = fb[s];
            break;
        }
    free(fb);
    return rc;
}

int nq_checkpoint_weight_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    const nq_checkpoint *ck = ctx;
    if (!ck)
        return nq_fail(err, "%s: no checkpoint to read weights from", req->name);
    const nq_tensor *t = nq_checkpoint_find(ck, req->name);
    if (!t && strncmp(req->name, "backbone.", 9) == 0) {
        /* transformers' module path, in case a checkpoint was saved without
         * the conversion back to NVIDIA's names */
        char alt[512];
        snprintf(alt, sizeof alt, "model.%s", req->name + 9);
        t = nq_checkpoint_find(ck, alt);
    }
    if (!t)
        return 1;
    bool same = t->ndim == req->ndim && t->numel == req->numel;
    for (int i = 0; same && i < req->ndim; i++)
        same = t->shape[i] == req->shape[i];
    if (!same) {
        char want[96] = "", have[96] = "";
        for (int i = 0; i < req->ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "",
                     (long long)req->shape[i]);
        for (int i = 0; i < t->ndim; i++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%lld", i ? "," : "",
                     (long long)t->shape[i]);
        return nq_fail(err, "%s: shape [%s] but the config implies [%s]", req->name, have, want);
    }
    uint64_t bad;
    if (!t->source && t->numel >= 4 * FETCH_SLICE &&
        (t->dtype == NQ_BF16 || t->dtype == NQ_F16 || t->dtype == NQ_F32) &&
        fetch_parallel(t, out, t->numel, nq_default_threads(), &bad) == 0)
        return 0;
    return nq_tensor_read_f32(t, 0, t->numel, out, err);
}

/* The provider of the prefetch thread (its snapshot of the model's), NULL
 * on every other thread: the model's own. */
static _Thread_local const nq_weight_provider *tl_provider;

/* Fetches one tensor into a fresh array.  *out = NULL (and 0 returned) when
 * an optional tensor is absent. */
static int fetch(nq_model *m, float **out, const char *name, int layer, bool optional,
                 int ndim, int64_t d0, int64_t d1, int64_t d2, nq_error *err)
{
    const nq_weight_provider *pv = tl_provider ? tl_provider : &m->provider;
    nq_weight_request req = {.name = name, .layer = layer, .ndim = ndim, .optional = optional};
    int64_t d[3] = {d0, d1, d2};
    req.numel = 1;
    for (int i = 0; i < ndim; i++) {
        req.shape[i] = d[i];
        req.numel *= (uint64_t)d[i];
    }
    *out = NULL;
    if (!pv->fetch)
        return nq_fail(err, "%s: the model has no weight source", name);
    float *buf = malloc(req.numel * sizeof *buf);
    if (!buf)
        return nq_fail(err, "%s: out of memory for %llu floats", name,
                       (unsigned long long)req.numel);
    int rc = pv->fetch(pv->ctx, &req, buf, err);
    if (rc == 0) {
        /* A NaN or Inf weight would surface layers later as a NaN activation
         * somewhere else: name it here, before the block runs. */
        uint64_t i = req.numel;
        if (req.numel < 4 * FETCH_SLICE || fetch_parallel(NULL, buf, req.numel, m->threads, &i) != 0)
            for (i = 0; i < req.numel && isfinite(buf[i]); i++)
                ;
        if (i < req.numel) {
            bool nan = isnan(buf[i]);
            free(buf);
            return nq_fail(err, "tensor '%s': element %llu is %s", name, (unsigned long long)i,
                           nan ? "NaN" : "infinite");
        }
        *out = buf;
        return 0;
    }
    free(buf);
    if (rc == 1)
        return optional ? 0 : nq_fail(err, "%s: tensor not found", name);
    return nq_fail(err, "%s: could not be read", name);
}

static void free_mlp(nq_mlp_weights *w)
{
    free(w->up);
    free(w->up_b);
    free(w->down);
    free(w->down_b);
    memset(w, 0, sizeof *w);
}

static void free_block(const nq_model_config *cfg, block_weights *b)
{
    if (!b)
        return;
    free(b->norm);
    nq_mamba2_weights *mw = &b->mamba;
    free(mw->in_proj);
    free(mw->in_proj_b);
    free(mw->conv_w);
    free(mw->conv_b);
    free(mw->dt_bias);
    free(mw->A);
    free(mw->D);
    free(mw->norm_w);
    free(mw->out_proj);
    free(mw->out_proj_b);
    free(b->attn.q);
    free(b->attn.k);
    free(b->attn.v);
    free(b->attn.o);
    free_mlp(&b->mlp);
    free(b->moe.gate);
    free(b->moe.score_bias);
    if (b->moe.experts)
        for (int e = 0; e < cfg->n_routed_experts; e++)
            free_mlp(&b->moe.experts[e]);
    free(b->moe.experts);
    free_mlp(&b->moe.shared);
    free(b);
}

static int load_mlp(nq_model *m, nq_mlp_weights *w, const char *base, int layer, int inter,
                    nq_error *err)
{
    const nq_model_config *c = &m->cfg;
    char name[320];
    w->inter = inter;
    snprintf(name, sizeof name, "%sup_proj.weight", base);
    if (fetch(m, &w->up, name, layer, false, 2, inter, c->hidden_size, 0, err) != 0)
        return -1;
    snprintf(name, sizeof name, "%sdown_proj.weight", base);
    if (fetch(m, &w->down, name, layer, false, 2, c->hidden_size, inter, 0, err) != 0)
        return -1;
    if (c->mlp_bias) {
        snprintf(name, sizeof name, "%sup_proj.bias", base);
        if (fetch(m, &w->up_b, name, layer, false, 1, inter, 0, 0, err) != 0)
            return -1;
        snprintf(name, sizeof name, "%sdown_proj.bias", base);
        if (fetch(m, &w->down_b, name, layer, false, 1, c->hidden_size, 0, 0, err) != 0)
            return -1;
    }
    return 0;
}

static int load_expert(nq_model *m, int layer, block_weights *b, int e, nq_error *err)
{
    char base[160];
    snprintf(base, sizeof base, "backbone.layers.%d.mixer.experts.%d.", layer, e);
    if (load_mlp(m, &b->moe.experts[e], base, layer, m->cfg.moe_intermediate_size, err) != 0) {
        free_mlp(&b->moe.experts[e]);
        return -1;
    }
    return 0;
}

static block_weights *load_block(nq_model *m, int l, nq_error *err)
{
    const nq_model_config *c = &m->cfg;
    int H = c->hidden_size;
    block_weights *b = calloc(1, sizeof *b);
    if (!b) {
        nq_fail(err, "layer %d: out of memory", l);
        return NULL;
    }
    b->kind = (nq_block_kind)c->pattern[l];
    b->id = next_weights_id();
    char p[96], name[320];
    snprintf(p, sizeof p, "backbone.layers.%d.", l);
#define NAME(suffix) (snprintf(name, sizeof name, "%s%s", p, suffix), name)
    if (fetch(m, &b->norm, NAME("norm.weight"), l, false, 1, H, 0, 0, err) != 0)
        goto fail;
    switch (b->kind) {
    case NQ_BLOCK_MAMBA: {
        nq_mamba2_weights *w = &b->mamba;
        int inter = nq_mamba_intermediate(c), conv_dim = nq_mamba_conv_dim(c);
        int P = nq_mamba_in_proj_dim(c), nh = c->mamba_num_heads;
        /* in_proj/out_proj use config.use_bias in transformers, a field
         * nq_model_config does not carry: a bias is used when present. */
        if (fetch(m, &w->in_proj, NAME("mixer.in_proj.weight"), l, false, 2, P, H, 0, err) ||
            fetch(m, &w->in_proj_b, NAME("mixer.in_proj.bias"), l, true, 1, P, 0, 0, err) ||
            fetch(m, &w->conv_w, NAME("mixer.conv1d.weight"), l, false, 3, conv_dim, 1,
                  c->conv_kernel, err) ||
            (c->use_conv_bias &&
             fetch(m, &w->conv_b, NAME("mixer.conv1d.bias"), l, false, 1, conv_dim, 0, 0, err)) ||
            fetch(m, &w->dt_bias, NAME("mixer.dt_bias"), l, false, 1, nh, 0, 0, err) ||
            fetch(m, &w->A, NAME("mixer.A_log"), l, false, 1, nh, 0, 0, err) ||
            fetch(m, &w->D, NAME("mixer.D"), l, false, 1, nh, 0, 0, err) ||
            fetch(m, &w->norm_w, NAME("mixer.norm.weight"), l, false, 1, inter, 0, 0, err) ||
            fetch(m, &w->out_proj, NAME("mixer.out_proj.weight"), l, false, 2, H, inter, 0, err) ||
            fetch(m, &w->out_proj_b, NAME("mixer.out_proj.bias"), l, true, 1, H, 0, 0, err))
            goto fail;
        for (int h = 0; h < nh; h++)
            w->A[h] = -expf(w->A[h]);
        break;
    }
    case NQ_BLOCK_ATTENTION: {
        nq_attention_weights *w = &b->attn;
        int qd = c->num_attention_heads * c->head_dim, kvd = c->num_key_value_heads * c->head_dim;
        if (fetch(m, &w->q, NAME("mixer.q_proj.weight"), l, false, 2, qd, H, 0, err) ||
            fetch(m, &w->k, NAME("mixer.k_proj.weight"), l, false, 2, kvd, H, 0, err) ||
            fetch(m, &w->v, NAME("mixer.v_proj.weight"), l, false, 2, kvd, H, 0, err) ||
            fetch(m, &w->o, NAME("mixer.o_proj.weight"), l, false, 2, H, qd, 0, err))
            goto fail;
        break;
    }
    case NQ_BLOCK_MLP: {
        char base[128];
        snprintf(base, sizeof base, "%smixer.", p);
        if (load_mlp(m, &b->mlp, base, l, c->intermediate_size, err) != 0)
            goto fail;
        break;
    }
    case NQ_BLOCK_MOE: {
        int E = c->n_routed_experts;
        if (fetch(m, &b->moe.gate, NAME("mixer.gate.weight"), l, false, 2, E, H, 0, err) ||
            fetch(m, &b->moe.score_bias, NAME("mixer.gate.e_score_correction_bias"), l, true, 1, E,
                  0, 0, err))
            goto fail;
        b->moe.experts = calloc((size_t)E, sizeof *b->moe.experts);
        if (!b->moe.experts) {
            nq_fail(err, "layer %d: out of memory", l);
            goto fail;
        }
        if (c->moe_shared_expert_intermediate_size > 0) {
            char base[128];
            snprintf(base, sizeof base, "%smixer.shared_experts.", p);
            if (load_mlp(m, &b->moe.shared, base, l, c->moe_shared_expert_intermediate_size, err))
                goto fail;
        }
        break;
    }
    default:
        nq_fail(err, "layer %d: unknown block kind '%c'", l, c->pattern[l]);
        goto fail;
    }
#undef NAME
    return b;
fail:
    free_block(c, b);
    return NULL;
}

static void drop_blocks(nq_model *m, int except)
{
    for (int l = 0; l < m->cfg.num_layers; l++)
        if (l != except && m->blocks[l]) {
            free_block(&m->cfg, m->blocks[l]);
            m->blocks[l] = NULL;
        }
}

/* ---- prefetch: the next block read and widened on a host thread ------- */

static void *prefetch_main(void *p)
{
    nq_model *m = p;
    tl_provider = &m->pf_provider;
    block_weights *b = load_block(m, m->pf_layer, &m->pf_err);
    if (b && b->kind == NQ_BLOCK_MOE)
        for (int e = 0; e < m->cfg.n_routed_experts; e++)
            if (load_expert(m, m->pf_layer, b, e, &m->pf_err) != 0) {
                free_block(&m->cfg, b);
                b = NULL;
                break;
            }
    m->pf_block = b;
    return NULL;
}

/* Waits for the prefetch thread; its block when it is layer l's, loaded
 * from the provider the model has now, else NULL (discarded; a failed
 * prefetch is simply redone by get_block, which reports the error). */
static block_weights *prefetch_join(nq_model *m, int l)
{
    if (!m->pf_active)
        return NULL;
    pthread_join(m->pf_thread, NULL);
    m->pf_active = false;
    block_weights *b = m->pf_block;
    m->pf_block = NULL;
    if (b && (m->pf_layer != l || m->pf_provider.fetch != m->provider.fetch ||
              m->pf_provider.ctx != m->provider.ctx)) {
        free_block(&m->cfg, b);
        b = NULL;
    }
    return b;
}

/* Starts loading block l (a MoE block with all its experts) on a host
 * thread, when the weights come from the checkpoint (its reader is
 * thread-safe; other providers are called from one thread only) and l is
 * not loaded or being loaded. */
static void prefetch_start(nq_model *m, int l)
{
    if (!m->prefetch || l < 0 || l >= m->cfg.num_layers || m->blocks[l] ||
        m->provider.fetch != nq_checkpoint_weight_fetch || (m->pf_active && m->pf_layer == l))
        return;
    if (m->pf_active)
        free_block(&m->cfg, prefetch_join(m, m->pf_layer));
    m->pf_layer = l;
    m->pf_provider = m->provider;
    m->pf_block = NULL;
    memset(&m->pf_err, 0, sizeof m->pf_err);
    m->pf_active = pthread_create(&m->pf_thread, NULL, prefetch_main, m) == 0;
}

static block_weights *get_block(nq_model *m, int l, nq_error *err)
{
    if (!m->keep_weights)
        drop_blocks(m, l);
    if (!m->blocks[l] && m->pf_active && m->pf_layer == l)
        m->blocks[l] = prefetch_join(m, l);
    if (!m->blocks[l])
        m->blocks[l] = load_block(m, l, err);
    return m->blocks[l];
}

static int ensure_head(nq_model *m, bool need_embed, bool need_head, nq_error *err)
{
    const nq_model_config *c = &m->cfg;
    if (need_embed && !m->embed &&
        fetch(m, &m->embed, "backbone.embeddings.weight", -1, false, 2, c->vocab_size,
              c->hidden_size, 0, err) != 0)
        return -1;
    if (need_head && !m->norm_f) {
        if (fetch(m, &m->norm_f, "backbone.norm_f.weight", -1, false, 1, c->hidden_size, 0, 0, err))
            return -1;
        m->head_id = next_weights_id();
    }
    if (need_head && !m->lm_head) {
        /* transformers 5.17 never ties NemotronH's lm_head
         * (_tied_weights_keys = {}), so a checkpoint that has lm_head.weight
         * is used as is; one without it can only mean tied embeddings. */
        if (fetch(m, &m->lm_head, "lm_head.weight", -1, true, 2, c->vocab_size, c->hidden_size, 0,
                  err) != 0)
            return -1;
        if (!m->lm_head) {
            if (!c->tie_word_embeddings)
                return nq_fail(err, "lm_head.weight: tensor not found and tie_word_embeddings is false");
            if (ensure_head(m, true, false, err) != 0)
                return -1;
            m->lm_head = m->embed;
        }
    }
    return 0;
}

static void drop_head(nq_model *m)
{
    if (m->lm_head != m->embed)
        free(m->lm_head);
    free(m->embed);
    free(m->norm_f);
    m->lm_head = m->embed = m->norm_f = NULL;
}

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
    free_block(&m->cfg, prefetch_join(m, -1));
    drop_blocks(m, -1);
    drop_head(m);
    free(m->blocks);
    free(m);
}

void nq_model_set_weights(nq_model *m, nq_weight_provider provider)
{
    drop_blocks(m, -1);
    drop_head(m);
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
    return load_expert(el->m, el->layer, el->b, e, err);
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
    block_weights *b = get_block(m, l, err);
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
                missing = load_expert(m, l, b, experts[i], err);
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
    if (ensure_head(m, true, false, err) != 0)
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
    if (ensure_head(m, true, false, err) != 0)
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
    if (ensure_head(m, false, true, err) != 0)
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
    block_weights *b = get_block(m, layer, err);
    if (!b)
        return -1;
    if (b->kind == NQ_BLOCK_MOE)
        for (int e = 0; e < m->cfg.n_routed_experts; e++)
            if (!b->moe.experts[e].up && load_expert(m, layer, b, e, err) != 0)
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
    block_weights *b = get_block(m, layer, err);
    if (!b)
        return -1;
    prefetch_start(m, layer + 1);
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
