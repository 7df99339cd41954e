/* The weights of the model's blocks and head: fetched through the weight
 * provider, widened to f32 and checked for NaN/Inf in parallel slices,
 * kept or dropped per block, and the next block prefetched on a host
 * thread.  The block loop that uses them is forward.c. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "model/model_internal.h"

/* Process-wide, so that models sharing one GPU never share a cache key. */
static uint64_t next_weights_id(void)
{
    static uint64_t counter;
    return __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
}

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

void nq_block_free(const nq_model_config *cfg, block_weights *b)
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

int nq_block_load_expert(nq_model *m, int layer, block_weights *b, int e, nq_error *err)
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
    nq_block_free(c, b);
    return NULL;
}

void nq_blocks_drop(nq_model *m, int except)
{
    for (int l = 0; l < m->cfg.num_layers; l++)
        if (l != except && m->blocks[l]) {
            nq_block_free(&m->cfg, m->blocks[l]);
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
            if (nq_block_load_expert(m, m->pf_layer, b, e, &m->pf_err) != 0) {
                nq_block_free(&m->cfg, b);
                b = NULL;
                break;
            }
    m->pf_block = b;
    return NULL;
}

/* Waits for the prefetch thread; its block when it is layer l's, loaded
 * from the provider the model has now, else NULL (discarded; a failed
 * prefetch is simply redone by get_block, which reports the error). */
block_weights *nq_block_prefetch_join(nq_model *m, int l)
{
    if (!m->pf_active)
        return NULL;
    pthread_join(m->pf_thread, NULL);
    m->pf_active = false;
    block_weights *b = m->pf_block;
    m->pf_block = NULL;
    if (b && (m->pf_layer != l || m->pf_provider.fetch != m->provider.fetch ||
              m->pf_provider.ctx != m->provider.ctx)) {
        nq_block_free(&m->cfg, b);
        b = NULL;
    }
    return b;
}

/* Starts loading block l (a MoE block with all its experts) on a host
 * thread, when the weights come from the checkpoint (its reader is
 * thread-safe; other providers are called from one thread only) and l is
 * not loaded or being loaded. */
void nq_block_prefetch_start(nq_model *m, int l)
{
    if (!m->prefetch || l < 0 || l >= m->cfg.num_layers || m->blocks[l] ||
        m->provider.fetch != nq_checkpoint_weight_fetch || (m->pf_active && m->pf_layer == l))
        return;
    if (m->pf_active)
        nq_block_free(&m->cfg, nq_block_prefetch_join(m, m->pf_layer));
    m->pf_layer = l;
    m->pf_provider = m->provider;
    m->pf_block = NULL;
    memset(&m->pf_err, 0, sizeof m->pf_err);
    m->pf_active = pthread_create(&m->pf_thread, NULL, prefetch_main, m) == 0;
}

block_weights *nq_block_get(nq_model *m, int l, nq_error *err)
{
    if (!m->keep_weights)
        nq_blocks_drop(m, l);
    if (!m->blocks[l] && m->pf_active && m->pf_layer == l)
        m->blocks[l] = nq_block_prefetch_join(m, l);
    if (!m->blocks[l])
        m->blocks[l] = load_block(m, l, err);
    return m->blocks[l];
}

int nq_head_ensure(nq_model *m, bool need_embed, bool need_head, nq_error *err)
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
            if (nq_head_ensure(m, true, false, err) != 0)
                return -1;
            m->lm_head = m->embed;
        }
    }
    return 0;
}

void nq_head_drop(nq_model *m)
{
    if (m->lm_head != m->embed)
        free(m->lm_head);
    free(m->embed);
    free(m->norm_f);
    m->lm_head = m->embed = m->norm_f = NULL;
}
