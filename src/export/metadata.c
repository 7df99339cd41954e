#include "export/metadata.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

static int compare_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

json_t *nq_exclude_modules(const nq_plan *plan)
{
    const char **names = malloc((plan->count ? plan->count : 1) * sizeof *names);
    size_t n = 0;
    for (size_t i = 0; names && i < plan->count; i++) {
        const nq_plan_module *m = &plan->modules[i];
        if (m->format != NQ_FORMAT_KEEP || m->role == NQ_ROLE_EMBEDDINGS)
            continue;
        if (m->quantizable || m->role == NQ_ROLE_ROUTER || m->role == NQ_ROLE_CONV1D)
            names[n++] = m->name;
    }
    json_t *arr = json_array();
    if (names) {
        qsort(names, n, sizeof *names, compare_str);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, json_string(names[i]));
    }
    free(names);
    return arr;
}

json_t *nq_modelopt_quant_config(const nq_plan *plan, const nq_export_info *info)
{
    bool nvfp4 = nq_plan_count(plan, NQ_FORMAT_NVFP4) > 0;
    bool fp8 = nq_plan_count(plan, NQ_FORMAT_FP8) > 0;
    json_t *q = json_object();
    const char *algo = nvfp4 && fp8 ? "MIXED_PRECISION"
                       : nvfp4      ? (info->weights_only ? "W4A16_NVFP4" : "NVFP4")
                                    : "FP8";
    json_object_set_new(q, "quant_algo", json_string(algo));
    /* vLLM requires the key for NVFP4 even when null (export-spec 1.3). */
    json_object_set_new(q, "kv_cache_quant_algo",
                        info->kv_cache_fp8 ? json_string("FP8") : json_null());
    if (nvfp4 && !fp8)
        json_object_set_new(q, "group_size", json_integer(16));
    if (nvfp4 && fp8) {
        /* ModelOpt's MIXED_PRECISION form: per-layer formats, no exclude list. */
        json_t *layers = json_object();
        for (size_t i = 0; i < plan->count; i++) {
            const nq_plan_module *m = &plan->modules[i];
            if (m->format == NQ_FORMAT_NVFP4)
                json_object_set_new(layers, m->name,
                                    json_pack("{s:s, s:i}", "quant_algo", "NVFP4", "group_size", 16));
            else if (m->format == NQ_FORMAT_FP8)
                json_object_set_new(layers, m->name, json_pack("{s:s}", "quant_algo", "FP8"));
        }
        json_object_set_new(q, "quantized_layers", layers);
    } else {
        json_object_set_new(q, "exclude_modules", nq_exclude_modules(plan));
    }
    /* producer.name is the tag vLLM detects ModelOpt checkpoints by
     * (export-spec 1.3); the writer's identity goes in an extra key. */
    json_t *producer = json_pack("{s:s, s:s, s:s}", "name", "modelopt", "version",
                                 NQ_MODELOPT_FORMAT_VERSION, "written_by", "nemoq " NEMOQ_VERSION);
    json_t *doc = json_pack("{s:o, s:o}", "producer", producer, "quantization", q);
    if (info->weights_only)
        /* Tells `nemoq verify` (and a reader) that the missing activation
         * scales are expected: calibration has not run. */
        json_object_set_new(doc, "nemoq", json_pack("{s:b}", "weights_only", 1));
    return doc;
}

bool nq_exclude_entry_corrupt(const json_t *entry, char *intended, size_t cap)
{
    const char *s = json_string_value(entry);
    if (!s)
        return false;
    size_t len = json_string_length(entry), head = strlen(s);
    if (head == len)
        return false;
    size_t keep = head > 0 && s[head - 1] == '.' ? head - 1 : head;
    const char *suffix = len >= 2 && s[len - 2] == '.' && s[len - 1] == '*' ? ".*"
                         : len >= 1 && s[len - 1] == '*'                    ? "*"
                                                                            : "";
    if (cap)
        snprintf(intended, cap, "%.*s%s", (int)keep, s, suffix);
    return true;
}

bool nq_modelopt_decl_read(const json_t *doc, nq_modelopt_decl *d)
{
    memset(d, 0, sizeof *d);
    if (!json_is_object(doc))
        return false;
    d->producer = json_object_get(doc, "producer");
    json_t *q = json_object_get(doc, "quantization");
    if (json_is_object(q)) {
        d->quant_algo = json_string_value(json_object_get(q, "quant_algo"));
        d->kv_cache_quant_algo = json_string_value(json_object_get(q, "kv_cache_quant_algo"));
        d->group_size = json_integer_value(json_object_get(q, "group_size"));
        d->exclude = json_object_get(q, "exclude_modules");
        d->quantized_layers = json_object_get(q, "quantized_layers");
        return true;
    }
    const char *method = json_string_value(json_object_get(doc, "quant_method"));
    if (!method || strcmp(method, "modelopt") != 0)
        return false;
    d->flat = true;
    d->quant_algo = json_string_value(json_object_get(doc, "quant_algo"));
    json_t *kv = json_object_get(doc, "kv_cache_scheme");
    if (json_is_string(kv))
        d->kv_cache_quant_algo = json_string_value(kv);
    else if (json_is_object(kv) &&
             json_string_value(json_object_get(kv, "type")) &&
             !strcmp(json_string_value(json_object_get(kv, "type")), "float"))
        d->kv_cache_quant_algo =
            json_integer_value(json_object_get(kv, "num_bits")) == 8   ? "FP8"
            : json_integer_value(json_object_get(kv, "num_bits")) == 4 ? "NVFP4"
                                                                       : NULL;
    else /* vLLM also accepts the nested key at top level */
        d->kv_cache_quant_algo = json_string_value(json_object_get(doc, "kv_cache_quant_algo"));
    d->group_size = json_integer_value(json_object_get(doc, "group_size"));
    if (!d->group_size)
        d->group_size = json_integer_value(json_object_get(
            json_object_get(json_object_get(json_object_get(doc, "config_groups"), "group_0"),
                            "weights"),
            "group_size"));
    d->exclude = json_object_get(doc, "ignore");
    d->quantized_layers = json_object_get(doc, "quantized_layers");
    return true;
}

/* compressed-tensors style details of one per-layer ModelOpt config, as
 * ModelOpt 0.47's _quant_algo_to_group_config writes them
 * (modelopt/torch/export/convert_hf_config.py). */
static json_t *group_details(const char *algo, json_int_t group_size)
{
    if (!strcmp(algo, "FP8"))
        return json_pack("{s:{s:b, s:i, s:s}, s:{s:b, s:i, s:s}}", "input_activations", "dynamic",
                         0, "num_bits", 8, "type", "float", "weights", "dynamic", 0, "num_bits", 8,
                         "type", "float");
    json_int_t gs = group_size ? group_size : 16;
    if (!strcmp(algo, "NVFP4"))
        return json_pack("{s:{s:b, s:i, s:s, s:I}, s:{s:b, s:i, s:s, s:I}}", "input_activations",
                         "dynamic", 0, "num_bits", 4, "type", "float", "group_size", gs, "weights",
                         "dynamic", 0, "num_bits", 4, "type", "float", "group_size", gs);
    if (!strcmp(algo, "W4A16_NVFP4"))
        return json_pack("{s:{s:b, s:i, s:s, s:I}}", "weights", "dynamic", 0, "num_bits", 4, "type",
                         "float", "group_size", gs);
    return json_pack("{s:s}", "quant_algo", algo);
}

json_t *nq_modelopt_config_json_form(const json_t *hf_quant_config)
{
    json_t *q = json_object_get(hf_quant_config, "quantization");
    const char *algo = json_string_value(json_object_get(q, "quant_algo"));
    json_int_t gs = json_integer_value(json_object_get(q, "group_size"));
    json_t *c = json_object();
    if (algo && (!strcmp(algo, "FP8") || !strcmp(algo, "NVFP4") || !strcmp(algo, "W4A16_NVFP4"))) {
        json_t *g = group_details(algo, gs);
        json_object_set_new(g, "targets", json_pack("[s]", "Linear"));
        json_object_set_new(c, "config_groups", json_pack("{s:o}", "group_0", g));
    } else if (algo && !strcmp(algo, "MIXED_PRECISION")) {
        /* one group per distinct per-layer config, numbered in order of first
         * appearance, its targets the sorted module names */
        json_t *layers = json_object_get(q, "quantized_layers");
        json_t *kinds = json_array(), *names = json_array();
        const char *name;
        json_t *cfg;
        json_object_foreach(layers, name, cfg)
        {
            size_t k, n = json_array_size(kinds);
            for (k = 0; k < n && !json_equal(json_array_get(kinds, k), cfg); k++)
                ;
            if (k == n) {
                json_array_append(kinds, cfg);
                json_array_append_new(names, json_array());
            }
            json_array_append_new(json_array_get(names, k), json_string(name));
        }
        json_t *groups = json_object();
        for (size_t k = 0; k < json_array_size(kinds); k++) {
            json_t *kind = json_array_get(kinds, k), *list = json_array_get(names, k);
            const char *a = json_string_value(json_object_get(kind, "quant_algo"));
            json_t *g = group_details(a ? a : "", json_integer_value(json_object_get(kind, "group_size")));
            size_t n = json_array_size(list);
            const char **sorted = malloc((n ? n : 1) * sizeof *sorted);
            json_t *targets = json_array();
            if (sorted) {
                for (size_t i = 0; i < n; i++)
                    sorted[i] = json_string_value(json_array_get(list, i));
                qsort(sorted, n, sizeof *sorted, compare_str);
                for (size_t i = 0; i < n; i++)
                    json_array_append_new(targets, json_string(sorted[i]));
            }
            free(sorted);
            json_object_set_new(g, "targets", targets);
            char key[32];
            snprintf(key, sizeof key, "group_%zu", k);
            json_object_set_new(groups, key, g);
        }
        json_decref(kinds);
        json_decref(names);
        json_object_set_new(c, "config_groups", groups);
        json_object_set_new(c, "quantized_layers", layers ? json_deep_copy(layers) : json_object());
    }
    json_t *ex = json_object_get(q, "exclude_modules");
    json_object_set_new(c, "ignore", ex ? json_deep_copy(ex) : json_array());
    if (algo)
        json_object_set_new(c, "quant_algo", json_string(algo));
    const char *kv = json_string_value(json_object_get(q, "kv_cache_quant_algo"));
    if (kv && !strcmp(kv, "FP8"))
        json_object_set_new(c, "kv_cache_scheme",
                            json_pack("{s:b, s:i, s:s}", "dynamic", 0, "num_bits", 8, "type", "float"));
    else if (kv && *kv)
        json_object_set_new(c, "kv_cache_scheme", json_string(kv));
    json_t *producer = json_object_get(hf_quant_config, "producer");
    if (producer)
        json_object_set_new(c, "producer", json_deep_copy(producer));
    json_object_set_new(c, "quant_method", json_string("modelopt"));
    return c;
}

/* Appends `s` to buf with regex metacharacters (only '.' occurs in module
 * names) escaped. */
static void regex_escape(char *buf, size_t cap, const char *s)
{
    size_t n = strlen(buf);
    for (; *s && n + 3 < cap; s++) {
        if (*s == '.')
            buf[n++] = '\\';
        buf[n++] = *s;
    }
    buf[n] = '\0';
}

/* A `dynamic` key: "+:" or "-:", then ".*\." (vLLM's names start with
 * "model." where the checkpoint's start with "backbone."), then `part` up to
 * the first `cut` (all of it when cut is NULL) escaped, then `suffix`. */
static void dynamic_key(char *key, size_t cap, char sign, const char *part, const char *cut,
                        const char *suffix)
{
    char head[600];
    snprintf(head, sizeof head, "%s", part);
    char *e = cut ? strstr(head, cut) : NULL;
    if (e)
        *e = '\0';
    snprintf(key, cap, "%c:.*\\.", sign);
    regex_escape(key, cap, head);
    strncat(key, suffix, cap - strlen(key) - 1);
}

json_t *nq_gptq_quant_config(const nq_plan *plan)
{
    json_t *c = json_pack("{s:i, s:i, s:b, s:b, s:b, s:b, s:b, s:f, s:s, s:s}", "bits", 4,
                          "group_size", plan->int4_group_size, "desc_act", 0, "sym", 1, "lm_head",
                          0, "static_groups", 0, "true_sequential", 1, "damp_percent", 0.01,
                          "quant_method", "gptq", "checkpoint_format", "gptq");
    /* Per-module group sizes and kept experts, as vLLM's `dynamic` overrides
     * (export-spec 4.3/4.4): "+:regex" overrides, "-:regex" skips, matched
     * with re.match against vLLM's module names ("model.layers..."). */
    json_t *dynamic = json_object();
    for (size_t i = 0; i < plan->count; i++) {
        const nq_plan_module *m = &plan->modules[i];
        const char *dot = strchr(m->name, '.');
        const char *tail = dot ? dot + 1 : m->name;
        char key[600];
        if (m->format == NQ_FORMAT_INT4 && m->group_size != plan->int4_group_size) {
            dynamic_key(key, sizeof key, '+', tail, NULL, "$");
            json_object_set_new(dynamic, key, json_pack("{s:i}", "group_size", m->group_size));
        } else if (m->format == NQ_FORMAT_KEEP &&
                   (m->role == NQ_ROLE_MAMBA_PROJ || m->role == NQ_ROLE_SHARED_EXPERTS ||
                    m->role == NQ_ROLE_DENSE_MLP ||
                    (m->role == NQ_ROLE_ATTENTION_PROJ && strstr(m->name, ".o_proj")))) {
            /* vLLM builds a GPTQ layer for every Linear no "-:" rule skips
             * and would look for its qweight */
            dynamic_key(key, sizeof key, '-', tail, NULL, "$");
            json_object_set_new(dynamic, key, json_object());
        } else if (m->format == NQ_FORMAT_KEEP && m->role == NQ_ROLE_ATTENTION_PROJ &&
                   strstr(m->name, ".q_proj")) {
            /* q/k/v are kept together (plan.c) and fused into qkv_proj by
             * vLLM, which checks the fused name or each shard's */
            dynamic_key(key, sizeof key, '-', tail, ".q_proj", "\\.(qkv|q|k|v)_proj$");
            json_object_set_new(dynamic, key, json_object());
        } else if (m->format == NQ_FORMAT_KEEP && m->role == NQ_ROLE_ROUTED_EXPERTS &&
                   strstr(m->name, ".experts.0.up_proj")) {
            /* one rule per fused MoE layer (vLLM: model.layers.N.mixer.experts) */
            dynamic_key(key, sizeof key, '-', tail, ".experts.", "\\.experts.*");
            json_object_set_new(dynamic, key, json_object());
        }
    }
    if (json_object_size(dynamic))
        json_object_set_new(c, "dynamic", dynamic);
    else
        json_decref(dynamic);
    return c;
}

/* Splices the members of `keys` into the JSON object `text` just before its
 * closing brace, keeping every original byte.  The caller has parsed
 * `text` and checked that none of the keys is already there. */
static char *splice_keys(const char *text, size_t len, const char *source_name, const json_t *keys,
                         size_t *out_len, nq_error *err)
{
    size_t end = len;
    while (end > 0 && text[end - 1] != '}')
        end--;
    if (end == 0) {
        nq_fail(err, "%s: no closing brace", source_name);
        return NULL;
    }
    end--; /* index of the final '}' */
    size_t body_end = end;
    while (body_end > 0 && (text[body_end - 1] == ' ' || text[body_end - 1] == '\n' ||
                            text[body_end - 1] == '\r' || text[body_end - 1] == '\t'))
        body_end--;
    bool empty_object = body_end > 0 && text[body_end - 1] == '{';
    char *added = json_dumps(keys, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!added) {
        nq_fail(err, "out of memory");
        return NULL;
    }
    /* `added` is "{\n  ...\n}": its inside goes into the original object */
    size_t ilen = strlen(added) - 2;
    const char *inner = added + 1;
    while (ilen > 0 && (inner[ilen - 1] == '\n' || inner[ilen - 1] == ' '))
        ilen--;
    char *out = malloc(len + ilen + 8);
    if (!out) {
        free(added);
        nq_fail(err, "out of memory");
        return NULL;
    }
    size_t n = body_end;
    memcpy(out, text, body_end);
    if (!empty_object && ilen > 0)
        out[n++] = ',';
    memcpy(out + n, inner, ilen);
    n += ilen;
    out[n++] = '\n';
    memcpy(out + n, text + end, len - end);
    n += len - end;
    out[n] = '\0';
    free(added);
    *out_len = n;
    return out;
}

char *nq_config_with_quantization(const char *text, size_t len, const char *source_name,
                                  const nq_model_config *cfg, const json_t *quantization_config,
                                  size_t *out_len, nq_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        nq_fail(err, "%s: not a JSON object", source_name);
        return NULL;
    }
    bool has_quant = json_object_get(root, "quantization_config") != NULL;
    bool has_hop = json_object_get(root, "hybrid_override_pattern") != NULL;
    bool has_nhl = json_object_get(root, "num_hidden_layers") != NULL;
    json_decref(root);
    if (has_quant) {
        nq_fail(err, "%s: already has a quantization_config: nemoq quantizes unquantized checkpoints",
                source_name);
        return NULL;
    }
    json_t *extra = json_object();
    json_object_set(extra, "quantization_config", (json_t *)quantization_config);
    if (!has_hop && cfg->is_nemotron_h)
        json_object_set_new(extra, "hybrid_override_pattern", json_string(cfg->pattern));
    if (!has_nhl && cfg->is_nemotron_h)
        json_object_set_new(extra, "num_hidden_layers", json_integer(cfg->num_layers));
    char *out = splice_keys(text, len, source_name, extra, out_len, err);
    json_decref(extra);
    return out;
}

char *nq_config_splice(const char *text, size_t len, const char *source_name, const json_t *keys,
                       size_t *out_len, nq_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        nq_fail(err, "%s: not a JSON object", source_name);
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)keys, k, v)
    {
        if (json_object_get(root, k)) {
            json_decref(root);
            nq_fail(err, "%s: already has a key '%s'", source_name, k);
            return NULL;
        }
    }
    json_decref(root);
    return splice_keys(text, len, source_name, keys, out_len, err);
}

char *nq_config_set_string(const char *text, size_t len, const char *source_name, const char *key,
                           const char *value, size_t *out_len, nq_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        nq_fail(err, "%s: not a JSON object", source_name);
        return NULL;
    }
    json_t *old = json_object_get(root, key);
    bool present = old != NULL, is_string = json_is_string(old);
    json_decref(root);
    if (!present) {
        json_t *keys = json_pack("{s:s}", key, value);
        char *out = keys ? nq_config_splice(text, len, source_name, keys, out_len, err) : NULL;
        if (!keys)
            nq_fail(err, "out of memory");
        json_decref(keys);
        return out;
    }
    if (!is_string) {
        nq_fail(err, "%s: '%s' is not a string", source_name, key);
        return NULL;
    }
    /* Replace the value's text in place: the one `"key"` followed by ':' and
     * a string.  A second occurrence (a nested object using the same name)
     * would make the spot ambiguous: refused. */
    char quoted[128];
    int ql = snprintf(quoted, sizeof quoted, "\"%s\"", key);
    if (ql < 0 || (size_t)ql >= sizeof quoted) {
        nq_fail(err, "%s: key too long", source_name);
        return NULL;
    }
    size_t vstart = 0, vend = 0;
    int found = 0;
    for (size_t i = 0; i + (size_t)ql <= len; i++) {
        if (memcmp(text + i, quoted, (size_t)ql) != 0)
            continue;
        size_t j = i + (size_t)ql;
        while (j < len && strchr(" \t\r\n", text[j]))
            j++;
        if (j >= len || text[j] != ':')
            continue;
        j++;
        while (j < len && strchr(" \t\r\n", text[j]))
            j++;
        if (j >= len || text[j] != '"')
            continue;
        size_t k = j + 1;
        while (k < len && text[k] != '"')
            k += text[k] == '\\' ? 2 : 1;
        if (k >= len)
            continue;
        found++;
        vstart = j;
        vend = k + 1;
    }
    if (found != 1) {
        nq_fail(err, "%s: cannot locate the value of '%s' unambiguously", source_name, key);
        return NULL;
    }
    json_t *vs = json_string(value);
    char *enc = vs ? json_dumps(vs, JSON_ENCODE_ANY) : NULL;
    json_decref(vs);
    char *out = enc ? malloc(len - (vend - vstart) + strlen(enc) + 1) : NULL;
    if (!out) {
        free(enc);
        nq_fail(err, "out of memory");
        return NULL;
    }
    size_t el = strlen(enc);
    memcpy(out, text, vstart);
    memcpy(out + vstart, enc, el);
    memcpy(out + vstart + el, text + vend, len - vend);
    *out_len = len - (vend - vstart) + el;
    free(enc);
    /* the result must parse and carry the new value */
    json_t *check = json_loadb(out, *out_len, 0, &jerr);
    const char *got = json_string_value(json_object_get(check, key));
    bool ok = got && strcmp(got, value) == 0;
    json_decref(check);
    if (!ok) {
        free(out);
        nq_fail(err, "%s: could not rewrite '%s'", source_name, key);
        return NULL;
    }
    return out;
}

json_t *nq_quantized_layers_entry(const json_t *layers, const char *module)
{
    json_t *e = json_object_get(layers, module);
    if (e || !layers)
        return e;
    const char *x = strstr(module, ".experts.");
    if (!x)
        return NULL;
    size_t len = (size_t)(x - module) + strlen(".experts");
    char key[512];
    if (len >= sizeof key)
        return NULL;
    memcpy(key, module, len);
    key[len] = '\0';
    return json_object_get(layers, key);
}
