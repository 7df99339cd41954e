/* Perplexity, and divergence from a base model, over fixed windows of a
 * token stream.
 *
 * Protocol (the one the bundled model's reference perplexity 14.48 was
 * measured with, ../shared/fixtures/README.md): the whole text is tokenized
 * as one string with no BOS or EOS added, cut from its start into
 * consecutive non-overlapping windows of ctx tokens (a final partial window
 * is dropped), each window run on its own with no state carried over, and
 * scored on its ctx-1 next-token predictions.  perplexity = exp(mean NLL)
 * over all scored predictions of the first `windows` windows (after
 * skipping `skip` windows).  KL(base || model) and top-1 agreement are taken
 * over the same predictions.
 *
 * Models run layer by layer over all windows at once (one block's weights in
 * memory at a time), the windows of a layer in parallel (nq_model_blocks),
 * then the windows are scored in parallel: peak memory is windows x ctx x
 * hidden floats of activations per model, each thread's temporaries for one
 * window, one block (a MoE layer with all its experts), and one ctx x vocab
 * logits buffer per thread.  Per-window
 * sums are added in window order: the result is the same for any thread
 * count. */
#ifndef NQ_EVAL_PERPLEXITY_H
#define NQ_EVAL_PERPLEXITY_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "model/forward.h"

typedef struct nq_eval_options {
    int ctx;          /* tokens per window (>= 2) */
    int windows;      /* at most this many windows (<= 0: all) */
    int skip;         /* windows to skip first */
    /* progress(ctx, stage, done, total) after each step; may be NULL */
    void (*progress)(void *ctx, const char *stage, int done, int total);
    void *progress_ctx;
} nq_eval_options;

typedef struct nq_eval_result {
    int windows, ctx;
    uint64_t predictions;
    double nll, ppl;                /* the model */
    bool has_base;
    double base_nll, base_ppl;      /* the base model on the same predictions */
    double kl;                      /* mean KL(base || model) per prediction, nats */
    double top1;                    /* fraction of predictions whose argmax agree */
} nq_eval_result;

/* model: the model to measure; base: NULL, or the reference model.  ids:
 * the token stream. */
int nq_eval_perplexity(nq_model *model, nq_model *base, const int32_t *ids, size_t n_ids,
                       const nq_eval_options *opt, nq_eval_result *res, nq_error *err);

/* log-softmax of one row of v logits into lp (double, for the sums of many
 * small terms that KL is). */
void nq_log_softmax(const float *logits, int v, double *lp);
/* Index of the first maximum of x[v]. */
int nq_argmax(const float *x, int v);

/* Runs every block of m over `samples` independent sequences of `len`
 * tokens each, layer by layer: x[samples * len * hidden] in = embeddings
 * (filled here from ids), out = the final residual stream (before norm_f). */
int nq_run_layerwise(nq_model *m, const int32_t *ids, int samples, int len, float *x,
                     const nq_eval_options *opt, const char *stage, nq_error *err);

#endif
