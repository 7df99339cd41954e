#include "eval/deploy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/dequant.h"
#include "formats/fp8.h"
#include "formats/nvfp4.h"

typedef struct act_scale {
    char *module;           /* "backbone.layers.1.mixer.experts.3.up_proj" */
    nq_stored_format format;
    float scale;
} act_scale;

struct nq_deploy {
    const nq_checkpoint *ck;
    act_scale *acts;        /* sorted by module */
    size_t n_acts;
    float *k_scale, *v_scale; /* per layer, 0 = none */
    int n_layers;
    nq_deploy_info info;
};

static int cmp_act(const void *a, const void *b)
{
    return strcmp(((const act_scale *)a)->module, ((const act_scale *)b)->module);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* A scalar F32 scale tensor's value, validated. */
static int read_scalar(const nq_tensor *t, float *v, nq_error *err)
{
    if (t->numel != 1)
        return nq_fail(err, "tensor '%s': a scale must hold one value, it holds %llu", t->name,
                       (unsigned long long)t->numel);
    if (nq_tensor_read_f32(t, 0, 1, v, err) != 0)
        return -1;
    if (!isfinite(*v) || *v <= 0.0f)
        return nq_fail(err, "tensor '%s': scale %g is not finite and positive", t->name,
                       (double)*v);
    return 0;
}

/* "backbone.layers.N." -> N, else -1. */
static int layer_of(const char *name)
{
    const char *p = strstr(name, "layers.");
    if (!p)
        return -1;
    char *end;
    long v = strtol(p + 7, &end, 10);
    return end != p + 7 && *end == '.' && v >= 0 && v < 100000 ? (int)v : -1;
}

nq_deploy *nq_deploy_open(const nq_checkpoint *ck, nq_error *err)
{
    nq_deploy *d = calloc(1, sizeof *d);
    size_t n = nq_checkpoint_count(ck);
    if (!d || !(d->acts = calloc(n ? n : 1, sizeof *d->acts))) {
        free(d);
        nq_fail(err, "out of memory");
        return NULL;
    }
    d->ck = ck;
    for (size_t i = 0; i < n; i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        size_t len = strlen(t->name);
        if (ends_with(t->name, ".weight_scale_2") || ends_with(t->name, ".qweight") ||
            (ends_with(t->name, ".weight") && t->dtype == NQ_F8_E4M3)) {
            size_t cut = ends_with(t->name, ".weight_scale_2") ? 15
                         : ends_with(t->name, ".qweight")      ? 8
                                                               : 7;
            char module[512];
            snprintf(module, sizeof module, "%.*s", (int)(len - cut), t->name);
            nq_stored_format f = nq_stored_format_of(ck, module);
            d->info.nvfp4 += f == NQ_STORED_NVFP4;
            d->info.fp8 += f == NQ_STORED_FP8;
            d->info.gptq += f == NQ_STORED_GPTQ;
        }
        float v;
        if (ends_with(t->name, ".input_scale")) {
            if (read_scalar(t, &v, err) != 0)
                goto fail;
            act_scale *a = &d->acts[d->n_acts];
            a->module = strndup(t->name, len - 12);
            if (!a->module) {
                nq_fail(err, "out of memory");
                goto fail;
            }
            d->n_acts++;
            a->format = nq_stored_format_of(ck, a->module);
            a->scale = v;
            if (a->format != NQ_STORED_NVFP4 && a->format != NQ_STORED_FP8) {
                nq_fail(err, "tensor '%s': an input_scale for a module that is neither NVFP4 "
                             "nor FP8",
                        t->name);
                goto fail;
            }
            if (a->format == NQ_STORED_NVFP4)
                d->info.act_nvfp4++;
            else
                d->info.act_fp8++;
        } else if (ends_with(t->name, ".k_scale") || ends_with(t->name, ".v_scale")) {
            int layer = layer_of(t->name);
            if (layer < 0) {
                nq_fail(err, "tensor '%s': a KV scale outside any layer", t->name);
                goto fail;
            }
            if (read_scalar(t, &v, err) != 0)
                goto fail;
            if (layer >= d->n_layers) {
                int nl = layer + 1;
                float *k = realloc(d->k_scale, (size_t)nl * sizeof *k);
                if (k)
                    d->k_scale = k;
                float *vv = k ? realloc(d->v_scale, (size_t)nl * sizeof *vv) : NULL;
                if (!k || !vv) {
                    nq_fail(err, "out of memory");
                    goto fail;
                }
                d->v_scale = vv;
                for (int l = d->n_layers; l < nl; l++)
                    d->k_scale[l] = d->v_scale[l] = 0.0f;
                d->n_layers = nl;
            }
            if (ends_with(t->name, ".k_scale"))
                d->k_scale[layer] = v;
            else
                d->v_scale[layer] = v;
        }
    }
    for (int l = 0; l < d->n_layers; l++) {
        if ((d->k_scale[l] > 0) != (d->v_scale[l] > 0)) {
            nq_fail(err, "%s: layer %d has a %s but no %s", nq_checkpoint_dir(ck), l,
                    d->k_scale[l] > 0 ? "k_scale" : "v_scale",
                    d->k_scale[l] > 0 ? "v_scale" : "k_scale");
            goto fail;
        }
        d->info.kv_layers += d->k_scale[l] > 0;
    }
    qsort(d->acts, d->n_acts, sizeof *d->acts, cmp_act);
    return d;
fail:
    nq_deploy_free(d);
    return NULL;
}

void nq_deploy_free(nq_deploy *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n_acts; i++)
        free(d->acts[i].module);
    free(d->acts);
    free(d->k_scale);
    free(d->v_scale);
    free(d);
}

nq_deploy_info nq_deploy_describe(const nq_deploy *d)
{
    return d->info;
}

int nq_deploy_weight_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    nq_deploy *d = ctx;
    if (ends_with(req->name, ".weight")) {
        char module[512];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(req->name) - 7), req->name);
        nq_stored_format f = nq_stored_format_of(d->ck, module);
        if (f == NQ_STORED_NVFP4 || f == NQ_STORED_FP8 || f == NQ_STORED_GPTQ) {
            int64_t rows, cols;
            float *w = nq_decode_module(d->ck, module, 0, &rows, &cols, err);
            if (!w)
                return -1;
            if ((uint64_t)(rows * cols) != req->numel || req->ndim != 2 ||
                req->shape[0] != rows || req->shape[1] != cols) {
                free(w);
                return nq_fail(err, "%s: dequantized shape [%lld,%lld] but the config implies "
                                    "[%lld,%lld]",
                               req->name, (long long)rows, (long long)cols,
                               (long long)req->shape[0], (long long)req->shape[1]);
            }
            memcpy(out, w, req->numel * sizeof *out);
            free(w);
            return 0;
        }
    }
    return nq_checkpoint_weight_fetch((void *)d->ck, req, out, err);
}

static int rewrite_input(void *ctx, const nq_linear_input *in, float *x_out, nq_error *err)
{
    (void)err;
    nq_deploy *d = ctx;
    size_t len = strlen(in->weight_name);
    if (len < 8 || len - 7 >= 512)
        return 0;
    char module[512];
    snprintf(module, sizeof module, "%.*s", (int)(len - 7), in->weight_name);
    act_scale key = {.module = module};
    const act_scale *a = bsearch(&key, d->acts, d->n_acts, sizeof *d->acts, cmp_act);
    if (!a)
        return 0;
    int64_t n = (int64_t)in->rows * in->in_features;
    memcpy(x_out, in->x, (size_t)n * sizeof *x_out);
    if (a->format == NQ_STORED_NVFP4)
        /* rows are whole multiples of 16 (in_features % 16 == 0 is a
         * precondition of the format), so blocks never straddle rows */
        nq_nvfp4_fake_quant(x_out, n, a->scale);
    else
        nq_fp8_fake_quant(x_out, n, a->scale);
    return 1;
}

static int kv_output(void *ctx, const nq_kv_output *kv, nq_error *err)
{
    (void)err;
    nq_deploy *d = ctx;
    if (kv->layer < 0 || kv->layer >= d->n_layers || d->k_scale[kv->layer] <= 0)
        return 0;
    int64_t n = (int64_t)kv->n * kv->kv_dim;
    nq_fp8_fake_quant(kv->k, n, d->k_scale[kv->layer]);
    nq_fp8_fake_quant(kv->v, n, d->v_scale[kv->layer]);
    return 0;
}

nq_forward_hooks nq_deploy_hooks(nq_deploy *d)
{
    /* Only the hooks that have something to do (on the GPU path every hook
     * costs a copy of the activations back to the host); both only read d
     * and write their own buffers. */
    nq_forward_hooks h = {.ctx = d, .concurrent = true};
    if (d->n_acts > 0)
        h.rewrite_input = rewrite_input;
    for (int l = 0; l < d->n_layers; l++)
        if (d->k_scale[l] > 0)
            h.kv_output = kv_output;
    return h;
}
