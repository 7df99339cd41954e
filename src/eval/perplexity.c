#include "eval/perplexity.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int nq_run_layerwise(nq_model *m, const int32_t *ids, int samples, int len, float *x,
                     const nq_eval_options *opt, const char *stage, nq_error *err)
{
    const nq_model_config *c = nq_model_cfg(m);
    size_t plane = (size_t)len * c->hidden_size;
    for (int s = 0; s < samples; s++)
        if (nq_model_embed(m, ids + (size_t)s * len, len, x + s * plane, err) != 0)
            return -1;
    for (int l = 0; l < c->num_layers; l++) {
        for (int s = 0; s < samples; s++)
            if (nq_model_block(m, l, x + s * plane, len, NULL, err) != 0)
                return -1;
        if (opt && opt->progress)
            opt->progress(opt->progress_ctx, stage, l + 1, c->num_layers);
    }
    return 0;
}

void nq_log_softmax(const float *logits, int v, double *lp)
{
    double mx = logits[0];
    for (int i = 1; i < v; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double s = 0.0;
    for (int i = 0; i < v; i++)
        s += exp((double)logits[i] - mx);
    double lse = mx + log(s);
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
    float *logits = malloc((size_t)ctx * V * sizeof *logits);
    float *blogits = base ? malloc((size_t)ctx * V * sizeof *blogits) : NULL;
    double *lp = malloc((size_t)V * sizeof *lp);
    double *blp = base ? malloc((size_t)V * sizeof *blp) : NULL;
    if (!x || !logits || !lp || (base && (!xb || !blogits || !blp))) {
        nq_fail(err, "eval: out of memory for %d windows of %d tokens", windows, ctx);
        goto done;
    }
    if (nq_run_layerwise(model, w_ids, windows, ctx, x, opt, "model", err) != 0)
        goto done;
    if (base && nq_run_layerwise(base, w_ids, windows, ctx, xb, opt, "base", err) != 0)
        goto done;
    double nll = 0.0, bnll = 0.0, kl = 0.0;
    uint64_t agree = 0, preds = 0;
    for (int w = 0; w < windows; w++) {
        const int32_t *wi = w_ids + (size_t)w * ctx;
        /* The last position predicts past the window: not scored. */
        if (nq_model_final(model, x + w * plane, ctx - 1, NULL, logits, err) != 0)
            goto done;
        if (base && nq_model_final(base, xb + w * plane, ctx - 1, NULL, blogits, err) != 0)
            goto done;
        for (int t = 0; t < ctx - 1; t++) {
            const float *row = logits + (size_t)t * V;
            nq_log_softmax(row, V, lp);
            nll -= lp[wi[t + 1]];
            if (base) {
                const float *brow = blogits + (size_t)t * V;
                nq_log_softmax(brow, V, blp);
                bnll -= blp[wi[t + 1]];
                double k = 0.0;
                for (int i = 0; i < V; i++)
                    k += exp(blp[i]) * (blp[i] - lp[i]);
                kl += k;
                agree += nq_argmax(row, V) == nq_argmax(brow, V);
            }
            preds++;
        }
        if (opt->progress)
            opt->progress(opt->progress_ctx, "score", w + 1, windows);
    }
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
done:
    free(x);
    free(xb);
    free(logits);
    free(blogits);
    free(lp);
    free(blp);
    return rc;
}
