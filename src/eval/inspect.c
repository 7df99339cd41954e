#include "eval/inspect.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "export/metadata.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/roles.h"

typedef struct tally {
    long long tensors, parameters, bytes;
} tally;

static json_t *tally_json(const tally *t)
{
    return json_pack("{s:I, s:I, s:I}", "tensors", (json_int_t)t->tensors, "parameters",
                     (json_int_t)t->parameters, "bytes", (json_int_t)t->bytes);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The module name of a tensor: its name without the last component. */
static void module_of(const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s", name);
    char *dot = strrchr(buf, '.');
    if (dot)
        *dot = '\0';
}

/* Logical parameter count of a stored tensor: packed quantized weights hold
 * several parameters per stored element. */
static long long logical_params(const nq_checkpoint *ck, const nq_tensor *t, int gptq_bits)
{
    if (ends_with(t->name, ".qweight") && t->dtype == NQ_I32)
        return (long long)t->numel * (32 / gptq_bits);
    if (ends_with(t->name, ".weight") && t->dtype == NQ_U8) {
        char module[1024], scale[1100];
        module_of(t->name, module, sizeof module);
        snprintf(scale, sizeof scale, "%s.weight_scale", module);
        const nq_tensor *s = nq_checkpoint_find(ck, scale);
        if (s && s->dtype == NQ_F8_E4M3)
            return (long long)t->numel * 2; /* NVFP4: two E2M1 codes a byte */
    }
    return (long long)t->numel;
}

static json_t *load_json_file(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return json_load_file(path, JSON_ALLOW_NUL, NULL); /* see export/metadata.h */
}

/* Declared quantization (hf_quant_config.json, config.json's
 * quantization_config, quantize_config.json) plus what the tensors show. */
static json_t *describe_quantization(const nq_checkpoint *ck, const char *dir, json_t *config,
                                     int *gptq_bits)
{
    json_t *q = json_object();
    json_t *hf = load_json_file(dir, "hf_quant_config.json");
    json_t *qc = config ? json_object_get(config, "quantization_config") : NULL;
    json_t *gq = load_json_file(dir, "quantize_config.json");
    *gptq_bits = 4;
    const char *layout = NULL;
    nq_modelopt_decl d;
    bool from_hf = nq_modelopt_decl_read(hf, &d);
    if (from_hf || nq_modelopt_decl_read(qc, &d)) {
        /* ModelOpt: hf_quant_config.json, else config.json's
         * quantization_config in the nested or the flat (0.47) form */
        layout = "modelopt";
        json_object_set_new(q, "source", json_string(from_hf ? "hf_quant_config.json"
                                                     : d.flat ? "config.json quantization_config (flat)"
                                                              : "config.json quantization_config"));
        if (json_is_object(d.producer))
            json_object_set(q, "producer", d.producer);
        if (d.quant_algo)
            json_object_set_new(q, "quant_algo", json_string(d.quant_algo));
        json_object_set_new(q, "kv_cache_quant_algo",
                            d.kv_cache_quant_algo ? json_string(d.kv_cache_quant_algo) : json_null());
        if (d.group_size)
            json_object_set_new(q, "group_size", json_integer(d.group_size));
        if (json_is_array(d.exclude)) {
            json_int_t wild = 0;
            json_t *corrupt = json_array();
            size_t i;
            json_t *v;
            json_array_foreach(d.exclude, i, v)
            {
                char intended[512];
                if (nq_exclude_entry_corrupt(v, intended, sizeof intended))
                    json_array_append_new(corrupt, json_string(intended));
                else if (json_string_value(v) && strpbrk(json_string_value(v), "*?["))
                    wild++;
            }
            json_object_set_new(q, "exclude_modules", json_integer((json_int_t)json_array_size(d.exclude)));
            json_object_set_new(q, "exclude_wildcards", json_integer(wild));
            /* ModelOpt 0.47 bug (export/metadata.h): the names these entries
             * were meant to be; as written they exclude nothing */
            if (json_array_size(corrupt))
                json_object_set_new(q, "exclude_corrupted", corrupt);
            else
                json_decref(corrupt);
        }
    } else if (json_is_object(qc)) {
        const char *method = json_string_value(json_object_get(qc, "quant_method"));
        layout = method ? method : "unknown";
        json_object_set_new(q, "source", json_string("config.json quantization_config"));
        const char *keys[] = {"quant_algo", "kv_cache_quant_algo", "bits", "group_size", "desc_act",
                              "sym", "checkpoint_format"};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            json_t *v = json_object_get(qc, keys[i]);
            if (v)
                json_object_set(q, keys[i], v);
        }
        if (json_is_integer(json_object_get(qc, "bits")))
            *gptq_bits = (int)json_integer_value(json_object_get(qc, "bits"));
    } else if (json_is_object(gq)) {
        layout = "gptq";
        json_object_set_new(q, "source", json_string("quantize_config.json"));
        const char *keys[] = {"bits", "group_size", "desc_act", "sym", "checkpoint_format"};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            json_t *v = json_object_get(gq, keys[i]);
            if (v)
                json_object_set(q, keys[i], v);
        }
        if (json_is_integer(json_object_get(gq, "bits")))
            *gptq_bits = (int)json_integer_value(json_object_get(gq, "bits"));
    }
    if (*gptq_bits < 1 || *gptq_bits > 32 || 32 % *gptq_bits != 0)
        *gptq_bits = 4;
    long long nvfp4 = 0, fp8 = 0, gptq = 0;
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        if (ends_with(t->name, ".weight_scale_2"))
            nvfp4++;
        else if (ends_with(t->name, ".qweight"))
            gptq++;
        else if (ends_with(t->name, ".weight") && t->dtype == NQ_F8_E4M3)
            fp8++;
    }
    json_object_set_new(q, "nvfp4_modules", json_integer(nvfp4));
    json_object_set_new(q, "fp8_modules", json_integer(fp8));
    json_object_set_new(q, "gptq_modules", json_integer(gptq));
    bool quantized = layout != NULL || nvfp4 || fp8 || gptq;
    if (!layout && quantized)
        layout = nvfp4 || fp8 ? "modelopt (undeclared)" : "gptq (undeclared)";
    json_object_set_new(q, "quantized", json_boolean(quantized));
    if (layout)
        json_object_set_new(q, "layout", json_string(layout));
    json_decref(hf);
    json_decref(gq);
    return q;
}

json_t *nq_inspect(const char *path, nq_error *err)
{
    nq_checkpoint *ck = nq_checkpoint_open(path, err);
    if (!ck)
        return NULL;
    const char *dir = nq_checkpoint_dir(ck);
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    nq_model_config cfg;
    bool have_cfg = false;
    struct stat st;
    if (stat(cfg_path, &st) == 0) {
        if (nq_model_config_load(cfg_path, &cfg, err) != 0) {
            nq_checkpoint_close(ck);
            return NULL;
        }
        have_cfg = true;
    }
    json_t *config_json = have_cfg ? json_load_file(cfg_path, JSON_ALLOW_NUL, NULL) : NULL;
    int gptq_bits = 4;
    json_t *quant = describe_quantization(ck, dir, config_json, &gptq_bits);
    json_decref(config_json);

    tally roles[NQ_ROLE_COUNT] = {0};
    tally dtypes[NQ_DTYPE_COUNT] = {0};
    int nlayers = have_cfg && cfg.is_nemotron_h ? cfg.num_layers : 0;
    int max_layer = -1;
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        int l = nq_layer_of(nq_checkpoint_tensor(ck, i)->name);
        if (l > max_layer)
            max_layer = l;
    }
    if (max_layer + 1 > nlayers)
        nlayers = max_layer + 1;
    tally *layers = calloc((size_t)nlayers + 1, sizeof *layers);
    unsigned *layer_dtypes = calloc((size_t)nlayers + 1, sizeof *layer_dtypes);
    /* experts per MoE layer, counted from the tensors themselves */
    int *experts = calloc((size_t)nlayers + 1, sizeof *experts);
    long long params = 0, buffers = 0, quant_meta = 0, bytes = 0;
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        long long p = 0;
        if (nq_is_buffer(t->name))
            buffers += (long long)t->numel;
        else if (nq_is_quant_companion(t->name))
            quant_meta += (long long)t->numel;
        else
            p = logical_params(ck, t, gptq_bits);
        params += p;
        bytes += (long long)t->nbytes;
        nq_role r = nq_role_of(have_cfg ? &cfg : NULL, t->name);
        roles[r].tensors++;
        roles[r].parameters += p;
        roles[r].bytes += (long long)t->nbytes;
        dtypes[t->dtype].tensors++;
        dtypes[t->dtype].parameters += p;
        dtypes[t->dtype].bytes += (long long)t->nbytes;
        int l = nq_layer_of(t->name);
        if (l >= 0) {
            layers[l].tensors++;
            layers[l].parameters += p;
            layers[l].bytes += (long long)t->nbytes;
            layer_dtypes[l] |= 1u << t->dtype;
            const char *e = strstr(t->name, ".mixer.experts.");
            if (e) {
                int idx = atoi(e + strlen(".mixer.experts."));
                if (idx + 1 > experts[l])
                    experts[l] = idx + 1;
            }
        }
    }

    json_t *doc = json_object();
    json_object_set_new(doc, "path", json_string(path));
    json_object_set_new(doc, "model_type", json_string(have_cfg ? cfg.model_type : "unknown"));
    if (have_cfg && cfg.is_nemotron_h) {
        json_object_set_new(doc, "pattern", json_string(cfg.pattern));
        json_object_set_new(doc, "num_layers", json_integer(cfg.num_layers));
        json_t *counts = json_object();
        const nq_block_kind kinds[] = {NQ_BLOCK_MAMBA, NQ_BLOCK_MOE, NQ_BLOCK_ATTENTION, NQ_BLOCK_MLP};
        for (int k = 0; k < 4; k++)
            json_object_set_new(counts, nq_block_kind_name(kinds[k]),
                                json_integer(nq_model_config_count(&cfg, kinds[k])));
        json_object_set_new(doc, "block_counts", counts);
        json_object_set_new(doc, "hidden_size", json_integer(cfg.hidden_size));
        json_object_set_new(doc, "vocab_size", json_integer(cfg.vocab_size));
        if (nq_model_config_count(&cfg, NQ_BLOCK_MOE)) {
            json_object_set_new(doc, "routed_experts_per_moe_layer", json_integer(cfg.n_routed_experts));
            json_object_set_new(doc, "experts_per_token", json_integer(cfg.num_experts_per_tok));
            json_object_set_new(doc, "shared_experts", json_integer(cfg.n_shared_experts));
        }
    }
    json_object_set_new(doc, "shards", json_integer(nq_checkpoint_shard_count(ck)));
    json_object_set_new(doc, "tensors", json_integer((json_int_t)nq_checkpoint_count(ck)));
    json_object_set_new(doc, "parameters", json_integer(params));
    json_object_set_new(doc, "buffer_elements", json_integer(buffers));
    json_object_set_new(doc, "quantization_metadata_elements", json_integer(quant_meta));
    json_object_set_new(doc, "tensor_bytes", json_integer(bytes));
    json_t *jr = json_object();
    for (int r = 0; r < NQ_ROLE_COUNT; r++)
        if (roles[r].tensors)
            json_object_set_new(jr, nq_role_name((nq_role)r), tally_json(&roles[r]));
    json_object_set_new(doc, "roles", jr);
    json_t *jd = json_object();
    for (int d = 0; d < NQ_DTYPE_COUNT; d++)
        if (dtypes[d].tensors)
            json_object_set_new(jd, nq_dtype_name((nq_dtype)d), tally_json(&dtypes[d]));
    json_object_set_new(doc, "dtypes", jd);
    json_t *jl = json_array();
    for (int l = 0; l < nlayers; l++) {
        json_t *row = tally_json(&layers[l]);
        json_object_set_new(row, "index", json_integer(l));
        bool known = have_cfg && cfg.is_nemotron_h && l < cfg.num_layers;
        json_object_set_new(row, "kind",
                            json_string(known ? nq_block_kind_name((nq_block_kind)cfg.pattern[l])
                                              : "unknown"));
        if (experts[l])
            json_object_set_new(row, "routed_experts", json_integer(experts[l]));
        json_t *ds = json_array();
        for (int d = 0; d < NQ_DTYPE_COUNT; d++)
            if (layer_dtypes[l] & (1u << d))
                json_array_append_new(ds, json_string(nq_dtype_name((nq_dtype)d)));
        json_object_set_new(row, "dtypes", ds);
        json_array_append_new(jl, row);
    }
    json_object_set_new(doc, "layers", jl);
    json_object_set_new(doc, "quantization", quant);
    free(layers);
    free(layer_dtypes);
    free(experts);
    nq_checkpoint_close(ck);
    return doc;
}

static void print_count(FILE *out, long long v)
{
    /* 13454840 -> 13,454,840 */
    char digits[32], buf[48];
    snprintf(digits, sizeof digits, "%lld", v < 0 ? -v : v);
    size_t n = strlen(digits), j = 0;
    if (v < 0)
        buf[j++] = '-';
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            buf[j++] = ',';
        buf[j++] = digits[i];
    }
    buf[j] = '\0';
    fputs(buf, out);
}

static long long geti(const json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

void nq_inspect_print(FILE *out, const json_t *doc)
{
    fprintf(out, "checkpoint  %s\n", json_string_value(json_object_get(doc, "path")));
    fprintf(out, "model type  %s\n", json_string_value(json_object_get(doc, "model_type")));
    const char *pattern = json_string_value(json_object_get(doc, "pattern"));
    if (pattern) {
        json_t *c = json_object_get(doc, "block_counts");
        fprintf(out, "pattern     %s (%lld layers: %lld mamba, %lld moe, %lld attention, %lld mlp)\n",
                pattern, geti(doc, "num_layers"), geti(c, "mamba"), geti(c, "moe"),
                geti(c, "attention"), geti(c, "mlp"));
        fprintf(out, "hidden      %lld, vocab %lld\n", geti(doc, "hidden_size"), geti(doc, "vocab_size"));
        if (json_object_get(doc, "routed_experts_per_moe_layer"))
            fprintf(out, "experts     %lld routed per MoE layer (top-%lld) + %lld shared\n",
                    geti(doc, "routed_experts_per_moe_layer"), geti(doc, "experts_per_token"),
                    geti(doc, "shared_experts"));
    }
    fprintf(out, "tensors     ");
    print_count(out, geti(doc, "tensors"));
    fprintf(out, " in %lld shard(s), ", geti(doc, "shards"));
    print_count(out, geti(doc, "tensor_bytes"));
    fprintf(out, " bytes\nparameters  ");
    print_count(out, geti(doc, "parameters"));
    fprintf(out, " (+ %lld buffer elements, %lld quantization-metadata elements)\n",
            geti(doc, "buffer_elements"), geti(doc, "quantization_metadata_elements"));

    json_t *q = json_object_get(doc, "quantization");
    if (json_is_true(json_object_get(q, "quantized"))) {
        fprintf(out, "quantized   yes: %s", json_string_value(json_object_get(q, "layout")));
        const char *algo = json_string_value(json_object_get(q, "quant_algo"));
        if (algo)
            fprintf(out, ", quant_algo %s", algo);
        const char *kv = json_string_value(json_object_get(q, "kv_cache_quant_algo"));
        if (kv)
            fprintf(out, ", kv cache %s", kv);
        if (json_object_get(q, "bits"))
            fprintf(out, ", %lld bits", geti(q, "bits"));
        if (json_object_get(q, "group_size"))
            fprintf(out, ", group %lld", geti(q, "group_size"));
        fprintf(out, " (%lld NVFP4, %lld FP8, %lld GPTQ modules)\n", geti(q, "nvfp4_modules"),
                geti(q, "fp8_modules"), geti(q, "gptq_modules"));
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(q, "exclude_corrupted"), i, c)
        {
            fprintf(out, "warning     exclude entry for %s is corrupted by a ModelOpt 0.47 bug "
                         "(a NUL and the rest of its name sentinel appended): it excludes nothing\n",
                    json_string_value(c));
        }
    } else {
        fprintf(out, "quantized   no\n");
    }

    fprintf(out, "\n%-16s %8s %14s %16s\n", "role", "tensors", "parameters", "bytes");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)json_object_get(doc, "roles"), key, v)
    {
        fprintf(out, "%-16s %8lld %14lld %16lld\n", key, geti(v, "tensors"), geti(v, "parameters"),
                geti(v, "bytes"));
    }
    fprintf(out, "\n%-16s %8s %14s %16s\n", "dtype", "tensors", "parameters", "bytes");
    json_object_foreach((json_t *)json_object_get(doc, "dtypes"), key, v)
    {
        fprintf(out, "%-16s %8lld %14lld %16lld\n", key, geti(v, "tensors"), geti(v, "parameters"),
                geti(v, "bytes"));
    }
    json_t *layers = json_object_get(doc, "layers");
    if (json_array_size(layers)) {
        fprintf(out, "\n%5s %-10s %8s %8s %14s %14s  %s\n", "layer", "kind", "tensors", "experts",
                "parameters", "bytes", "dtypes");
        size_t i;
        json_array_foreach(layers, i, v)
        {
            char dts[128] = "";
            size_t j;
            json_t *d;
            json_array_foreach(json_object_get(v, "dtypes"), j, d)
            {
                if (j)
                    strncat(dts, ",", sizeof dts - strlen(dts) - 1);
                strncat(dts, json_string_value(d), sizeof dts - strlen(dts) - 1);
            }
            char ex[16] = "-";
            if (json_object_get(v, "routed_experts"))
                snprintf(ex, sizeof ex, "%lld", geti(v, "routed_experts"));
            fprintf(out, "%5lld %-10s %8lld %8s %14lld %14lld  %s\n", geti(v, "index"),
                    json_string_value(json_object_get(v, "kind")), geti(v, "tensors"), ex,
                    geti(v, "parameters"), geti(v, "bytes"), dts);
        }
    }
}
