#include "export/equalize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const nq_tensor *find(const nq_checkpoint *ck, const char *prefix, const char *rest)
{
    char name[300];
    snprintf(name, sizeof name, "%s%s", prefix, rest);
    return nq_checkpoint_find(ck, name);
}

/* appends a pair; readers that are absent drop it unless optional */
typedef struct builder {
    nq_eq_pair *p;
    int n, cap;
} builder;

static int add_pair(builder *b, const nq_checkpoint *ck, const char *prefix, bool relu2,
                    const char *src, const char *const *readers, const bool *optional, int nr,
                    nq_error *err)
{
    const nq_tensor *s = find(ck, prefix, src);
    if (!s)
        return 0;
    int64_t cols = relu2 ? (s->ndim == 2 ? s->shape[0] : -1) : (int64_t)s->numel;
    if (cols <= 0 || (!relu2 && s->ndim != 1))
        return 0;
    char(*rd)[256] = calloc((size_t)(nr ? nr : 1), sizeof *rd);
    if (!rd)
        return nq_fail(err, "out of memory");
    int k = 0;
    for (int r = 0; r < nr; r++) {
        const nq_tensor *t = find(ck, prefix, readers[r]);
        if (!t) {
            if (optional && optional[r])
                continue;
            free(rd);
            return 0;
        }
        if (t->ndim != 2 || t->shape[1] != cols) {
            free(rd);
            return 0;
        }
        snprintf(rd[k++], sizeof *rd, "%s", t->name);
    }
    if (k == 0) {
        free(rd);
        return 0;
    }
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 8;
        nq_eq_pair *np = realloc(b->p, (size_t)cap * sizeof *np);
        if (!np) {
            free(rd);
            return nq_fail(err, "out of memory");
        }
        b->p = np, b->cap = cap;
    }
    nq_eq_pair *p = &b->p[b->n++];
    memset(p, 0, sizeof *p);
    p->relu2 = relu2;
    p->kind = relu2 ? NQ_EQ_RELU2 : strcmp(src, "norm.weight") == 0 ? NQ_EQ_NORM : NQ_EQ_GATED;
    snprintf(p->src, sizeof p->src, "%s", s->name);
    p->cols = cols;
    p->src_in = relu2 ? s->shape[1] : 0;
    p->n = k;
    p->readers = rd;
    return 0;
}

int nq_eq_layer_pairs(const nq_model_config *cfg, const nq_checkpoint *ck, int layer,
                      nq_eq_pair **out, int *n, nq_error *err)
{
    *out = NULL;
    *n = 0;
    /* the block's prefix, from its norm ("backbone.layers.L.") */
    char want[64], prefix[300] = "";
    snprintf(want, sizeof want, "layers.%d.norm.weight", layer);
    size_t wl = strlen(want);
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const char *nm = nq_checkpoint_tensor(ck, i)->name;
        size_t a = strlen(nm);
        if (a >= wl && strcmp(nm + a - wl, want) == 0 && (a == wl || nm[a - wl - 1] == '.')) {
            snprintf(prefix, sizeof prefix, "%.*slayers.%d.", (int)(a - wl), nm, layer);
            break;
        }
    }
    if (!prefix[0] || layer < 0 || layer >= cfg->num_layers)
        return 0;
    builder b = {0};
    char kind = cfg->pattern[layer];
    int E = cfg->n_routed_experts;
    bool relu2 = strcmp(cfg->mlp_hidden_act, "relu2") == 0;
    int rc = -1;
    char(*names)[96] = calloc((size_t)(E + 8) * 2, sizeof *names);
    const char **rd = calloc((size_t)(E + 8) * 2, sizeof *rd);
    bool *opt = calloc((size_t)(E + 8) * 2, sizeof *opt);
    if (!names || !rd || !opt) {
        nq_fail(err, "out of memory");
        goto done;
    }
    int nr = 0;
    if (kind == NQ_BLOCK_MAMBA) {
        rd[nr++] = "mixer.in_proj.weight";
    } else if (kind == NQ_BLOCK_ATTENTION) {
        rd[nr++] = "mixer.q_proj.weight";
        rd[nr++] = "mixer.k_proj.weight";
        rd[nr++] = "mixer.v_proj.weight";
    } else if (kind == NQ_BLOCK_MLP) {
        rd[nr++] = "mixer.up_proj.weight";
    } else if (kind == NQ_BLOCK_MOE) {
        rd[nr++] = "mixer.gate.weight";
        opt[nr] = true;
        rd[nr++] = "mixer.shared_experts.up_proj.weight";
        for (int e = 0; e < E; e++) {
            snprintf(names[e], sizeof *names, "mixer.experts.%d.up_proj.weight", e);
            rd[nr++] = names[e];
        }
    }
    if (nr && add_pair(&b, ck, prefix, false, "norm.weight", rd, opt, nr, err) != 0)
        goto done;
    if (kind == NQ_BLOCK_MAMBA) {
        const char *o = "mixer.out_proj.weight";
        if (add_pair(&b, ck, prefix, false, "mixer.norm.weight", &o, NULL, 1, err) != 0)
            goto done;
    }
    if (relu2 && (kind == NQ_BLOCK_MOE || kind == NQ_BLOCK_MLP)) {
        int ne = kind == NQ_BLOCK_MLP ? 1 : E + 1;
        for (int e = 0; e < ne; e++) {
            char base[64], up[96], down[96], bias[96];
            if (kind == NQ_BLOCK_MLP)
                snprintf(base, sizeof base, "mixer.");
            else if (e < E)
                snprintf(base, sizeof base, "mixer.experts.%d.", e);
            else
                snprintf(base, sizeof base, "mixer.shared_experts.");
            snprintf(up, sizeof up, "%sup_proj.weight", base);
            snprintf(down, sizeof down, "%sdown_proj.weight", base);
            snprintf(bias, sizeof bias, "%sup_proj.bias", base);
            if (find(ck, prefix, bias))
                continue;
            const char *d = down;
            if (add_pair(&b, ck, prefix, true, up, &d, NULL, 1, err) != 0)
                goto done;
        }
    }
    rc = 0;
done:
    free(names);
    free(rd);
    free(opt);
    if (rc != 0) {
        nq_eq_pairs_free(b.p, b.n);
        return rc;
    }
    *out = b.p;
    *n = b.n;
    return 0;
}

void nq_eq_pairs_free(nq_eq_pair *p, int n)
{
    for (int i = 0; i < n; i++)
        free(p[i].readers);
    free(p);
}

void nq_eq_apply_src(const nq_eq_pair *p, float *src, const float *c)
{
    if (!p->relu2) {
        for (int64_t k = 0; k < p->cols; k++)
            src[k] /= c[k];
        return;
    }
    for (int64_t r = 0; r < p->cols; r++) {
        float f = (float)(1.0 / sqrt((double)c[r]));
        for (int64_t k = 0; k < p->src_in; k++)
            src[r * p->src_in + k] *= f;
    }
}

void nq_eq_apply_reader(float *w, int64_t rows, int64_t cols, const float *c)
{
    for (int64_t o = 0; o < rows; o++)
        for (int64_t k = 0; k < cols; k++)
            w[o * cols + k] *= c[k];
}
