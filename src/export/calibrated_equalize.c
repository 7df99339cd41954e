/* Exact equalization on the calibrated path (export/calibrated.c): the
 * per-layer search and rescaling of export/equalize.h's pairs with
 * algo/equalize.h, on the float layer's statistics. */
#include "export/calibrated_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "algo/equalize.h"
#include "export/equalize.h"
#include "export/output.h"
#include "formats/floatconv.h"

/* ---- exact equalization (algo/equalize.h, export/equalize.h) ------------ */

/* alpha in 0, 0.1, ..., 0.9 */
#define NQ_EQ_GRID 10

typedef struct qdq_ctx {
    const nq_plan_module *m;
    const nq_quantize_options *opt;
} qdq_ctx;

/* round-to-nearest with the module's format and scale rule */
static int qdq_module(void *ctx, const float *w, int64_t rows, int64_t cols, float *out,
                      nq_error *err)
{
    const qdq_ctx *q = ctx;
    if (rows != q->m->out_features || cols != q->m->in_features)
        return nq_fail(err, "internal: %s: equalize shape", q->m->name);
    encoded e = {0};
    int rc = encode_module(w, q->m, q->opt, NULL, NULL, &e, err);
    if (rc == 0)
        rc = dequantize(&e, out, err);
    encoded_free(&e);
    return rc;
}

/* The float copy of checkpoint tensor `name` in the equalization table
 * (loaded on first use). */
static override_entry *eq_entry(override_ctx *eq, const nq_checkpoint *ck, const char *name,
                                nq_error *err)
{
    for (size_t i = 0; i < eq->n; i++)
        if (strcmp(eq->e[i].name, name) == 0)
            return &eq->e[i];
    const nq_tensor *t = nq_checkpoint_find(ck, name);
    if (!t) {
        nq_fail(err, "internal: equalize: no tensor %s", name);
        return NULL;
    }
    float *w = nq_tensor_load_f32(t, true, err);
    override_entry *ne = w ? realloc(eq->e, (eq->n + 1) * sizeof *ne) : NULL;
    if (!ne) {
        if (w)
            nq_fail(err, "out of memory");
        free(w);
        return NULL;
    }
    eq->e = ne;
    snprintf(ne[eq->n].name, sizeof ne[eq->n].name, "%s", name);
    ne[eq->n].w = w;
    return &eq->e[eq->n++];
}

/* The shared q/k/v weight amax after equalization: the norm pair rescales
 * the q/k/v columns after the plan took the max of their checkpoint amax,
 * and vLLM's fused qkv_proj keeps a single weight_scale_2 (the largest of
 * the three), so the siblings must share the max of their equalized amax.
 * weight: "....q_proj.weight" (any of q/k/v); siblings not equalized keep
 * their checkpoint weights and are read from ck. */
int equalized_qkv_amax(const override_ctx *eq, const nq_checkpoint *ck, const char *weight,
                       int threads, float *out, nq_error *err)
{
    size_t n = strlen(weight);
    const char *tail = ".weight";
    if (n < 6 + strlen(tail))
        return nq_fail(err, "internal: %s: not a q/k/v weight", weight);
    size_t at = n - strlen(tail) - 6; /* start of "q_proj" */
    float amax = 0.0f;
    for (int k = 0; k < 3; k++) {
        char name[300];
        snprintf(name, sizeof name, "%.*s%c_proj%s", (int)at, weight, "qkv"[k], tail);
        const nq_tensor *t = nq_checkpoint_find(ck, name);
        if (!t)
            continue;
        const override_entry *e = override_find(eq, name);
        float *loaded = e ? NULL : nq_tensor_load_f32(t, true, err);
        if (!e && !loaded)
            return -1;
        nq_weight_view v = {e ? e->w : loaded, NQ_F32, t->shape[0], t->shape[1]};
        float a = 0.0f;
        int rc = nq_weight_view_amax(&v, threads, &a, err);
        free(loaded);
        if (!e)
            nq_tensor_release(t);
        if (rc != 0)
            return -1;
        if (a > amax)
            amax = a;
    }
    *out = amax;
    return 0;
}

/* Rounds a float copy to what its stored dtype keeps (the checkpoint writes
 * the tensors the plan keeps in their own dtype). */
static void round_to_dtype(float *w, uint64_t n, nq_dtype dt)
{
    for (uint64_t i = 0; i < n; i++)
        w[i] = dt == NQ_BF16 ? nq_bf16_to_f32(nq_f32_to_bf16(w[i]))
             : dt == NQ_F16  ? nq_f16_to_f32(nq_f32_to_f16(w[i]))
                             : w[i];
}

/* Fills eq with the equalized float tensors of layer l (export/equalize.h's
 * pairs), each pair's scales searched on the float layer's statistics: the
 * quantized readers with a Hessian are the search's consumers; every reader
 * is rescaled. */
int equalize_layer(int l, const nq_model_config *cfg, const nq_checkpoint *ck,
                   const nq_plan *plan, nq_calib_stats *stats,
                   const nq_quantize_options *opt, override_ctx *eq,
                   nq_quantize_summary *sum, nq_error *err)
{
    nq_eq_pair *pairs;
    int np;
    int min_rows = opt->gptq_min_rows > 0 ? opt->gptq_min_rows : 128;
    /* --optimize's equalize-nvfp4 alone: every pair kind, the served
     * objective, NVFP4 readers only (INT4 with act-order measured no gain
     * from equalization) */
    bool nvfp4_only = !opt->equalize;
    int kinds = nvfp4_only ? NQ_EQ_NORM | NQ_EQ_GATED | NQ_EQ_RELU2
              : opt->equalize_kinds ? opt->equalize_kinds : NQ_EQ_DEFAULT;
    bool served = nvfp4_only || opt->equalize_served;
    if (nq_eq_layer_pairs(cfg, ck, l, &pairs, &np, err) != 0)
        return -1;
    int rc = -1;
    nq_eq_consumer *cons = NULL;
    nq_eq_sample_consumer *scons = NULL;
    qdq_ctx *qc = NULL;
    float **ent = NULL;   /* weights, not entries: the table may move */
    float *c = NULL;
    double *rms = NULL;
    for (int pi = 0; pi < np; pi++) {
        const nq_eq_pair *p = &pairs[pi];
        if (!(kinds & p->kind))
            continue;
        free(cons), free(scons), free(qc), free(ent), free(c), free(rms);
        cons = calloc((size_t)p->n, sizeof *cons);
        scons = calloc((size_t)p->n, sizeof *scons);
        qc = calloc((size_t)p->n, sizeof *qc);
        ent = calloc((size_t)p->n, sizeof *ent);
        c = malloc((size_t)p->cols * sizeof *c);
        rms = malloc((size_t)p->cols * sizeof *rms);
        if (!cons || !scons || !qc || !ent || !c || !rms) {
            nq_fail(err, "out of memory");
            goto done;
        }
        int nc = 0;
        const double *rh = NULL;
        uint64_t rrows = 0;
        for (int r = 0; r < p->n; r++) {
            const nq_plan_module *m = nq_module_of_weight(plan, p->readers[r]);
            nq_linear_stats *st = m && m->format != NQ_FORMAT_KEEP ? nq_calib_find(stats, m->name)
                                                                    : NULL;
            /* few rows: a Hessian of low rank, whose unseen directions
             * the search would sacrifice */
            if (!st || !st->hessian || st->rows < (uint64_t)min_rows || st->sample_rows <= 0 ||
                (nvfp4_only && m->format != NQ_FORMAT_NVFP4))
                continue;
            override_entry *re = eq_entry(eq, ck, p->readers[r], err);
            if (!re)
                goto done;
            ent[r] = re->w;
            int64_t d = m->in_features;
            for (int64_t a = 0; a < d; a++) /* dsyrk filled the upper triangle */
                for (int64_t b = 0; b < a; b++)
                    st->hessian[a * d + b] = st->hessian[b * d + a];
            qc[nc] = (qdq_ctx){.m = m, .opt = opt};
            cons[nc] = (nq_eq_consumer){.w = ent[r], .rows = m->out_features,
                                        .hessian = st->hessian, .qdq = qdq_module,
                                        .qdq_ctx = &qc[nc]};
            scons[nc] = (nq_eq_sample_consumer){.w = ent[r], .rows = m->out_features,
                                                .x = st->sample, .xrows = st->sample_rows,
                                                .act_nvfp4 = m->format == NQ_FORMAT_NVFP4,
                                                .qdq = qdq_module, .qdq_ctx = &qc[nc]};
            nc++;
            if (st->rows > rrows)
                rrows = st->rows, rh = st->hessian;
        }
        if (nc == 0)
            continue;   /* no quantized reader saw data: leave the pair alone */
        /* the channels' RMS over every calibration row (the sampled rows
         * alone are one window for most readers) */
        for (int64_t k = 0; k < p->cols; k++)
            rms[k] = sqrt(rh[k * p->cols + k] / (double)rrows);
        nq_eq_result res;
        if (served
                ? nq_equalize_search_served(scons, nc, p->cols, rms, NQ_EQ_GRID, c, &res, err)
                : nq_equalize_search(cons, nc, p->cols, rms, NQ_EQ_GRID, c, &res, err))
            goto done;
        sum->eq_searched++;
        sum->eq_err_identity += res.err_identity;
        sum->eq_err_best += res.err_best;
        if (res.identity)
            continue;
        sum->eq_pairs++;
        override_entry *se = eq_entry(eq, ck, p->src, err);
        if (!se)
            goto done;
        nq_eq_apply_src(p, se->w, c);
        for (int r = 0; r < p->n; r++) {
            override_entry *re = ent[r] ? NULL : eq_entry(eq, ck, p->readers[r], err);
            if (!ent[r] && !re)
                goto done;
            const nq_tensor *rt = nq_checkpoint_find(ck, p->readers[r]);
            nq_eq_apply_reader(ent[r] ? ent[r] : re->w, rt->shape[0], p->cols, c);
        }
    }
    /* what the checkpoint keeps in its own dtype is what the server runs */
    for (size_t i = 0; i < eq->n; i++) {
        const nq_tensor *et = nq_checkpoint_find(ck, eq->e[i].name);
        const nq_plan_module *m = nq_module_of_weight(plan, et->name);
        if (!m || m->format == NQ_FORMAT_KEEP)
            round_to_dtype(eq->e[i].w, et->numel, et->dtype);
    }
    rc = 0;
done:
    free(cons), free(scons), free(qc), free(ent), free(c), free(rms);
    nq_eq_pairs_free(pairs, np);
    return rc;
}

/* An equalized tensor the plan keeps, in its own dtype. */
int write_kept(nq_writer *w, const nq_tensor *t, const float *v, nq_error *err)
{
    if (t->dtype == NQ_F32)
        return nq_writer_write(w, v, t->numel * sizeof *v, err);
    uint16_t *h = malloc(t->numel * sizeof *h);
    if (!h)
        return nq_fail(err, "%s: out of memory", t->name);
    for (uint64_t i = 0; i < t->numel; i++)
        h[i] = t->dtype == NQ_BF16 ? nq_f32_to_bf16(v[i]) : nq_f32_to_f16(v[i]);
    int rc = nq_writer_write(w, h, t->numel * sizeof *h, err);
    free(h);
    return rc;
}
