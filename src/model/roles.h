/* What each tensor of a Nemotron-H checkpoint is for, from its name and the
 * block pattern.  Recipes, inspect and reports all classify through here so
 * they can never disagree. */
#ifndef NQ_MODEL_ROLES_H
#define NQ_MODEL_ROLES_H

#include <stdbool.h>

#include "model/config.h"

typedef enum nq_role {
    NQ_ROLE_EMBEDDINGS,
    NQ_ROLE_LM_HEAD,
    NQ_ROLE_MAMBA_PROJ,     /* mixer.in_proj / mixer.out_proj of a Mamba layer */
    NQ_ROLE_CONV1D,
    NQ_ROLE_SSM_PARAMS,     /* A_log, D, dt_bias */
    NQ_ROLE_ATTENTION_PROJ, /* q/k/v/o_proj */
    NQ_ROLE_ROUTER,         /* mixer.gate.weight and its e_score_correction_bias */
    NQ_ROLE_ROUTED_EXPERTS,
    NQ_ROLE_SHARED_EXPERTS,
    NQ_ROLE_DENSE_MLP,
    NQ_ROLE_NORMS,
    NQ_ROLE_OTHER,
    NQ_ROLE_COUNT
} nq_role;

const char *nq_role_name(nq_role r); /* "embeddings", "mamba_proj", ... */

/* Layer index from "backbone.layers.N." / "model.layers.N.", else -1. */
int nq_layer_of(const char *name);

/* Role of tensor `name` (a weight, bias, or quantization companion such as
 * weight_scale: the module decides). cfg may be NULL or non-Nemotron-H, then
 * only names decide. */
nq_role nq_role_of(const nq_model_config *cfg, const char *name);

/* Tensor-name suffixes that are quantization metadata rather than weights. */
bool nq_is_quant_companion(const char *name);
/* Registered buffers of transformers' module (not counted as parameters). */
bool nq_is_buffer(const char *name);

/* Whether a ModelOpt `exclude_modules` entry (hf_quant_config.json; the
 * `ignore` list of the flat quantization_config) covers `module`, as vLLM's
 * ModelOptQuantConfigBase decides it (apply_vllm_mapper, is_layer_excluded,
 * is_layer_skipped; docs/export-spec.md 1.4):
 * - ModelOpt's prefix wildcard "name*" (no '.' before the '*') stands for the
 *   pair "name" and "name.*";
 * - then an entry matches when it is a SUBSTRING of the module (vLLM's legacy
 *   rule, so "backbone.layers.1" also hits layers 10-19; "" hits everything),
 *   or fnmatch-matches the whole name ('*' crosses dots, no escape
 *   character); for a name containing "experts" also when the name is a
 *   substring of an entry containing "experts" (vLLM asks about a layer's
 *   fused MoE as "...mixer.experts").
 * Names are compared in HF spelling: vLLM maps entry and module prefixes the
 * same way (backbone. -> model.), which preserves these relations.  The one
 * matcher every reader and writer of exclude lists uses (verify, inspect,
 * the exporters' own checks). */
bool nq_exclude_matches(const char *entry, const char *module);

#endif
