/* The JSON files beside the tensors that tell a server how to load them:
 * ModelOpt's hf_quant_config.json (NVFP4/FP8), GPTQ's quantize_config.json,
 * and config.json's quantization_config.  Field names and forms follow
 * docs/export-spec.md (sections 1 and 4), checked against ModelOpt's export
 * code and vLLM's loaders. */
#ifndef NQ_EXPORT_METADATA_H
#define NQ_EXPORT_METADATA_H

#include <jansson.h>
#include <stdbool.h>

#include "core/error.h"
#include "model/config.h"
#include "recipe/plan.h"

/* Modules left unquantized that a loader would otherwise treat as quantized:
 * every kept Linear (routers and lm_head included) and every Mamba conv1d, by
 * exact HF module name, sorted. Never prefix wildcards: vLLM also matches
 * entries as substrings, so "backbone.layers.4*" would hit layer 40 too
 * (docs/export-spec.md 1.4). Returns a new JSON array. */
json_t *nq_exclude_modules(const nq_plan *plan);

/* The ModelOpt release whose export format nemoq follows, written as
 * producer.version: 0.47 writes config.json's quantization_config in the flat
 * form below and FP8 KV-cache scales unclamped (docs/export-spec.md 1.2, 3). */
#define NQ_MODELOPT_FORMAT_VERSION "0.47.0"

typedef struct nq_export_info {
    bool weights_only;   /* no activation scales: NVFP4 becomes W4A16_NVFP4 */
    bool kv_cache_fp8;   /* k_scale/v_scale were written */
} nq_export_info;

/* hf_quant_config.json for a ModelOpt-layout plan (NVFP4 and/or FP8). */
json_t *nq_modelopt_quant_config(const nq_plan *plan, const nq_export_info *info);
/* config.json's quantization_config for a ModelOpt checkpoint: the flat
 * form ModelOpt 0.47's convert_hf_quant_config_format makes from its
 * hf_quant_config.json (config_groups, [quantized_layers], ignore, quant_algo,
 * [kv_cache_scheme], producer, quant_method "modelopt"), keys in its order.
 * Returns a new object. */
json_t *nq_modelopt_config_json_form(const json_t *hf_quant_config);
/* quantize_config.json for a GPTQ plan; the same dict goes into config.json. */
json_t *nq_gptq_quant_config(const nq_plan *plan);

/* Exclude entries are matched with nq_exclude_matches (model/roles.h). */

/* ModelOpt 0.47 on NemotronH writes exclude entries such as
 * "lm_head.\u0000backbone.pt_name_sentinel": its reverse name mapper appends
 * a sentinel ".\0modelopt_name_sentinel", then its model->backbone rename
 * also rewrites "modelo" inside the sentinel, so the sentinel is not removed
 * again. Such an entry contains a NUL and matches no module in vLLM. Returns
 * true for an entry with a NUL and puts the name it was meant to be (the text
 * before ".\0" plus a trailing "*" or ".*") in `intended`. */
bool nq_exclude_entry_corrupt(const json_t *entry, char *intended, size_t cap);

/* A ModelOpt declaration read from either form: the nested
 * {"producer", "quantization": {...}} of hf_quant_config.json (and of
 * config.json as nemoq wrote it before the 0.47 format), or the flat
 * config.json form. Pointers borrow from the document. */
typedef struct nq_modelopt_decl {
    bool flat;
    const char *quant_algo;           /* NULL when absent */
    const char *kv_cache_quant_algo;  /* "FP8", ... or NULL for none */
    long long group_size;             /* 0 when not declared */
    json_t *exclude;                  /* exclude_modules / ignore array, or NULL */
    json_t *quantized_layers;         /* MIXED_PRECISION map, or NULL */
    json_t *producer;
} nq_modelopt_decl;
/* Returns false when `doc` is neither form. */
bool nq_modelopt_decl_read(const json_t *doc, nq_modelopt_decl *d);

/* A module's entry in a MIXED_PRECISION quantized_layers map, looked up as
 * vLLM's ModelOptMixedPrecisionConfig resolves it: the module's own name, or
 * for a routed expert "P.experts.N.up_proj" the FusedMoE layer's "P.experts"
 * (one entry for all experts, as ModelOpt 0.47 writes it).  NULL if none. */
json_t *nq_quantized_layers_entry(const json_t *layers, const char *module);

/* The output config.json: the input's text with every original byte kept and
 * new top-level keys inserted before its closing brace (quantization_config,
 * and hybrid_override_pattern/num_hidden_layers when the input only has
 * layers_block_type: older vLLM and llama.cpp read only those). Refuses an
 * input that already has a quantization_config. Returns malloc'd text. */
char *nq_config_with_quantization(const char *config_text, size_t len, const char *source_name,
                                  const nq_model_config *cfg, const json_t *quantization_config,
                                  size_t *out_len, nq_error *err);

/* config.json text with the top-level keys of `keys` inserted before its
 * closing brace, every original byte kept (as above); refuses a key the
 * input already has.  Returns malloc'd text, NUL-terminated. */
char *nq_config_splice(const char *config_text, size_t len, const char *source_name,
                       const json_t *keys, size_t *out_len, nq_error *err);
/* config.json text with top-level `key` set to the string `value`: the
 * value's text replaced in place when the key exists (NVIDIA's configs
 * already carry "mamba_ssm_cache_dtype": "float32"), spliced in otherwise;
 * every other byte kept.  Returns malloc'd text. */
char *nq_config_set_string(const char *config_text, size_t len, const char *source_name,
                           const char *key, const char *value, size_t *out_len, nq_error *err);

#endif
