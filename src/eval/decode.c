#include "eval/decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void nq_decode_result_free(nq_decode_result *r)
{
    if (!r)
        return;
    free(r->kl);
    free(r->nll);
    free(r->count);
    r->kl = r->nll = NULL;
    r->count = NULL;
}

/* Sums of one mode, per position of the window (folded into buckets at the
 * end) and in total, always added in the same order. */
typedef struct {
    double nll, bnll, kl;
    uint64_t agree, preds;
    double *pos_kl, *pos_nll;   /* [ctx - 1] */
} sums;

/* Stores every Mamba block's SSM state of st as the cache would after the
 * step that consumed position `pos` of window `window`. */
static void store_state(nq_model *m, nq_state *st, nq_ssm_cache mode, const nq_decode_options *opt,
                        uint32_t window, uint32_t pos)
{
    if (mode == NQ_SSM_CACHE_FP32)
        return;
    int L = nq_model_cfg(m)->num_layers;
    for (int l = 0; l < L; l++) {
        size_t n;
        float *s = nq_state_ssm(st, l, &n);
        if (!s)
            continue;
        uint64_t seed = mode == NQ_SSM_CACHE_FP16_SR
                            ? nq_ssm_step_seed(opt->seed, window, pos, (uint32_t)l)
                            : 0;
        nq_ssm_cache_round(mode, s, n, seed, opt->philox_rounds, nq_model_threads(m));
    }
}

/* Scores the prediction at position t: row = the model's logits; brow and
 * blp = the base's logits and log-probabilities there (NULL without base). */
static void score(const float *row, const float *brow, const double *blp, double *lp, int V,
                  int32_t target, int t, sums *s)
{
    nq_log_softmax(row, V, lp);
    double nll = -lp[target];
    s->nll += nll;
    s->pos_nll[t] += nll;
    s->preds++;
    if (blp) {
        s->bnll -= blp[target];
        double k = 0.0;
        for (int i = 0; i < V; i++)
            k += exp(blp[i]) * (blp[i] - lp[i]);
        s->kl += k;
        s->pos_kl[t] += k;
        s->agree += nq_argmax(row, V) == nq_argmax(brow, V);
    }
}

static int check_options(const nq_decode_options *opt, size_t n_ids, int *windows, nq_error *err)
{
    int ctx = opt->ctx;
    if (ctx < 2)
        return nq_fail(err, "eval: window of %d tokens; need at least 2", ctx);
    if (opt->prefill < 1 || opt->prefill > ctx - 1)
        return nq_fail(err, "eval: --prefill %d: must be 1..%d (the window's predictions)",
                       opt->prefill, ctx - 1);
    if (opt->n_modes < 1 || opt->n_modes > NQ_DECODE_MAX_MODES)
        return nq_fail(err, "eval: %d SSM cache modes; give 1..%d", opt->n_modes,
                       NQ_DECODE_MAX_MODES);
    if (opt->philox_rounds < 1)
        return nq_fail(err, "eval: %d Philox rounds; need at least 1", opt->philox_rounds);
    if (opt->bucket < 1)
        return nq_fail(err, "eval: KL bucket of %d positions; need at least 1", opt->bucket);
    size_t available = n_ids / (size_t)ctx;
    if ((size_t)opt->skip >= available)
        return nq_fail(err, "eval: the text holds %zu tokens = %zu windows of %d, none left after "
                            "skipping %d",
                       n_ids, available, ctx, opt->skip);
    available -= (size_t)opt->skip;
    *windows = opt->windows > 0 && (size_t)opt->windows < available ? opt->windows
                                                                    : (int)available;
    return 0;
}

int nq_eval_decode(nq_model *model, nq_model *base, const int32_t *ids, size_t n_ids,
                   const nq_decode_options *opt, nq_decode_result *res, nq_error *err)
{
    int windows = 0, K = opt->n_modes;
    for (int k = 0; k < K && k < NQ_DECODE_MAX_MODES; k++)
        memset(&res[k], 0, sizeof res[k]);
    if (check_options(opt, n_ids, &windows, err) != 0)
        return -1;
    const nq_model_config *c = nq_model_cfg(model);
    if (base) {
        const nq_model_config *bc = nq_model_cfg(base);
        if (bc->vocab_size != c->vocab_size)
            return nq_fail(err, "eval: the base model's vocabulary (%d) differs from the "
                                "model's (%d)",
                           bc->vocab_size, c->vocab_size);
    }
    int V = c->vocab_size, ctx = opt->ctx, P = opt->prefill, npos = ctx - 1;
    int nb = (npos + opt->bucket - 1) / opt->bucket;
    nq_model_set_keep_weights(model, true);
    if (base)
        nq_model_set_keep_weights(base, true);

    int rc = -1;
    nq_state *st[NQ_DECODE_MAX_MODES] = {0}, *bst = NULL;
    sums s[NQ_DECODE_MAX_MODES];
    memset(s, 0, sizeof s);
    float *logits = malloc((size_t)P * V * sizeof *logits);
    float *blogits = base ? malloc((size_t)P * V * sizeof *blogits) : NULL;
    double *lp = malloc((size_t)V * sizeof *lp);
    double *blp = base ? malloc((size_t)P * V * sizeof *blp) : NULL;
    bool oom = !logits || !lp || (base && (!blogits || !blp));
    for (int k = 0; k < K; k++) {
        s[k].pos_kl = calloc((size_t)npos, sizeof(double));
        s[k].pos_nll = calloc((size_t)npos, sizeof(double));
        res[k].kl = calloc((size_t)nb, sizeof(double));
        res[k].nll = calloc((size_t)nb, sizeof(double));
        res[k].count = calloc((size_t)nb, sizeof(uint64_t));
        oom = oom || !s[k].pos_kl || !s[k].pos_nll || !res[k].kl || !res[k].nll || !res[k].count;
    }
    if (oom) {
        nq_fail(err, "eval: out of memory for decoding windows of %d tokens", ctx);
        goto done;
    }
    for (int k = 0; k < K; k++)
        if (!(st[k] = nq_state_new(model, err)))
            goto done;
    if (base && !(bst = nq_state_new(base, err)))
        goto done;

    for (int w = 0; w < windows; w++) {
        uint32_t wid = (uint32_t)(opt->skip + w);
        const int32_t *wi = ids + (size_t)wid * ctx;
        /* prefill: positions 0..P-1 in one step */
        if (base) {
            nq_state_reset(bst);
            if (nq_model_step(base, bst, wi, P, blogits, err) != 0)
                goto done;
            for (int t = 0; t < P; t++)
                nq_log_softmax(blogits + (size_t)t * V, V, blp + (size_t)t * V);
        }
        for (int k = 0; k < K; k++) {
            nq_state_reset(st[k]);
            if (nq_model_step(model, st[k], wi, P, logits, err) != 0)
                goto done;
            /* The prefill's final state goes into the cache with a plain
             * cast (round to nearest even), never stochastically. */
            store_state(model, st[k], opt->modes[k] == NQ_SSM_CACHE_FP32 ? NQ_SSM_CACHE_FP32
                                                                           : NQ_SSM_CACHE_FP16,
                        opt, wid, (uint32_t)(P - 1));
            for (int t = 0; t < P; t++)
                score(logits + (size_t)t * V, base ? blogits + (size_t)t * V : NULL,
                      base ? blp + (size_t)t * V : NULL, lp, V, wi[t + 1], t, &s[k]);
        }
        /* decode: one token per step, positions P..ctx-2 */
        for (int t = P; t < npos; t++) {
            if (base && (nq_model_step(base, bst, wi + t, 1, blogits, err) != 0))
                goto done;
            if (base)
                nq_log_softmax(blogits, V, blp);
            for (int k = 0; k < K; k++) {
                if (nq_model_step(model, st[k], wi + t, 1, logits, err) != 0)
                    goto done;
                store_state(model, st[k], opt->modes[k], opt, wid, (uint32_t)t);
                score(logits, base ? blogits : NULL, base ? blp : NULL, lp, V, wi[t + 1], t,
                      &s[k]);
            }
        }
        if (opt->progress)
            opt->progress(opt->progress_ctx, "decode", w + 1, windows);
    }

    for (int k = 0; k < K; k++) {
        nq_eval_result *r = &res[k].total;
        r->windows = windows;
        r->ctx = ctx;
        r->predictions = s[k].preds;
        r->nll = s[k].nll / (double)s[k].preds;
        r->ppl = exp(r->nll);
        if (base) {
            r->has_base = true;
            r->base_nll = s[k].bnll / (double)s[k].preds;
            r->base_ppl = exp(r->base_nll);
            r->kl = s[k].kl / (double)s[k].preds;
            r->top1 = (double)s[k].agree / (double)s[k].preds;
        }
        res[k].n_buckets = nb;
        for (int t = 0; t < npos; t++) {
            int b = t / opt->bucket;
            res[k].kl[b] += s[k].pos_kl[t];
            res[k].nll[b] += s[k].pos_nll[t];
            res[k].count[b] += (uint64_t)windows;
        }
        for (int b = 0; b < nb; b++) {
            res[k].kl[b] /= (double)res[k].count[b];
            res[k].nll[b] /= (double)res[k].count[b];
        }
    }
    rc = 0;
done:
    for (int k = 0; k < K; k++) {
        nq_state_free(st[k]);
        free(s[k].pos_kl);
        free(s[k].pos_nll);
    }
    nq_state_free(bst);
    free(logits);
    free(blogits);
    free(lp);
    free(blp);
    return rc;
}
