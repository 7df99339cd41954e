/* What model/forward.c (the block loop, state) and model/weights.c (the
 * weights of each block: fetched through the provider, widened, checked,
 * prefetched) share: the model itself and one block's weights.  Not part
 * of the library's interface. */
#ifndef NQ_MODEL_INTERNAL_H
#define NQ_MODEL_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "cuda/cuda.h"
#include "model/forward.h"
#include "model/layers.h"

typedef struct block_weights {
    uint64_t id;        /* unique per load: the CUDA backend's cache key */
    nq_block_kind kind;
    float *norm;
    nq_mamba2_weights mamba;
    nq_attention_weights attn;
    nq_mlp_weights mlp;
    nq_moe_weights moe;
} block_weights;

struct nq_model {
    const nq_checkpoint *ck;
    nq_model_config cfg;
    nq_weight_provider provider;
    int threads;
    bool keep_weights;
    bool has_hooks;
    nq_forward_hooks hooks;
    float dt_min;
    nq_act act;
    float *embed;       /* [vocab, hidden], loaded on first use */
    float *norm_f;      /* [hidden] */
    float *lm_head;     /* [vocab, hidden]; == embed when tied */
    uint64_t head_id;   /* unique per load of norm_f / lm_head */
    block_weights **blocks;
    nq_cuda *cuda;      /* borrowed; NULL: the CPU runs everything */
    /* nq_model_set_prefetch: the next block loaded on a host thread */
    bool prefetch;
    bool pf_active;     /* a thread was started and not joined yet */
    int pf_layer;
    pthread_t pf_thread;
    nq_weight_provider pf_provider;
    block_weights *pf_block;  /* its result (NULL: failed) */
    nq_error pf_err;
};

/* Block l's weights, loaded (or taken from the prefetch thread) when not
 * resident; unless keep_weights, every other block is dropped first.
 * NULL with *err filled on failure.  Routed experts are loaded on demand
 * with nq_block_load_expert. */
block_weights *nq_block_get(nq_model *m, int l, nq_error *err);
/* Loads routed expert e of MoE block b (layer `layer`). */
int nq_block_load_expert(nq_model *m, int layer, block_weights *b, int e, nq_error *err);
void nq_block_free(const nq_model_config *cfg, block_weights *b);
/* Frees every resident block but `except` (-1: all). */
void nq_blocks_drop(nq_model *m, int except);
/* Starts loading block l on a host thread (see weights.c for when). */
void nq_block_prefetch_start(nq_model *m, int l);
/* Waits for the prefetch thread: its block when it loaded layer l from the
 * current provider, else NULL (l = -1: just wait and discard). */
block_weights *nq_block_prefetch_join(nq_model *m, int l);
/* Loads the embedding (need_embed) and norm_f + lm_head (need_head) when
 * not resident; a checkpoint without lm_head.weight ties it to the
 * embedding when the config says so. */
int nq_head_ensure(nq_model *m, bool need_embed, bool need_head, nq_error *err);
void nq_head_drop(nq_model *m);

#endif
