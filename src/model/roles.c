#include "model/roles.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

static const char *role_names[NQ_ROLE_COUNT] = {
    [NQ_ROLE_EMBEDDINGS] = "embeddings",         [NQ_ROLE_LM_HEAD] = "lm_head",
    [NQ_ROLE_MAMBA_PROJ] = "mamba_proj",         [NQ_ROLE_CONV1D] = "conv1d",
    [NQ_ROLE_SSM_PARAMS] = "ssm_params",         [NQ_ROLE_ATTENTION_PROJ] = "attention_proj",
    [NQ_ROLE_ROUTER] = "router",                 [NQ_ROLE_ROUTED_EXPERTS] = "routed_experts",
    [NQ_ROLE_SHARED_EXPERTS] = "shared_experts", [NQ_ROLE_DENSE_MLP] = "dense_mlp",
    [NQ_ROLE_NORMS] = "norms",                   [NQ_ROLE_OTHER] = "other",
};

const char *nq_role_name(nq_role r)
{
    return (unsigned)r < NQ_ROLE_COUNT ? role_names[r] : "?";
}

int nq_layer_of(const char *name)
{
    static const char *prefixes[] = {"backbone.layers.", "model.layers."};
    for (size_t i = 0; i < 2; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(name, prefixes[i], n) != 0)
            continue;
        const char *p = name + n;
        if (*p < '0' || *p > '9')
            return -1;
        char *end;
        long v = strtol(p, &end, 10);
        if (*end != '.' || v > 1 << 20)
            return -1;
        return (int)v;
    }
    return -1;
}

static bool has(const char *name, const char *part)
{
    return strstr(name, part) != NULL;
}

nq_role nq_role_of(const nq_model_config *cfg, const char *name)
{
    if (has(name, "embeddings.") || has(name, "embed_tokens."))
        return NQ_ROLE_EMBEDDINGS;
    if (strncmp(name, "lm_head.", 8) == 0)
        return NQ_ROLE_LM_HEAD;
    if (has(name, ".conv1d."))
        return NQ_ROLE_CONV1D;
    if (has(name, ".A_log") || has(name, ".mixer.D") || has(name, ".dt_bias"))
        return NQ_ROLE_SSM_PARAMS;
    if (has(name, ".mixer.in_proj.") || has(name, ".mixer.out_proj."))
        return NQ_ROLE_MAMBA_PROJ;
    if (has(name, ".q_proj.") || has(name, ".k_proj.") || has(name, ".v_proj.") ||
        has(name, ".o_proj."))
        return NQ_ROLE_ATTENTION_PROJ;
    if (has(name, ".mixer.gate."))
        return NQ_ROLE_ROUTER;
    if (has(name, ".mixer.experts."))
        return NQ_ROLE_ROUTED_EXPERTS;
    if (has(name, ".mixer.shared_experts."))
        return NQ_ROLE_SHARED_EXPERTS;
    if (has(name, "norm"))
        return NQ_ROLE_NORMS;
    int layer = nq_layer_of(name);
    if ((has(name, ".mixer.up_proj.") || has(name, ".mixer.down_proj.")) &&
        (!cfg || !cfg->is_nemotron_h || (layer >= 0 && layer < cfg->num_layers &&
                                         cfg->pattern[layer] == NQ_BLOCK_MLP)))
        return NQ_ROLE_DENSE_MLP;
    return NQ_ROLE_OTHER;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

bool nq_is_quant_companion(const char *name)
{
    static const char *suffixes[] = {".weight_scale", ".weight_scale_2", ".input_scale",
                                     ".k_scale",      ".v_scale",        ".qzeros",
                                     ".scales",       ".g_idx",          ".output_scale"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
        if (ends_with(name, suffixes[i]))
            return true;
    return false;
}

bool nq_is_buffer(const char *name)
{
    return ends_with(name, ".e_score_correction_bias");
}

static bool entry_matches(const char *e, const char *module)
{
    /* "" is a substring of every name: vLLM skips everything for it too */
    if (strstr(module, e) != NULL)
        return true;
    if (strstr(module, "experts") && strstr(e, "experts") && strstr(e, module))
        return true;
    /* Python's fnmatch has no escape character */
    return fnmatch(e, module, FNM_NOESCAPE) == 0;
}

bool nq_exclude_matches(const char *entry, const char *module)
{
    size_t n = strlen(entry);
    if (n >= 2 && entry[n - 1] == '*' && entry[n - 2] != '.') {
        char *base = malloc(n + 2);
        if (!base)
            return false;
        memcpy(base, entry, n - 1);
        base[n - 1] = '\0';
        bool hit = entry_matches(base, module);
        if (!hit) {
            memcpy(base + n - 1, ".*", 3);
            hit = entry_matches(base, module);
        }
        free(base);
        return hit;
    }
    return entry_matches(entry, module);
}
