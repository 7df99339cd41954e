#include "export/calibrated_internal.h"

#include <stdlib.h>
#include <string.h>

#include "algo/gptq.h"
#include "export/output.h"

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

void window_clear(gptq_window *gw)
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
gptq_pre *window_take(gptq_window *gw, size_t k, size_t n, const order_item *order,
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
