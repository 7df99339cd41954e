/* The output checkpoint pieces both quantize paths write (the weights-only
 * stream in quantize.c and the calibrated one in calibrated.c): which
 * tensors a quantized module stores, verbatim copies, and the metadata
 * files. Shared here so that quantize.c calls calibrated.c and neither calls
 * back. */
#include "export/output.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "export/lora.h"
#include "export/metadata.h"
#include "io/write_queue.h"

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

bool nq_is_auxiliary_file(const char *name)
{
    if (name[0] == '.')
        return false;
    static const char *replaced[] = {"config.json", "model.safetensors.index.json",
                                     "hf_quant_config.json", "quantize_config.json"};
    for (size_t i = 0; i < sizeof replaced / sizeof replaced[0]; i++)
        if (strcmp(name, replaced[i]) == 0)
            return false;
    return !ends_with(name, ".safetensors") && !ends_with(name, ".bin") &&
           !ends_with(name, ".pt") && !ends_with(name, ".pth");
}

/* The plan entry for a `.weight` tensor, or NULL. */
const nq_plan_module *nq_module_of_weight(const nq_plan *plan, const char *tensor)
{
    size_t n = strlen(tensor);
    if (n < 8 || strcmp(tensor + n - 7, ".weight") != 0 || n - 7 >= 256)
        return NULL;
    char module[256];
    memcpy(module, tensor, n - 7);
    module[n - 7] = '\0';
    return nq_plan_find(plan, module);
}

static int declare(nq_writer *w, const char *module, const char *suffix, nq_dtype dt, int ndim,
                   int64_t a, int64_t b, nq_error *err)
{
    char name[300];
    snprintf(name, sizeof name, "%s.%s", module, suffix);
    int64_t shape[2] = {a, b};
    return nq_writer_declare(w, name, dt, ndim, shape, err);
}

int nq_declare_quantized(nq_writer *w, const nq_plan_module *m, nq_error *err)
{
    const char *n = m->name;
    int64_t o = m->out_features, i = m->in_features;
    switch (m->format) {
    case NQ_FORMAT_NVFP4:
        return declare(w, n, "weight", NQ_U8, 2, o, i / 2, err) ||
               declare(w, n, "weight_scale", NQ_F8_E4M3, 2, o, i / 16, err) ||
               declare(w, n, "weight_scale_2", NQ_F32, 0, 0, 0, err);
    case NQ_FORMAT_FP8:
        return declare(w, n, "weight", NQ_F8_E4M3, 2, o, i, err) ||
               declare(w, n, "weight_scale", NQ_F32, 0, 0, 0, err);
    case NQ_FORMAT_INT4:
        return declare(w, n, "qweight", NQ_I32, 2, i / 8, o, err) ||
               declare(w, n, "qzeros", NQ_I32, 2, i / m->group_size, o / 8, err) ||
               declare(w, n, "scales", NQ_F16, 2, i / m->group_size, o, err) ||
               declare(w, n, "g_idx", NQ_I32, 1, i, 0, err);
    case NQ_FORMAT_KEEP:
        break;
    }
    return nq_fail(err, "internal: module %s has no quantized format", n);
}

/* Streams a stored tensor's bytes straight from the mapping, each chunk
 * checked for NaN/Inf just before it is written. */
int nq_copy_tensor(nq_writer *w, const nq_tensor *t, nq_error *err)
{
    size_t es = nq_dtype_size(t->dtype);
    const uint64_t step = (64u << 20) / (es ? es : 1);
    void *owned;
    const unsigned char *data = nq_tensor_bytes(t, &owned, err);
    if (!data)
        return -1;
    nq_tensor view = *t; /* the bytes written (LoRA-merged ones included) */
    view.data = data;
    view.source = NULL;
    for (uint64_t first = 0; first < t->numel; first += step) {
        uint64_t n = t->numel - first < step ? t->numel - first : step;
        if (nq_tensor_check_finite(&view, first, n, err) != 0 ||
            nq_writer_write(w, data + first * es, (size_t)(n * es), err) != 0) {
            free(owned);
            return -1;
        }
    }
    free(owned);
    nq_tensor_release(t);
    return 0;
}

static int write_json(nq_writer *w, const char *name, json_t *doc, nq_error *err)
{
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text)
        return nq_fail(err, "out of memory writing %s", name);
    size_t n = strlen(text);
    text[n] = '\n';
    int rc = nq_writer_add_file(w, name, text, n + 1, err);
    free(text);
    return rc;
}

int nq_write_metadata_files(nq_writer *w, const nq_quantize_options *opt,
                            const nq_model_config *cfg, const nq_plan *plan, bool kv_fp8,
                            nq_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", opt->in_dir);
    bool int4 = nq_plan_count(plan, NQ_FORMAT_INT4) > 0;
    bool modelopt = nq_plan_count(plan, NQ_FORMAT_NVFP4) + nq_plan_count(plan, NQ_FORMAT_FP8) > 0;
    json_t *qc = NULL;
    int rc = 0;
    if (int4) {
        qc = nq_gptq_quant_config(plan);
        rc = write_json(w, "quantize_config.json", qc, err);
    } else if (modelopt) {
        nq_export_info info = {.weights_only = opt->weights_only, .kv_cache_fp8 = kv_fp8};
        json_t *hf = nq_modelopt_quant_config(plan, &info);
        rc = write_json(w, "hf_quant_config.json", hf, err);
        /* config.json gets ModelOpt 0.47's flat form of the same content
         * (export-spec 1.2); vLLM reads it before hf_quant_config.json. */
        qc = nq_modelopt_config_json_form(hf);
        json_decref(hf);
    }
    if (rc == 0) {
        size_t len, out_len = 0;
        char *text = nq_read_file(path, &len, err);
        char *out = NULL;
        if (text && opt->merged_adapters) {
            char *with = nq_lora_config_record(text, len, path, opt->merged_adapters, &len, err);
            free(text);
            text = with;
        }
        if (!text)
            rc = -1;
        else if (qc)
            out = nq_config_with_quantization(text, len, path, cfg, qc, &out_len, err);
        if (text && !qc) {
            out = text;
            out_len = len;
            text = NULL;
        }
        if (rc == 0 && !out)
            rc = -1;
        if (rc == 0 && opt->ssm_cache_dtype) {
            /* vLLM's NemotronHForCausalLMConfig takes mamba_ssm_cache_dtype
             * from config.json when --mamba-ssm-cache-dtype is auto */
            size_t n2 = 0;
            char *out2 = nq_config_set_string(out, out_len, path, "mamba_ssm_cache_dtype",
                                              opt->ssm_cache_dtype, &n2, err);
            free(out);
            out = out2;
            out_len = n2;
            if (!out)
                rc = -1;
        }
        if (rc == 0)
            rc = nq_writer_add_file(w, "config.json", out, out_len, err);
        free(text);
        free(out);
    }
    json_decref(qc);
    if (rc != 0)
        return -1;
    DIR *d = opendir(opt->in_dir);
    if (!d)
        return nq_fail(err, "%s: cannot list: %s", opt->in_dir, strerror(errno));
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (!nq_is_auxiliary_file(e->d_name))
            continue;
        snprintf(path, sizeof path, "%s/%s", opt->in_dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        rc = nq_writer_copy_file(w, path, e->d_name, err);
    }
    closedir(d);
    return rc;
}

/* Queues a tensor's bytes unchanged (or as a LoRA merge produced them),
 * checked for NaN/Inf: stored bytes by the writer thread as it writes them,
 * merged ones (already in memory) here. */
int nq_push_tensor(nq_write_queue *q, const nq_tensor *t, nq_error *err)
{
    if (!t->source)
        return nq_write_queue_push_tensor(q, t, err);
    void *owned;
    const unsigned char *data = nq_tensor_bytes(t, &owned, err);
    if (!data)
        return -1;
    nq_tensor view = *t;
    view.data = data;
    view.source = NULL;
    if (nq_tensor_check_finite(&view, 0, t->numel, err) != 0) {
        free(owned);
        return -1;
    }
    nq_write_piece whole = {data, (size_t)t->nbytes, owned != NULL};
    return nq_write_queue_push(q, &whole, 1, owned ? NULL : t, err);
}

int nq_output_commit(nq_writer *w, const nq_quantize_options *opt, const nq_model_config *cfg,
                     const nq_plan *plan, bool kv_fp8, nq_quantize_summary *sum, nq_error *err)
{
    if (opt->log)
        fprintf(opt->log, "\r%-90s\r", "");
    if (nq_write_metadata_files(w, opt, cfg, plan, kv_fp8, err) != 0)
        return -1;
    sum->shards = nq_writer_shard_count(w);
    sum->tensors_out = nq_writer_tensor_count(w);
    sum->bytes_out = nq_writer_total_bytes(w);
    return nq_writer_commit(w, err);
}
