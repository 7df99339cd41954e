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

typedef struct nq_export_info {
    bool weights_only;   /* no activation scales: NVFP4 becomes W4A16_NVFP4 */
    bool kv_cache_fp8;   /* k_scale/v_scale were written */
} nq_export_info;

/* hf_quant_config.json for a ModelOpt-layout plan (NVFP4 and/or FP8). */
json_t *nq_modelopt_quant_config(const nq_plan *plan, const nq_export_info *info);
/* quantize_config.json for a GPTQ plan; the same dict goes into config.json. */
json_t *nq_gptq_quant_config(const nq_plan *plan);

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
 * input already has.  Returns malloc'd text. */
char *nq_config_splice(const char *config_text, size_t len, const char *source_name,
                       const json_t *keys, size_t *out_len, nq_error *err);
/* config.json text with top-level `key` set to the string `value`: the
 * value's text replaced in place when the key exists (NVIDIA's configs
 * already carry "mamba_ssm_cache_dtype": "float32"), spliced in otherwise;
 * every other byte kept.  Returns malloc'd text. */
char *nq_config_set_string(const char *config_text, size_t len, const char *source_name,
                           const char *key, const char *value, size_t *out_len, nq_error *err);

#endif
