#include "recipe/plan.h"

#include <fnmatch.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

const char *const nq_recipe_presets[] = {"nvfp4-conservative", "nvfp4-aggressive",
                                         "fp8-conservative",   "fp8-aggressive",
                                         "int4",               NULL};

const char *nq_format_name(nq_format f)
{
    switch (f) {
    case NQ_FORMAT_KEEP:
        return "bf16";
    case NQ_FORMAT_NVFP4:
        return "nvfp4";
    case NQ_FORMAT_FP8:
        return "fp8";
    case NQ_FORMAT_INT4:
        return "int4";
    }
    return "?";
}

int nq_format_from_name(const char *s, nq_format *out)
{
    static const struct {
        const char *name;
        nq_format f;
    } names[] = {{"bf16", NQ_FORMAT_KEEP}, {"keep", NQ_FORMAT_KEEP},   {"nvfp4", NQ_FORMAT_NVFP4},
                 {"fp8", NQ_FORMAT_FP8},   {"int4", NQ_FORMAT_INT4}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].f;
            return 0;
        }
    }
    return -1;
}

/* ---- the module list ---------------------------------------------------- */

typedef struct module_list {
    nq_plan_module *items;
    size_t count, cap;
} module_list;

static int add_module(module_list *l, const nq_model_config *cfg, const char *name, int64_t out,
                      int64_t in, nq_error *err)
{
    if (l->count == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        nq_plan_module *g = realloc(l->items, cap * sizeof *g);
        if (!g)
            return nq_fail(err, "out of memory building the plan");
        l->items = g;
        l->cap = cap;
    }
    nq_plan_module *m = &l->items[l->count++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    char weight[300];
    snprintf(weight, sizeof weight, "%s.weight", name);
    m->role = nq_role_of(cfg, weight);
    m->layer = nq_layer_of(name);
    m->out_features = out;
    m->in_features = in;
    switch (m->role) {
    case NQ_ROLE_MAMBA_PROJ:
    case NQ_ROLE_ATTENTION_PROJ:
    case NQ_ROLE_ROUTED_EXPERTS:
    case NQ_ROLE_SHARED_EXPERTS:
    case NQ_ROLE_DENSE_MLP:
    case NQ_ROLE_LM_HEAD:
        m->quantizable = true;
        break;
    default:
        m->quantizable = false;
    }
    return 0;
}

/* Modules as the checkpoint stores them: every `.weight` of 2 or 3 dims. */
static int modules_from_checkpoint(const nq_model_config *cfg, const nq_checkpoint *ck,
                                   module_list *l, nq_error *err)
{
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        size_t n = strlen(t->name);
        if (n < 8 || strcmp(t->name + n - 7, ".weight") != 0 || t->ndim < 2)
            continue;
        char module[256];
        if (n - 7 >= sizeof module)
            return nq_fail(err, "tensor name '%s' is too long", t->name);
        memcpy(module, t->name, n - 7);
        module[n - 7] = '\0';
        int64_t in = t->ndim == 2 ? t->shape[1] : t->shape[t->ndim - 1];
        if (add_module(l, cfg, module, t->shape[0], in, err) != 0)
            return -1;
    }
    return 0;
}

/* Modules implied by config.json alone, with transformers' shapes. */
static int modules_from_config(const nq_model_config *c, module_list *l, nq_error *err)
{
    char name[256];
    int rc = add_module(l, c, "backbone.embeddings", c->vocab_size, c->hidden_size, err);
    for (int i = 0; i < c->num_layers && rc == 0; i++) {
#define ADD(suffix, out, in)                                                                       \
    do {                                                                                           \
        snprintf(name, sizeof name, "backbone.layers.%d.mixer.%s", i, suffix);                      \
        if (rc == 0)                                                                               \
            rc = add_module(l, c, name, out, in, err);                                             \
    } while (0)
        switch (c->pattern[i]) {
        case NQ_BLOCK_MAMBA:
            ADD("in_proj", nq_mamba_in_proj_dim(c), c->hidden_size);
            ADD("conv1d", nq_mamba_conv_dim(c), c->conv_kernel);
            ADD("out_proj", c->hidden_size, nq_mamba_intermediate(c));
            break;
        case NQ_BLOCK_ATTENTION:
            ADD("q_proj", (int64_t)c->num_attention_heads * c->head_dim, c->hidden_size);
            ADD("k_proj", (int64_t)c->num_key_value_heads * c->head_dim, c->hidden_size);
            ADD("v_proj", (int64_t)c->num_key_value_heads * c->head_dim, c->hidden_size);
            ADD("o_proj", c->hidden_size, (int64_t)c->num_attention_heads * c->head_dim);
            break;
        case NQ_BLOCK_MOE:
            ADD("gate", c->n_routed_experts, c->hidden_size);
            for (int e = 0; e < c->n_routed_experts; e++) {
                char suffix[64];
                snprintf(suffix, sizeof suffix, "experts.%d.up_proj", e);
                ADD(suffix, c->moe_intermediate_size, c->hidden_size);
                snprintf(suffix, sizeof suffix, "experts.%d.down_proj", e);
                ADD(suffix, c->hidden_size, c->moe_intermediate_size);
            }
            if (c->n_shared_experts > 0) {
                int64_t shared = (int64_t)c->moe_shared_expert_intermediate_size;
                ADD("shared_experts.up_proj", shared, c->hidden_size);
                ADD("shared_experts.down_proj", c->hidden_size, shared);
            }
            break;
        case NQ_BLOCK_MLP:
            ADD("up_proj", c->intermediate_size, c->hidden_size);
            ADD("down_proj", c->hidden_size, c->intermediate_size);
            break;
        }
#undef ADD
    }
    if (rc == 0 && !c->tie_word_embeddings)
        rc = add_module(l, c, "lm_head", c->vocab_size, c->hidden_size, err);
    return rc;
}

/* ---- presets ------------------------------------------------------------ */

static bool feeds_attention(const nq_model_config *c, int layer)
{
    return layer >= 0 && layer + 1 < c->num_layers && c->pattern[layer] == NQ_BLOCK_MAMBA &&
           c->pattern[layer + 1] == NQ_BLOCK_ATTENTION;
}

#define REASON(m, ...) snprintf((m)->reason, sizeof (m)->reason, __VA_ARGS__)

static void apply_preset(const nq_model_config *c, const char *preset, nq_plan_module *m)
{
    bool nvfp4 = strncmp(preset, "nvfp4", 5) == 0;
    bool fp8 = strncmp(preset, "fp8", 3) == 0;
    bool aggressive = strstr(preset, "aggressive") != NULL;
    nq_format q = nvfp4 ? NQ_FORMAT_NVFP4 : fp8 ? NQ_FORMAT_FP8 : NQ_FORMAT_INT4;
    m->format = NQ_FORMAT_KEEP;
    switch (m->role) {
    case NQ_ROLE_EMBEDDINGS:
        REASON(m, "embedding lookup, not a GEMM");
        return;
    case NQ_ROLE_LM_HEAD:
        REASON(m, "output layer: kept by every preset (most sensitive GEMM)");
        return;
    case NQ_ROLE_ROUTER:
        REASON(m, "MoE router: computed in FP32 by vLLM, never quantized");
        return;
    case NQ_ROLE_CONV1D:
        REASON(m, "Mamba conv1d: depthwise convolution, never quantized");
        return;
    case NQ_ROLE_ATTENTION_PROJ:
        if (q == NQ_FORMAT_INT4) {
            m->format = q;
            REASON(m, "attention projection: int4 weight-only preset quantizes every Linear");
        } else {
            REASON(m, "attention layer %d: kept in BF16 by NVIDIA's recipe", m->layer);
        }
        return;
    case NQ_ROLE_MAMBA_PROJ:
        if (q != NQ_FORMAT_INT4 && !aggressive && feeds_attention(c, m->layer)) {
            REASON(m, "Mamba layer %d feeds attention layer %d: kept in BF16 (conservative)",
                   m->layer, m->layer + 1);
            return;
        }
        m->format = q;
        if (feeds_attention(c, m->layer) && q != NQ_FORMAT_INT4)
            REASON(m, "Mamba projection feeding attention layer %d: quantized (aggressive)",
                   m->layer + 1);
        else
            REASON(m, "Mamba projection");
        return;
    case NQ_ROLE_ROUTED_EXPERTS:
        m->format = q;
        REASON(m, "routed expert");
        return;
    case NQ_ROLE_SHARED_EXPERTS:
        m->format = q;
        REASON(m, "shared expert");
        return;
    case NQ_ROLE_DENSE_MLP:
        m->format = q;
        REASON(m, "dense MLP");
        return;
    default:
        REASON(m, "not a Linear of the Nemotron-H architecture");
        return;
    }
}

/* ---- constraints -------------------------------------------------------- */

static void add_note(nq_plan *p, const char *text)
{
    if (p->nnotes < 4)
        snprintf(p->notes[p->nnotes++], sizeof p->notes[0], "%s", text);
}

/* GPTQ groups run along in_features; vLLM applies one group size to a whole
 * fused MoE layer and checks the BASE group size for it (docs/export-spec.md
 * 4.3), so the base size must divide every quantized expert; other Linears
 * can take a per-module size through the config's `dynamic` overrides. */
static void choose_int4_groups(nq_plan *p, const nq_recipe_options *opt)
{
    static const int candidates[] = {128, 64, 32};
    int requested = opt->int4_group_size ? opt->int4_group_size : 128;
    int base = requested;
    if (!opt->int4_group_explicit) {
        for (size_t k = 0; k < 3; k++) {
            int g = candidates[k];
            if (g > requested)
                continue;
            bool ok = true;
            for (size_t i = 0; i < p->count; i++) {
                nq_plan_module *m = &p->modules[i];
                if (m->format == NQ_FORMAT_INT4 && m->role == NQ_ROLE_ROUTED_EXPERTS &&
                    m->in_features % g != 0)
                    ok = false;
            }
            if (ok) {
                base = g;
                break;
            }
        }
        if (base != requested) {
            char note[256];
            snprintf(note, sizeof note,
                     "int4 group size %d instead of %d: routed-expert in_features must be a "
                     "multiple of it (vLLM uses one group size per fused MoE layer)",
                     base, requested);
            add_note(p, note);
        }
    }
    p->int4_group_size = base;
    for (size_t i = 0; i < p->count; i++) {
        nq_plan_module *m = &p->modules[i];
        if (m->format != NQ_FORMAT_INT4)
            continue;
        if (m->in_features % 8 != 0 || m->out_features % 8 != 0) {
            m->format = NQ_FORMAT_KEEP;
            REASON(m, "kept: GPTQ packs 8 values per int32 and [%lld, %lld] is not a multiple of 8",
                   (long long)m->out_features, (long long)m->in_features);
            continue;
        }
        if (opt->int4_wide_groups && base < requested && m->role != NQ_ROLE_ROUTED_EXPERTS &&
            m->in_features % requested == 0) {
            m->group_size = requested;
            size_t n = strlen(m->reason);
            snprintf(m->reason + n, sizeof m->reason - n, "; group %d (wide groups)", requested);
            continue;
        }
        if (m->in_features % base == 0) {
            m->group_size = base;
            continue;
        }
        int g = 0;
        if (!opt->int4_group_explicit && m->role != NQ_ROLE_ROUTED_EXPERTS)
            for (size_t k = 0; k < 3 && !g; k++)
                if (candidates[k] < base && m->in_features % candidates[k] == 0)
                    g = candidates[k];
        if (g) {
            m->group_size = g;
            size_t n = strlen(m->reason);
            snprintf(m->reason + n, sizeof m->reason - n,
                     "; group %d (in_features %lld not a multiple of %d)", g,
                     (long long)m->in_features, base);
        } else {
            m->format = NQ_FORMAT_KEEP;
            REASON(m, "kept: in_features %lld is not a multiple of the int4 group size %d",
                   (long long)m->in_features, base);
        }
    }
    /* A layer's routed experts are one fused module in vLLM: if one expert
     * Linear cannot be quantized, none of that layer's experts is. */
    for (size_t i = 0; i < p->count; i++) {
        nq_plan_module *m = &p->modules[i];
        if (m->role != NQ_ROLE_ROUTED_EXPERTS || m->format != NQ_FORMAT_KEEP)
            continue;
        for (size_t j = 0; j < p->count; j++) {
            nq_plan_module *o = &p->modules[j];
            if (o->role == NQ_ROLE_ROUTED_EXPERTS && o->layer == m->layer &&
                o->format == NQ_FORMAT_INT4) {
                o->format = NQ_FORMAT_KEEP;
                o->group_size = 0;
                REASON(o, "kept: %.80s cannot be int4 and vLLM fuses layer %d's experts into one "
                          "module with one format", m->name, m->layer);
            }
        }
    }
}

/* vLLM fuses q/k/v into one qkv_proj and a layer's routed experts into one
 * FusedMoE; each fused module has one quantization method. */
static int check_fused_groups(const nq_plan *p, nq_error *err)
{
    for (size_t i = 0; i < p->count; i++) {
        const nq_plan_module *a = &p->modules[i];
        bool qkv = a->role == NQ_ROLE_ATTENTION_PROJ && !strstr(a->name, "o_proj");
        bool expert = a->role == NQ_ROLE_ROUTED_EXPERTS;
        if (!qkv && !expert)
            continue;
        for (size_t j = i + 1; j < p->count; j++) {
            const nq_plan_module *b = &p->modules[j];
            if (b->layer != a->layer || b->role != a->role)
                continue;
            if (qkv && strstr(b->name, "o_proj"))
                continue;
            if (a->format != b->format)
                return nq_fail(err,
                               "%s is %s but %s is %s: vLLM fuses %s of layer %d into one module, "
                               "which needs one format",
                               a->name, nq_format_name(a->format), b->name,
                               nq_format_name(b->format), qkv ? "q/k/v" : "the routed experts",
                               a->layer);
        }
    }
    return 0;
}

static int cmp_module_name(const void *a, const void *b)
{
    return strcmp(((const nq_plan_module *)a)->name, ((const nq_plan_module *)b)->name);
}

/* The converse of the missing-tensor check: nothing in the checkpoint may
 * lie outside the model config.json describes.  A tensor of a layer past
 * the block pattern, or a Linear the pattern does not give its layer (an
 * expert beyond n_routed_experts, a Mamba projection in an attention
 * layer), would otherwise be quantized or copied into a checkpoint that
 * servers load with the config's shapes. */
static int check_no_extra(const nq_model_config *cfg, const nq_checkpoint *ck,
                          const module_list *have, module_list *want, nq_error *err)
{
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        int layer = nq_layer_of(t->name);
        if (layer >= cfg->num_layers)
            return nq_fail(err, "%s: tensor '%s' belongs to layer %d, but config.json's block "
                                "pattern has %d layers (0..%d): the checkpoint and its config "
                                "disagree",
                           nq_checkpoint_dir(ck), t->name, layer, cfg->num_layers,
                           cfg->num_layers - 1);
    }
    qsort(want->items, want->count, sizeof *want->items, cmp_module_name);
    for (size_t i = 0; i < have->count; i++) {
        const nq_plan_module *m = &have->items[i];
        /* lm_head may be stored even when tied to the embeddings */
        if ((!m->quantizable && m->role != NQ_ROLE_ROUTER && m->role != NQ_ROLE_CONV1D) ||
            m->role == NQ_ROLE_LM_HEAD)
            continue;
        if (!bsearch(m, want->items, want->count, sizeof *want->items, cmp_module_name))
            return nq_fail(err, "%s: tensor '%s.weight' is a %s that config.json's block pattern "
                                "does not have (layer %d is %s)",
                           nq_checkpoint_dir(ck), m->name, nq_role_name(m->role), m->layer,
                           m->layer >= 0 ? nq_block_kind_name((nq_block_kind)cfg->pattern[m->layer])
                                         : "outside the layer stack");
    }
    return 0;
}

int nq_plan_build(const nq_model_config *cfg, const nq_checkpoint *ck,
                  const nq_recipe_options *opt, nq_plan *plan, nq_error *err)
{
    memset(plan, 0, sizeof *plan);
    const char *preset = opt->preset ? opt->preset : "";
    bool known = false;
    for (size_t i = 0; nq_recipe_presets[i]; i++)
        known |= strcmp(preset, nq_recipe_presets[i]) == 0;
    if (!known)
        return nq_fail(err,
                       "unknown recipe '%s' (presets: nvfp4-conservative, nvfp4-aggressive, "
                       "fp8-conservative, fp8-aggressive, int4)",
                       preset);
    if (!cfg->is_nemotron_h)
        return nq_fail(err, "recipes need a nemotron_h config.json (model_type is '%s')",
                       cfg->model_type);
    snprintf(plan->recipe, sizeof plan->recipe, "%s", preset);
    module_list l = {0};
    int rc = ck ? modules_from_checkpoint(cfg, ck, &l, err) : modules_from_config(cfg, &l, err);
    if (rc == 0 && ck) {
        /* The weights must be the model config.json describes: a missing
         * expert or a transposed projection is an error here, not a
         * surprise in the server. */
        module_list want = {0};
        rc = modules_from_config(cfg, &want, err);
        for (size_t i = 0; rc == 0 && i < want.count; i++) {
            const nq_plan_module *w = &want.items[i];
            const nq_plan_module *have = NULL;
            for (size_t j = 0; j < l.count && !have; j++)
                if (strcmp(l.items[j].name, w->name) == 0)
                    have = &l.items[j];
            char tensor[300];
            snprintf(tensor, sizeof tensor, "%s.weight", w->name);
            const nq_tensor *t = nq_checkpoint_find(ck, tensor);
            if (!t)
                rc = nq_fail(err, "%s: missing tensor '%s' that config.json's block pattern implies",
                             nq_checkpoint_dir(ck), tensor);
            else if (!have || have->out_features != w->out_features ||
                     (w->role != NQ_ROLE_CONV1D && have->in_features != w->in_features))
                rc = nq_fail(err, "%s: tensor '%s' has shape [%lld, %lld], config.json implies "
                                  "[%lld, %lld]",
                             nq_checkpoint_dir(ck), tensor, (long long)t->shape[0],
                             (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)w->out_features,
                             (long long)w->in_features);
        }
        if (rc == 0)
            rc = check_no_extra(cfg, ck, &l, &want, err);
        free(want.items);
    }
    plan->modules = l.items;
    plan->count = l.count;
    if (rc != 0) {
        nq_plan_free(plan);
        return -1;
    }
    for (size_t i = 0; i < plan->count; i++)
        apply_preset(cfg, preset, &plan->modules[i]);

    for (size_t r = 0; r < opt->nrules; r++) {
        const nq_recipe_rule *rule = &opt->rules[r];
        size_t matched = 0;
        for (size_t i = 0; i < plan->count; i++) {
            nq_plan_module *m = &plan->modules[i];
            if (fnmatch(rule->glob, m->name, 0) != 0)
                continue;
            if (rule->keep) {
                matched++;
                m->format = NQ_FORMAT_KEEP;
                if (rule->origin)
                    REASON(m, "recipe file %.60s: exclude %.100s", rule->origin, rule->glob);
                else
                    REASON(m, "--exclude %.120s", rule->glob);
            } else if (m->quantizable) {
                matched++;
                m->format = rule->format;
                if (rule->origin)
                    REASON(m, "recipe file %.60s: include %.100s=%s", rule->origin, rule->glob,
                           nq_format_name(rule->format));
                else
                    REASON(m, "--include %.120s=%s", rule->glob, nq_format_name(rule->format));
            }
        }
        if (matched == 0) {
            nq_plan_free(plan);
            if (rule->origin)
                return nq_fail(err, "%s: %s pattern '%s' matches no %smodule of this checkpoint",
                               rule->origin, rule->keep ? "exclude" : "include", rule->glob,
                               rule->keep ? "" : "quantizable ");
            return nq_fail(err, "%s '%s' matches no %smodule of this checkpoint",
                           rule->keep ? "--exclude" : "--include", rule->glob,
                           rule->keep ? "" : "quantizable ");
        }
    }

    /* NVFP4 blocks are 16 wide along in_features (and vLLM refuses others). */
    bool has_modelopt = false, has_int4 = false, has_nvfp4 = false, has_fp8 = false;
    for (size_t i = 0; i < plan->count; i++) {
        nq_plan_module *m = &plan->modules[i];
        if (m->format == NQ_FORMAT_NVFP4 && m->in_features % 16 != 0) {
            m->format = NQ_FORMAT_KEEP;
            REASON(m, "kept: in_features %lld is not a multiple of the NVFP4 block (16)",
                   (long long)m->in_features);
        }
        has_nvfp4 |= m->format == NQ_FORMAT_NVFP4;
        has_fp8 |= m->format == NQ_FORMAT_FP8;
        has_int4 |= m->format == NQ_FORMAT_INT4;
    }
    has_modelopt = has_nvfp4 || has_fp8;
    if (has_int4 && has_modelopt) {
        nq_plan_free(plan);
        return nq_fail(err, "the rules mix int4 (GPTQ layout) with %s (ModelOpt layout); one "
                            "checkpoint can only have one of the two",
                       has_nvfp4 ? "nvfp4" : "fp8");
    }
    if (has_nvfp4 && has_fp8)
        add_note(plan, "nvfp4 and fp8 modules together: exported as ModelOpt MIXED_PRECISION "
                       "(needs a recent vLLM)");
    if (has_int4)
        choose_int4_groups(plan, opt);
    plan->kv_cache_fp8 = has_modelopt && nq_model_config_count(cfg, NQ_BLOCK_ATTENTION) > 0;
    if (check_fused_groups(plan, err) != 0) {
        nq_plan_free(plan);
        return -1;
    }
    for (size_t i = 0; i < plan->count; i++)
        if (plan->modules[i].format == NQ_FORMAT_NVFP4)
            plan->modules[i].group_size = 16;
    return 0;
}

void nq_plan_free(nq_plan *plan)
{
    free(plan->modules);
    plan->modules = NULL;
    plan->count = 0;
}

const nq_plan_module *nq_plan_find(const nq_plan *plan, const char *module)
{
    for (size_t i = 0; i < plan->count; i++)
        if (strcmp(plan->modules[i].name, module) == 0)
            return &plan->modules[i];
    return NULL;
}

size_t nq_plan_count(const nq_plan *plan, nq_format f)
{
    size_t n = 0;
    for (size_t i = 0; i < plan->count; i++)
        n += plan->modules[i].format == f;
    return n;
}

int nq_plan_refuse_empty(const nq_plan *plan, const char *source, nq_error *err)
{
    if (plan->count > nq_plan_count(plan, NQ_FORMAT_KEEP))
        return 0;
    const nq_plan_module *example = NULL;
    for (size_t i = 0; i < plan->count && !example; i++)
        if (plan->modules[i].quantizable)
            example = &plan->modules[i];
    if (!example)
        return nq_fail(err, "%s: recipe %s: the checkpoint has no Linear that can be quantized; "
                            "nothing written", source, plan->recipe);
    return nq_fail(err, "%s: recipe %s quantizes none of the %zu modules (e.g. %s: %s); nothing "
                        "written", source, plan->recipe, plan->count, example->name,
                   example->reason);
}

void nq_plan_print(FILE *out, const nq_plan *plan)
{
    fprintf(out, "recipe %s: %zu modules\n", plan->recipe, plan->count);
    fprintf(out, "%-48s %-15s %-13s %-6s %s\n", "module", "role", "shape", "format", "why");
    for (size_t i = 0; i < plan->count; i++) {
        const nq_plan_module *m = &plan->modules[i];
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)m->out_features,
                 (long long)m->in_features);
        fprintf(out, "%-48s %-15s %-13s %-6s %s\n", m->name, nq_role_name(m->role), shape,
                nq_format_name(m->format), m->reason);
    }
    fprintf(out, "summary: %zu nvfp4, %zu fp8, %zu int4, %zu kept", nq_plan_count(plan, NQ_FORMAT_NVFP4),
            nq_plan_count(plan, NQ_FORMAT_FP8), nq_plan_count(plan, NQ_FORMAT_INT4),
            nq_plan_count(plan, NQ_FORMAT_KEEP));
    if (plan->int4_group_size)
        fprintf(out, "; int4 group size %d", plan->int4_group_size);
    fprintf(out, "; kv cache %s\n", plan->kv_cache_fp8 ? "fp8 (needs calibration)" : "unquantized");
    for (int i = 0; i < plan->nnotes; i++)
        fprintf(out, "note: %s\n", plan->notes[i]);
}

/* ---- recipe files --------------------------------------------------------- */

static int append_rule(nq_recipe_rule **rules, size_t *n, const char *glob, bool keep,
                       nq_format f, const char *path, nq_error *err)
{
    if (strlen(glob) >= sizeof((*rules)->glob))
        return nq_fail(err, "%s: pattern '%.40s...' is too long", path, glob);
    nq_recipe_rule *g = realloc(*rules, (*n + 1) * sizeof *g);
    if (!g)
        return nq_fail(err, "%s: out of memory", path);
    *rules = g;
    memset(&g[*n], 0, sizeof g[*n]);
    snprintf(g[*n].glob, sizeof g[*n].glob, "%s", glob);
    g[*n].keep = keep;
    g[*n].format = f;
    g[*n].origin = path;
    (*n)++;
    return 0;
}

int nq_recipe_file_load(const char *path, const char **preset, nq_recipe_rule **rules,
                        size_t *nrules, int *int4_group_size, nq_error *err)
{
    static char preset_buf[64];
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return nq_fail(err, "%s: %s (line %d)", path, jerr.text, jerr.line);
    int rc = 0;
    const char *key;
    json_t *val;
    if (!json_is_object(root)) {
        rc = nq_fail(err, "%s: a recipe file is a JSON object", path);
        goto done;
    }
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "preset") == 0) {
            if (!json_is_string(val)) {
                rc = nq_fail(err, "%s: \"preset\" must be a string", path);
                goto done;
            }
            snprintf(preset_buf, sizeof preset_buf, "%s", json_string_value(val));
            *preset = preset_buf;
        } else if (strcmp(key, "exclude") == 0) {
            size_t i;
            json_t *g;
            if (!json_is_array(val)) {
                rc = nq_fail(err, "%s: \"exclude\" must be a list of patterns", path);
                goto done;
            }
            json_array_foreach(val, i, g)
            {
                if (!json_is_string(g)) {
                    rc = nq_fail(err, "%s: exclude[%zu] is not a string", path, i);
                    goto done;
                }
                if ((rc = append_rule(rules, nrules, json_string_value(g), true, NQ_FORMAT_KEEP,
                                      path, err)) != 0)
                    goto done;
            }
        } else if (strcmp(key, "include") == 0) {
            const char *glob;
            json_t *f;
            if (!json_is_object(val)) {
                rc = nq_fail(err, "%s: \"include\" must map patterns to formats", path);
                goto done;
            }
            json_object_foreach(val, glob, f)
            {
                nq_format fmt;
                if (!json_is_string(f) || nq_format_from_name(json_string_value(f), &fmt) != 0) {
                    rc = nq_fail(err, "%s: include \"%s\": format must be one of nvfp4, fp8, int4, bf16",
                                 path, glob);
                    goto done;
                }
                if ((rc = append_rule(rules, nrules, glob, fmt == NQ_FORMAT_KEEP, fmt, path, err)) != 0)
                    goto done;
            }
        } else if (strcmp(key, "int4_group_size") == 0) {
            json_int_t g = json_integer_value(val);
            if (!json_is_integer(val) || (g != 32 && g != 64 && g != 128)) {
                rc = nq_fail(err, "%s: int4_group_size must be 32, 64 or 128", path);
                goto done;
            }
            *int4_group_size = (int)g;
        } else {
            rc = nq_fail(err, "%s: unknown key \"%s\" (known: preset, exclude, include, "
                              "int4_group_size)", path, key);
            goto done;
        }
    }
done:
    json_decref(root);
    return rc;
}
