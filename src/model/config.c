#include "model/config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* transformers serialises non-finite floats as {"__float__": "Infinity"}
 * (see its JSON encoder for configs); NVIDIA's own files use plain numbers. */
static int json_to_float(json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    if (json_is_object(v)) {
        const char *s = json_string_value(json_object_get(v, "__float__"));
        if (!s)
            return -1;
        if (strcmp(s, "Infinity") == 0 || strcmp(s, "inf") == 0)
            *out = INFINITY;
        else if (strcmp(s, "-Infinity") == 0 || strcmp(s, "-inf") == 0)
            *out = -INFINITY;
        else if (strcmp(s, "NaN") == 0 || strcmp(s, "nan") == 0)
            *out = NAN;
        else
            return -1;
        return 0;
    }
    return -1;
}

typedef struct parse_ctx {
    json_t *root;
    const char *source;
    nq_error *err;
    int failed;
} parse_ctx;

/* Reads an integer field; `required` makes absence an error. */
static int get_int(parse_ctx *p, const char *key, int fallback, int required, int min_value)
{
    json_t *v = json_object_get(p->root, key);
    if (!v || json_is_null(v)) {
        if (required && !p->failed)
            p->failed = nq_fail(p->err, "%s: missing required field \"%s\"", p->source, key);
        return fallback;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min_value ||
        json_integer_value(v) > (1 << 30)) {
        if (!p->failed)
            p->failed = nq_fail(p->err, "%s: field \"%s\" must be an integer >= %d", p->source,
                                key, min_value);
        return fallback;
    }
    return (int)json_integer_value(v);
}

static float get_float(parse_ctx *p, const char *key, float fallback)
{
    json_t *v = json_object_get(p->root, key);
    double d;
    if (!v || json_is_null(v))
        return fallback;
    if (json_to_float(v, &d) != 0) {
        if (!p->failed)
            p->failed = nq_fail(p->err, "%s: field \"%s\" is not a number", p->source, key);
        return fallback;
    }
    return (float)d;
}

static bool get_bool(parse_ctx *p, const char *key, bool fallback)
{
    json_t *v = json_object_get(p->root, key);
    if (!v || json_is_null(v))
        return fallback;
    if (!json_is_boolean(v)) {
        if (!p->failed)
            p->failed = nq_fail(p->err, "%s: field \"%s\" is not true/false", p->source, key);
        return fallback;
    }
    return json_is_true(v);
}

static int block_from_name(const char *s, char *out)
{
    static const struct {
        const char *name;
        char kind;
    } names[] = {
        {"mamba", NQ_BLOCK_MAMBA},          {"linear_attention", NQ_BLOCK_MAMBA},
        {"moe", NQ_BLOCK_MOE},              {"attention", NQ_BLOCK_ATTENTION},
        {"full_attention", NQ_BLOCK_ATTENTION}, {"mlp", NQ_BLOCK_MLP},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].kind;
            return 0;
        }
    }
    return -1;
}

static int parse_pattern(parse_ctx *p, nq_model_config *cfg)
{
    json_t *hop = json_object_get(p->root, "hybrid_override_pattern");
    json_t *lbt = json_object_get(p->root, "layers_block_type");
    if (json_is_string(hop)) {
        const char *s = json_string_value(hop);
        size_t n = strlen(s);
        if (n == 0 || n > NQ_MAX_LAYERS)
            return nq_fail(p->err, "%s: hybrid_override_pattern has %zu layers (1..%d supported)",
                           p->source, n, NQ_MAX_LAYERS);
        for (size_t i = 0; i < n; i++) {
            if (!strchr("ME*-", s[i]))
                return nq_fail(p->err,
                               "%s: hybrid_override_pattern: '%c' at layer %zu is not one of M, E, "
                               "*, -",
                               p->source, s[i], i);
            cfg->pattern[i] = s[i];
        }
        cfg->num_layers = (int)n;
    } else if (json_is_array(lbt)) {
        size_t n = json_array_size(lbt);
        if (n == 0 || n > NQ_MAX_LAYERS)
            return nq_fail(p->err, "%s: layers_block_type has %zu layers (1..%d supported)",
                           p->source, n, NQ_MAX_LAYERS);
        for (size_t i = 0; i < n; i++) {
            const char *s = json_string_value(json_array_get(lbt, i));
            if (!s || block_from_name(s, &cfg->pattern[i]) != 0)
                return nq_fail(p->err, "%s: layers_block_type[%zu] is %s%s%s, not a known block type",
                               p->source, i, s ? "\"" : "", s ? s : "not a string", s ? "\"" : "");
        }
        cfg->num_layers = (int)n;
    } else {
        return nq_fail(p->err,
                       "%s: nemotron_h config has neither hybrid_override_pattern nor "
                       "layers_block_type",
                       p->source);
    }
    cfg->pattern[cfg->num_layers] = '\0';
    json_t *nhl = json_object_get(p->root, "num_hidden_layers");
    if (json_is_integer(nhl) && json_integer_value(nhl) != cfg->num_layers)
        return nq_fail(p->err, "%s: num_hidden_layers is %lld but the block pattern has %d layers",
                       p->source, (long long)json_integer_value(nhl), cfg->num_layers);
    return 0;
}

static int check_divides(parse_ctx *p, int a, const char *an, int b, const char *bn)
{
    if (b <= 0 || a % b != 0)
        return nq_fail(p->err, "%s: %s (%d) is not a multiple of %s (%d)", p->source, an, a, bn, b);
    return 0;
}

/* Sizes far beyond any released model are refused here, at parse time: the
 * plan and the forward pass size their allocations from these fields, and
 * a typo (or a hostile file) must not make them allocate gigabytes before
 * the checkpoint's tensors disagree.  The caps leave a wide margin over
 * today's largest models (hidden 16384, 256 routed experts, 262144-token
 * vocabularies). */
static int check_ranges(parse_ctx *p, const nq_model_config *c, bool has_moe)
{
    const struct {
        const char *key;
        long long value, max;
    } caps[] = {
        {"hidden_size", c->hidden_size, 1 << 16},
        {"vocab_size", c->vocab_size, 1 << 24},
        {"num_attention_heads", c->num_attention_heads, 1 << 12},
        {"num_key_value_heads", c->num_key_value_heads, 1 << 12},
        {"head_dim", c->head_dim, 1 << 12},
        {"mamba_num_heads", c->mamba_num_heads, 1 << 12},
        {"mamba_head_dim", c->mamba_head_dim, 1 << 12},
        {"ssm_state_size", c->ssm_state_size, 1 << 12},
        {"n_groups", c->n_groups, 1 << 12},
        {"conv_kernel", c->conv_kernel, 64},
        {"chunk_size", c->chunk_size, 1 << 16},
        {"n_routed_experts", c->n_routed_experts, 1 << 12},
        {"n_shared_experts", c->n_shared_experts, 64},
        {"moe_intermediate_size", c->moe_intermediate_size, 1 << 18},
        {"moe_shared_expert_intermediate_size", c->moe_shared_expert_intermediate_size, 1 << 18},
        {"intermediate_size", c->intermediate_size, 1 << 20},
        {"num_experts_per_tok", c->num_experts_per_tok, 1 << 12},
        {"n_group", c->n_group, 1 << 12},
        {"topk_group", c->topk_group, 1 << 12},
    };
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        if (caps[i].value > caps[i].max)
            return nq_fail(p->err, "%s: field \"%s\" is %lld, beyond what any Nemotron-H model "
                                   "uses (nemoq accepts up to %lld)",
                           p->source, caps[i].key, caps[i].value, caps[i].max);
    long long experts = (long long)nq_model_config_count(c, NQ_BLOCK_MOE) * c->n_routed_experts;
    if (has_moe && experts > (1 << 18))
        return nq_fail(p->err, "%s: %d MoE layers x %d routed experts = %lld expert modules, "
                               "beyond what nemoq accepts (%d)",
                       p->source, nq_model_config_count(c, NQ_BLOCK_MOE), c->n_routed_experts,
                       experts, 1 << 18);
    if (!(isfinite(c->layer_norm_epsilon) && c->layer_norm_epsilon > 0))
        return nq_fail(p->err, "%s: layer_norm_epsilon is %g; RMSNorm needs a finite epsilon > 0 "
                               "(0 divides by zero on an all-zero row)",
                       p->source, (double)c->layer_norm_epsilon);
    if (!(isfinite(c->routed_scaling_factor) && c->routed_scaling_factor > 0))
        return nq_fail(p->err, "%s: routed_scaling_factor is %g; it must be finite and > 0",
                       p->source, (double)c->routed_scaling_factor);
    if (!isfinite(c->time_step_limit[0]) || c->time_step_limit[0] < 0)
        return nq_fail(p->err, "%s: time_step_limit minimum is %g; it must be finite and >= 0",
                       p->source, (double)c->time_step_limit[0]);
    return 0;
}

/* Token ids config.json names must be rows of the embedding table. */
static int check_token_ids(parse_ctx *p, const nq_model_config *c)
{
    static const char *keys[] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    for (size_t k = 0; k < 3; k++) {
        json_t *v = json_object_get(p->root, keys[k]);
        size_t n = json_is_array(v) ? json_array_size(v) : 1;
        for (size_t i = 0; i < n && c->vocab_size > 0; i++) {
            json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
            if (!e || json_is_null(e))
                continue;
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) >= c->vocab_size) {
                char at[32] = "";
                if (json_is_array(v))
                    snprintf(at, sizeof at, "[%zu]", i);
                return nq_fail(p->err, "%s: %s%s is not a token id below vocab_size (%d)",
                               p->source, keys[k], at, c->vocab_size);
            }
        }
    }
    return 0;
}

int nq_model_config_parse(const char *text, size_t len, const char *source_name,
                          nq_model_config *cfg, nq_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    /* JSON_ALLOW_NUL: ModelOpt 0.47 exports carry NUL characters in their
     * quantization_config (see export/metadata.h) */
    json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);
    if (!root)
        return nq_fail(err, "%s: not valid JSON: %s (line %d)%s", source_name, jerr.text, jerr.line,
                       strstr(jerr.text, "NUL byte in object key") ? NQ_MODELOPT_NUL_KEY_HINT : "");
    if (!json_is_object(root)) {
        json_decref(root);
        return nq_fail(err, "%s: top level is not a JSON object", source_name);
    }
    parse_ctx p = {.root = root, .source = source_name, .err = err};
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt ? mt : "unknown");
    cfg->is_nemotron_h = mt && strcmp(mt, "nemotron_h") == 0;
    cfg->bos_token_id = get_int(&p, "bos_token_id", -1, 0, 0);
    cfg->eos_token_id = json_is_integer(json_object_get(root, "eos_token_id"))
                            ? get_int(&p, "eos_token_id", -1, 0, 0)
                            : -1; /* may also be a list */
    cfg->pad_token_id = get_int(&p, "pad_token_id", -1, 0, 0);
    cfg->tie_word_embeddings = get_bool(&p, "tie_word_embeddings", false);
    cfg->hidden_size = get_int(&p, "hidden_size", 0, 0, 1);
    cfg->vocab_size = get_int(&p, "vocab_size", 0, 0, 1);
    if (!cfg->is_nemotron_h || p.failed) {
        int failed = p.failed;
        json_decref(root);
        return failed ? -1 : 0;
    }

    if (parse_pattern(&p, cfg) != 0) {
        json_decref(root);
        return -1;
    }
    bool has_mamba = strchr(cfg->pattern, NQ_BLOCK_MAMBA) != NULL;
    bool has_attn = strchr(cfg->pattern, NQ_BLOCK_ATTENTION) != NULL;
    bool has_moe = strchr(cfg->pattern, NQ_BLOCK_MOE) != NULL;
    bool has_mlp = strchr(cfg->pattern, NQ_BLOCK_MLP) != NULL;

    cfg->hidden_size = get_int(&p, "hidden_size", 0, 1, 1);
    cfg->vocab_size = get_int(&p, "vocab_size", 0, 1, 1);
    /* Both spellings occur: NVIDIA's files carry both, transformers 5 writes
     * layer_norm_epsilon, some exports only norm_eps. */
    cfg->layer_norm_epsilon = get_float(&p, "layer_norm_epsilon", get_float(&p, "norm_eps", 1e-5f));

    cfg->num_attention_heads = get_int(&p, "num_attention_heads", 0, has_attn, 1);
    cfg->num_key_value_heads = get_int(&p, "num_key_value_heads", cfg->num_attention_heads, 0, 1);
    cfg->head_dim = get_int(&p, "head_dim",
                            cfg->num_attention_heads ? cfg->hidden_size / cfg->num_attention_heads
                                                     : 0,
                            0, 1);
    cfg->attention_bias = get_bool(&p, "attention_bias", false);

    cfg->mamba_num_heads = get_int(&p, "mamba_num_heads", 0, has_mamba, 1);
    cfg->mamba_head_dim = get_int(&p, "mamba_head_dim", 0, has_mamba, 1);
    cfg->ssm_state_size = get_int(&p, "ssm_state_size", 0, has_mamba, 1);
    cfg->n_groups = get_int(&p, "n_groups", 1, 0, 1);
    cfg->conv_kernel = get_int(&p, "conv_kernel", 4, 0, 1);
    cfg->chunk_size = get_int(&p, "chunk_size", 128, 0, 1);
    cfg->use_conv_bias = get_bool(&p, "use_conv_bias", true);
    cfg->mamba_proj_bias = get_bool(&p, "mamba_proj_bias", false);
    cfg->time_step_limit[0] = 0.0f;
    cfg->time_step_limit[1] = INFINITY;
    json_t *tsl = json_object_get(root, "time_step_limit");
    if (tsl && !json_is_null(tsl)) {
        double lo, hi;
        if (!json_is_array(tsl) || json_array_size(tsl) != 2 ||
            json_to_float(json_array_get(tsl, 0), &lo) != 0 ||
            json_to_float(json_array_get(tsl, 1), &hi) != 0 || isnan(lo) || isnan(hi) || lo > hi) {
            if (!p.failed)
                p.failed = nq_fail(err, "%s: time_step_limit must be [min, max] with min <= max",
                                   source_name);
        } else {
            cfg->time_step_limit[0] = (float)lo;
            cfg->time_step_limit[1] = (float)hi;
        }
    }

    cfg->n_routed_experts = get_int(&p, "n_routed_experts", 0, has_moe, 1);
    cfg->n_shared_experts = get_int(&p, "n_shared_experts", 0, 0, 0);
    cfg->moe_intermediate_size = get_int(&p, "moe_intermediate_size", 0, has_moe, 1);
    cfg->moe_shared_expert_intermediate_size =
        get_int(&p, "moe_shared_expert_intermediate_size", 0, has_moe && cfg->n_shared_experts, 1);
    cfg->num_experts_per_tok = get_int(&p, "num_experts_per_tok", 0, has_moe, 1);
    cfg->n_group = get_int(&p, "n_group", 1, 0, 1);
    cfg->topk_group = get_int(&p, "topk_group", 1, 0, 1);
    cfg->norm_topk_prob = get_bool(&p, "norm_topk_prob", true);
    cfg->routed_scaling_factor = get_float(&p, "routed_scaling_factor", 1.0f);

    cfg->intermediate_size = get_int(&p, "intermediate_size", 0, has_mlp, 1);
    const char *act = json_string_value(json_object_get(root, "mlp_hidden_act"));
    snprintf(cfg->mlp_hidden_act, sizeof cfg->mlp_hidden_act, "%s", act ? act : "relu2");
    cfg->mlp_bias = get_bool(&p, "mlp_bias", false);

    if (!p.failed)
        p.failed = check_ranges(&p, cfg, has_moe);
    if (!p.failed)
        p.failed = check_token_ids(&p, cfg);
    if (!p.failed && has_attn) {
        p.failed = check_divides(&p, cfg->num_attention_heads, "num_attention_heads",
                                 cfg->num_key_value_heads, "num_key_value_heads");
    }
    if (!p.failed && has_mamba) {
        p.failed = check_divides(&p, cfg->mamba_num_heads, "mamba_num_heads", cfg->n_groups,
                                 "n_groups");
    }
    if (!p.failed && has_moe) {
        if (cfg->num_experts_per_tok > cfg->n_routed_experts)
            p.failed = nq_fail(err, "%s: num_experts_per_tok (%d) exceeds n_routed_experts (%d)",
                               source_name, cfg->num_experts_per_tok, cfg->n_routed_experts);
        else if (check_divides(&p, cfg->n_routed_experts, "n_routed_experts", cfg->n_group,
                               "n_group") != 0)
            p.failed = -1;
        else if (cfg->topk_group > cfg->n_group)
            p.failed = nq_fail(err, "%s: topk_group (%d) exceeds n_group (%d)", source_name,
                               cfg->topk_group, cfg->n_group);
    }
    json_decref(root);
    return p.failed ? -1 : 0;
}

int nq_model_config_load(const char *path, nq_model_config *cfg, nq_error *err)
{
    char buf[4096];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(buf, sizeof buf, "%s/config.json", path);
        path = buf;
    }
    FILE *f = fopen(path, "rb");
    if (!f)
        return nq_fail(err, "%s: cannot open: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 > cap) {
            cap = cap ? cap * 2 : 65536;
            if (cap > (64u << 20)) {
                free(text);
                fclose(f);
                return nq_fail(err, "%s: larger than 64 MB, not a config", path);
            }
            char *grown = realloc(text, cap);
            if (!grown) {
                free(text);
                fclose(f);
                return nq_fail(err, "%s: out of memory", path);
            }
            text = grown;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    int read_error = ferror(f);
    fclose(f);
    if (read_error) {
        free(text);
        return nq_fail(err, "%s: read error", path);
    }
    int rc = nq_model_config_parse(text, len, path, cfg, err);
    free(text);
    return rc;
}

int nq_model_config_count(const nq_model_config *cfg, nq_block_kind kind)
{
    int n = 0;
    for (int i = 0; i < cfg->num_layers; i++)
        n += cfg->pattern[i] == (char)kind;
    return n;
}

const char *nq_block_kind_name(nq_block_kind kind)
{
    switch (kind) {
    case NQ_BLOCK_MAMBA:
        return "mamba";
    case NQ_BLOCK_MOE:
        return "moe";
    case NQ_BLOCK_ATTENTION:
        return "attention";
    case NQ_BLOCK_MLP:
        return "mlp";
    }
    return "?";
}
