#include "eval/perplexity.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"

int nq_run_layerwise(nq_model *m, const int32_t *ids, int samples, int len, float *x,
                     const nq_eval_options *opt, const char *stage, nq_error *err)
{
    const nq_model_config *c = nq_model_cfg(m);
    size_t plane = (size_t)len * c->hidden_size;
    for (int s = 0; s < samples; s++)
        if (nq_model_embed(m, ids + (size_t)s * len, len, x + s * plane, err) != 0)
            return -1;
    for (int l = 0; l < c->num_layers; l++) {
        if (nq_model_blocks_resident(m, l, x, samples, len, l == 0, l == c->num_layers - 1,
                                     err) != 0)
            return -1;
        if (opt && opt->progress)
            opt->progress(opt->progress_ctx, stage, l + 1, c->num_layers);
    }
    return 0;
}

void nq_log_softmax(const float *logits, int v, double *lp)
{
    float mx = logits[0];
    for (int i = 1; i < v; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    /* exp in float (within an ulp), summed in double: the NLL moves by
     * ~1e-8, at a fraction of the cost of exp in double */
    double s = 0.0;
    for (int i = 0; i < v; i++)
        s += expf(logits[i] - mx);
    double lse = (double)mx + log(s);
    for (int i = 0; i < v; i++)
        lp[i] = (double)logits[i] - lse;
}

int nq_argmax(const float *x, int v)
{
    int best = 0;
    for (int i = 1; i < v; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

typedef struct {
    float *logits, *blogits;
    double *lp, *blp;
} score_scratch;

typedef struct {
    double nll, bnll, kl;
    uint64_t agree;
} window_score;

typedef struct {
    nq_model *model, *base;
    const int32_t *ids;
    const float *x, *xb;
    int ctx, V;
    size_t plane;
    score_scratch *scr;   /* per worker */
    window_score *ws;     /* per window */
    nq_error *errs;       /* per window */
} score_job;

static int score_windows(void *p, size_t begin, size_t end, int worker)
{
    score_job *j = p;
    score_scratch *s = &j->scr[worker];
    int ctx = j->ctx, V = j->V;
    for (size_t w = begin; w < end; w++) {
        const int32_t *wi = j->ids + w * (size_t)ctx;
        window_score *r = &j->ws[w];
        /* The last position predicts past the window: not scored. */
        if (nq_model_final(j->model, j->x + w * j->plane, ctx - 1, NULL, s->logits, &j->errs[w]) != 0)
            return -1;
        if (j->base &&
            nq_model_final(j->base, j->xb + w * j->plane, ctx - 1, NULL, s->blogits, &j->errs[w]) != 0)
            return -1;
        for (int t = 0; t < ctx - 1; t++) {
            const float *row = s->logits + (size_t)t * V;
            nq_log_softmax(row, V, s->lp);
            r->nll -= s->lp[wi[t + 1]];
            if (j->base) {
                const float *brow = s->blogits + (size_t)t * V;
                nq_log_softmax(brow, V, s->blp);
                r->bnll -= s->blp[wi[t + 1]];
                double k = 0.0;
                for (int i = 0; i < V; i++)
                    k += exp(s->blp[i]) * (s->blp[i] - s->lp[i]);
                r->kl += k;
                r->agree += nq_argmax(row, V) == nq_argmax(brow, V);
            }
        }
    }
    return 0;
}

int nq_eval_perplexity(nq_model *model, nq_model *base, const int32_t *ids, size_t n_ids,
                       const nq_eval_options *opt, nq_eval_result *res, nq_error *err)
{
    memset(res, 0, sizeof *res);
    int ctx = opt->ctx;
    if (ctx < 2)
        return nq_fail(err, "eval: window of %d tokens; need at least 2", ctx);
    size_t available = n_ids / (size_t)ctx;
    if ((size_t)opt->skip >= available)
        return nq_fail(err, "eval: the text holds %zu tokens = %zu windows of %d, none left after "
                            "skipping %d",
                       n_ids, available, ctx, opt->skip);
    available -= (size_t)opt->skip;
    int windows = opt->windows > 0 && (size_t)opt->windows < available ? opt->windows
                                                                        : (int)available;
    const nq_model_config *c = nq_model_cfg(model);
    if (base) {
        const nq_model_config *bc = nq_model_cfg(base);
        if (bc->vocab_size != c->vocab_size || bc->hidden_size != c->hidden_size)
            return nq_fail(err, "eval: the base model's vocabulary (%d) or hidden size (%d) "
                                "differs from the model's (%d, %d)",
                           bc->vocab_size, bc->hidden_size, c->vocab_size, c->hidden_size);
    }
    int H = c->hidden_size, V = c->vocab_size;
    const int32_t *w_ids = ids + (size_t)opt->skip * ctx;
    size_t plane = (size_t)ctx * H;
    int rc = -1;
    float *x = malloc((size_t)windows * plane * sizeof *x);
    float *xb = base ? malloc((size_t)windows * plane * sizeof *xb) : NULL;
    if (!x || (base && !xb)) {
        nq_fail(err, "eval: out of memory for %d windows of %d tokens", windows, ctx);
        goto done;
    }
    if (nq_run_layerwise(model, w_ids, windows, ctx, x, opt, "model", err) != 0)
        goto done;
    if (base && nq_run_layerwise(base, w_ids, windows, ctx, xb, opt, "base", err) != 0)
        goto done;
    /* Windows are scored in parallel, each by one thread into its own
     * sums; the sums are added in window order, so the result does not
     * depend on the thread count. */
    nq_error *errs = calloc((size_t)windows, sizeof *errs);
    window_score *ws = calloc((size_t)windows, sizeof *ws);
    int threads = nq_model_concurrent_sequences(model) &&
                          (!base || nq_model_concurrent_sequences(base))
                      ? nq_model_threads(model)
                      : 1;
    if (threads > windows)
        threads = windows;
    score_scratch *scr = calloc((size_t)threads, sizeof *scr);
    if (!errs || !ws || !scr) {
        nq_fail(err, "eval: out of memory for %d windows", windows);
        goto score_done;
    }
    for (int t = 0; t < threads; t++) {
        scr[t].logits = malloc((size_t)ctx * V * sizeof *scr[t].logits);
        scr[t].lp = malloc((size_t)V * sizeof *scr[t].lp);
        if (base) {
            scr[t].blogits = malloc((size_t)ctx * V * sizeof *scr[t].blogits);
            scr[t].blp = malloc((size_t)V * sizeof *scr[t].blp);
        }
        if (!scr[t].logits || !scr[t].lp || (base && (!scr[t].blogits || !scr[t].blp))) {
            nq_fail(err, "eval: out of memory for %d x %d logits", ctx, V);
            goto score_done;
        }
    }
    /* the head's weights are fetched here, not concurrently by the threads */
    if (nq_model_final(model, x, 1, NULL, NULL, err) != 0 ||
        (base && nq_model_final(base, xb, 1, NULL, NULL, err) != 0))
        goto score_done;
    score_job job = {.model = model, .base = base, .ids = w_ids, .x = x, .xb = xb, .ctx = ctx,
                     .V = V, .plane = plane, .scr = scr, .ws = ws, .errs = errs};
    if (nq_parallel_for((size_t)windows, 1, threads, score_windows, &job) != 0) {
        for (int w = 0; w < windows; w++)
            if (errs[w].msg[0]) {
                *err = errs[w];
                break;
            }
        goto score_done;
    }
    double nll = 0.0, bnll = 0.0, kl = 0.0;
    uint64_t agree = 0, preds = 0;
    for (int w = 0; w < windows; w++) {
        nll += ws[w].nll;
        bnll += ws[w].bnll;
        kl += ws[w].kl;
        agree += ws[w].agree;
        preds += (uint64_t)(ctx - 1);
    }
    if (opt->progress)
        opt->progress(opt->progress_ctx, "score", windows, windows);
    res->windows = windows;
    res->ctx = ctx;
    res->predictions = preds;
    res->nll = nll / (double)preds;
    res->ppl = exp(res->nll);
    if (base) {
        res->has_base = true;
        res->base_nll = bnll / (double)preds;
        res->base_ppl = exp(res->base_nll);
        res->kl = kl / (double)preds;
        res->top1 = (double)agree / (double)preds;
    }
    rc = 0;
score_done:
    if (scr)
        for (int t = 0; t < threads; t++) {
            free(scr[t].logits);
            free(scr[t].blogits);
            free(scr[t].lp);
            free(scr[t].blp);
        }
    free(scr);
    free(ws);
    free(errs);
done:
    free(x);
    free(xb);
    return rc;
}
