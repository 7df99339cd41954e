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
#include "export/calibrated.h"

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

/* ---- one module, encoded ---------------------------------------------- */

typedef struct encoded {
    const nq_plan_module *m;
    uint8_t *packed, *scales8;   /* NVFP4 */
    uint8_t *fp8;                /* FP8 */
    float gs;                    /* NVFP4 weight_scale_2 / FP8 weight_scale */
    int32_t *qw, *qz, *gi;       /* INT4 */
    uint16_t *sc;
    nq_encode_stats st;
    const char *algo;
} encoded;

static void encoded_free(encoded *e)
{
    free(e->packed);
    free(e->scales8);
    free(e->fp8);
    free(e->qw);
    free(e->qz);
    free(e->gi);
    free(e->sc);
    memset(e, 0, sizeof *e);
}

/* ModelOpt's local_hessian for modules that do not get GPTQ (too few
 * calibration rows): per block the E4M3 scale with the least dw^T H_b dw,
 * H_b the block's 16x16 diagonal block of h (upper triangle filled). */
static int encode_nvfp4_local_hessian(const float *x, int64_t o, int64_t i, const double *h,
                                      float shared_amax, uint8_t *packed, uint8_t *scales,
                                      float *gs, nq_error *err)
{
    float amax = 0.0f;
    for (int64_t k = 0; k < o * i; k++) {
        if (!isfinite(x[k]))
            return nq_fail(err, "element %lld is not finite", (long long)k);
        amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
    }
    *gs = nq_nvfp4_global_scale(shared_amax > amax ? shared_amax : amax);
    double hb[NQ_NVFP4_BLOCK * NQ_NVFP4_BLOCK];
    for (int64_t b = 0; b < i / NQ_NVFP4_BLOCK; b++) {
        int64_t c0 = b * NQ_NVFP4_BLOCK;
        for (int a = 0; a < NQ_NVFP4_BLOCK; a++)
            for (int c = 0; c < NQ_NVFP4_BLOCK; c++)
                hb[a * NQ_NVFP4_BLOCK + c] = a <= c ? h[(c0 + a) * i + c0 + c]
                                                    : h[(c0 + c) * i + c0 + a];
        for (int64_t r = 0; r < o; r++) {
            double e;
            const float *blk = x + r * i + c0;
            uint8_t s = nq_nvfp4_block_scale_search(blk, *gs, hb, 0.5f, 1.5f, 0, &e);
            scales[r * (i / NQ_NVFP4_BLOCK) + b] = s;
            nq_nvfp4_encode_block(blk, s, *gs, packed + (r * i + c0) / 2);
        }
    }
    return 0;
}

/* h[a][b] = h[b][a] for a > b (dsyrk filled the upper triangle), in
 * 64 x 64 tiles: the column walk of the plain loop misses the cache on
 * every read (tens of ms for a 2688-wide Nano expert, 256 per layer). */
static void symmetrize(double *h, int64_t d)
{
    const int64_t T = 64;
    for (int64_t a0 = 0; a0 < d; a0 += T)
        for (int64_t b0 = 0; b0 <= a0; b0 += T)
            for (int64_t a = a0; a < a0 + T && a < d; a++)
                for (int64_t b = b0; b < b0 + T && b < a; b++)
                    h[a * d + b] = h[b * d + a];
}

static const char *gptq_algo_name(const nq_quantize_options *opt, nq_format f)
{
    if (f == NQ_FORMAT_NVFP4)
        return opt->optimize.enabled ? "gptq+optimize" : opt->mse_scales ? "gptq+mse" : "gptq";
    bool act_order = opt->gptq_act_order || opt->optimize.int4_act_order;
    return act_order ? (opt->mse_scales ? "gptq+act-order+mse" : "gptq+act-order")
           : opt->mse_scales ? "gptq+mse"
                             : "gptq";
}

static int encode_module(const float *x, const nq_plan_module *m, const nq_quantize_options *opt,
                         const double *hessian, const double *local_h, encoded *e, nq_error *err)
{
    int64_t o = m->out_features, i = m->in_features;
    e->m = m;
    int rc = -1;
    double damp = opt->gptq_damp > 0 ? opt->gptq_damp : 0.01;
    if (m->format == NQ_FORMAT_NVFP4) {
        e->packed = malloc((size_t)(o * i / 2));
        e->scales8 = malloc((size_t)(o * i / 16));
        if (!e->packed || !e->scales8)
            return nq_fail(err, "%s: out of memory", m->name);
        if (hessian) {
            nq_gptq_stats gst;
            /* plain GPTQ and --optimize's scale searches alike where the
             * calibration runs (a GPU when there is one) */
            nq_gptq_nvfp4_opts go = {.mse = opt->mse_scales,
                                     .search = opt->optimize.hessian_scales,
                                     .lo = 0.5f, .hi = 1.5f,
                                     .four_over_six = opt->optimize.four_over_six,
                                     .scale_max = opt->optimize.four_over_six ? 256.0f : 448.0f,
                                     .shared_amax = m->shared_amax};
            rc = nq_gptq_nvfp4_ex_on(opt->cuda, x, o, i, hessian, &go, damp, opt->threads,
                                     e->packed, e->scales8, &e->gs, &gst, err);
            /* fused siblings share one weight_scale_2: no sweep for them */
            if (rc == 0 && opt->optimize.global_sweep && !(m->shared_amax > 0)) {
                /* the global scale with the least GPTQ loss (the output
                 * error it adds); ties keep the earlier, larger M */
                static const float sweep[] = {384.0f, 320.0f, 256.0f};
                uint8_t *p2 = malloc((size_t)(o * i / 2)), *s2 = malloc((size_t)(o * i / 16));
                if (!p2 || !s2) {
                    free(p2), free(s2);
                    return nq_fail(err, "%s: out of memory", m->name);
                }
                for (size_t k = 0; k < sizeof sweep / sizeof *sweep && rc == 0; k++) {
                    if (go.four_over_six) /* its global scale is fixed at M = 256 */
                        break;
                    nq_gptq_nvfp4_opts g2 = go;
                    g2.scale_max = sweep[k];
                    nq_gptq_stats st2;
                    float gs2;
                    rc = nq_gptq_nvfp4_ex_on(opt->cuda, x, o, i, hessian, &g2, damp, opt->threads,
                                             p2, s2, &gs2, &st2, err);
                    if (rc == 0 && st2.proxy_loss < gst.proxy_loss) {
                        memcpy(e->packed, p2, (size_t)(o * i / 2));
                        memcpy(e->scales8, s2, (size_t)(o * i / 16));
                        e->gs = gs2;
                        gst = st2;
                    }
                }
                free(p2), free(s2);
            }
            e->algo = gptq_algo_name(opt, NQ_FORMAT_NVFP4);
        } else if (local_h && opt->optimize.hessian_scales) {
            rc = encode_nvfp4_local_hessian(x, o, i, local_h, m->shared_amax, e->packed,
                                            e->scales8, &e->gs, err);
            e->algo = "rtn+local-hessian";
        } else {
            nq_weight_view v = {x, NQ_F32, o, i};
            rc = nq_encode_nvfp4_view_shared(&v, m->shared_amax, opt->mse_scales, opt->threads,
                                             e->packed, e->scales8, &e->gs, &e->st, err);
            e->algo = opt->mse_scales ? "rtn+mse" : "rtn";
        }
    } else if (m->format == NQ_FORMAT_FP8) {
        e->fp8 = malloc((size_t)(o * i));
        if (!e->fp8)
            return nq_fail(err, "%s: out of memory", m->name);
        rc = nq_encode_fp8(x, o, i, opt->threads, e->fp8, &e->gs, &e->st, err);
        e->algo = "rtn";
    } else if (m->format == NQ_FORMAT_INT4) {
        int g = m->group_size;
        e->qw = malloc((size_t)(i / 8 * o) * sizeof *e->qw);
        e->qz = malloc((size_t)(i / g * o / 8) * sizeof *e->qz);
        e->sc = malloc((size_t)(i / g * o) * sizeof *e->sc);
        e->gi = malloc((size_t)i * sizeof *e->gi);
        if (!e->qw || !e->qz || !e->sc || !e->gi)
            return nq_fail(err, "%s: out of memory", m->name);
        if (hessian) {
            nq_gptq_stats gst;
            bool act_order = opt->gptq_act_order || opt->optimize.int4_act_order;
            if (act_order)
                rc = nq_gptq_int4_actorder_on(opt->cuda, x, o, i, hessian, g, opt->mse_scales,
                                              damp, opt->threads, e->qw, e->qz, e->sc, e->gi,
                                              &gst, err);
            else
                rc = nq_gptq_int4_on(opt->cuda, x, o, i, hessian, g, opt->mse_scales, damp,
                                     opt->threads, e->qw, e->qz, e->sc, e->gi, &gst, err);
            e->algo = gptq_algo_name(opt, NQ_FORMAT_INT4);
        } else {
            rc = nq_encode_int4(x, o, i, g, opt->mse_scales, opt->threads, e->qw, e->qz, e->sc,
                                e->gi, &e->st, err);
            e->algo = opt->mse_scales ? "rtn+mse" : "rtn";
        }
    } else {
        return nq_fail(err, "internal: %s is not quantized", m->name);
    }
    return rc;
}

static int write_encoded(nq_writer *w, const encoded *e, nq_error *err)
{
    int64_t o = e->m->out_features, i = e->m->in_features;
    switch (e->m->format) {
    case NQ_FORMAT_NVFP4:
        return nq_writer_write(w, e->packed, (size_t)(o * i / 2), err) ||
               nq_writer_write(w, e->scales8, (size_t)(o * i / 16), err) ||
               nq_writer_write(w, &e->gs, sizeof e->gs, err);
    case NQ_FORMAT_FP8:
        return nq_writer_write(w, e->fp8, (size_t)(o * i), err) ||
               nq_writer_write(w, &e->gs, sizeof e->gs, err);
    case NQ_FORMAT_INT4: {
        int g = e->m->group_size;
        return nq_writer_write(w, e->qw, (size_t)(i / 8 * o) * sizeof *e->qw, err) ||
               nq_writer_write(w, e->qz, (size_t)(i / g * o / 8) * sizeof *e->qz, err) ||
               nq_writer_write(w, e->sc, (size_t)(i / g * o) * sizeof *e->sc, err) ||
               nq_writer_write(w, e->gi, (size_t)i * sizeof *e->gi, err);
    }
    case NQ_FORMAT_KEEP:
        break;
    }
    return nq_fail(err, "internal: %s is not quantized", e->m->name);
}

/* The weight a loader reconstructs from the encoding: out[o * i]. */
static int dequantize(const encoded *e, float *out, nq_error *err)
{
    int64_t o = e->m->out_features, i = e->m->in_features;
    switch (e->m->format) {
    case NQ_FORMAT_NVFP4:
        for (int64_t r = 0; r < o; r++)
            nq_nvfp4_decode_row(e->packed + r * i / 2, e->scales8 + r * i / 16, e->gs, i,
                                out + r * i);
        return 0;
    case NQ_FORMAT_FP8:
        for (int64_t k = 0; k < o * i; k++)
            out[k] = nq_e4m3_to_f32(e->fp8[k]) * e->gs;
        return 0;
    case NQ_FORMAT_INT4:
        return nq_int4_unpack_gptq(e->qw, e->qz, e->sc, e->gi, o, i, e->m->group_size, out, err);
    case NQ_FORMAT_KEEP:
        break;
    }
    return nq_fail(err, "internal: %s is not quantized", e->m->name);
}

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

typedef struct order_item {
    size_t index;
    int key;    /* -1 embeddings, L the head, else the layer */
} order_item;

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

typedef struct override_entry {
    char name[300];      /* "...weight" */
    float *w;
} override_entry;

typedef struct override_ctx {
    const nq_checkpoint *ck;
    override_entry *e;
    size_t n;
    const struct override_ctx *next;   /* asked before the checkpoint */
} override_ctx;

static const override_entry *override_find(const override_ctx *o, const char *name)
{
    for (; o; o = o->next)
        for (size_t i = 0; i < o->n; i++)
            if (strcmp(o->e[i].name, name) == 0)
                return &o->e[i];
    return NULL;
}

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
static int equalized_qkv_amax(const override_ctx *eq, const nq_checkpoint *ck, const char *weight,
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
static int equalize_layer(int l, const nq_model_config *cfg, const nq_checkpoint *ck,
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
static int write_kept(nq_writer *w, const nq_tensor *t, const float *v, nq_error *err)
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

/* ---- GPTQ of several modules at once on the GPU -------------------------
 *
 * One Nano expert keeps a fraction of the GPU busy, so on a GPU the layer's
 * GPTQ modules go in windows of up to GPTQ_WINDOW consecutive ones (in the
 * write order, same format and INT4 group) through nq_gptq_*_batch_on,
 * which runs them on several streams; the write loop then takes each
 * module's weight and encoding from the window instead of loading and
 * encoding it.  The bytes are those of the one-module calls (the batch
 * calls guarantee it).  Not batched: equalized weights (their overrides
 * and shared amax are worked out in the loop), modules falling back to
 * round-to-nearest, and --optimize's global-sweep (several GPTQ runs per
 * module, compared). */

#define GPTQ_WINDOW 32

typedef struct gptq_pre {
    size_t k;                   /* position in the write order */
    float *wf;                  /* the f32 weight, owned until taken */
    encoded e;
} gptq_pre;

typedef struct gptq_window {
    gptq_pre p[GPTQ_WINDOW];
    int n, next;                /* entries, the next one to take */
} gptq_window;

static void window_clear(gptq_window *gw)
{
    for (int i = 0; i < gw->n; i++) {
        encoded_free(&gw->p[i].e);
        free(gw->p[i].wf);
    }
    memset(gw, 0, sizeof *gw);
}

/* The module's statistics when tensor t's module goes through a window. */
static nq_linear_stats *batchable(const nq_quantize_options *opt, const nq_plan_module *m,
                                  const override_ctx *eq, const char *tensor,
                                  nq_calib_stats *stats, int min_rows)
{
    if (!opt->cuda || !opt->gptq || !m ||
        !(m->format == NQ_FORMAT_INT4 ||
          (m->format == NQ_FORMAT_NVFP4 && !opt->optimize.global_sweep)) ||
        override_find(eq, tensor))
        return NULL;
    nq_linear_stats *st = nq_calib_find(stats, m->name);
    return st && st->rows >= (uint64_t)min_rows && st->hessian ? st : NULL;
}

/* Fills the window with the batchable modules from position k on (k's
 * own first) and runs their GPTQ. */
static int window_fill(gptq_window *gw, size_t k, size_t n, const order_item *order,
                       const nq_checkpoint *ck, const nq_plan *plan,
                       const nq_quantize_options *opt, const override_ctx *eq,
                       nq_calib_stats *stats, int min_rows, nq_error *err)
{
    window_clear(gw);
    nq_gptq_item items[GPTQ_WINDOW];
    memset(items, 0, sizeof items);
    const nq_plan_module *m0 = NULL;
    for (size_t k2 = k; k2 < n && order[k2].key == order[k].key && gw->n < GPTQ_WINDOW; k2++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, order[k2].index);
        const nq_plan_module *m = nq_module_of_weight(plan, t->name);
        nq_linear_stats *st = batchable(opt, m, eq, t->name, stats, min_rows);
        if (!st)
            continue;
        if (m0 && (m->format != m0->format ||
                   (m->format == NQ_FORMAT_INT4 && m->group_size != m0->group_size)))
            break; /* a window holds one format and group; the next one starts here */
        m0 = m0 ? m0 : m;
        gptq_pre *p = &gw->p[gw->n];
        nq_gptq_item *it = &items[gw->n];
        gw->n++;
        p->k = k2;
        int64_t o = m->out_features, i = m->in_features;
        p->e.m = m;
        p->e.algo = gptq_algo_name(opt, m->format);
        if (!(p->wf = nq_tensor_load_f32(t, true, err))) {
            window_clear(gw);
            return -1;
        }
        nq_tensor_release(t);
        symmetrize(st->hessian, i);
        *it = (nq_gptq_item){.w = p->wf, .rows = o, .cols = i, .hessian = st->hessian,
                             .shared_amax = m->shared_amax, .name = t->name};
        if (m->format == NQ_FORMAT_NVFP4) {
            it->packed = p->e.packed = malloc((size_t)(o * i / 2));
            it->block_scales = p->e.scales8 = malloc((size_t)(o * i / 16));
            if (!p->e.packed || !p->e.scales8) {
                window_clear(gw);
                return nq_fail(err, "%s: out of memory", m->name);
            }
        } else {
            int g = m->group_size;
            it->qweight = p->e.qw = malloc((size_t)(i / 8 * o) * sizeof *p->e.qw);
            it->qzeros = p->e.qz = malloc((size_t)(i / g * o / 8) * sizeof *p->e.qz);
            it->scales = p->e.sc = malloc((size_t)(i / g * o) * sizeof *p->e.sc);
            it->g_idx = p->e.gi = malloc((size_t)i * sizeof *p->e.gi);
            if (!p->e.qw || !p->e.qz || !p->e.sc || !p->e.gi) {
                window_clear(gw);
                return nq_fail(err, "%s: out of memory", m->name);
            }
        }
    }
    double damp = opt->gptq_damp > 0 ? opt->gptq_damp : 0.01;
    int rc;
    if (m0->format == NQ_FORMAT_NVFP4) {
        /* as encode_module's options (shared_amax: each item's) */
        nq_gptq_nvfp4_opts go = {.mse = opt->mse_scales,
                                 .search = opt->optimize.hessian_scales,
                                 .lo = 0.5f, .hi = 1.5f,
                                 .four_over_six = opt->optimize.four_over_six,
                                 .scale_max = opt->optimize.four_over_six ? 256.0f : 448.0f};
        rc = nq_gptq_nvfp4_ex_batch_on(opt->cuda, items, (size_t)gw->n, &go, damp, opt->threads,
                                       err);
        for (int q = 0; q < gw->n; q++)
            gw->p[q].e.gs = items[q].global_scale;
    } else {
        rc = nq_gptq_int4_batch_on(opt->cuda, items, (size_t)gw->n, m0->group_size,
                                   opt->mse_scales,
                                   opt->gptq_act_order || opt->optimize.int4_act_order, damp,
                                   opt->threads, err);
    }
    if (rc != 0)
        window_clear(gw);
    return rc;
}

/* The window's entry for position k (filling a new window when k is not
 * next), or NULL when k's module is not batched. */
static gptq_pre *window_take(gptq_window *gw, size_t k, size_t n, const order_item *order,
                             const nq_checkpoint *ck, const nq_plan *plan,
                             const nq_quantize_options *opt, const override_ctx *eq,
                             nq_calib_stats *stats, int min_rows, const nq_plan_module *m,
                             const char *tensor, int *rc, nq_error *err)
{
    *rc = 0;
    if (!batchable(opt, m, eq, tensor, stats, min_rows))
        return NULL;
    if (gw->next >= gw->n || gw->p[gw->next].k != k)
        if ((*rc = window_fill(gw, k, n, order, ck, plan, opt, eq, stats, min_rows, err)) != 0)
            return NULL;
    return &gw->p[gw->next++];
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

/* ---- the calibration activations --------------------------------------
 *
 * All samples x len tokens' residual stream, from the embeddings to the
 * last layer.  With a GPU they fit on (after what one layer needs), they
 * stay in its memory the whole time (cuda.h, "resident"): no host copy, no
 * transfer per layer; the layer's input, when it must be kept, is a second
 * device array.  Otherwise they are host arrays, and on a GPU each layer
 * streams them through it a chunk of NQ_CUDA_CHUNK_ROWS rows at a time. */
typedef struct acts {
    nq_model *model;
    struct nq_cuda *g;
    bool resident, keep_input;
    float *x, *x_in;   /* host, when not resident (x_in: keep_input) */
    int S, T;
    size_t plane;
} acts;

/* Bytes of GPU memory one layer of cfg needs beside the activations, for
 * the largest layer: 4 x its parameters (f32; bf16 weights take half), 4 x
 * the scratch of one chunk of `rows` rows, 6 x rows x the widest Linear
 * input (its split into 3 bf16 terms), 8 x in^2 per quantized Linear with
 * Hessians, the
 * statistics' 272 MiB, 4 GiB for the backend's cache of earlier blocks'
 * weights and 1 GiB for cuBLAS, the encoding of one module and
 * fragmentation.  README ("Peak GPU memory") gives the same formula. */
static uint64_t layer_device_bytes(const nq_model_config *c, int64_t rows, bool hessians)
{
    uint64_t H = (uint64_t)c->hidden_size, worst = 0;
    for (int l = 0; l < c->num_layers; l++) {
        uint64_t W = 0, w = 0, h2 = 0;
        switch ((nq_block_kind)c->pattern[l]) {
        case NQ_BLOCK_MAMBA: {
            uint64_t P = (uint64_t)nq_mamba_in_proj_dim(c), in = (uint64_t)nq_mamba_intermediate(c);
            uint64_t cd = (uint64_t)nq_mamba_conv_dim(c);
            W = P * H + H * in + cd * (uint64_t)c->conv_kernel;
            w = P + cd + (uint64_t)c->mamba_num_heads + in + 2 * H;
            h2 = H * H + in * in;
            break;
        }
        case NQ_BLOCK_ATTENTION: {
            uint64_t q = (uint64_t)c->num_attention_heads * c->head_dim;
            uint64_t kv = (uint64_t)c->num_key_value_heads * c->head_dim;
            W = 2 * H * (q + kv);
            w = 2 * q + 2 * kv + 2 * H;
            h2 = 3 * H * H + q * q;
            break;
        }
        case NQ_BLOCK_MLP: {
            uint64_t I = (uint64_t)c->intermediate_size;
            W = 2 * H * I;
            w = I + 2 * H;
            h2 = H * H + I * I;
            break;
        }
        case NQ_BLOCK_MOE: {
            uint64_t E = (uint64_t)c->n_routed_experts, K = (uint64_t)c->num_experts_per_tok;
            uint64_t I = (uint64_t)c->moe_intermediate_size;
            uint64_t Is = (uint64_t)c->moe_shared_expert_intermediate_size;
            W = E * 2 * H * I + 2 * H * Is + E * H;
            w = E + K * (2 * H + (I > Is ? I : Is)) + 3 * H;
            h2 = E * (H * H + I * I) + (Is ? H * H + Is * Is : 0);
            break;
        }
        }
        /* the widest Linear input, split into up to 3 bf16 terms (gemm.cu) */
        uint64_t I = 0;
        switch ((nq_block_kind)c->pattern[l]) {
        case NQ_BLOCK_MAMBA: I = (uint64_t)nq_mamba_intermediate(c); break;
        case NQ_BLOCK_ATTENTION: I = (uint64_t)c->num_attention_heads * c->head_dim; break;
        case NQ_BLOCK_MLP: I = (uint64_t)c->intermediate_size; break;
        case NQ_BLOCK_MOE:
            I = (uint64_t)(c->moe_intermediate_size > c->moe_shared_expert_intermediate_size
                               ? c->moe_intermediate_size
                               : c->moe_shared_expert_intermediate_size);
            break;
        }
        I = I > H ? I : H;
        uint64_t b = 4 * W + 4 * (uint64_t)rows * w + 6 * (uint64_t)rows * I +
                     (hessians ? 8 * h2 : 0);
        worst = b > worst ? b : worst;
    }
    return worst + (272ull << 20) + (5ull << 30);
}

/* Chooses where the activations live and allocates them (host arrays only
 * here; the GPU's resident stream comes with the embedding).
 * NEMOQ_CUDA_ACT_MIB sets the GPU memory they may take (e.g. 0: always
 * streamed); else what is free minus layer_device_bytes. */
static int acts_open(acts *a, nq_model *model, struct nq_cuda *g, const nq_model_config *cfg,
                     int S, int T, bool keep_input, bool hessians, FILE *log, nq_error *err)
{
    memset(a, 0, sizeof *a);
    a->model = model;
    a->g = g;
    a->keep_input = keep_input;
    a->S = S;
    a->T = T;
    a->plane = (size_t)T * cfg->hidden_size;
    uint64_t bytes = (uint64_t)S * a->plane * sizeof(float) * (keep_input ? 2 : 1);
    if (g) {
        int64_t per = NQ_CUDA_CHUNK_ROWS / T > 0 ? NQ_CUDA_CHUNK_ROWS / T : 1;
        int64_t rows = (per < S ? per : S) * (int64_t)T;
        uint64_t budget;
        const char *env = getenv("NEMOQ_CUDA_ACT_MIB");
        if (env && *env) {
            budget = (uint64_t)strtoull(env, NULL, 10) << 20;
        } else {
            size_t free_b = 0, total_b = 0;
            if (nq_cuda_mem_info(g, &free_b, &total_b, err) != 0)
                return -1;
            uint64_t need = layer_device_bytes(cfg, rows, hessians);
            budget = free_b > need ? free_b - need : 0;
        }
        a->resident = bytes <= budget;
        if (log)
            fprintf(log, "calibration activations: %.2f GiB (%s) %s\n", bytes / 1073741824.0,
                    keep_input ? "the layer's input and output" : "one copy",
                    a->resident ? "resident on the GPU"
                                : "on the host, streamed through the GPU a chunk at a time "
                                  "(more than the GPU memory left for them)");
        if (a->resident)
            return 0;
    }
    a->x = malloc(S * a->plane * sizeof *a->x);
    a->x_in = keep_input ? malloc(S * a->plane * sizeof *a->x_in) : NULL;
    if (!a->x || (keep_input && !a->x_in))
        return nq_fail(err, "calibration: out of memory for %d x %d x %d activations", S, T,
                       cfg->hidden_size);
    return 0;
}

static void acts_close(acts *a)
{
    if (a->resident && a->g)
        nq_cuda_resident_free(a->g);
    free(a->x);
    free(a->x_in);
    a->x = a->x_in = NULL;
}

static int acts_embed(acts *a, const int32_t *ids, nq_error *err)
{
    if (a->resident)
        return nq_model_embed_resident(a->model, ids, (size_t)a->S * a->T, err);
    for (int s = 0; s < a->S; s++)
        if (nq_model_embed(a->model, ids + (size_t)s * a->T, a->T, a->x + s * a->plane, err) != 0)
            return -1;
    return 0;
}

/* The layer's input, kept before it runs (keep_input only). */
static int acts_save(acts *a, nq_error *err)
{
    if (!a->keep_input)
        return 0;
    if (a->resident)
        return nq_cuda_resident_save(a->g, err);
    memcpy(a->x_in, a->x, (size_t)a->S * a->plane * sizeof *a->x);
    return 0;
}

static int acts_restore(acts *a, nq_error *err)
{
    if (!a->keep_input)
        return nq_fail(err, "calibration: the layer's input was not kept");
    if (a->resident)
        return nq_cuda_resident_restore(a->g, err);
    memcpy(a->x, a->x_in, (size_t)a->S * a->plane * sizeof *a->x);
    return 0;
}

/* Block l on the activations, in place. */
static int acts_run(acts *a, int l, nq_error *err)
{
    return nq_model_blocks_resident(a->model, l, a->x, a->S, a->T, !a->resident, !a->resident,
                                    err);
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
