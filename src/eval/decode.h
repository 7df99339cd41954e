/* Evaluation as a server decodes: each window is fed to the model as a
 * prefill of P tokens followed by one token per step, carrying the model's
 * state (Mamba conv and SSM state, KV cache) from step to step, and the SSM
 * state is stored between steps as the server's cache would store it
 * (eval/ssm_cache.h).  Windows, scoring and the base comparison follow the
 * window protocol of eval/perplexity.h: the same predictions are scored, so
 * with an f32 state and no emulation the numbers equal nq_eval_perplexity's
 * to float rounding.
 *
 * Several cache modes run in one pass, each on its own state, in lockstep
 * with the base model (which always keeps an f32 state): the base runs once.
 * KL(base || model) is also kept per bucket of positions, to show how the
 * error of a rounded state grows along the sequence.
 *
 * Both models keep all their weights in memory (nq_model_set_keep_weights):
 * token-by-token decoding reloading a block per token would be hopeless. */
#ifndef NQ_EVAL_DECODE_H
#define NQ_EVAL_DECODE_H

#include <stdint.h>

#include "core/error.h"
#include "eval/perplexity.h"
#include "eval/ssm_cache.h"
#include "model/forward.h"

#define NQ_DECODE_MAX_MODES 3

typedef struct nq_decode_options {
    int ctx, windows, skip;   /* as nq_eval_options */
    int prefill;              /* tokens of each window fed in one step first, 1..ctx-1 */
    int n_modes;              /* 1..NQ_DECODE_MAX_MODES */
    nq_ssm_cache modes[NQ_DECODE_MAX_MODES];
    int philox_rounds;        /* >= 1 */
    uint64_t seed;
    int bucket;               /* positions per KL bucket (>= 1) */
    void (*progress)(void *ctx, const char *stage, int done, int total);
    void *progress_ctx;
} nq_decode_options;

typedef struct nq_decode_result {
    nq_eval_result total;     /* as nq_eval_perplexity's, for this mode */
    int n_buckets;            /* ceil((ctx - 1) / bucket) */
    double *kl;               /* [n_buckets] mean KL per prediction of the bucket (with a base) */
    double *nll;              /* [n_buckets] mean NLL of the model */
    uint64_t *count;          /* [n_buckets] predictions */
} nq_decode_result;

/* res[opt->n_modes]: filled on success (free each with nq_decode_result_free,
 * also after a failure). */
int nq_eval_decode(nq_model *model, nq_model *base, const int32_t *ids, size_t n_ids,
                   const nq_decode_options *opt, nq_decode_result *res, nq_error *err);
void nq_decode_result_free(nq_decode_result *r);

#endif
