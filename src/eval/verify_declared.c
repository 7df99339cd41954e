/* Every field a quantized checkpoint declares must agree with what it
 * stores: a loader trusts the declaration (vLLM picks kernels and shapes
 * from it) and never looks at the tensors to second-guess it, so a wrong
 * `group_size` or `sym` loads without error and computes garbage. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "eval/verify_internal.h"
#include "export/dequant.h"
#include "export/metadata.h"
#include "model/roles.h"

#define problem nq_verify_problem

static const nq_tensor *companion(const nq_checkpoint *ck, const char *module, const char *suffix)
{
    char name[600];
    snprintf(name, sizeof name, "%s.%s", module, suffix);
    return nq_checkpoint_find(ck, name);
}

/* Calls fn for every module stored in format f (its name without the
 * weight suffix). */
static void for_each_module(const nq_checkpoint *ck, nq_stored_format f,
                            void (*fn)(const char *module, void *ctx), void *ctx)
{
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const char *name = nq_checkpoint_tensor(ck, i)->name;
        const char *suffix = f == NQ_STORED_GPTQ ? ".qweight" : ".weight";
        size_t n = strlen(name), k = strlen(suffix);
        if (n <= k || n - k >= 512 || strcmp(name + n - k, suffix) != 0)
            continue;
        char module[512];
        memcpy(module, name, n - k);
        module[n - k] = '\0';
        if (nq_stored_format_of(ck, module) == f)
            fn(module, ctx);
    }
}

/* ---- GPTQ ----------------------------------------------------------------- */

typedef struct gptq_ctx {
    const nq_checkpoint *ck;
    json_t *gq;
    FILE *out;
    nq_verify_result *res;
    int bits, group;           /* declared */
    bool sym, sym_declared;
    json_t *dynamic;
    bool any_zero_not_8;
    size_t modules;
    size_t more[3]; /* bits, group, sym problems after the first of each kind */
} gptq_ctx;

/* A declared field that is wrong is usually wrong for every module: the
 * first module is printed, the rest counted. */
static bool first_of_kind(gptq_ctx *c, int kind)
{
    return c->more[kind]++ == 0;
}

/* vLLM matches `dynamic` keys with re.match against its own module names,
 * which start with "model." where NVIDIA's checkpoints say "backbone.". */
static bool dynamic_matches(const char *regex, const char *module, bool *bad)
{
    char name[600];
    if (strncmp(module, "backbone.", 9) == 0)
        snprintf(name, sizeof name, "model.%s", module + 9);
    else
        snprintf(name, sizeof name, "%s", module);
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &ec,
                                   &eo, NULL);
    if (!re) {
        *bad = true;
        return false;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)name, strlen(name), 0, 0, md, NULL) : -1;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0;
}

static void check_gptq_module(const char *module, void *vctx)
{
    gptq_ctx *c = vctx;
    const nq_tensor *qw = companion(c->ck, module, "qweight");
    const nq_tensor *qz = companion(c->ck, module, "qzeros");
    const nq_tensor *sc = companion(c->ck, module, "scales");
    const nq_tensor *gi = companion(c->ck, module, "g_idx");
    c->modules++;
    if (!qw || !qz || !sc || !gi || qw->ndim != 2 || sc->ndim != 2 || gi->ndim != 1 ||
        qz->ndim != 2 || qz->dtype != NQ_I32 || qw->shape[0] <= 0 || sc->shape[0] <= 0)
        return; /* the decoder reports the malformed module */
    int64_t in = gi->shape[0], out = qw->shape[1];
    /* bits: qweight packs 32 / bits values per int32 along in_features */
    if (c->bits > 0 && qw->shape[0] * (32 / c->bits) != in && first_of_kind(c, 0))
        problem(c->out, c->res,
                "%s: qweight has %lld rows for %lld inputs (g_idx), i.e. %lld-bit packing, but "
                "bits is %d",
                module, (long long)qw->shape[0], (long long)in,
                (long long)(in % qw->shape[0] == 0 ? 32 / (in / qw->shape[0]) : 0), c->bits);
    /* group size: scales has one row per group */
    int64_t stored = in % sc->shape[0] == 0 ? in / sc->shape[0] : 0;
    int expect = c->group;
    const char *rule_key = NULL; /* the dynamic rule that set the group, if any */
    bool bad_regex = false;
    const char *key;
    json_t *rule;
    json_object_foreach(c->dynamic, key, rule)
    {
        if (strlen(key) < 2 || key[1] != ':' || !dynamic_matches(key + 2, module, &bad_regex))
            continue;
        if (key[0] == '-') {
            problem(c->out, c->res,
                    "%s is GPTQ, but dynamic rule \"%s\" tells vLLM to load it unquantized",
                    module, key);
            break;
        }
        json_t *g = json_object_get(rule, "group_size");
        if (json_is_integer(g)) {
            expect = (int)json_integer_value(g);
            rule_key = key;
        }
        break; /* vLLM applies the first matching rule */
    }
    if (bad_regex)
        problem(c->out, c->res, "quantize_config.json: a dynamic key is not a valid regex");
    bool per_channel = expect == -1 && sc->shape[0] == 1;
    if (!per_channel && stored != expect && first_of_kind(c, 1))
        problem(c->out, c->res,
                "%s: scales has %lld rows for %lld inputs (group size %lld), but %s%s%s says %d",
                module, (long long)sc->shape[0], (long long)in, (long long)stored,
                rule_key ? "dynamic rule \"" : "", rule_key ? rule_key : "group_size",
                rule_key ? "\"" : "", expect);
    /* sym: every zero point is 8, stored minus one as 0x77777777 (GPTQ v1) */
    const unsigned char *z = qz->data;
    for (uint64_t k = 0; k < qz->numel; k++) {
        uint32_t w;
        memcpy(&w, z + 4 * k, 4);
        if (w == 0x77777777u)
            continue;
        c->any_zero_not_8 = true;
        if (c->sym && first_of_kind(c, 2))
            problem(c->out, c->res,
                    "%s.qzeros[%llu, %llu] is 0x%08x, but sym is true (every zero point 8, stored "
                    "as 0x77777777): a symmetric kernel ignores it, an asymmetric one does not",
                    module, (unsigned long long)(k / (uint64_t)qz->shape[1]),
                    (unsigned long long)(k % (uint64_t)qz->shape[1]), w);
        break;
    }
    (void)out;
}

/* The names vLLM gives the layer that holds `module`: its own, and for
 * q/k/v the fused qkv_proj, for a routed expert the layer's FusedMoE. */
static int vllm_names(const char *module, char names[2][600])
{
    snprintf(names[0], sizeof names[0], "%s", module);
    const char *p;
    if ((p = strstr(module, ".q_proj")) || (p = strstr(module, ".k_proj")) ||
        (p = strstr(module, ".v_proj"))) {
        snprintf(names[1], sizeof names[1], "%.*s.qkv_proj", (int)(p - module), module);
        return 2;
    }
    if ((p = strstr(module, ".experts.")) && p[9] >= '0' && p[9] <= '9') {
        snprintf(names[1], sizeof names[1], "%.*s.experts", (int)(p - module), module);
        return 2;
    }
    return 1;
}

/* An unquantized Linear that vLLM would build as a GPTQ layer (it does for
 * every Linear of the model except lm_head, the routers and conv1d) must be
 * skipped by a "-:" dynamic rule, or loading looks for its qweight. */
static void check_gptq_skips(const nq_checkpoint *ck, json_t *dynamic, FILE *out,
                             nq_verify_result *res)
{
    size_t missing = 0;
    char first[512] = "";
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        size_t n = strlen(t->name);
        if (t->ndim != 2 || n <= 7 || n - 7 >= 512 || strcmp(t->name + n - 7, ".weight") != 0)
            continue;
        nq_role r = nq_role_of(NULL, t->name);
        if (r != NQ_ROLE_MAMBA_PROJ && r != NQ_ROLE_ATTENTION_PROJ &&
            r != NQ_ROLE_ROUTED_EXPERTS && r != NQ_ROLE_SHARED_EXPERTS && r != NQ_ROLE_DENSE_MLP)
            continue;
        char module[512];
        memcpy(module, t->name, n - 7);
        module[n - 7] = '\0';
        if (nq_stored_format_of(ck, module) != NQ_STORED_FLOAT)
            continue;
        char names[2][600];
        int k = vllm_names(module, names);
        bool skipped = false, bad = false;
        const char *key;
        json_t *rule;
        for (int j = 0; j < k && !skipped; j++)
            json_object_foreach(dynamic, key, rule)
            {
                (void)rule;
                if (strlen(key) > 2 && key[1] == ':' && dynamic_matches(key + 2, names[j], &bad)) {
                    skipped = key[0] == '-';
                    break; /* vLLM applies the first matching rule */
                }
            }
        if (!skipped && missing++ == 0)
            snprintf(first, sizeof first, "%s", module);
    }
    if (missing)
        problem(out, res,
                "%s is stored unquantized, but no dynamic \"-:\" rule skips it (%zu such "
                "module(s)): vLLM would build a GPTQ layer for it and find no qweight",
                first, missing);
}

static void check_gptq(const nq_checkpoint *ck, json_t *gq, FILE *out, nq_verify_result *res)
{
    gptq_ctx c = {.ck = ck, .gq = gq, .out = out, .res = res};
    json_t *v = json_object_get(gq, "bits");
    c.bits = json_is_integer(v) ? (int)json_integer_value(v) : 0;
    if (c.bits != 2 && c.bits != 4 && c.bits != 8)
        problem(out, res, "quantize_config.json: bits must be 2, 4 or 8, found %s",
                v ? (json_is_integer(v) ? "another number" : "a non-integer") : "nothing");
    v = json_object_get(gq, "group_size");
    c.group = json_is_integer(v) ? (int)json_integer_value(v) : 0;
    if (!json_is_integer(v) || (c.group <= 0 && c.group != -1))
        problem(out, res, "quantize_config.json: group_size must be a positive integer or -1");
    v = json_object_get(gq, "sym");
    c.sym_declared = json_is_boolean(v);
    c.sym = json_is_true(v);
    if (v && !json_is_boolean(v))
        problem(out, res, "quantize_config.json: sym must be true or false");
    v = json_object_get(gq, "desc_act");
    if (v && !json_is_boolean(v))
        problem(out, res, "quantize_config.json: desc_act must be true or false");
    else if (json_is_true(v))
        /* the decoder already refuses a g_idx that is not i / group */
        problem(out, res, "quantize_config.json: desc_act is true, but every g_idx is in input "
                          "order (i / group_size): a loader would permute inputs that were never "
                          "reordered");
    v = json_object_get(gq, "checkpoint_format");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "gptq") == 0))
        problem(out, res, "quantize_config.json: checkpoint_format is %s%s%s, but the zero points "
                          "are stored minus one (GPTQ v1, \"gptq\")",
                json_is_string(v) ? "\"" : "", json_is_string(v) ? json_string_value(v) : "not a string",
                json_is_string(v) ? "\"" : "");
    v = json_object_get(gq, "quant_method");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "gptq") == 0))
        problem(out, res, "quantize_config.json: quant_method is not \"gptq\"");
    c.dynamic = json_object_get(gq, "dynamic");
    if (c.dynamic && !json_is_object(c.dynamic)) {
        problem(out, res, "quantize_config.json: dynamic must be an object");
        c.dynamic = NULL;
    }
    for_each_module(ck, NQ_STORED_GPTQ, check_gptq_module, &c);
    check_gptq_skips(ck, c.dynamic, out, res);
    static const char *kinds[3] = {"bits", "group size", "zero point"};
    for (int k = 0; k < 3; k++)
        if (c.more[k] > 1)
            problem(out, res, "... the same %s problem in %zu more GPTQ modules", kinds[k],
                    c.more[k] - 1);
    if (c.modules && c.sym_declared && !c.sym && !c.any_zero_not_8)
        problem(out, res, "quantize_config.json: sym is false, but every stored zero point is 8: "
                          "the weights are symmetric (sym: true)");
}

/* ---- ModelOpt --------------------------------------------------------------- */

typedef struct modelopt_ctx {
    const nq_checkpoint *ck;
    json_t *quant, *exclude, *layers;
    FILE *out;
    nq_verify_result *res;
    json_int_t group;  /* declared group_size, or -1 when absent */
    size_t *covered;   /* per exclude entry: quantized modules it covers */
    char (*first)[512]; /* per exclude entry: the first of them */
    size_t group_more; /* group_size problems after the first */
} modelopt_ctx;

static void check_quantized_module(const char *module, void *vctx, const char *fmt)
{
    modelopt_ctx *c = vctx;
    size_t i;
    json_t *e;
    json_array_foreach(c->exclude, i, e)
    {
        const char *entry = json_string_value(e);
        if (entry && nq_exclude_matches(entry, module) && c->covered && c->covered[i]++ == 0)
            snprintf(c->first[i], sizeof c->first[i], "%s (%s)", module, fmt);
    }
    json_t *per = nq_quantized_layers_entry(c->layers, module);
    if (per) {
        const char *algo = json_string_value(json_object_get(per, "quant_algo"));
        bool ok = algo && (strcmp(fmt, "nvfp4") == 0 ? strstr(algo, "NVFP4") != NULL
                                                     : strcmp(algo, "FP8") == 0);
        if (!ok)
            problem(c->out, c->res, "quantized_layers says %s is %s, but it is stored %s", module,
                    algo ? algo : "(no quant_algo)", fmt);
    }
}

static void check_nvfp4_module(const char *module, void *vctx)
{
    modelopt_ctx *c = vctx;
    check_quantized_module(module, vctx, "nvfp4");
    const nq_tensor *w = companion(c->ck, module, "weight");
    const nq_tensor *s = companion(c->ck, module, "weight_scale");
    if (!w || !s || w->ndim != 2 || s->ndim != 2 || s->shape[1] <= 0)
        return;
    int64_t in = w->shape[1] * 2, block = in % s->shape[1] == 0 ? in / s->shape[1] : 0;
    json_int_t declared = c->group;
    json_t *per = json_object_get(nq_quantized_layers_entry(c->layers, module), "group_size");
    if (json_is_integer(per))
        declared = json_integer_value(per);
    if (declared >= 0 && declared != block && c->group_more++ == 0)
        problem(c->out, c->res,
                "%s: weight_scale has one scale per %lld weights, but group_size says %lld", module,
                (long long)block, (long long)declared);
}

static void check_fp8_module(const char *module, void *vctx)
{
    check_quantized_module(module, vctx, "fp8");
}

static void check_modelopt(const nq_checkpoint *ck, json_t *hf, FILE *out, nq_verify_result *res)
{
    modelopt_ctx c = {.ck = ck, .out = out, .res = res, .group = -1};
    c.quant = json_object_get(hf, "quantization");
    c.exclude = json_object_get(c.quant, "exclude_modules");
    c.layers = json_object_get(c.quant, "quantized_layers");
    json_t *g = json_object_get(c.quant, "group_size");
    if (g && !json_is_integer(g))
        problem(out, res, "hf_quant_config.json: group_size is not an integer");
    else if (g)
        c.group = json_integer_value(g);
    if (c.exclude && !json_is_array(c.exclude)) {
        problem(out, res, "hf_quant_config.json: exclude_modules is not a list");
        c.exclude = NULL;
    }
    size_t n = json_array_size(c.exclude);
    c.covered = calloc(n ? n : 1, sizeof *c.covered);
    c.first = calloc(n ? n : 1, sizeof *c.first);
    if (!c.covered || !c.first) {
        problem(out, res, "out of memory checking exclude_modules");
        free(c.covered);
        free(c.first);
        return;
    }
    for_each_module(ck, NQ_STORED_NVFP4, check_nvfp4_module, &c);
    for_each_module(ck, NQ_STORED_FP8, check_fp8_module, &c);
    if (c.group_more > 1)
        problem(out, res, "... the same group_size problem in %zu more NVFP4 modules",
                c.group_more - 1);
    for (size_t i = 0; i < n; i++)
        if (c.covered[i])
            problem(out, res,
                    "exclude_modules entry \"%s\" covers %zu quantized module(s), first %s: vLLM "
                    "(substring, then fnmatch) would load them as unquantized",
                    json_string_value(json_array_get(c.exclude, i)), c.covered[i], c.first[i]);
    free(c.covered);
    free(c.first);
}

/* ---- config.json's copy ----------------------------------------------------- */

static bool same_string_set(json_t *a, json_t *b)
{
    if (!json_is_array(a) || !json_is_array(b) || json_array_size(a) != json_array_size(b))
        return false;
    size_t i, j;
    json_t *x, *y;
    json_array_foreach(a, i, x)
    {
        bool found = false;
        json_array_foreach(b, j, y) found = found || json_equal(x, y);
        if (!found)
            return false;
    }
    return true;
}

/* The flat form current ModelOpt writes into config.json: quant_algo,
 * kv_cache_scheme (null or {"num_bits": 8, "type": "float", ...}), ignore,
 * config_groups; and the nested form older ModelOpt (and nemoq before it)
 * wrote: {"quant_method", "producer", "quantization": {...}}. */
static void compare_modelopt_copy(json_t *qc, json_t *hf, FILE *out, nq_verify_result *res)
{
    json_t *q = json_object_get(hf, "quantization");
    json_t *nested = json_object_get(qc, "quantization");
    const char *where = "config.json quantization_config";
    if (json_is_object(nested)) {
        const char *key;
        json_t *v;
        json_object_foreach(q, key, v)
        {
            json_t *w = json_object_get(nested, key);
            bool same = strcmp(key, "exclude_modules") == 0 ? same_string_set(v, w)
                                                            : w && json_equal(v, w);
            if (!same)
                problem(out, res, "%s.quantization.%s disagrees with hf_quant_config.json", where,
                        key);
        }
        json_object_foreach(nested, key, v) if (!json_object_get(q, key))
            problem(out, res, "%s.quantization.%s is not in hf_quant_config.json", where, key);
        return;
    }
    json_t *algo = json_object_get(qc, "quant_algo");
    if (!algo || !json_equal(algo, json_object_get(q, "quant_algo")))
        problem(out, res, "%s.quant_algo disagrees with hf_quant_config.json", where);
    json_t *ignore = json_object_get(qc, "ignore");
    json_t *exclude = json_object_get(q, "exclude_modules");
    json_t *none = json_array();
    if ((ignore || exclude) && !same_string_set(ignore ? ignore : none, exclude ? exclude : none))
        problem(out, res, "%s.ignore and hf_quant_config.json's exclude_modules differ", where);
    json_t *kv = json_object_get(qc, "kv_cache_scheme");
    bool kv_on = kv && !json_is_null(kv);
    bool kv_declared = json_is_string(json_object_get(q, "kv_cache_quant_algo"));
    if (kv_on != kv_declared)
        problem(out, res, "%s.kv_cache_scheme is %s but hf_quant_config.json's kv_cache_quant_algo "
                          "is %s",
                where, kv_on ? "set" : "null", kv_declared ? "set" : "null");
    json_decref(none);
    json_t *groups = json_object_get(qc, "config_groups");
    json_t *declared = json_object_get(q, "group_size");
    const char *gname;
    json_t *grp;
    json_object_foreach(groups, gname, grp)
    {
        json_t *gs = json_object_get(json_object_get(grp, "weights"), "group_size");
        if (json_is_integer(gs) && declared && !json_equal(gs, declared))
            problem(out, res, "%s.config_groups.%s.weights.group_size disagrees with "
                              "hf_quant_config.json's group_size",
                    where, gname);
    }
}

static void compare_gptq_copy(json_t *qc, json_t *gq, FILE *out, nq_verify_result *res)
{
    const char *key;
    json_t *v;
    json_object_foreach(gq, key, v)
    {
        json_t *w = json_object_get(qc, key);
        if (!w || !json_equal(v, w))
            problem(out, res, "config.json quantization_config.%s disagrees with "
                              "quantize_config.json",
                    key);
    }
    json_object_foreach(qc, key, v) if (!json_object_get(gq, key) && strcmp(key, "quant_method"))
        problem(out, res, "config.json quantization_config.%s is not in quantize_config.json", key);
}

void nq_verify_declared(const nq_checkpoint *ck, const char *dir, json_t *hf, json_t *gq,
                        FILE *out, nq_verify_result *res)
{
    if (gq)
        check_gptq(ck, gq, out, res);
    if (hf && json_is_object(json_object_get(hf, "quantization")))
        check_modelopt(ck, hf, out, res);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    json_t *qc = json_object_get(cfg, "quantization_config");
    if (qc && !json_is_object(qc)) {
        problem(out, res, "config.json: quantization_config is not an object");
    } else if (qc) {
        const char *method = json_string_value(json_object_get(qc, "quant_method"));
        if (gq && method && strcmp(method, "gptq") == 0)
            compare_gptq_copy(qc, gq, out, res);
        else if (hf && json_is_object(json_object_get(hf, "quantization")) && method &&
                 strcmp(method, "modelopt") == 0)
            compare_modelopt_copy(qc, hf, out, res);
        else
            problem(out, res, "config.json: quantization_config (quant_method %s) does not "
                              "describe the %s next to it",
                    method ? method : "missing",
                    gq ? "quantize_config.json" : hf ? "hf_quant_config.json" : "unquantized weights");
    }
    json_decref(cfg);
}
