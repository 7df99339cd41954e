#include "eval/verify.h"
#include "eval/verify_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "export/dequant.h"
#include "export/metadata.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/roles.h"

static const char *stored_name(nq_stored_format f)
{
    static const char *names[] = {"none", "float", "nvfp4", "fp8", "int4"};
    return names[f];
}

#define problem nq_verify_problem

void nq_verify_problem(FILE *out, nq_verify_result *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (out) {
        fputs("problem: ", out);
        vfprintf(out, fmt, ap);
        fputc('\n', out);
    }
    va_end(ap);
    res->problems++;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Module name of a weight-carrying tensor (".weight" or ".qweight"), else 0. */
static int weight_module(const char *name, char *module, size_t cap)
{
    const char *suffixes[] = {".qweight", ".weight"};
    for (int k = 0; k < 2; k++) {
        if (ends_with(name, suffixes[k])) {
            size_t n = strlen(name) - strlen(suffixes[k]);
            if (n >= cap)
                return 0;
            memcpy(module, name, n);
            module[n] = '\0';
            return 1;
        }
    }
    return 0;
}

static json_t *load_json(const char *dir, const char *file, FILE *out, nq_verify_result *res)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    /* JSON_ALLOW_NUL: ModelOpt 0.47 writes NUL characters into exclude
     * entries on NemotronH (nq_exclude_entry_corrupt) */
    json_error_t jerr;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    struct stat st;
    if (!j && stat(path, &st) == 0)
        problem(out, res, "%s: not valid JSON: %s (line %d)%s", path, jerr.text, jerr.line,
                strstr(jerr.text, "NUL byte in object key") ? NQ_MODELOPT_NUL_KEY_HINT : "");
    return j;
}

/* The first valid exclude entry that excludes `module` the way vLLM decides
 * it, or NULL. Routed experts are asked about as their layer's fused MoE
 * ("...mixer.experts"), as vLLM does. */
static const char *excluded_by(json_t *exclude, const char *module)
{
    char fused[512];
    const char *e = strstr(module, ".experts.");
    if (e && !strstr(module, "shared_experts"))
        snprintf(fused, sizeof fused, "%.*s.experts", (int)(e - module), module);
    size_t i;
    json_t *v;
    json_array_foreach(exclude, i, v)
    {
        const char *p = json_string_value(v);
        if (!p || nq_exclude_entry_corrupt(v, NULL, 0))
            continue;
        if (nq_exclude_matches(p, module) || (e && !strstr(module, "shared_experts") &&
                                                      nq_exclude_matches(p, fused)))
            return p;
    }
    return NULL;
}

/* The corrupted entry (ModelOpt bug) that was meant to exclude `module`, or
 * NULL; `intended` receives the name it was meant to be. */
static json_t *corrupt_entry_for(json_t *exclude, const char *module, char *intended, size_t cap)
{
    size_t i;
    json_t *v;
    json_array_foreach(exclude, i, v)
    {
        if (nq_exclude_entry_corrupt(v, intended, cap) &&
            nq_exclude_matches(intended, module))
            return v;
    }
    return NULL;
}

/* JSON-escaped form of a string entry (shows the NUL as \u0000). */
static char *entry_text(json_t *v)
{
    return json_dumps(v, JSON_ENCODE_ANY);
}

/* The largest relative error ||W - deq(Q)|| / ||W|| `verify --against`
 * accepts per format.  Measured on the bundled model (README, verify):
 * round-to-nearest gives at most 0.027 (FP8), 0.096 (NVFP4), 0.112 (INT4,
 * group 128); GPTQ, whose error feedback moves weights to lower the output
 * error, up to 0.30.  A source with other weights of the same scale gives
 * about sqrt(2) = 1.41, a zero or sign-flipped one 1 or 2.  The bounds sit
 * well above the first group and well below the second. */
static double rel_err_limit(nq_stored_format f)
{
    return f == NQ_STORED_FP8 ? 0.125 : 0.5;
}

/* Companion tensors that belong to a module of a given stored format. */
static bool companion_fits(const char *suffix, nq_stored_format f)
{
    if (f == NQ_STORED_NVFP4)
        return !strcmp(suffix, "weight_scale") || !strcmp(suffix, "weight_scale_2") ||
               !strcmp(suffix, "input_scale");
    if (f == NQ_STORED_FP8)
        return !strcmp(suffix, "weight_scale") || !strcmp(suffix, "input_scale");
    if (f == NQ_STORED_GPTQ)
        return !strcmp(suffix, "qzeros") || !strcmp(suffix, "scales") || !strcmp(suffix, "g_idx");
    return false;
}

static void check_scalar_scale(const nq_tensor *t, FILE *out, nq_verify_result *res)
{
    float v;
    nq_error e = {0};
    if (t->numel != 1 || t->dtype != NQ_F32 || nq_tensor_read_f32(t, 0, 1, &v, &e) != 0)
        problem(out, res, "%s: expected one F32 value, found %s with %llu elements", t->name,
                nq_dtype_name(t->dtype), (unsigned long long)t->numel);
    else if (!(isfinite(v) && v > 0))
        problem(out, res, "%s: scale %g is not finite and positive", t->name, v);
}

int nq_verify(const char *dir, const char *against, FILE *out, nq_verify_result *res,
              nq_error *err)
{
    memset(res, 0, sizeof *res);
    nq_checkpoint *ck = nq_checkpoint_open(dir, err);
    if (!ck)
        return -1;
    nq_checkpoint *src = NULL;
    if (against && !(src = nq_checkpoint_open(against, err))) {
        nq_checkpoint_close(ck);
        return -1;
    }
    nq_model_config cfg;
    nq_error cfg_err = {0};
    bool have_cfg = nq_model_config_load(dir, &cfg, &cfg_err) == 0;
    if (!have_cfg)
        problem(out, res, "%s", cfg_err.msg);
    json_t *hf = load_json(dir, "hf_quant_config.json", out, res);
    json_t *gq = load_json(dir, "quantize_config.json", out, res);
    json_t *config = load_json(dir, "config.json", out, res);
    /* hf_quant_config.json (nested form), else config.json's
     * quantization_config in either the nested or ModelOpt 0.47's flat form */
    nq_modelopt_decl decl;
    bool have_decl = nq_modelopt_decl_read(hf, &decl);
    if (!hf && nq_modelopt_decl_read(json_object_get(config, "quantization_config"), &decl)) {
        have_decl = true;
        hf = json_incref(json_object_get(config, "quantization_config"));
    }
    json_t *exclude = have_decl ? decl.exclude : NULL;
    json_t *layers = have_decl ? decl.quantized_layers : NULL;
    int group = (int)json_integer_value(json_object_get(gq, "group_size"));
    bool weights_only = json_is_true(json_object_get(json_object_get(hf, "nemoq"), "weights_only"));
    size_t missing_input_scales = 0;
    if (!hf && !gq)
        problem(out, res, "%s: neither hf_quant_config.json nor quantize_config.json: a loader "
                          "would read the weights as unquantized", dir);
    if (hf && !have_decl)
        problem(out, res, "hf_quant_config.json: no \"quantization\" object");
    /* entries ModelOpt 0.47 corrupts on NemotronH: named, and judged below by
     * what they fail to exclude */
    size_t ci;
    json_t *cv;
    json_array_foreach(exclude, ci, cv)
    {
        char intended[512];
        if (!nq_exclude_entry_corrupt(cv, intended, sizeof intended) || !out)
            continue;
        char *txt = entry_text(cv);
        fprintf(out, "warning: exclude entry %s is corrupted (a ModelOpt 0.47 bug: its reverse "
                     "name mapper renames \"model\" inside its own name sentinel); it matches no "
                     "module, so a loader does not exclude %s\n",
                txt ? txt : "?", intended);
        free(txt);
    }

    /* 1. every module: its stored form decodes and its metadata agrees */
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        char module[512];
        if (!weight_module(t->name, module, sizeof module))
            continue;
        nq_stored_format f = nq_stored_format_of(ck, module);
        if (f == NQ_STORED_FLOAT && t->ndim < 2)
            continue;
        res->modules_checked++;
        res->quantized[f]++;
        bool quantized = f == NQ_STORED_NVFP4 || f == NQ_STORED_FP8 || f == NQ_STORED_GPTQ;
        if (quantized) {
            int64_t rows, cols;
            nq_error e = {0};
            float *w = nq_decode_module(ck, module, group, &rows, &cols, &e);
            if (!w)
                problem(out, res, "%s", e.msg);
            free(w);
            char name[600];
            snprintf(name, sizeof name, "%s.input_scale", module);
            const nq_tensor *is = nq_checkpoint_find(ck, name);
            if (is)
                check_scalar_scale(is, out, res);
            const char *algo = have_decl ? decl.quant_algo : NULL;
            if ((f == NQ_STORED_NVFP4 || f == NQ_STORED_FP8) && !hf)
                problem(out, res, "%s is %s but there is no hf_quant_config.json", module,
                        stored_name(f));
            if (f == NQ_STORED_GPTQ && !gq)
                problem(out, res, "%s is GPTQ but there is no quantize_config.json", module);
            if (algo && f == NQ_STORED_NVFP4 && strstr(algo, "NVFP4") == NULL &&
                strcmp(algo, "MIXED_PRECISION") != 0)
                problem(out, res, "%s is NVFP4 but quant_algo is %s", module, algo);
            if (algo && f == NQ_STORED_FP8 && strcmp(algo, "FP8") != 0 &&
                strcmp(algo, "MIXED_PRECISION") != 0)
                problem(out, res, "%s is FP8 but quant_algo is %s", module, algo);
            bool needs_input_scale = algo && (strcmp(algo, "NVFP4") == 0 || strcmp(algo, "FP8") == 0);
            if (needs_input_scale && !is && weights_only)
                missing_input_scales++;
            else if (needs_input_scale && !is)
                problem(out, res, "%s: quant_algo %s needs an input_scale", module, algo);
            if (layers && !nq_quantized_layers_entry(layers, module))
                problem(out, res, "%s is quantized but missing from quantized_layers", module);
        } else if (f == NQ_STORED_FLOAT && hf && exclude && !excluded_by(exclude, module) &&
                   strcmp(module, "backbone.embeddings") != 0 && !ends_with(module, "embed_tokens")) {
            /* vLLM would create a quantized method for it and find no scales */
            nq_role r = nq_role_of(have_cfg ? &cfg : NULL, t->name);
            char intended[512];
            bool corrupt = corrupt_entry_for(exclude, module, intended, sizeof intended) != NULL;
            if (r == NQ_ROLE_EMBEDDINGS || r == NQ_ROLE_NORMS || r == NQ_ROLE_ROUTER ||
                r == NQ_ROLE_CONV1D)
                ; /* vLLM builds routers (GateLinear) and conv1d with no quant_config:
                   * they load unquantized whether listed or not (export-spec 1.5) */
            else if (corrupt && r == NQ_ROLE_LM_HEAD) {
                /* vLLM's ModelOpt configs give quantized methods only to
                 * LinearBase and FusedMoE layers; lm_head is a ParallelLMHead */
                if (out)
                    fprintf(out, "warning: %s is excluded only by a corrupted entry; vLLM still "
                                 "loads it unquantized (its ModelOpt configs never quantize "
                                 "lm_head)\n", module);
            } else if (corrupt)
                problem(out, res, "%s is stored unquantized and excluded only by a corrupted "
                                  "entry (ModelOpt bug): a loader would expect it quantized",
                        module);
            else
                problem(out, res, "%s is stored unquantized but not listed in exclude_modules",
                        module);
        }
    }
    if (missing_input_scales && out)
        fprintf(out, "warning: %zu modules have no input_scale: a --weights-only checkpoint, not "
                     "servable as W4A4/W8A8 until calibrated\n", missing_input_scales);
    /* every declared field against what is stored */
    nq_verify_declared(ck, dir, hf, gq, out, res);
    /* 2. excluded names must exist (quantized ones they cover: above) */
    size_t k;
    json_t *v;
    json_array_foreach(exclude, k, v)
    {
        const char *m = json_string_value(v);
        if (!m) {
            problem(out, res, "exclude_modules[%zu] is not a string", k);
            continue;
        }
        if (nq_exclude_entry_corrupt(v, NULL, 0))
            continue; /* reported above */
        if (strpbrk(m, "*?[")) {
            /* a wildcard: it must match some module, as ModelOpt's do */
            bool any = false;
            for (size_t i = 0; !any && i < nq_checkpoint_count(ck); i++) {
                char module[512];
                if (weight_module(nq_checkpoint_tensor(ck, i)->name, module, sizeof module))
                    any = nq_exclude_matches(m, module);
            }
            if (!any)
                problem(out, res, "exclude_modules entry %s matches no module of the checkpoint", m);
            continue;
        }
        nq_stored_format f = nq_stored_format_of(ck, m);
        if (f == NQ_STORED_NONE)
            problem(out, res, "exclude_modules names %s, which has no weight in the checkpoint", m);
    }
    /* 3. no orphan companions: each belongs to a module stored in a fitting format */
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        if (!nq_is_quant_companion(t->name))
            continue;
        const char *dot = strrchr(t->name, '.');
        char module[512];
        snprintf(module, sizeof module, "%.*s", (int)(dot - t->name), t->name);
        if (!strcmp(dot + 1, "k_scale") || !strcmp(dot + 1, "v_scale")) {
            check_scalar_scale(t, out, res);
            if (!have_decl || !decl.kv_cache_quant_algo)
                problem(out, res, "%s present but kv_cache_quant_algo is not set", t->name);
            continue;
        }
        if (!companion_fits(dot + 1, nq_stored_format_of(ck, module)))
            problem(out, res, "%s does not belong to a %s module", t->name,
                    stored_name(nq_stored_format_of(ck, module)));
    }

    /* 4. against the source: every tensor accounted for, errors per module */
    if (src) {
        if (out)
            fprintf(out, "%-60s %-6s %12s\n", "module", "format", "rel. error");
        for (size_t i = 0; i < nq_checkpoint_count(src); i++) {
            const nq_tensor *s = nq_checkpoint_tensor(src, i);
            const nq_tensor *o = nq_checkpoint_find(ck, s->name);
            char module[512];
            if (o && o->dtype == s->dtype && o->ndim == s->ndim &&
                memcmp(o->shape, s->shape, sizeof s->shape[0] * (size_t)s->ndim) == 0) {
                if (memcmp(o->data, s->data, s->nbytes) != 0)
                    problem(out, res, "%s is stored unquantized but differs from the source",
                            s->name);
                continue;
            }
            if (!weight_module(s->name, module, sizeof module)) {
                problem(out, res, "source tensor %s is missing from the output", s->name);
                continue;
            }
            nq_stored_format f = nq_stored_format_of(ck, module);
            if (f != NQ_STORED_NVFP4 && f != NQ_STORED_FP8 && f != NQ_STORED_GPTQ) {
                problem(out, res, "source tensor %s is missing from the output", s->name);
                continue;
            }
            int64_t rows, cols;
            nq_error e = {0};
            float *d = nq_decode_module(ck, module, group, &rows, &cols, &e);
            if (!d)
                continue; /* already reported in pass 1 */
            if (s->ndim != 2 || s->shape[0] != rows || s->shape[1] != cols) {
                problem(out, res, "%s: output holds [%lld, %lld], source is %s", module,
                        (long long)rows, (long long)cols, "a different shape");
                free(d);
                continue;
            }
            float *w = nq_tensor_load_f32(s, false, &e);
            if (!w) {
                free(d);
                problem(out, res, "%s", e.msg);
                continue;
            }
            double num = 0, den = 0;
            for (uint64_t j = 0; j < s->numel; j++) {
                double diff = (double)w[j] - d[j];
                num += diff * diff;
                den += (double)w[j] * w[j];
            }
            double rel = den > 0 ? sqrt(num / den) : sqrt(num);
            if (out)
                fprintf(out, "%-60s %-6s %12.6f\n", module, stored_name(f), rel);
            if (!isfinite(rel))
                problem(out, res, "%s: dequantized weight is not finite", module);
            else if (rel > rel_err_limit(f))
                problem(out, res, "%s: relative error %.4f against the source exceeds the %s "
                                  "bound %.3f: these are not the source's weights",
                        module, rel, stored_name(f), rel_err_limit(f));
            if (rel > res->worst_rel_err) {
                res->worst_rel_err = rel;
                snprintf(res->worst_module, sizeof res->worst_module, "%s", module);
            }
            free(w);
            free(d);
        }
        /* output tensors that are neither source tensors nor companions */
        for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
            const nq_tensor *t = nq_checkpoint_tensor(ck, i);
            char module[512];
            if (nq_checkpoint_find(src, t->name) || nq_is_quant_companion(t->name))
                continue;
            if (weight_module(t->name, module, sizeof module)) {
                char sname[600];
                snprintf(sname, sizeof sname, "%s.weight", module);
                if (nq_checkpoint_find(src, sname))
                    continue;
            }
            problem(out, res, "output tensor %s has no source", t->name);
        }
    }
    json_decref(hf);
    json_decref(gq);
    json_decref(config);
    nq_checkpoint_close(src);
    nq_checkpoint_close(ck);
    if (res->problems)
        return nq_fail(err, "%s: %zu problem(s) found", dir, res->problems);
    return 0;
}
