/* The Nemotron-H forward pass on the CPU, in float32, matching Hugging Face
 * transformers' NemotronHForCausalLM (5.17, pure-PyTorch Mamba path).
 *
 * Structure: embeddings -> blocks (x = x + mixer(RMSNorm(x)), the mixer one
 * of Mamba-2 / attention / MoE / dense MLP as the block pattern says) ->
 * norm_f -> lm_head.  The layer math lives in layers.h on plain float arrays;
 * this file is the model: weights (fetched per layer through a provider, so
 * peak memory is one layer plus activations), recurrent state for decoding,
 * and hooks that let calibration observe every Linear's input.
 *
 * Determinism: results are bit-identical for any thread count (fixed work
 * partition, see core/parallel.h; OpenBLAS is kept single-threaded).
 *
 * Ownership: nq_model borrows the checkpoint and config given to
 * nq_model_open (they must outlive it); everything else is owned by the
 * object that allocated it and freed by the matching _free/_close. */
#ifndef NQ_MODEL_FORWARD_H
#define NQ_MODEL_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"

/* ---- weight provider ------------------------------------------------- */

/* One tensor the forward pass needs, by its canonical (NVIDIA) checkpoint
 * name, e.g. "backbone.layers.3.mixer.q_proj.weight", with the shape the
 * model expects ([out, in] for Linear weights, as PyTorch stores them). */
typedef struct nq_weight_request {
    const char *name;
    int layer;                /* block index; -1 for embeddings, norm_f, lm_head */
    int ndim;
    int64_t shape[4];
    uint64_t numel;
    bool optional;            /* absent is fine (biases, lm_head when tied) */
} nq_weight_request;

/* Fills out[req->numel] with the tensor as f32.  Returns 0 on success, 1 if
 * the tensor does not exist (the caller decides whether that is an error),
 * -1 on failure with err filled (naming the tensor).  Called from the thread
 * that called into nq_model, never concurrently for one model. */
typedef int (*nq_weight_fn)(void *ctx, const nq_weight_request *req, float *out, nq_error *err);

typedef struct nq_weight_provider {
    nq_weight_fn fetch;
    void *ctx;
} nq_weight_provider;

/* The default provider: reads `ck` (BF16/F16/F32/... converted to f32),
 * checks the shape, and accepts transformers' "model." prefix where the
 * canonical name says "backbone.". ctx is the nq_checkpoint. */
int nq_checkpoint_weight_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err);

/* ---- observation hooks (calibration) --------------------------------- */

/* The input of one Linear, just before it is applied. */
typedef struct nq_linear_input {
    const char *weight_name;  /* e.g. "backbone.layers.1.mixer.experts.5.up_proj.weight" */
    int layer;                /* block index, -1 for lm_head */
    int expert;               /* routed expert index, -1 otherwise */
    const float *x;           /* [rows, in_features], row-major */
    int rows, in_features, out_features;
    /* For routed experts: row r is token token_index[r] of the block's
     * input (ascending).  NULL for every other Linear (row r = token r). */
    const int32_t *token_index;
} nq_linear_input;

/* The router's decision for every token of one MoE block. */
typedef struct nq_routing {
    int layer;
    int tokens, top_k, n_experts;
    const float *router_logits;  /* [tokens, n_experts], before the sigmoid */
    const int32_t *experts;      /* [tokens, top_k], best first */
    const float *weights;        /* [tokens, top_k], final (normalized, scaled) */
} nq_routing;

/* Each returns 0, or -1 (with err filled) to abort the forward pass.
 * Called on the calling thread, in execution order; pointers are valid only
 * during the call.  Either function may be NULL. */
/* The keys and values one attention block just computed for n new tokens
 * (k, v: [n, kv_dim] row-major, already in the cache). */
typedef struct nq_kv_output {
    int layer;
    float *k, *v;             /* may be rewritten in place (KV-cache emulation) */
    int n, kv_dim;
} nq_kv_output;

typedef struct nq_forward_hooks {
    int (*linear_input)(void *ctx, const nq_linear_input *in, nq_error *err);
    int (*routing)(void *ctx, const nq_routing *r, nq_error *err);
    /* Rewrites a Linear's input (activation quantization emulation): fill
     * x_out[rows, in_features] and return 1, or return 0 to use the input
     * as is (x_out untouched), -1 on error.  Runs after linear_input. */
    int (*rewrite_input)(void *ctx, const nq_linear_input *in, float *x_out, nq_error *err);
    /* Observes (and may rewrite) new keys/values before attention uses them. */
    int (*kv_output)(void *ctx, const nq_kv_output *kv, nq_error *err);
    void *ctx;
    /* The functions may run on several threads at once, for different
     * sequences (nq_model_blocks); false: always one call at a time, in
     * execution order. */
    bool concurrent;
} nq_forward_hooks;

/* ---- model ----------------------------------------------------------- */

typedef struct nq_model nq_model;

/* Validates that cfg describes a supported Nemotron-H model (and that the
 * checkpoint holds the embeddings), sets OpenBLAS to one thread, and reads
 * time_step_min from the checkpoint's config.json (see forward.c).  Weights
 * of blocks are loaded lazily.  ck may be NULL if a provider is set before
 * the first forward call (nq_model_set_weights). */
nq_model *nq_model_open(const nq_checkpoint *ck, const nq_model_config *cfg, nq_error *err);
void nq_model_close(nq_model *m);

/* Replaces the weight source (drops every cached weight).  The provider's
 * ctx is borrowed. */
void nq_model_set_weights(nq_model *m, nq_weight_provider provider);
/* Threads for the parallel loops (<= 0: nq_default_threads()).  Results do
 * not depend on it. */
void nq_model_set_threads(nq_model *m, int threads);
int nq_model_threads(const nq_model *m);
/* false (default): keep at most one block's weights (the last used) in
 * memory.  true: keep every block's weights once loaded (fast decoding of
 * models that fit in memory). */
void nq_model_set_keep_weights(nq_model *m, bool keep);
/* Runs blocks of fresh sequences (and the head) on this GPU from now on
 * (cuda/cuda.h; borrowed, NULL: back to the CPU).  Continuing a sequence
 * that already has state (nq_model_step after the first call) runs on the
 * CPU, from the state the GPU left. */
struct nq_cuda;
void nq_model_set_cuda(nq_model *m, struct nq_cuda *g);
/* Hooks (copied; ctx borrowed).  NULL removes them. */
void nq_model_set_hooks(nq_model *m, const nq_forward_hooks *hooks);
/* The dt lower clamp of the Mamba-2 mixers (config.json time_step_min,
 * transformers' default 0.001 when absent). */
float nq_model_dt_min(const nq_model *m);
void nq_model_set_dt_min(nq_model *m, float dt_min);
const nq_model_config *nq_model_cfg(const nq_model *m);

/* Full causal forward of one sequence (no state kept).
 * logits: [n, vocab] or NULL.  hidden_out: NULL or [num_layers+1, n, hidden]
 * laid out like transformers' output_hidden_states: entry 0 the embeddings,
 * entry i the residual stream after block i, and the last entry AFTER
 * norm_f (so lm_head(hidden_out[L]) = logits). */
int nq_model_forward(nq_model *m, const int32_t *ids, int n, float *logits,
                     float *hidden_out, nq_error *err);

/* ---- incremental decoding -------------------------------------------- */

/* Per-sequence recurrent state: Mamba conv windows and SSM states (f32),
 * attention KV cache (grows as needed). */
typedef struct nq_state nq_state;

nq_state *nq_state_new(const nq_model *m, nq_error *err);
void nq_state_free(nq_state *s);
void nq_state_reset(nq_state *s);     /* back to an empty sequence */
/* Tokens the last block has consumed. */
int nq_state_tokens(const nq_state *s);
/* Block `layer`'s SSM state, [heads, head_dim, state] f32, and its element
 * count in *n; NULL (and *n = 0) if the block is not Mamba-2 or has not run
 * yet.  Writable, so a caller can emulate how a server stores it between
 * steps (eval/ssm_cache.h); the next step reads what is there. */
float *nq_state_ssm(nq_state *s, int layer, size_t *n);

/* Feeds n >= 1 more tokens of the sequence held by st.  Any split of a
 * sequence into steps gives the logits of nq_model_forward (to rounding).
 * logits: [n, vocab] or NULL. */
int nq_model_step(nq_model *m, nq_state *st, const int32_t *ids, int n, float *logits,
                  nq_error *err);

/* ---- layer-by-layer API (calibration) -------------------------------- */

/* x[n, hidden] = embeddings of ids. */
int nq_model_embed(nq_model *m, const int32_t *ids, int n, float *x, nq_error *err);
/* The embeddings of n ids written straight into the GPU's resident residual
 * stream (cuda/cuda.h, "resident"; needs nq_model_set_cuda), for
 * nq_model_blocks_resident(..., first = false, last = false) to run on:
 * the activations never exist on the host. */
int nq_model_embed_resident(nq_model *m, const int32_t *ids, size_t n, nq_error *err);
/* Runs block `layer` in place on the residual stream x[n, hidden].  st: the
 * sequence state to continue (each block keeps its own part of it, so the
 * blocks of one step may run in any interleaving as long as each block sees
 * the tokens in order), or NULL for a fresh sequence of n tokens. */
int nq_model_block(nq_model *m, int layer, float *x, int n, nq_state *st, nq_error *err);
/* With a GPU: nq_model_blocks_resident on layer l starts reading and
 * widening layer l+1's weights (a MoE layer's: all its experts) on a host
 * thread, so that they are ready when it is run, and the host's work on
 * them overlaps the GPU's on layer l.  Only while the weights come from
 * the checkpoint (nq_checkpoint_weight_fetch); costs one more block of f32
 * weights in host memory.  Off by default. */
void nq_model_set_prefetch(nq_model *m, bool on);
/* Runs block `layer` in place on `samples` independent fresh sequences of
 * len tokens each (x: [samples, len, hidden]).  On the CPU: as
 * nq_model_block on each in turn would, with the same results bit for bit;
 * with several threads and no hooks (or hooks marked concurrent) the
 * sequences run in parallel, one per thread, after the block's weights (a
 * MoE layer: all its experts) are loaded.  On a GPU (nq_model_set_cuda):
 * all of them together, so the hooks then see many sequences' rows in one
 * call (routed experts: token_index counts rows of x). */
int nq_model_blocks(nq_model *m, int layer, float *x, int samples, int len, nq_error *err);
/* The same for a run of consecutive layers over one x: on a GPU the
 * residual stream stays in device memory from the call with first = true
 * (which copies x up) to the one with last = true (which copies it back);
 * x on the host is stale in between.  On the CPU the flags change
 * nothing. */
int nq_model_blocks_resident(nq_model *m, int layer, float *x, int samples, int len, bool first,
                             bool last, nq_error *err);
/* Whether independent sequences may run on several threads at once: more
 * than one thread, no GPU, and no hooks or concurrent ones.  (The weights a call
 * needs must be loaded before; the provider is never called concurrently.) */
bool nq_model_concurrent_sequences(const nq_model *m);
/* normed_out[n, hidden] (may be NULL) = norm_f(x); logits[n, vocab] (may be
 * NULL) = lm_head(norm_f(x)). */
int nq_model_final(nq_model *m, const float *x, int n, float *normed_out, float *logits,
                   nq_error *err);

/* Multiply-adds (x2 = FLOPs) per token of one full forward over a sequence
 * of n tokens, counting every Linear (routed experts: top_k of them), the
 * attention products and the scan; for benchmarks. */
double nq_model_flops_per_token(const nq_model *m, int n);

#endif
