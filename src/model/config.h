/* config.json of a Hugging Face checkpoint, with the Nemotron-H fields
 * nemoq needs.  Both spellings of the block pattern are understood:
 * NVIDIA's `hybrid_override_pattern` string (M = Mamba-2, E = MoE,
 * * = attention, - = dense MLP) and transformers 5's `layers_block_type`
 * list (mamba/linear_attention, moe, attention/full_attention, mlp). */
#ifndef NQ_MODEL_CONFIG_H
#define NQ_MODEL_CONFIG_H

#include <stdbool.h>

#include "core/error.h"

#define NQ_MAX_LAYERS 1024

typedef enum nq_block_kind {
    NQ_BLOCK_MAMBA = 'M',
    NQ_BLOCK_MOE = 'E',
    NQ_BLOCK_ATTENTION = '*',
    NQ_BLOCK_MLP = '-',
} nq_block_kind;

typedef struct nq_model_config {
    char model_type[64];
    bool is_nemotron_h;          /* model_type == "nemotron_h" */
    int num_layers;
    char pattern[NQ_MAX_LAYERS + 1]; /* one nq_block_kind char per layer, NUL-terminated */

    int hidden_size;
    int vocab_size;
    float layer_norm_epsilon;    /* layer_norm_epsilon, else norm_eps, else 1e-5 */
    bool tie_word_embeddings;
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when absent/null */

    /* attention */
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;                /* head_dim, else hidden_size / num_attention_heads */
    bool attention_bias;

    /* Mamba-2 */
    int mamba_num_heads;
    int mamba_head_dim;
    int ssm_state_size;
    int n_groups;
    int conv_kernel;
    int chunk_size;
    bool use_conv_bias;
    bool mamba_proj_bias;
    float time_step_limit[2];    /* [min, max]; max may be +inf */

    /* MoE */
    int n_routed_experts;
    int n_shared_experts;
    int moe_intermediate_size;
    int moe_shared_expert_intermediate_size;
    int num_experts_per_tok;
    int n_group;
    int topk_group;
    bool norm_topk_prob;
    float routed_scaling_factor;

    /* dense MLP (and the activation used by experts) */
    int intermediate_size;
    char mlp_hidden_act[32];     /* "relu2", "silu", ... */
    bool mlp_bias;
} nq_model_config;

/* Parses config.json text. `source_name` labels errors. A model_type other
 * than nemotron_h is accepted (is_nemotron_h = false, num_layers = 0) so that
 * any checkpoint stays inspectable; a nemotron_h config with a missing or
 * inconsistent field is an error naming the field. */
int nq_model_config_parse(const char *text, size_t len, const char *source_name,
                          nq_model_config *cfg, nq_error *err);
/* Reads DIR/config.json (or the file itself if path is a file). */
int nq_model_config_load(const char *path, nq_model_config *cfg, nq_error *err);

/* Counts of each block kind. */
int nq_model_config_count(const nq_model_config *cfg, nq_block_kind kind);
const char *nq_block_kind_name(nq_block_kind kind); /* "mamba", "moe", "attention", "mlp" */

/* Derived Mamba-2 sizes (transformers' naming). */
static inline int nq_mamba_intermediate(const nq_model_config *c) { return c->mamba_num_heads * c->mamba_head_dim; }
static inline int nq_mamba_conv_dim(const nq_model_config *c) { return nq_mamba_intermediate(c) + 2 * c->n_groups * c->ssm_state_size; }
static inline int nq_mamba_in_proj_dim(const nq_model_config *c) { return nq_mamba_intermediate(c) + nq_mamba_conv_dim(c) + c->mamba_num_heads; }

/* Appended to a JSON error about a NUL in an object key (jansson refuses
 * them even with JSON_ALLOW_NUL): ModelOpt 0.47 writes such keys. */
#define NQ_MODELOPT_NUL_KEY_HINT \
    ": a ModelOpt 0.47 export of NemotronH (its reverse name mapper appends " \
    "\"\\u0000backbone.pt_name_sentinel\" to module names, quantized_layers keys included, " \
    "which no loader matches); remove that suffix to read it"

#endif
