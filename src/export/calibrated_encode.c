/* The calibrated path's encoding of one module (export/calibrated.c): GPTQ,
 * local-Hessian or round-to-nearest into NVFP4, FP8 or INT4, the bytes the
 * writer stores, and the weight a loader reconstructs from them. */
#include "export/calibrated_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "algo/gptq.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"

/* ---- one module, encoded ---------------------------------------------- */

void encoded_free(encoded *e)
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
void symmetrize(double *h, int64_t d)
{
    const int64_t T = 64;
    for (int64_t a0 = 0; a0 < d; a0 += T)
        for (int64_t b0 = 0; b0 <= a0; b0 += T)
            for (int64_t a = a0; a < a0 + T && a < d; a++)
                for (int64_t b = b0; b < b0 + T && b < a; b++)
                    h[a * d + b] = h[b * d + a];
}

const char *gptq_algo_name(const nq_quantize_options *opt, nq_format f)
{
    if (f == NQ_FORMAT_NVFP4)
        return opt->optimize.enabled ? "gptq+optimize" : opt->mse_scales ? "gptq+mse" : "gptq";
    bool act_order = opt->gptq_act_order || opt->optimize.int4_act_order;
    return act_order ? (opt->mse_scales ? "gptq+act-order+mse" : "gptq+act-order")
           : opt->mse_scales ? "gptq+mse"
                             : "gptq";
}

int encode_module(const float *x, const nq_plan_module *m, const nq_quantize_options *opt,
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

int write_encoded(nq_writer *w, const encoded *e, nq_error *err)
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
int dequantize(const encoded *e, float *out, nq_error *err)
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
