/* Recipes: which format each module of a Nemotron-H checkpoint gets, and why.
 *
 * A plan lists every weight-bearing module (every Linear, the embeddings,
 * lm_head, the routers and the Mamba conv1d) with the format chosen for it
 * and a one-line reason.  Presets are derived from config.json's block
 * pattern, never from layer numbers; user rules (--exclude, --include, a
 * recipe file) are applied on top, in order, and the last rule that matches
 * a module wins. */
#ifndef NQ_RECIPE_PLAN_H
#define NQ_RECIPE_PLAN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/roles.h"

typedef enum nq_format {
    NQ_FORMAT_KEEP,  /* stored unchanged, in its source dtype */
    NQ_FORMAT_NVFP4, /* W4A4, ModelOpt NVFP4 */
    NQ_FORMAT_FP8,   /* W8A8, ModelOpt FP8 per-tensor */
    NQ_FORMAT_INT4,  /* W4A16, GPTQ v1 layout */
} nq_format;

const char *nq_format_name(nq_format f); /* "bf16" (keep), "nvfp4", "fp8", "int4" */
int nq_format_from_name(const char *s, nq_format *out);

typedef struct nq_plan_module {
    char name[256];     /* module name: "backbone.layers.4.mixer.in_proj" */
    nq_role role;
    int layer;          /* -1 outside the layer stack */
    int64_t out_features, in_features; /* conv1d: channels, kernel */
    bool quantizable;   /* a 2-D Linear a loader can quantize */
    nq_format format;
    int group_size;     /* NVFP4: 16; INT4: the group used for this module; else 0 */
    float shared_amax;  /* NVFP4: the weight amax its global scale is computed from when it
                         * shares one with fused siblings (q/k/v); 0: its own amax */
    char reason[200];
} nq_plan_module;

typedef struct nq_plan {
    char recipe[64];
    nq_plan_module *modules;
    size_t count;
    bool kv_cache_fp8;  /* the recipe asks for FP8 K/V scales */
    int int4_group_size; /* base GPTQ group size (0 when no INT4) */
    char notes[4][256]; /* plan-wide decisions worth telling the user */
    int nnotes;
} nq_plan;

typedef struct nq_recipe_rule {
    char glob[256];     /* fnmatch pattern over module names */
    bool keep;          /* --exclude: keep in source precision */
    nq_format format;   /* --include GLOB=FORMAT */
    const char *origin; /* the recipe file it came from (borrowed), NULL for a flag */
} nq_recipe_rule;

typedef struct nq_recipe_options {
    const char *preset;       /* "nvfp4-conservative", ... */
    const nq_recipe_rule *rules;
    size_t nrules;
    int int4_group_size;      /* 0: 128 with automatic fallback (see plan.c) */
    bool int4_group_explicit; /* user fixed the group size: never change it */
    /* When the routed experts force a smaller base group, the other INT4
     * Linears keep the requested size (a `dynamic` override each): fewer
     * bits, same loaders (--int4-wide-groups) */
    bool int4_wide_groups;
} nq_recipe_options;

/* Names of the presets, NULL-terminated. */
extern const char *const nq_recipe_presets[];

/* Builds the plan. `ck` may be NULL: module shapes then come from cfg alone
 * (for --dry-run on a config without weights). Caller frees with
 * nq_plan_free. */
int nq_plan_build(const nq_model_config *cfg, const nq_checkpoint *ck,
                  const nq_recipe_options *opt, nq_plan *plan, nq_error *err);
void nq_plan_free(nq_plan *plan);

/* Reads a recipe file: {"preset": "...", "exclude": [GLOB...],
 * "include": {GLOB: FORMAT, ...}, "int4_group_size": N}. Rules are appended to
 * *rules (realloc'd; caller frees); *preset is set when the file names one
 * (points into a static buffer valid until the next call). */
int nq_recipe_file_load(const char *path, const char **preset, nq_recipe_rule **rules,
                        size_t *nrules, int *int4_group_size, nq_error *err);

const nq_plan_module *nq_plan_find(const nq_plan *plan, const char *module);
/* Counts by format. */
size_t nq_plan_count(const nq_plan *plan, nq_format f);
/* Fails when the plan quantizes nothing (every Linear kept: too small for
 * the recipe's blocks, or excluded by rules): such an output would be a
 * copy of the input declared as a quantized checkpoint.  The message gives
 * the reason of the first quantizable module. */
int nq_plan_refuse_empty(const nq_plan *plan, const char *source, nq_error *err);
/* The plan as a table: every module, its format, why. */
void nq_plan_print(FILE *out, const nq_plan *plan);

#endif
