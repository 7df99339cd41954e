/* Nemotron-H layer math on host float32 arrays.
 *
 * Everything here is a pure function of plain arrays and weight structs:
 * no checkpoint, no file, no global state, so that a future device backend
 * can implement the same signatures.  Activations are row-major
 * [tokens, features]; Linear weights are PyTorch's [out, in] row-major.
 *
 * Where a numerical detail comes from, the comment names the transformers
 * 5.17 source it was read in: models/nemotron_h/modeling_nemotron_h.py
 * (cited below as "modeling") and models/zamba2/modeling_zamba2.py. */
#ifndef NQ_MODEL_LAYERS_H
#define NQ_MODEL_LAYERS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "model/config.h"
#include "model/forward.h"

/* Execution context of one block: threads for the parallel loops, and the
 * hooks that observe Linear inputs (names are built as prefix + suffix). */
typedef struct nq_exec {
    int threads;
    int layer;                      /* block index, -1 for the head */
    const char *prefix;             /* "backbone.layers.N.mixer." */
    const nq_forward_hooks *hooks;  /* NULL: none */
    nq_error *err;
} nq_exec;

typedef enum nq_act {
    NQ_ACT_RELU2,     /* relu(x)^2: transformers' "relu2" */
    NQ_ACT_RELU,
    NQ_ACT_SILU,      /* "silu" / "swish" */
    NQ_ACT_GELU,      /* "gelu": exact erf form */
    NQ_ACT_GELU_TANH, /* "gelu_pytorch_tanh" / "gelu_new" */
} nq_act;

/* Threads worth using for `macs` multiply-adds: 1 below a threshold where
 * starting threads costs more than the work (nq_parallel_for starts them per
 * call).  Only WHO computes changes, never the partition, so results stay
 * the same. */
int nq_exec_threads(const nq_exec *ex, double macs);

/* -1 for a name we do not implement. */
int nq_act_from_name(const char *name, nq_act *out);
void nq_act_apply(nq_act act, float *x, uint64_t count);

/* y[n, out] = x[n, in] W^T (+ b).  Fires hooks->linear_input first (with
 * the weight named prefix+suffix).  Rows of W are cut into fixed chunks
 * computed in parallel, so y never depends on the thread count. */
int nq_linear(const nq_exec *ex, const char *suffix, int expert, const int32_t *token_index,
              const float *x, int n, int in, const float *W, const float *b, int out, float *y);

/* y = weight * (x * rsqrt(mean(x^2) + eps)) per row (NemotronHRMSNorm,
 * modeling: computed in f32, the weight multiplies the normalized value).
 * y may alias x. */
void nq_rmsnorm(const float *x, const float *weight, int n, int dim, float eps, float *y);

typedef struct nq_mlp_weights {
    float *up, *up_b;       /* [inter, hidden], [inter] or NULL */
    float *down, *down_b;   /* [hidden, inter], [hidden] or NULL */
    int inter;
} nq_mlp_weights;

/* y[n, hidden] = down(act(up(x))) (NemotronHMLP).  `names`: the suffix
 * prefix of the two Linears, e.g. "" (dense), "shared_experts.",
 * "experts.5.". */
int nq_mlp_forward(const nq_exec *ex, const char *names, int expert, const int32_t *token_index,
                   const nq_mlp_weights *w, nq_act act, const float *x, int n, int hidden,
                   float *y);

typedef struct nq_mamba2_weights {
    float *in_proj, *in_proj_b;   /* [intermediate + conv_dim + heads, hidden] */
    float *conv_w, *conv_b;       /* [conv_dim, kernel], [conv_dim] or NULL */
    float *dt_bias;               /* [heads] */
    float *A;                     /* [heads] = -exp(A_log) */
    float *D;                     /* [heads] */
    float *norm_w;                /* [intermediate] gated RMSNorm weight */
    float *out_proj, *out_proj_b; /* [hidden, intermediate] */
} nq_mamba2_weights;

/* Mamba-2 mixer over n tokens continuing from (conv_state, ssm_state), both
 * updated in place: conv_state [conv_kernel-1, conv_dim] holds the last
 * conv inputs (oldest first), ssm_state [heads, head_dim, state] (f32).
 * Zeroed states = a fresh sequence.  dt_min: lower clamp of dt. */
int nq_mamba2_forward(const nq_exec *ex, const nq_model_config *cfg, const nq_mamba2_weights *w,
                      float dt_min, const float *x, int n, float *conv_state, float *ssm_state,
                      float *y);

typedef struct nq_attention_weights {
    float *q, *k, *v, *o;   /* [heads*hd, hidden], [kv*hd, hidden] x2, [hidden, heads*hd] */
} nq_attention_weights;

/* Causal GQA attention of n new tokens at positions past..past+n-1.  The
 * new keys/values are written to rows past..past+n-1 of k_cache/v_cache
 * ([>= past+n, kv_heads*head_dim]), which must hold the earlier ones. */
int nq_attention_forward(const nq_exec *ex, const nq_model_config *cfg,
                         const nq_attention_weights *w, const float *x, int n, int past,
                         float *k_cache, float *v_cache, float *y);

typedef struct nq_moe_weights {
    float *gate;                /* [experts, hidden] router */
    float *score_bias;          /* [experts] e_score_correction_bias */
    nq_mlp_weights *experts;    /* [experts]; .up == NULL: not loaded */
    nq_mlp_weights shared;      /* .up == NULL: no shared expert */
} nq_moe_weights;

/* Router (NemotronHTopkRouter): logits[n, E] in f32, experts/weights
 * [n, top_k] best first.  Fires the hooks for gate.weight. */
int nq_moe_route(const nq_exec *ex, const nq_model_config *cfg, const nq_moe_weights *w,
                 const float *x, int n, float *logits, int32_t *experts, float *weights);

/* The grouped top-k selection for one token (exposed for tests).  scores:
 * sigmoid(logits); choice = scores + bias.  Writes top_k experts best first
 * and their weights. */
void nq_moe_select(const nq_model_config *cfg, const float *scores, const float *score_bias,
                   int32_t *experts, float *weights);

/* y[n, hidden] = sum over routed experts (ascending expert index, as
 * transformers accumulates) of weight * expert(x), plus the shared expert.
 * Every expert that some token routes to must be loaded. */
int nq_moe_forward(const nq_exec *ex, const nq_model_config *cfg, const nq_moe_weights *w,
                   nq_act act, const float *x, int n, const int32_t *experts,
                   const float *weights, float *y);

#endif
