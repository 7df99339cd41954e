#include "io/adapter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"

/* ---- regular expressions ------------------------------------------------- */

/* Python's re and PCRE2 agree on the syntax PEFT configs use (classes,
 * groups, alternation, quantifiers, escapes). */
int nq_regex_fullmatch(const char *pattern, const char *s, nq_error *err)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_ANCHORED | PCRE2_ENDANCHORED, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return nq_fail(err, "regular expression '%s': %s at offset %zu", pattern, (char *)msg,
                       (size_t)off);
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) : -1;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    if (!md)
        return nq_fail(err, "out of memory matching '%s'", pattern);
    return rc >= 0 ? 1 : 0;
}

static int wrapped_match(const char *prefix, const char *pattern, const char *suffix,
                         const char *s, nq_error *err)
{
    size_t n = strlen(prefix) + strlen(pattern) + strlen(suffix) + 1;
    char *p = malloc(n);
    if (!p)
        return nq_fail(err, "out of memory");
    snprintf(p, n, "%s%s%s", prefix, pattern, suffix);
    int rc = nq_regex_fullmatch(p, s, err);
    free(p);
    return rc;
}

static bool ends_with_dot(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a > b && s[a - b - 1] == '.' && strcmp(s + a - b, tail) == 0;
}

/* ---- PEFT's selection rules ---------------------------------------------- */

/* The layer index PEFT reads from a module name, or -1. */
static int layer_index(const nq_adapter *a, const char *module)
{
    if (a->nlayers_pattern == 0) {
        /* r".*?\.[^.]*\.(?P<idx>\d+)\." : the first segment after the
         * first dot-separated segment pair that is all digits and followed
         * by a dot */
        const char *p = strchr(module, '.');
        while (p) {
            const char *seg = p + 1;
            const char *dot = strchr(seg, '.');
            if (!dot)
                return -1;
            /* seg..dot is [^.]*; the index follows it */
            const char *d = dot + 1;
            const char *e = d;
            while (*e >= '0' && *e <= '9')
                e++;
            if (e > d && *e == '.')
                return atoi(d);
            p = dot;
        }
        return -1;
    }
    for (size_t i = 0; i < a->nlayers_pattern; i++) {
        /* r"(?:^|.*?\.)PATTERN\.(?P<idx>\d+)\." with the lazy prefix: the
         * leftmost occurrence */
        const char *pat = a->layers_pattern[i];
        size_t pl = strlen(pat);
        for (const char *p = module; *p; p++) {
            if (p != module && p[-1] != '.')
                continue;
            if (strncmp(p, pat, pl) != 0 || p[pl] != '.')
                continue;
            const char *d = p + pl + 1, *e = d;
            while (*e >= '0' && *e <= '9')
                e++;
            if (e > d && *e == '.')
                return atoi(d);
        }
    }
    return -1;
}

int nq_adapter_selects(nq_adapter *a, const char *module, nq_error *err)
{
    if (a->exclude_regex) {
        int m = nq_regex_fullmatch(a->exclude_regex, module, err);
        if (m != 0)
            return m < 0 ? -1 : 0;
    }
    for (size_t i = 0; i < a->nexclude; i++)
        if (strcmp(module, a->exclude[i]) == 0 || ends_with_dot(module, a->exclude[i]))
            return 0;
    if (a->target_regex)
        return nq_regex_fullmatch(a->target_regex, module, err);
    bool found = false;
    for (size_t i = 0; i < a->ntargets && !found; i++) {
        if (strcmp(module, a->targets[i]) == 0)
            return 1; /* named exactly: layers_to_transform does not apply */
        found = ends_with_dot(module, a->targets[i]);
    }
    if (!found || !a->layers)
        return found;
    int l = layer_index(a, module);
    for (size_t i = 0; l >= 0 && i < a->nlayers; i++)
        if (a->layers[i] == l)
            return 1;
    return 0;
}

bool nq_adapter_selects_parameter(const nq_adapter *a, const char *key)
{
    for (size_t i = 0; i < a->ntarget_parameters; i++)
        if (strcmp(key, a->target_parameters[i]) == 0 || ends_with_dot(key, a->target_parameters[i]))
            return true;
    return false;
}

int nq_adapter_saves(nq_adapter *a, const char *key, nq_error *err)
{
    for (size_t i = 0; i < a->nmodules_to_save; i++) {
        int m = wrapped_match("(^|.*\\.)", a->modules_to_save[i], "($|\\..*)", key, err);
        if (m != 0)
            return m;
    }
    return 0;
}

static int pattern_lookup(const nq_pattern_value *pv, size_t n, const char *module,
                          double *value, nq_error *err)
{
    for (size_t i = 0; i < n; i++) {
        int m = wrapped_match("(.*\\.)?(", pv[i].key, ")", module, err);
        if (m < 0)
            return -1;
        if (m) {
            *value = pv[i].value;
            return 1;
        }
    }
    return 0;
}

int nq_adapter_rank_alpha(nq_adapter *a, const char *module, int *r, double *alpha,
                          nq_error *err)
{
    double v;
    *r = a->r;
    *alpha = a->alpha;
    int m = pattern_lookup(a->rank_pattern, a->nrank_pattern, module, &v, err);
    if (m < 0)
        return -1;
    if (m)
        *r = (int)v;
    m = pattern_lookup(a->alpha_pattern, a->nalpha_pattern, module, &v, err);
    if (m < 0)
        return -1;
    if (m)
        *alpha = v;
    return 0;
}

double nq_adapter_scaling(const nq_adapter *a, int r, double alpha)
{
    return a->use_rslora ? alpha / sqrt((double)r) : alpha / (double)r;
}

/* ---- adapter_config.json --------------------------------------------------- */

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void nq_adapter_close(nq_adapter *a)
{
    if (!a)
        return;
    free(a->dir);
    free(a->base_model);
    free(a->bias);
    free_strings(a->targets, a->ntargets);
    free(a->target_regex);
    free_strings(a->exclude, a->nexclude);
    free(a->exclude_regex);
    free_strings(a->target_parameters, a->ntarget_parameters);
    free_strings(a->modules_to_save, a->nmodules_to_save);
    free(a->layers);
    free_strings(a->layers_pattern, a->nlayers_pattern);
    for (size_t i = 0; i < a->nrank_pattern; i++)
        free(a->rank_pattern[i].key);
    free(a->rank_pattern);
    for (size_t i = 0; i < a->nalpha_pattern; i++)
        free(a->alpha_pattern[i].key);
    free(a->alpha_pattern);
    nq_checkpoint_close(a->tensors);
    free(a);
}

/* A string or a list of strings (or null).  *regex gets a lone string when
 * `string_is_regex`, else the string becomes a one-entry list. */
static int string_list(const char *path, const char *field, json_t *v, bool string_is_regex,
                       char ***out, size_t *n, char **regex, nq_error *err)
{
    *out = NULL;
    *n = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v) && string_is_regex) {
        if (!(*regex = strdup(json_string_value(v))))
            return nq_fail(err, "out of memory");
        return 0;
    }
    json_t *arr = v;
    bool single = json_is_string(v);
    if (!single && !json_is_array(v))
        return nq_fail(err, "%s: %s: expected a string or a list of strings", path, field);
    size_t count = single ? 1 : json_array_size(arr);
    *out = calloc(count ? count : 1, sizeof **out);
    if (!*out)
        return nq_fail(err, "out of memory");
    for (size_t i = 0; i < count; i++) {
        json_t *s = single ? v : json_array_get(arr, i);
        if (!json_is_string(s))
            return nq_fail(err, "%s: %s[%zu]: expected a string", path, field, i);
        if (!((*out)[i] = strdup(json_string_value(s))))
            return nq_fail(err, "out of memory");
        *n = i + 1;
    }
    return 0;
}

static int pattern_map(const char *path, const char *field, json_t *v, bool integer,
                       nq_pattern_value **out, size_t *n, nq_error *err)
{
    *out = NULL;
    *n = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return nq_fail(err, "%s: %s: expected an object", path, field);
    *out = calloc(json_object_size(v) + 1, sizeof **out);
    if (!*out)
        return nq_fail(err, "out of memory");
    const char *k;
    json_t *x;
    /* jansson iterates objects in file order, which is the order Python's
     * json.load gives PEFT's dict and so the order get_pattern_key tries */
    json_object_foreach(v, k, x) {
        if (!json_is_number(x) || (integer && !json_is_integer(x)) || json_number_value(x) <= 0)
            return nq_fail(err, "%s: %s['%s']: expected a positive %s", path, field, k,
                           integer ? "integer" : "number");
        if (!((*out)[*n].key = strdup(k)))
            return nq_fail(err, "out of memory");
        (*out)[(*n)++].value = json_number_value(x);
    }
    return 0;
}

static bool truthy(json_t *v)
{
    return v && !json_is_null(v) && !json_is_false(v) &&
           !(json_is_string(v) && json_string_length(v) == 0) &&
           !(json_is_object(v) && json_object_size(v) == 0) &&
           !(json_is_array(v) && json_array_size(v) == 0);
}

static int parse_config(nq_adapter *a, const char *path, json_t *c, nq_error *err)
{
    if (!json_is_object(c))
        return nq_fail(err, "%s: not a JSON object", path);
    json_t *pt = json_object_get(c, "peft_type");
    if (pt && (!json_is_string(pt) || strcmp(json_string_value(pt), "LORA") != 0))
        return nq_fail(err, "%s: peft_type %s: nemoq merges LoRA adapters only", path,
                       json_is_string(pt) ? json_string_value(pt) : "(not a string)");
    json_t *r = json_object_get(c, "r"), *al = json_object_get(c, "lora_alpha");
    if (!json_is_integer(r) || json_integer_value(r) <= 0 || json_integer_value(r) > 65536)
        return nq_fail(err, "%s: r: expected a positive integer", path);
    if (!json_is_number(al))
        return nq_fail(err, "%s: lora_alpha: expected a number", path);
    a->r = (int)json_integer_value(r);
    a->alpha = json_number_value(al);
    a->use_rslora = json_is_true(json_object_get(c, "use_rslora"));
    a->use_dora = json_is_true(json_object_get(c, "use_dora"));
    a->fan_in_fan_out = json_is_true(json_object_get(c, "fan_in_fan_out"));
    a->lora_bias = json_is_true(json_object_get(c, "lora_bias"));
    json_t *b = json_object_get(c, "bias");
    a->bias = strdup(json_is_string(b) ? json_string_value(b) : "none");
    json_t *bm = json_object_get(c, "base_model_name_or_path");
    if (json_is_string(bm) && json_string_length(bm) > 0)
        a->base_model = strdup(json_string_value(bm));
    if (!a->bias)
        return nq_fail(err, "out of memory");
    if (strcmp(a->bias, "none") && strcmp(a->bias, "all") && strcmp(a->bias, "lora_only"))
        return nq_fail(err, "%s: bias '%s': expected none, all or lora_only", path, a->bias);

    /* options whose adapters cannot be merged by W += s.B.A (and friends) */
    static const char *unsupported[] = {
        "layer_replication", "trainable_token_indices", "use_qalora", "use_bdlora",
        "arrow_config", "velora_config", "kasa_config", "alora_invocation_tokens",
        "monteclora_config"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
        if (truthy(json_object_get(c, unsupported[i])))
            return nq_fail(err, "%s: %s is set: nemoq cannot merge this LoRA variant", path,
                           unsupported[i]);
    json_t *init = json_object_get(c, "init_lora_weights");
    if (json_is_string(init)) {
        const char *s = json_string_value(init);
        if (strncmp(s, "pissa", 5) == 0 || strncmp(s, "corda", 5) == 0 ||
            strcmp(s, "olora") == 0)
            return nq_fail(err, "%s: init_lora_weights '%s' changes the base weights during "
                                "training: convert the adapter first (PEFT's save_pretrained with "
                                "path_initial_model_for_weight_conversion)", path, s);
    }

    if (string_list(path, "target_modules", json_object_get(c, "target_modules"), true,
                    &a->targets, &a->ntargets, &a->target_regex, err) != 0 ||
        string_list(path, "exclude_modules", json_object_get(c, "exclude_modules"), true,
                    &a->exclude, &a->nexclude, &a->exclude_regex, err) != 0 ||
        string_list(path, "target_parameters", json_object_get(c, "target_parameters"), false,
                    &a->target_parameters, &a->ntarget_parameters, NULL, err) != 0 ||
        string_list(path, "modules_to_save", json_object_get(c, "modules_to_save"), false,
                    &a->modules_to_save, &a->nmodules_to_save, NULL, err) != 0 ||
        string_list(path, "layers_pattern", json_object_get(c, "layers_pattern"), false,
                    &a->layers_pattern, &a->nlayers_pattern, NULL, err) != 0 ||
        pattern_map(path, "rank_pattern", json_object_get(c, "rank_pattern"), true,
                    &a->rank_pattern, &a->nrank_pattern, err) != 0 ||
        pattern_map(path, "alpha_pattern", json_object_get(c, "alpha_pattern"), false,
                    &a->alpha_pattern, &a->nalpha_pattern, err) != 0)
        return -1;
    json_t *lt = json_object_get(c, "layers_to_transform");
    if (json_is_integer(lt) || (json_is_array(lt) && json_array_size(lt) > 0)) {
        size_t n = json_is_integer(lt) ? 1 : json_array_size(lt);
        if (!(a->layers = calloc(n, sizeof *a->layers)))
            return nq_fail(err, "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *x = json_is_integer(lt) ? lt : json_array_get(lt, i);
            if (!json_is_integer(x) || json_integer_value(x) < 0)
                return nq_fail(err, "%s: layers_to_transform: expected layer indices", path);
            a->layers[i] = (int)json_integer_value(x);
        }
        a->nlayers = n;
    } else if (lt && !json_is_null(lt) && !json_is_array(lt)) {
        return nq_fail(err, "%s: layers_to_transform: expected an integer or a list", path);
    }
    if (!a->targets && !a->target_regex && !a->target_parameters && !a->modules_to_save)
        return nq_fail(err, "%s: neither target_modules nor target_parameters is set", path);
    return 0;
}

nq_adapter *nq_adapter_open(const char *dir, nq_error *err)
{
    char path[4096], weights[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    snprintf(weights, sizeof weights, "%s/adapter_model.safetensors", dir);
    if (stat(weights, &st) != 0) {
        char bin[4096];
        snprintf(bin, sizeof bin, "%s/adapter_model.bin", dir);
        if (stat(bin, &st) == 0)
            nq_fail(err, "%s: a pickle (nemoq never unpickles); convert it once with: python -c "
                         "\"import torch, safetensors.torch as s; s.save_file(torch.load('%s', "
                         "weights_only=True), '%s')\"",
                    bin, bin, weights);
        else
            nq_fail(err, "%s: no adapter_model.safetensors (is this a PEFT adapter directory?)",
                    dir);
        return NULL;
    }
    size_t len;
    char *text = nq_read_file(path, &len, err);
    if (!text)
        return NULL;
    json_error_t jerr;
    json_t *c = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!c) {
        nq_fail(err, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
        return NULL;
    }
    nq_adapter *a = calloc(1, sizeof *a);
    if (!a || !(a->dir = strdup(dir))) {
        free(a);
        json_decref(c);
        nq_fail(err, "out of memory");
        return NULL;
    }
    int rc = parse_config(a, path, c, err);
    json_decref(c);
    if (rc == 0 && !(a->tensors = nq_checkpoint_open(weights, err)))
        rc = -1;
    if (rc != 0) {
        nq_adapter_close(a);
        return NULL;
    }
    return a;
}
