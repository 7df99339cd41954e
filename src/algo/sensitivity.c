#include "algo/sensitivity.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "algo/gptq.h"
#include "calib/calib.h"
#include "core/interrupt.h"
#include "formats/encode.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/nvfp4.h"
#include "model/forward.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the quantized group: weights and input emulation ----------------- */

typedef struct member {
    char weight_name[300];  /* "...weight" */
    float *w;               /* dequantized [out, in] */
    nq_format format;
    float input_scale;
} member;

typedef struct group_ctx {
    const nq_checkpoint *ck;
    member *m;
    size_t n;
} group_ctx;

static int group_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    group_ctx *g = ctx;
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->m[i].weight_name, req->name) == 0) {
            memcpy(out, g->m[i].w, req->numel * sizeof *out);
            return 0;
        }
    return nq_checkpoint_weight_fetch((void *)g->ck, req, out, err);
}

static int group_rewrite(void *ctx, const nq_linear_input *in, float *x_out, nq_error *err)
{
    (void)err;
    group_ctx *g = ctx;
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->m[i].weight_name, in->weight_name) == 0) {
            int64_t n = (int64_t)in->rows * in->in_features;
            memcpy(x_out, in->x, (size_t)n * sizeof *x_out);
            if (g->m[i].format == NQ_FORMAT_NVFP4)
                nq_nvfp4_fake_quant(x_out, n, g->m[i].input_scale);
            else
                nq_fp8_fake_quant(x_out, n, g->m[i].input_scale);
            return 1;
        }
    return 0;
}

/* The weight a loader reconstructs after the export's encoder.  hessian
 * (NVFP4 with GPTQ only): the module's sum x x^T, both triangles; NULL
 * with gptq set: the export's fallback, round-to-nearest with mse scales. */
static float *quantized_weight(const nq_checkpoint *ck, const nq_plan_module *pm, nq_format f,
                               const nq_sensitivity_options *opt, const double *hessian,
                               float **orig, nq_error *err)
{
    char name[300];
    snprintf(name, sizeof name, "%s.weight", pm->name);
    const nq_tensor *t = nq_checkpoint_find(ck, name);
    if (!t) {
        nq_fail(err, "%s: tensor '%s' not found", nq_checkpoint_dir(ck), name);
        return NULL;
    }
    float *w = nq_tensor_load_f32(t, true, err);
    if (!w)
        return NULL;
    nq_tensor_release(t);
    int64_t o = pm->out_features, i = pm->in_features;
    if (orig) {
        if (!(*orig = malloc((size_t)(o * i) * sizeof **orig))) {
            free(w);
            nq_fail(err, "%s: out of memory", pm->name);
            return NULL;
        }
        memcpy(*orig, w, (size_t)(o * i) * sizeof *w);
    }
    nq_encode_stats st;
    int rc = -1;
    if (f == NQ_FORMAT_NVFP4) {
        uint8_t *packed = malloc((size_t)(o * i / 2)), *scales = malloc((size_t)(o * i / 16));
        float gs;
        bool mse = opt->mse_scales || (opt->gptq && !hessian);
        if (!packed || !scales) {
            nq_fail(err, "%s: out of memory", pm->name);
        } else if (opt->gptq && hessian) {
            nq_gptq_stats gst;
            rc = nq_gptq_nvfp4(w, o, i, hessian, opt->mse_scales,
                               opt->gptq_damp > 0 ? opt->gptq_damp : 0.01, opt->threads, 0.0f, packed,
                               scales, &gs, &gst, err);
        } else {
            rc = nq_encode_nvfp4(w, o, i, mse, opt->threads, packed, scales, &gs, &st, err);
        }
        if (rc == 0)
            for (int64_t r = 0; r < o; r++)
                nq_nvfp4_decode_row(packed + r * i / 2, scales + r * i / 16, gs, i, w + r * i);
        free(packed);
        free(scales);
    } else {
        uint8_t *q = malloc((size_t)(o * i));
        float s;
        if (!q)
            nq_fail(err, "%s: out of memory", pm->name);
        else if ((rc = nq_encode_fp8(w, o, i, opt->threads, q, &s, &st, err)) == 0)
            for (int64_t k = 0; k < o * i; k++)
                w[k] = nq_e4m3_to_f32(q[k]) * s;
        free(q);
    }
    if (rc != 0) {
        free(w);
        if (orig) {
            free(*orig);
            *orig = NULL;
        }
        return NULL;
    }
    return w;
}

/* Over the module's sampled calibration rows: the squared error of its
 * output as served (emulated input, quantized weight). */
static int output_error(const nq_linear_stats *st, const float *w, const float *q, int64_t o,
                        int64_t in, nq_format f, float input_scale, double *e, nq_error *err)
{
    int n = st->sample_rows;
    float *xq = malloc((size_t)n * in * sizeof *xq);
    float *y = malloc((size_t)n * o * sizeof *y), *yq = malloc((size_t)n * o * sizeof *yq);
    if (!xq || !y || !yq) {
        free(xq);
        free(y);
        free(yq);
        return nq_fail(err, "auto-quantize: out of memory");
    }
    memcpy(xq, st->sample, (size_t)n * in * sizeof *xq);
    if (f == NQ_FORMAT_NVFP4)
        nq_nvfp4_fake_quant(xq, (int64_t)n * in, input_scale);
    else
        nq_fp8_fake_quant(xq, (int64_t)n * in, input_scale);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)o, (int)in, 1.0f, st->sample,
                (int)in, w, (int)in, 0.0f, y, (int)o);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)o, (int)in, 1.0f, xq, (int)in,
                q, (int)in, 0.0f, yq, (int)o);
    double es = 0.0;
    for (size_t k = 0; k < (size_t)n * o; k++) {
        double d = (double)y[k] - yq[k];
        es += d * d;
    }
    *e = es;
    free(xq);
    free(y);
    free(yq);
    return 0;
}

/* ---- the measurement --------------------------------------------------- */

static void log_softmax_row(const float *logits, int v, float *out)
{
    float mx = logits[0];
    for (int j = 1; j < v; j++)
        mx = logits[j] > mx ? logits[j] : mx;
    double s = 0.0;
    for (int j = 0; j < v; j++)
        s += exp((double)logits[j] - mx);
    float lse = mx + (float)log(s);
    for (int j = 0; j < v; j++)
        out[j] = logits[j] - lse;
}

/* Sum over positions of KL(ref || q), ref given as log-probabilities. */
static double kl_sum(const float *ref_lp, const float *logits, int n, int v, float *scratch)
{
    double total = 0.0;
    for (int t = 0; t < n; t++) {
        const float *r = ref_lp + (size_t)t * v;
        log_softmax_row(logits + (size_t)t * v, v, scratch);
        double kl = 0.0;
        for (int j = 0; j < v; j++) {
            double p = exp((double)r[j]);
            kl += p * ((double)r[j] - scratch[j]);
        }
        total += kl;
    }
    return total;
}

/* What scoring one group needs: the models, the cached inputs and reference
 * distributions of the scoring windows, buffers, and the statistics of the
 * group's layer (amax per plan module; Hessians when GPTQ). */
typedef struct scorer {
    const nq_checkpoint *ck;
    const nq_plan *plan;
    const nq_sensitivity_options *opt;
    nq_model *model, *qmodel;
    int L, W, T, V;
    uint64_t tokens;         /* calibration tokens of the statistics pass */
    size_t plane;
    const float *cache, *ref;
    float *work, *logits, *scratch;
    const float *amax;
    double *curvature;       /* per layer (proxy only) */
    nq_calib_stats *stats;
    nq_sensitivity_cost *cost;
} scorer;

static const double *module_hessian(const scorer *sc, const nq_plan_module *pm)
{
    nq_linear_stats *st = nq_calib_find(sc->stats, pm->name);
    int min_rows = sc->opt->gptq_min_rows > 0 ? sc->opt->gptq_min_rows : 128;
    return st && st->hessian && st->rows >= (uint64_t)min_rows ? st->hessian : NULL;
}

/* Quantizes g in format f, runs its block: out_err and res_err; then, when
 * the KL is wanted (full, or not proxy_only), the rest of the model: score. */
static int score_group(const scorer *sc, nq_autoq_group *g, nq_format f, bool full,
                       nq_error *err)
{
    const nq_plan *plan = sc->plan;
    const float *amax = sc->amax;
    int W = sc->W, T = sc->T, V = sc->V;
    size_t plane = sc->plane;
    group_ctx gc = {.ck = sc->ck, .m = calloc(g->nmembers, sizeof(member)), .n = g->nmembers};
    int rc = -1;
    if (!gc.m)
        return nq_fail(err, "auto-quantize: out of memory");
    double out_err = 0.0;
    /* routed experts share their layer's input scale (as exported) */
    float fam_amax = 0.0f;
    for (size_t k = 0; k < g->nmembers; k++) {
        const nq_plan_module *pm = &plan->modules[g->members[k]];
        if (pm->role == NQ_ROLE_ROUTED_EXPERTS && amax[g->members[k]] > fam_amax)
            fam_amax = amax[g->members[k]];
    }
    for (size_t k = 0; k < g->nmembers; k++) {
        size_t mi = g->members[k];
        const nq_plan_module *pm = &plan->modules[mi];
        member *mb = &gc.m[k];
        snprintf(mb->weight_name, sizeof mb->weight_name, "%s.weight", pm->name);
        mb->format = f;
        float a = amax[mi];
        if (pm->role == NQ_ROLE_ROUTED_EXPERTS) {
            /* up and down share nothing: the family is per projection */
            const char *proj = strstr(pm->name, "up_proj") ? "up_proj" : "down_proj";
            a = 0.0f;
            for (size_t q = 0; q < g->nmembers; q++) {
                const nq_plan_module *pq = &plan->modules[g->members[q]];
                if (pq->role == NQ_ROLE_ROUTED_EXPERTS && pq->layer == pm->layer &&
                    strstr(pq->name, proj) && amax[g->members[q]] > a)
                    a = amax[g->members[q]];
            }
        }
        if (!(a > 0.0f))
            a = fam_amax > 0.0f ? fam_amax : 1.0f;
        mb->input_scale = f == NQ_FORMAT_NVFP4 ? a / (6.0f * 448.0f) : a / 448.0f;
        const double *h = NULL;
        if (sc->opt->gptq && f == NQ_FORMAT_NVFP4) {
            h = module_hessian(sc, pm);
            sc->cost->gptq_modules += h != NULL;
            sc->cost->gptq_fallbacks += h == NULL;
        }
        float *orig = NULL;
        if (!(mb->w = quantized_weight(sc->ck, pm, f, sc->opt, h, &orig, err)))
            goto done;
        nq_linear_stats *st = nq_calib_find(sc->stats, pm->name);
        double e = 0.0;
        int orc = st && st->sample_rows > 0
                      ? output_error(st, orig, mb->w, pm->out_features, pm->in_features, f,
                                     mb->input_scale, &e, err)
                      : 0;
        free(orig);
        if (orc != 0)
            goto done;
        if (st && st->sample_rows > 0) /* per token: the module saw st->rows of them */
            out_err += e * (double)st->rows / (double)sc->tokens / st->sample_rows;
    }
    g->out_err[f] = out_err;
    int l0 = g->layer;
    memcpy(sc->work, sc->cache + (size_t)l0 * W * plane, (size_t)W * plane * sizeof *sc->work);
    /* the group's layer on its own model (new weights each time); the float
     * model keeps its cached layers */
    nq_model_set_weights(sc->qmodel, (nq_weight_provider){.fetch = group_fetch, .ctx = &gc});
    nq_forward_hooks hooks = {.rewrite_input = group_rewrite, .ctx = &gc};
    nq_model_set_hooks(sc->qmodel, &hooks);
    for (int w = 0; w < W; w++)
        if (nq_model_block(sc->qmodel, l0, sc->work + (size_t)w * plane, T, NULL, err) != 0)
            goto done;
    nq_model_set_hooks(sc->qmodel, NULL);
    sc->cost->layer_evals += (uint64_t)W;
    double res = 0.0;
    const float *h = sc->cache + (size_t)(l0 + 1) * W * plane;
    for (size_t k = 0; k < (size_t)W * plane; k++) {
        double d = (double)sc->work[k] - h[k];
        res += d * d;
    }
    g->res_err[f] = res / ((double)W * T);
    if (sc->opt->proxy_only && !full) {
        g->proxy[f] = g->res_err[f] * sc->curvature[l0];
        g->score[f] = g->proxy[f];
        rc = 0;
        goto done;
    }
    for (int l = l0 + 1; l < sc->L; l++)
        for (int w = 0; w < W; w++)
            if (nq_model_block(sc->model, l, sc->work + (size_t)w * plane, T, NULL, err) != 0)
                goto done;
    sc->cost->layer_evals += (uint64_t)(sc->L - l0 - 1) * W;
    double kl = 0.0;
    for (int w = 0; w < W; w++) {
        if (nq_model_final(sc->model, sc->work + (size_t)w * plane, T, NULL, sc->logits, err) != 0)
            goto done;
        kl += kl_sum(sc->ref + (size_t)w * T * V, sc->logits, T, V, sc->scratch);
    }
    g->score[f] = kl / ((double)W * T);
    rc = 0;
done:
    nq_model_set_hooks(sc->qmodel, NULL);
    for (size_t k = 0; k < gc.n; k++)
        free(gc.m[k].w);
    free(gc.m);
    return rc;
}

/* c_L for the proxy: the KL per unit of squared residual error when every
 * searchable group of layer L is quantized at once (NVFP4 where allowed
 * everywhere, else FP8): how much the rest of the model amplifies an error
 * of the kind quantization makes at layer L. */
static int layer_curvature(scorer *sc, const nq_autoq *aq, int l, nq_error *err)
{
    nq_autoq_group u = {.layer = l};
    bool nvfp4 = true;
    size_t n = 0;
    for (size_t j = 0; j < aq->count; j++)
        if (!aq->groups[j].pinned && aq->groups[j].layer == l) {
            n += aq->groups[j].nmembers;
            nvfp4 &= aq->groups[j].allowed[NQ_FORMAT_NVFP4];
        }
    sc->curvature[l] = 0.0;
    if (n == 0)
        return 0;
    if (!(u.members = malloc(n * sizeof *u.members)))
        return nq_fail(err, "auto-quantize: out of memory");
    for (size_t j = 0; j < aq->count; j++)
        if (!aq->groups[j].pinned && aq->groups[j].layer == l) {
            memcpy(u.members + u.nmembers, aq->groups[j].members,
                   aq->groups[j].nmembers * sizeof *u.members);
            u.nmembers += aq->groups[j].nmembers;
        }
    nq_format f = nvfp4 ? NQ_FORMAT_NVFP4 : NQ_FORMAT_FP8;
    int rc = score_group(sc, &u, f, true, err);
    if (rc == 0 && u.res_err[f] > 0)
        sc->curvature[l] = u.score[f] / u.res_err[f];
    free(u.members);
    return rc;
}

int nq_sensitivity_measure(const nq_checkpoint *ck, const nq_model_config *cfg,
                           const nq_plan *plan, nq_autoq *aq, const nq_sensitivity_options *opt,
                           nq_sensitivity_cost *cost, nq_error *err)
{
    double t0 = now_seconds();
    memset(cost, 0, sizeof *cost);
    int L = cfg->num_layers, H = cfg->hidden_size, V = cfg->vocab_size;
    int S = opt->samples, T = opt->len;
    int W = opt->score_windows < S ? opt->score_windows : S;
    if (W < 1)
        W = 1;
    size_t plane = (size_t)T * H;
    nq_plan stats_plan = *plan;
    nq_calib_stats stats = {.plan = &stats_plan, .hessians = opt->gptq};
    nq_model *model = NULL, *qmodel = NULL;
    float *x = NULL, *cache = NULL, *ref = NULL, *work = NULL, *logits = NULL, *scratch = NULL;
    float *amax = NULL;
    double *curvature = NULL;
    int rc = -1;

    /* statistics for every searchable module, whatever the plan says */
    stats_plan.modules = malloc((plan->count ? plan->count : 1) * sizeof *stats_plan.modules);
    amax = calloc(plan->count ? plan->count : 1, sizeof *amax);
    x = malloc((size_t)S * plane * sizeof *x);
    cache = malloc((size_t)(L + 1) * W * plane * sizeof *cache); /* + the last block's output */
    ref = malloc((size_t)W * T * V * sizeof *ref);
    work = malloc((size_t)W * plane * sizeof *work);
    curvature = calloc((size_t)L, sizeof *curvature);
    logits = malloc((size_t)T * V * sizeof *logits);
    scratch = malloc((size_t)(V > 2 * H ? V : 2 * H) * sizeof *scratch);
    if (!stats_plan.modules || !amax || !x || !cache || !ref || !work || !logits || !scratch ||
        !curvature) {
        nq_fail(err, "auto-quantize: out of memory for %d x %d activations cached over %d "
                     "layers and %d x %d reference distributions",
                W, T, L, W, V);
        goto done;
    }
    memcpy(stats_plan.modules, plan->modules, plan->count * sizeof *plan->modules);
    for (size_t j = 0; j < aq->count; j++)
        for (size_t k = 0; k < aq->groups[j].nmembers; k++)
            stats_plan.modules[aq->groups[j].members[k]].format = NQ_FORMAT_NVFP4;
    if (!(model = nq_model_open(ck, cfg, err)) || !(qmodel = nq_model_open(ck, cfg, err)))
        goto done;
    nq_model_set_threads(model, opt->threads);
    nq_model_set_threads(qmodel, opt->threads);
    {
        /* the float layers after a group run again for every group: keep
         * their weights when the whole model fits in 2 GB of f32 */
        uint64_t params = 0;
        for (size_t i = 0; i < nq_checkpoint_count(ck); i++)
            params += nq_checkpoint_tensor(ck, i)->numel;
        nq_model_set_keep_weights(model, params * 4 <= (2ull << 30));
    }

    /* 1. the float pass over the scoring windows (evenly spread): every
     * layer's input, and the reference distributions */
    for (int w = 0; w < W; w++)
        if (nq_model_embed(model, opt->ids + (size_t)((int64_t)w * S / W) * T, T,
                           work + (size_t)w * plane, err) != 0)
            goto done;
    for (int l = 0; l < L; l++) {
        if (nq_interrupt_check(err) != 0)
            goto done;
        if (opt->log)
            fprintf(opt->log, "\rauto-quantize: float pass, layer %d/%d   ", l + 1, L);
        memcpy(cache + (size_t)l * W * plane, work, (size_t)W * plane * sizeof *work);
        for (int w = 0; w < W; w++)
            if (nq_model_block(model, l, work + (size_t)w * plane, T, NULL, err) != 0)
                goto done;
    }
    memcpy(cache + (size_t)L * W * plane, work, (size_t)W * plane * sizeof *work);
    for (int w = 0; w < W; w++) {
        if (nq_model_final(model, work + (size_t)w * plane, T, NULL, logits, err) != 0)
            goto done;
        for (int t = 0; t < T; t++)
            log_softmax_row(logits + (size_t)t * V, V, ref + ((size_t)w * T + t) * V);
    }
    cost->float_pass_seconds = now_seconds() - t0;

    /* 2. layer by layer over all calibration windows: the layer's statistics,
     * then its groups, one at a time */
    size_t total = 0, done_n = 0;
    for (size_t j = 0; j < aq->count; j++)
        if (!aq->groups[j].pinned)
            total += aq->groups[j].allowed[NQ_FORMAT_NVFP4] + aq->groups[j].allowed[NQ_FORMAT_FP8];
    scorer sc = {.ck = ck, .plan = plan, .opt = opt, .model = model, .qmodel = qmodel, .L = L,
                 .W = W, .T = T, .V = V, .tokens = (uint64_t)S * T, .plane = plane, .cache = cache, .ref = ref,
                 .work = work, .logits = logits, .scratch = scratch, .amax = amax,
                 .curvature = curvature, .stats = &stats, .cost = cost};
    for (int s = 0; s < S; s++)
        if (nq_model_embed(model, opt->ids + (size_t)s * T, T, x + s * plane, err) != 0)
            goto done;
    for (int l = 0; l < L; l++) {
        if (nq_interrupt_check(err) != 0)
            goto done;
        double t1 = now_seconds();
        nq_forward_hooks hooks = nq_calib_hooks(&stats);
        nq_model_set_hooks(model, &hooks);
        for (int s = 0; s < S; s++)
            if (nq_model_block(model, l, x + s * plane, T, NULL, err) != 0)
                goto done;
        nq_model_set_hooks(model, NULL);
        for (size_t i = 0; i < stats.count; i++) {
            nq_linear_stats *st = &stats.items[i];
            amax[st->module - stats_plan.modules] = st->amax;
            int64_t d = st->module->in_features;
            for (int64_t a = 0; st->hessian && a < d; a++) /* dsyrk filled the upper triangle */
                for (int64_t b = 0; b < a; b++)
                    st->hessian[a * d + b] = st->hessian[b * d + a];
        }
        cost->float_pass_seconds += now_seconds() - t1;
        if (opt->proxy_only && layer_curvature(&sc, aq, l, err) != 0)
            goto done;
        for (size_t j = 0; j < aq->count; j++) {
            nq_autoq_group *g = &aq->groups[j];
            if (g->pinned || g->layer != l)
                continue;
            for (int f = NQ_FORMAT_NVFP4; f <= NQ_FORMAT_FP8; f++) {
                if (!g->allowed[f])
                    continue;
                if (nq_interrupt_check(err) != 0)
                    goto done;
                if (opt->log)
                    fprintf(opt->log, "\rauto-quantize: scoring %zu/%zu %-60.60s", ++done_n,
                            total, g->name);
                if (score_group(&sc, g, (nq_format)f, false, err) != 0)
                    goto done;
            }
        }
        nq_calib_stats_reset(&stats);
    }
    if (opt->log)
        fprintf(opt->log, "\r%-100s\r", "");
    cost->score_tokens = (uint64_t)W * T; /* 0: proxy only */
    cost->seconds = now_seconds() - t0;
    rc = 0;
done:
    if (model)
        nq_model_set_hooks(model, NULL);
    nq_model_close(qmodel);
    nq_calib_stats_reset(&stats);
    nq_model_close(model);
    free(stats_plan.modules);
    free(amax);
    free(x);
    free(cache);
    free(ref);
    free(work);
    free(logits);
    free(scratch);
    free(curvature);
    return rc;
}
