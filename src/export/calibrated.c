/* The calibrated quantize path: the model runs layer by layer on the
 * calibration tokens; each layer's Linear inputs give its activation scales
 * (and Hessians for GPTQ), then the layer is quantized and written, and the
 * next layer's input is computed (from the float or the quantized layer).
 *
 * Output order is layer order (embeddings first, the head last): the writer
 * streams tensors in declaration order and a layer can only be written once
 * it has been calibrated.  Loaders find tensors through the index, so the
 * order inside the shards does not matter to them.
 *
 * Peak memory: one layer's weights in f32 (the model's block) plus, during
 * quantization, one module's f32 weight and its encoding; the activations
 * of all calibration tokens (samples x len x hidden x 4 bytes), twice when
 * the layer's input must be kept (--equalize, --optimize passes, quantized
 * propagation), on the host or, with a GPU they fit on, on the GPU only
 * (see acts_open); per quantized Linear of the current layer
 * NQ_CALIB_SAMPLE_ROWS input rows, and with GPTQ its Hessian (in^2 x 8
 * bytes). */
#include "export/calibrated_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "algo/equalize.h"
#include "algo/gptq.h"
#include "export/equalize.h"
#include "calib/calib.h"
#include "core/interrupt.h"
#include "cuda/cuda.h"
#include "formats/encode.h"
#include "export/output.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"
#include "formats/rounding.h"
#include "model/forward.h"
#include "tok/tokenizer.h"

/* ---- layer order ------------------------------------------------------ */

static int layer_of_tensor(const char *name)
{
    const char *p = strstr(name, "layers.");
    if (!p)
        return -1;
    char *end;
    long v = strtol(p + 7, &end, 10);
    return end != p + 7 && *end == '.' ? (int)v : -1;
}

static int cmp_order(const void *a, const void *b)
{
    const order_item *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* "experts.12.up_proj" -> "experts.*.up_proj": the modules that share an
 * input scale (one fused MoE kernel). */
static void expert_family(const char *module, char *out, size_t size)
{
    const char *p = strstr(module, "experts.");
    if (!p || p[8] < '0' || p[8] > '9') {
        snprintf(out, size, "%s", module);
        return;
    }
    const char *q = p + 8;
    while (*q >= '0' && *q <= '9')
        q++;
    snprintf(out, size, "%.*sexperts.*%s", (int)(p - module), module, q);
}

/* ---- the per-layer weight override for propagating quantized outputs --- */

static int override_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    override_ctx *o = ctx;
    const override_entry *e = override_find(o, req->name);
    if (e) {
        memcpy(out, e->w, req->numel * sizeof *out);
        return 0;
    }
    return nq_checkpoint_weight_fetch((void *)o->ck, req, out, err);
}

static void override_clear(override_ctx *o)
{
    for (size_t i = 0; i < o->n; i++)
        free(o->e[i].w);
    o->n = 0;
}

/* ---- the pass ---------------------------------------------------------- */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ||X (W - Q)^T||^2 and ||X W^T||^2 over the sampled input rows. */
static void output_error(const float *x, int rows, const float *w, const float *q, int64_t o,
                         int64_t in, double *err_sq, double *ref_sq)
{
    double e = 0.0, r = 0.0;
    for (int t = 0; t < rows; t++) {
        const float *xr = x + (size_t)t * in;
        for (int64_t j = 0; j < o; j++) {
            const float *wr = w + j * in, *qr = q + j * in;
            double a = 0.0, b = 0.0;
            for (int64_t k = 0; k < in; k++) {
                a += (double)xr[k] * wr[k];
                b += (double)xr[k] * qr[k];
            }
            e += (a - b) * (a - b);
            r += a * a;
        }
    }
    *err_sq = e;
    *ref_sq = r;
}

/* The largest amax over m's expert family (m itself when not an expert). */
static float family_amax(const nq_calib_stats *stats, const char *module)
{
    char fam[300], other[300];
    expert_family(module, fam, sizeof fam);
    float amax = 0.0f;
    for (size_t i = 0; i < stats->count; i++) {
        expert_family(stats->items[i].module->name, other, sizeof other);
        if (strcmp(other, fam) == 0 && stats->items[i].amax > amax)
            amax = stats->items[i].amax;
    }
    return amax;
}

/* --optimize act-mse / act-percentile: one input global scale per family
 * from the errors and histograms the NQ_CALIB_ACT pass gathered, into every
 * member's act_gs. */
static void choose_act_scales(nq_calib_stats *stats, nq_act_scale_rule rule)
{
    char fam[300], other[300];
    for (size_t i = 0; i < stats->count; i++) {
        nq_linear_stats *st = &stats->items[i];
        if (st->act_amax_ref <= 0 || st->act_gs > 0)
            continue;
        expert_family(st->module->name, fam, sizeof fam);
        double err[NQ_ACT_CANDIDATES] = {0};
        uint64_t hist[NQ_ACT_HIST_BINS] = {0}, total = 0;
        for (size_t j = i; j < stats->count; j++) {
            expert_family(stats->items[j].module->name, other, sizeof other);
            if (strcmp(other, fam) != 0)
                continue;
            for (int k = 0; k < NQ_ACT_CANDIDATES; k++)
                err[k] += stats->items[j].act_err[k];
            for (int b = 0; b < NQ_ACT_HIST_BINS; b++) {
                hist[b] += stats->items[j].act_hist[b];
                total += stats->items[j].act_hist[b];
            }
        }
        float gs = nq_calib_act_candidate(st->act_amax_ref, 0);
        if (rule == NQ_ACT_SCALE_MSE) {
            int best = 0;
            for (int k = 1; k < NQ_ACT_CANDIDATES; k++)
                if (err[k] < err[best])
                    best = k;
            gs = nq_calib_act_candidate(st->act_amax_ref, best);
        } else if (rule == NQ_ACT_SCALE_PERCENTILE && total > 0) {
            /* the upper edge of the bin holding the 99.99th percentile */
            uint64_t above = 0, limit = total / 10000;
            int b = 0;
            while (b < NQ_ACT_HIST_BINS - 1 && above + hist[b] <= limit)
                above += hist[b++];
            gs = (float)((double)st->act_amax_ref * exp2(-b / 8.0) / (6.0 * 448.0));
        }
        for (size_t j = i; j < stats->count; j++) {
            expert_family(stats->items[j].module->name, other, sizeof other);
            if (strcmp(other, fam) == 0)
                stats->items[j].act_gs = gs;
        }
    }
}

/* The --optimize passes over one layer, each on the layer's input again
 * (it leaves the activations as they were: the same float layer's output,
 * bit for bit, since the hooks only read): the act-scale search, then the
 * served-input Hessians. */
static int optimize_passes(nq_model *model, const nq_quantize_options *opt,
                           nq_calib_stats *stats, int layer, acts *a, nq_error *err)
{
    const nq_optimize *o = &opt->optimize;
    bool act = o->act_scale != NQ_ACT_SCALE_AMAX;
    bool served = opt->gptq && o->served_hessian;
    bool any = false;
    for (size_t i = 0; i < stats->count; i++)
        if (stats->items[i].module->format == NQ_FORMAT_NVFP4) {
            stats->items[i].act_amax_ref = family_amax(stats, stats->items[i].module->name);
            any = true;
        }
    if (!any || (!act && !served))
        return 0;
    nq_forward_hooks hooks = nq_calib_hooks(stats);
    if (act) {
        if (acts_restore(a, err) != 0)
            return -1;
        stats->mode = NQ_CALIB_ACT;
        nq_model_set_hooks(model, &hooks);
        int r = acts_run(a, layer, err);
        nq_model_set_hooks(model, NULL);
        stats->mode = NQ_CALIB_FLOAT;
        if (r != 0)
            return -1;
        choose_act_scales(stats, o->act_scale);
    } else {
        for (size_t i = 0; i < stats->count; i++)
            if (stats->items[i].act_amax_ref > 0)
                stats->items[i].act_gs = nq_calib_act_candidate(stats->items[i].act_amax_ref, 0);
    }
    if (!served)
        return 0;
    for (size_t i = 0; i < stats->count; i++) {
        nq_linear_stats *st = &stats->items[i];
        if (st->act_gs <= 0 || !st->hessian)
            continue;
        size_t d = (size_t)st->module->in_features;
        memset(st->hessian, 0, d * d * sizeof *st->hessian);
    }
    if (acts_restore(a, err) != 0)
        return -1;
    stats->mode = NQ_CALIB_SERVED;
    nq_model_set_hooks(model, &hooks);
    int r = acts_run(a, layer, err);
    nq_model_set_hooks(model, NULL);
    stats->mode = NQ_CALIB_FLOAT;
    return r;
}

/* One module's f32 weight at a time, in a buffer reused from module to
 * module (page-locked for the GPU's uploads: a fresh malloc of each Nano
 * expert's 20 MB costs more in page faults than its encoding). */
typedef struct weight_buf {
    float *p;
    size_t cap;    /* floats */
    bool pinned;
} weight_buf;

/* t as f32 in wb (widened by the checkpoint reader's threads), not yet
 * checked finite (check_finite; the GPU's encoder flags non-finite values
 * itself). */
static float *load_weight_pinned(const nq_checkpoint *ck, const nq_tensor *t, weight_buf *wb,
                                 nq_error *err)
{
    if (wb->cap < t->numel) {
        if (wb->pinned)
            nq_cuda_host_free(wb->p);
        else
            free(wb->p);
        wb->cap = 0;
        wb->p = nq_cuda_host_alloc(t->numel * sizeof *wb->p);
        wb->pinned = wb->p != NULL;
        if (!wb->p && !(wb->p = malloc(t->numel * sizeof *wb->p))) {
            nq_fail(err, "tensor '%s': out of memory for %llu floats", t->name,
                    (unsigned long long)t->numel);
            return NULL;
        }
        wb->cap = t->numel;
    }
    nq_weight_request req = {.name = t->name, .layer = -1, .ndim = t->ndim, .numel = t->numel};
    for (int i = 0; i < t->ndim && i < 4; i++)
        req.shape[i] = t->shape[i];
    int rc = nq_checkpoint_weight_fetch((void *)ck, &req, wb->p, err);
    if (rc != 0) {
        if (rc == 1)
            nq_fail(err, "%s: tensor not found", t->name);
        return NULL;
    }
    return wb->p;
}

/* 0 when every value of w (t's) is finite, else -1 with
 * nq_tensor_load_f32's error. */
static int check_finite(const nq_tensor *t, const float *w, nq_error *err)
{
    uint64_t i = 0;
    while (i < t->numel && isfinite(w[i]))
        i++;
    if (i == t->numel)
        return 0;
    float *again = nq_tensor_load_f32(t, true, err);
    if (again) {
        free(again);
        return nq_fail(err, "tensor '%s': element %llu is not finite", t->name,
                       (unsigned long long)i);
    }
    return -1;
}

static void weight_free(float *w, const weight_buf *wb)
{
    if (w != wb->p)
        free(w);
}

static void weight_buf_free(weight_buf *wb)
{
    if (wb->pinned)
        nq_cuda_host_free(wb->p);
    else
        free(wb->p);
    memset(wb, 0, sizeof *wb);
}

static int write_scalar(nq_writer *w, float v, nq_error *err)
{
    return nq_writer_write(w, &v, sizeof v, err);
}

/* Runs block l over x gathering its statistics into stats: on the GPU its
 * device statistics (cuda/stats.cu, fetched once for the layer), on the
 * CPU the host hooks. */
static int layer_stats(nq_model *model, int l, acts *a, nq_calib_stats *stats,
                       struct nq_cuda *g, nq_error *err)
{
    if (g) {
        if (nq_calib_device_begin(stats, g, err) != 0 || acts_run(a, l, err) != 0 ||
            nq_calib_device_collect(stats, g, err) != 0) {
            nq_cuda_stats_end(g);
            return -1;
        }
        return 0;
    }
    nq_forward_hooks hooks = nq_calib_hooks(stats);
    nq_model_set_hooks(model, &hooks);
    int rc = acts_run(a, l, err);
    nq_model_set_hooks(model, NULL);
    return rc;
}

int nq_quantize_calibrated(const nq_quantize_options *opt, const nq_checkpoint *ck,
                           const nq_model_config *cfg, const nq_plan *plan,
                           nq_quantize_summary *sum, nq_error *err)
{
    double t_start = now_seconds();
    int L = cfg->num_layers, H = cfg->hidden_size;
    bool quantized_propagation = opt->propagate == NQ_PROPAGATE_QUANTIZED ||
                                 (opt->propagate == NQ_PROPAGATE_AUTO && opt->gptq);
    bool kv_fp8 = plan->kv_cache_fp8 && opt->kv_cache_fp8;
    int min_rows = opt->gptq_min_rows > 0 ? opt->gptq_min_rows : 128;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", opt->in_dir);
    nq_tokenizer *tok = NULL;
    nq_model *model = NULL;
    nq_writer *w = NULL;
    int32_t *ids = NULL;
    acts a = {0};
    weight_buf wbuf = {0};
    order_item *order = NULL;
    bool equalize = opt->equalize || opt->optimize.equalize_nvfp4;
    nq_calib_stats stats = {.plan = plan, .hessians = opt->gptq || equalize};
    override_ctx eq = {.ck = ck};
    override_ctx ov = {.ck = ck, .next = &eq};
    gptq_window gw = {0};
    int rc = -1;
    size_t n = nq_checkpoint_count(ck);

    if (!(tok = nq_tokenizer_load(path, err)))
        goto done;
    int S, T;
    if (nq_calib_tokens(opt->calib_path, tok, opt->calib_samples > 0 ? opt->calib_samples : 256,
                        opt->calib_len > 0 ? opt->calib_len : 2048, &ids, &S, &T,
                        &sum->calib_stream_tokens, err) != 0)
        goto done;
    sum->calib_samples = S;
    sum->calib_len = T;
    if (opt->log)
        fprintf(opt->log, "calibration: %d samples x %d tokens from %s (%zu tokens)\n", S, T,
                opt->calib_path, sum->calib_stream_tokens);
    if (!(model = nq_model_open(ck, cfg, err)))
        goto done;
    nq_model_set_threads(model, opt->threads);
    nq_model_set_cuda(model, opt->cuda);
    /* the next layer's weights read while the GPU runs this one */
    nq_model_set_prefetch(model, opt->cuda != NULL);
    size_t plane = (size_t)T * H;
    bool opt_passes = opt->optimize.act_scale != NQ_ACT_SCALE_AMAX ||
                      (opt->gptq && opt->optimize.served_hessian);
    bool keep_input = opt->equalize || opt_passes || quantized_propagation;
    if (acts_open(&a, model, opt->cuda, cfg, S, T, keep_input, stats.hessians, opt->log, err) != 0)
        goto done;
    order = malloc((n ? n : 1) * sizeof *order);
    if (!order) {
        nq_fail(err, "calibration: out of memory");
        goto done;
    }
    /* host activations (none when resident on the GPU) */
    uint64_t host_acts = a.resident ? 0 : (uint64_t)S * plane * sizeof(float) * (keep_input ? 2 : 1);
    sum->peak_activation_bytes = host_acts;

    /* declare everything, in layer order */
    for (size_t i = 0; i < n; i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        int layer = layer_of_tensor(t->name);
        order[i].index = i;
        order[i].key = layer >= 0 ? layer : strstr(t->name, "embed") ? -1 : L;
    }
    qsort(order, n, sizeof *order, cmp_order);
    nq_writer_options wo = {.out_dir = opt->out_dir, .input_dir = opt->in_dir,
                            .max_shard_bytes = opt->max_shard_bytes, .force = opt->force};
    if (!(w = nq_writer_create(&wo, err)))
        goto done;
    sum->tensors_in = n;
    for (size_t k = 0; k < n; k++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, order[k].index);
        const nq_plan_module *m = nq_module_of_weight(plan, t->name);
        sum->bytes_in += t->nbytes;
        sum->params_in += t->numel;
        if (m && m->format != NQ_FORMAT_KEEP) {
            char name[300];
            snprintf(name, sizeof name, "%s.input_scale", m->name);
            if (nq_declare_quantized(w, m, err) != 0 ||
                (m->format != NQ_FORMAT_INT4 &&
                 nq_writer_declare(w, name, NQ_F32, 0, NULL, err) != 0))
                goto done;
        } else if (nq_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err) != 0) {
            goto done;
        }
        bool last_of_layer = k + 1 == n || order[k + 1].key != order[k].key;
        int layer = order[k].key;
        if (last_of_layer && kv_fp8 && layer >= 0 && layer < L &&
            cfg->pattern[layer] == NQ_BLOCK_ATTENTION) {
            char kn[300], vn[300];
            snprintf(kn, sizeof kn, "backbone.layers.%d.mixer.k_proj.k_scale", layer);
            snprintf(vn, sizeof vn, "backbone.layers.%d.mixer.v_proj.v_scale", layer);
            if (nq_writer_declare(w, kn, NQ_F32, 0, NULL, err) != 0 ||
                nq_writer_declare(w, vn, NQ_F32, 0, NULL, err) != 0)
                goto done;
            sum->kv_layers++;
        }
    }
    if (nq_writer_begin(w, err) != 0)
        goto done;

    size_t k = 0;
    /* embeddings (and anything else before layer 0) */
    for (; k < n && order[k].key < 0; k++)
        if (nq_copy_tensor(w, nq_checkpoint_tensor(ck, order[k].index), err) != 0)
            goto done;
    if (acts_embed(&a, ids, err) != 0)
        goto done;

    for (int l = 0; l < L; l++) {
        if (nq_interrupt_check(err) != 0)
            goto done;
        double t_layer = now_seconds();
        int kind = cfg->pattern[l] == NQ_BLOCK_MAMBA ? 0 : cfg->pattern[l] == NQ_BLOCK_MOE ? 1
                 : cfg->pattern[l] == NQ_BLOCK_ATTENTION ? 2 : 3;
        /* 1. statistics of the float layer on its input */
        if (acts_save(&a, err) != 0 || layer_stats(model, l, &a, &stats, opt->cuda, err) != 0)
            goto done;
        if (equalize) {
            /* the scales come from the float layer's statistics; the
             * statistics GPTQ and the input scales use are those of the
             * equalized layer (its inputs are divided by the scales) */
            if (equalize_layer(l, cfg, ck, plan, &stats, opt, &eq, sum, err) != 0)
                goto done;
            if (eq.n > 0) {
                nq_calib_stats_reset(&stats);
                if (acts_restore(&a, err) != 0)
                    goto done;
                nq_model_set_weights(model,
                                     (nq_weight_provider){.fetch = override_fetch, .ctx = &eq});
                int brc = layer_stats(model, l, &a, &stats, opt->cuda, err);
                nq_model_set_weights(model,
                                     (nq_weight_provider){.fetch = nq_checkpoint_weight_fetch,
                                                          .ctx = (void *)ck});
                if (brc != 0)
                    goto done;
            }
        }
        if (opt_passes) {
            /* on the equalized layer when --equalize changed it */
            if (eq.n > 0)
                nq_model_set_weights(model,
                                     (nq_weight_provider){.fetch = override_fetch, .ctx = &eq});
            int orc = optimize_passes(model, opt, &stats, l, &a, err);
            if (eq.n > 0)
                nq_model_set_weights(model,
                                     (nq_weight_provider){.fetch = nq_checkpoint_weight_fetch,
                                                          .ctx = (void *)ck});
            if (orc != 0)
                goto done;
        }
        uint64_t stat_bytes = 0;
        for (size_t i = 0; i < stats.count; i++)
            stat_bytes += (uint64_t)stats.items[i].module->in_features *
                          (NQ_CALIB_SAMPLE_ROWS * 4 + (stats.hessians ? stats.items[i].module->in_features * 8 : 0));
        if (host_acts + stat_bytes > sum->peak_activation_bytes)
            sum->peak_activation_bytes = host_acts + stat_bytes;

        sum->layer_stats_seconds[kind] += now_seconds() - t_layer;
        /* 2. quantize and write the layer's tensors */
        for (; k < n && order[k].key == l; k++) {
            if (nq_interrupt_check(err) != 0)
                goto done;
            const nq_tensor *t = nq_checkpoint_tensor(ck, order[k].index);
            const nq_plan_module *m = nq_module_of_weight(plan, t->name);
            if (opt->log)
                fprintf(opt->log, "\r[layer %d/%d] %-60.60s", l + 1, L, t->name);
            const override_entry *qe = override_find(&eq, t->name);
            if (!m || m->format == NQ_FORMAT_KEEP) {
                if ((qe ? write_kept(w, t, qe->w, err) : nq_copy_tensor(w, t, err)) != 0)
                    goto done;
                continue;
            }
            nq_linear_stats *st = nq_calib_find(&stats, m->name);
            /* the input scale: one per expert family (max over the layer's
             * experts, so experts without tokens are covered and fused-MoE
             * kernels that take the max compute the same thing), else the
             * module's own */
            char fam[300], other[300];
            expert_family(m->name, fam, sizeof fam);
            bool is_expert = strcmp(fam, m->name) != 0;
            float amax = st ? st->amax : 0.0f;
            if (is_expert)
                for (size_t i = 0; i < stats.count; i++) {
                    expert_family(stats.items[i].module->name, other, sizeof other);
                    if (strcmp(other, fam) == 0 && stats.items[i].amax > amax)
                        amax = stats.items[i].amax;
                }
            if (!st)
                sum->experts_without_tokens += is_expert;
            if (!(amax > 0.0f)) {
                nq_fail(err, "%s: no calibration input reached this module (amax 0); use more "
                             "or different calibration text",
                        m->name);
                goto done;
            }
            float input_scale = m->format == NQ_FORMAT_NVFP4 ? nq_scale_div(amax, 6.0f * 448.0f)
                                                             : nq_scale_div(amax, 448.0f);
            if (m->format == NQ_FORMAT_NVFP4 && opt->optimize.act_scale != NQ_ACT_SCALE_AMAX)
                /* the family's chosen scale (experts without tokens: any member's) */
                for (size_t i = 0; i < stats.count; i++) {
                    expert_family(stats.items[i].module->name, other, sizeof other);
                    if (strcmp(other, fam) == 0 && stats.items[i].act_gs > 0) {
                        input_scale = stats.items[i].act_gs;
                        break;
                    }
                }
            int wrc;
            gptq_pre *pre = window_take(&gw, k, n, order, ck, plan, opt, &eq, &stats, min_rows,
                                        m, t->name, &wrc, err);
            if (wrc != 0)
                goto done;
            float *wf = pre        ? pre->wf
                        : qe        ? malloc(t->numel * sizeof *wf)
                        : opt->cuda ? load_weight_pinned(ck, t, &wbuf, err)
                                    : nq_tensor_load_f32(t, true, err);
            if (pre)
                pre->wf = NULL;
            if (!wf) {
                if (qe)
                    nq_fail(err, "%s: out of memory", t->name);
                goto done;
            }
            if (qe)
                memcpy(wf, qe->w, t->numel * sizeof *wf);
            nq_plan_module m_eq;
            if (qe && m->shared_amax > 0.0f) {
                m_eq = *m;
                if (equalized_qkv_amax(&eq, ck, t->name, opt->threads, &m_eq.shared_amax,
                                       err) != 0) {
                    weight_free(wf, &wbuf);
                    goto done;
                }
                m = &m_eq;
            }
            nq_tensor_release(t);
            const double *hess = NULL;
            bool fallback = false;
            if (opt->gptq && m->format != NQ_FORMAT_FP8) {
                if (st && st->rows >= (uint64_t)min_rows && st->hessian) {
                    if (!pre) /* a window's modules are symmetrized already */
                        symmetrize(st->hessian, m->in_features);
                    hess = st->hessian;
                } else {
                    fallback = true;
                }
            }
            nq_quantize_options o2 = *opt;
            if (fallback)
                o2.mse_scales = true;
            encoded e = {0};
            /* NVFP4 round-to-nearest whose dequantized weight is not needed
             * on the host: encoded and measured on the GPU (cuda/encode.cu,
             * the same bytes as encode_module) */
            bool gpu_rtn = opt->cuda && m->format == NQ_FORMAT_NVFP4 && !hess &&
                           !quantized_propagation && !(m->shared_amax > 0.0f);
            double gstats[5] = {0};
            float *deq = NULL;
            int r;
            if (!gpu_rtn && wf == wbuf.p && check_finite(t, wf, err) != 0)
                r = -1;
            else if (gpu_rtn) {
                int64_t mo = m->out_features, mi = m->in_features;
                e.m = m;
                e.algo = o2.mse_scales ? "rtn+mse" : "rtn";
                e.packed = malloc((size_t)(mo * mi / 2));
                e.scales8 = malloc((size_t)(mo * mi / 16));
                r = e.packed && e.scales8
                        ? nq_cuda_encode_nvfp4(opt->cuda, wf, mo, mi, o2.mse_scales,
                                               st && st->sample_rows > 0 ? st->sample : NULL,
                                               st ? st->sample_rows : 0, e.packed, e.scales8,
                                               &e.gs, gstats, err)
                        : nq_fail(err, "%s: out of memory", m->name);
                e.st.sq_err = gstats[0];
                e.st.sq_err_max_scale = gstats[1];
                e.st.sq_ref = gstats[2];
                /* the CPU's message for a NaN or infinite weight (the GPU
                 * only flags that there is one) */
                if (r != 0 && !(wf == wbuf.p && check_finite(t, wf, err) != 0))
                    nq_error_name(err, "tensor", t->name);
            } else {
                deq = malloc((size_t)(m->out_features * m->in_features) * sizeof *deq);
                if (pre) { /* encoded with its window */
                    e = pre->e;
                    memset(&pre->e, 0, sizeof pre->e);
                }
                r = !deq  ? nq_fail(err, "%s: out of memory", m->name)
                    : pre ? 0
                          : encode_module(wf, m, &o2, hess,
                                          fallback && st && st->rows > 0 ? st->hessian : NULL,
                                          &e, err);
                if (r != 0)
                    nq_error_name(err, "tensor", t->name);
                if (r == 0)
                    r = dequantize(&e, deq, err);
            }
            if (r == 0)
                r = write_encoded(w, &e, err) ||
                    (m->format != NQ_FORMAT_INT4 && write_scalar(w, input_scale, err));
            if (r != 0) {
                encoded_free(&e);
                weight_free(wf, &wbuf);
                free(deq);
                goto done;
            }
            if (fallback)
                e.algo = strcmp(e.algo, "rtn+local-hessian") == 0
                             ? "rtn+local-hessian (too few calibration rows for gptq)"
                             : "rtn+mse (too few calibration rows for gptq)";
            sum->gptq_modules += hess != NULL;
            sum->gptq_fallbacks += fallback;
            double wsq = gstats[0], wref = gstats[2];
            for (int64_t q = 0; !gpu_rtn && q < m->out_features * m->in_features; q++) {
                double dlt = (double)wf[q] - deq[q];
                wsq += dlt * dlt;
                wref += (double)wf[q] * wf[q];
            }
            sum->sq_err += wsq;
            sum->sq_ref += wref;
            sum->sq_err_max_scale += hess ? 0.0 : e.st.sq_err_max_scale;
            double osq = gstats[3], oref = gstats[4];
            if (gpu_rtn) {
                /* measured with the encoding */
            } else if (st && st->sample_rows > 0 && opt->cuda) {
                /* rows x out x in multiply-adds twice per module: a Nano
                 * MoE layer's 256 expert modules make about 6.4e11, which
                 * the single-threaded loop below takes minutes over */
                if (nq_cuda_output_error(opt->cuda, st->sample, st->sample_rows, wf, deq,
                                         m->out_features, m->in_features, &osq, &oref,
                                         err) != 0) {
                    encoded_free(&e);
                    weight_free(wf, &wbuf);
                    free(deq);
                    goto done;
                }
            } else if (st && st->sample_rows > 0) {
                output_error(st->sample, st->sample_rows, wf, deq, m->out_features,
                             m->in_features, &osq, &oref);
            }
            sum->out_sq_err += osq;
            sum->out_sq_ref += oref;
            if (opt->report_modules) {
                json_t *rec = json_pack(
                    "{s:s, s:s, s:s, s:s, s:I, s:I, s:f, s:f, s:f, s:I}", "module", m->name,
                    "format", nq_format_name(m->format), "why", m->reason, "algorithm", e.algo,
                    "out_features", (json_int_t)m->out_features, "in_features",
                    (json_int_t)m->in_features, "weight_rel_err",
                    wref > 0 ? sqrt(wsq / wref) : 0.0, "output_rel_err",
                    oref > 0 ? sqrt(osq / oref) : 0.0, "activation_amax", (double)amax,
                    "calibration_rows", (json_int_t)(st ? st->rows : 0));
                if (rec && !st)
                    json_object_set_new(rec, "note",
                                        json_string("no calibration token was routed to this "
                                                    "expert: it uses its layer's input scale"));
                json_array_append_new(opt->report_modules, rec);
            }
            if (quantized_propagation) {
                override_entry *ne = realloc(ov.e, (ov.n + 1) * sizeof *ne);
                if (!ne) {
                    encoded_free(&e);
                    weight_free(wf, &wbuf);
                    free(deq);
                    nq_fail(err, "out of memory");
                    goto done;
                }
                ov.e = ne;
                snprintf(ov.e[ov.n].name, sizeof ov.e[ov.n].name, "%s.weight", m->name);
                ov.e[ov.n++].w = deq;
                deq = NULL;
            }
            encoded_free(&e);
            weight_free(wf, &wbuf);
            free(deq);
        }
        if (kv_fp8 && cfg->pattern[l] == NQ_BLOCK_ATTENTION) {
            /* docs/export-spec.md 3: ModelOpt 0.47 writes amax / 448 and
             * warns from 0.5 up (amax > 224) */
            if ((stats.k_amax > 224.0f || stats.v_amax > 224.0f) && opt->log)
                fprintf(opt->log, "\nwarning: layer %d: large K/V activations (amax %g/%g): the "
                                  "FP8 KV cache may lose accuracy\n",
                        l, (double)stats.k_amax, (double)stats.v_amax);
            if (write_scalar(w, nq_fp8_kv_cache_scale(stats.k_amax), err) != 0 ||
                write_scalar(w, nq_fp8_kv_cache_scale(stats.v_amax), err) != 0)
                goto done;
        }
        nq_calib_stats_reset(&stats);
        if (opt->cuda)
            nq_cuda_trim(opt->cuda);

        /* 3. the next layer's input */
        if (quantized_propagation && ov.n > 0) {
            if (acts_restore(&a, err) != 0)
                goto done;
            nq_model_set_weights(model,
                                 (nq_weight_provider){.fetch = override_fetch, .ctx = &ov});
            if (acts_run(&a, l, err) != 0)
                goto done;
            nq_model_set_weights(model, (nq_weight_provider){.fetch = nq_checkpoint_weight_fetch,
                                                             .ctx = (void *)ck});
        }
        override_clear(&ov);
        override_clear(&eq);
        double dt_layer = now_seconds() - t_layer;
        sum->layer_seconds[kind] += dt_layer;
        sum->layers_of_kind[kind]++;
        if (opt->log)
            fprintf(opt->log, "\r[layer %d/%d] %c: %.1f s%-50s\n", l + 1, L, cfg->pattern[l],
                    dt_layer, "");
        if (opt->cuda) {
            char label[32];
            snprintf(label, sizeof label, "layer %d (%c)", l, cfg->pattern[l]);
            nq_cuda_timing_report(opt->cuda, label);
        }
    }
    /* the head */
    for (; k < n; k++)
        if (nq_copy_tensor(w, nq_checkpoint_tensor(ck, order[k].index), err) != 0)
            goto done;
    if (nq_output_commit(w, opt, cfg, plan, kv_fp8 && sum->kv_layers > 0, sum, err) != 0)
        goto done;
    sum->calib_seconds = now_seconds() - t_start;
    rc = 0;
done:
    window_clear(&gw);
    nq_calib_stats_reset(&stats);
    override_clear(&ov);
    free(ov.e);
    override_clear(&eq);
    free(eq.e);
    nq_writer_free(w);
    nq_model_close(model);
    nq_tokenizer_free(tok);
    free(ids);
    acts_close(&a);
    weight_buf_free(&wbuf);
    free(order);
    return rc;
}
