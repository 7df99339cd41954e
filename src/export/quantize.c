#include "export/quantize.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "export/encode.h"
#include "export/metadata.h"
#include "io/safetensors.h"
#include "io/prefetch.h"
#include "io/write_queue.h"
#include "io/writer.h"
#include "model/config.h"
#include "export/quantize_internal.h"

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

/* Streams a stored tensor's bytes straight from the mapping. */
int nq_copy_tensor(nq_writer *w, const nq_tensor *t, nq_error *err)
{
    const uint64_t chunk = 64u << 20;
    for (uint64_t off = 0; off < t->nbytes; off += chunk) {
        uint64_t n = t->nbytes - off < chunk ? t->nbytes - off : chunk;
        if (nq_writer_write(w, t->data + off, (size_t)n, err) != 0)
            return -1;
    }
    nq_tensor_release(t);
    return 0;
}

static int write_quantized(nq_write_queue *q, const nq_tensor *t, const nq_plan_module *m,
                           const nq_quantize_options *opt, nq_quantize_summary *sum, nq_error *err)
{
    if (t->ndim != 2 || t->shape[0] != m->out_features || t->shape[1] != m->in_features)
        return nq_fail(err, "tensor '%s': shape does not match the plan", t->name);
    /* Encode straight from the mapping (BF16/F16/F32); any other float type
     * is widened to f32 first. */
    float *x = NULL;
    nq_weight_view v = {t->data, t->dtype, m->out_features, m->in_features};
    if (t->dtype != NQ_BF16 && t->dtype != NQ_F16 && t->dtype != NQ_F32) {
        if (!(x = nq_tensor_load_f32(t, true, err)))
            return -1;
        v.data = x;
        v.dtype = NQ_F32;
    }
    size_t o = (size_t)m->out_features, i = (size_t)m->in_features;
    nq_encode_stats st = {0};
    nq_write_piece pieces[NQ_WRITE_PIECES] = {{0}};
    int n = 0, rc = -1;
    if (m->format == NQ_FORMAT_NVFP4) {
        uint8_t *packed = malloc(o * i / 2), *scales = malloc(o * i / 16);
        float *gs = malloc(sizeof *gs);
        pieces[0] = (nq_write_piece){packed, o * i / 2, true};
        pieces[1] = (nq_write_piece){scales, o * i / 16, true};
        pieces[2] = (nq_write_piece){gs, sizeof *gs, true};
        n = 3;
        if (!packed || !scales || !gs)
            nq_fail(err, "tensor '%s': out of memory", t->name);
        else
            rc = nq_encode_nvfp4_view(&v, opt->mse_scales, opt->threads, packed, scales, gs, &st,
                                      err);
    } else if (m->format == NQ_FORMAT_FP8) {
        uint8_t *fp8 = malloc(o * i);
        float *s = malloc(sizeof *s);
        pieces[0] = (nq_write_piece){fp8, o * i, true};
        pieces[1] = (nq_write_piece){s, sizeof *s, true};
        n = 2;
        if (!fp8 || !s)
            nq_fail(err, "tensor '%s': out of memory", t->name);
        else
            rc = nq_encode_fp8_view(&v, opt->threads, fp8, s, &st, err);
    } else if (m->format == NQ_FORMAT_INT4) {
        size_t g = (size_t)m->group_size;
        int32_t *qw = malloc(i / 8 * o * sizeof *qw), *qz = malloc(i / g * o / 8 * sizeof *qz);
        uint16_t *sc = malloc(i / g * o * sizeof *sc);
        int32_t *gi = malloc(i * sizeof *gi);
        pieces[0] = (nq_write_piece){qw, i / 8 * o * sizeof *qw, true};
        pieces[1] = (nq_write_piece){qz, i / g * o / 8 * sizeof *qz, true};
        pieces[2] = (nq_write_piece){sc, i / g * o * sizeof *sc, true};
        pieces[3] = (nq_write_piece){gi, i * sizeof *gi, true};
        n = 4;
        if (!qw || !qz || !sc || !gi)
            nq_fail(err, "tensor '%s': out of memory", t->name);
        else
            rc = nq_encode_int4_view(&v, (int)g, opt->mse_scales, opt->threads, qw, qz, sc, gi,
                                     &st, err);
    }
    free(x);
    nq_tensor_release(t);
    if (rc != 0) {
        for (int k = 0; k < n; k++)
            free((void *)pieces[k].data);
        /* the encoders name the problem; make sure the tensor is named too */
        if (!strstr(err->msg, t->name)) {
            char inner[sizeof err->msg];
            snprintf(inner, sizeof inner, "%s", err->msg);
            snprintf(err->msg, sizeof err->msg, "tensor '%.300s': %.700s", t->name, inner);
        }
        return -1;
    }
    if (nq_write_queue_push(q, pieces, n, NULL, err) != 0)
        return -1;
    sum->sq_err += st.sq_err;
    sum->sq_err_max_scale += st.sq_err_max_scale;
    sum->sq_ref += st.sq_ref;
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

static int reject_quantized_input(const nq_checkpoint *ck, const char *dir, nq_error *err)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/hf_quant_config.json", dir);
    if (stat(path, &st) == 0)
        return nq_fail(err, "%s: input is already quantized (hf_quant_config.json present); "
                            "nemoq quantizes BF16/F16/F32 checkpoints", dir);
    snprintf(path, sizeof path, "%s/quantize_config.json", dir);
    if (stat(path, &st) == 0)
        return nq_fail(err, "%s: input is already quantized (quantize_config.json present)", dir);
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        if (!nq_dtype_is_float(t->dtype) || t->dtype == NQ_F8_E4M3 || t->dtype == NQ_F8_E5M2)
            return nq_fail(err, "%s: tensor '%s' is %s: input looks already quantized", dir,
                           t->name, nq_dtype_name(t->dtype));
    }
    return 0;
}

int nq_quantize(const nq_quantize_options *opt, nq_quantize_summary *sum, nq_error *err)
{
    memset(sum, 0, sizeof *sum);
    nq_checkpoint *ck = nq_checkpoint_open(opt->in_dir, err);
    if (!ck)
        return -1;
    nq_model_config cfg;
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", opt->in_dir);
    nq_plan plan = {0};
    nq_writer *w = NULL;
    nq_write_queue *q = NULL;
    nq_prefetcher *pf = NULL;
    int rc = -1;
    if (nq_model_config_load(cfg_path, &cfg, err) != 0 ||
        reject_quantized_input(ck, opt->in_dir, err) != 0 ||
        nq_plan_build(&cfg, ck, &opt->recipe, &plan, err) != 0)
        goto done;
    bool needs_act = nq_plan_count(&plan, NQ_FORMAT_NVFP4) + nq_plan_count(&plan, NQ_FORMAT_FP8) > 0;
    if (opt->calib_path && opt->weights_only) {
        nq_fail(err, "--weights-only and --calib exclude each other: calibration exists to write "
                     "activation scales");
        goto done;
    }
    if (opt->gptq && !opt->calib_path) {
        nq_fail(err, "--algo gptq needs --calib FILE (its Hessians come from calibration data)");
        goto done;
    }
    if (needs_act && !opt->weights_only && !opt->calib_path) {
        nq_fail(err, "recipe %s: NVFP4/FP8 (W4A4/W8A8) need activation scales: give --calib FILE "
                     "(text or JSONL), or add --weights-only to write only the quantized weights "
                     "(not servable as W4A4/W8A8)",
                plan.recipe);
        goto done;
    }
    for (int f = 0; f < 4; f++)
        sum->modules[f] = nq_plan_count(&plan, (nq_format)f);
    if (opt->calib_path) {
        rc = nq_quantize_calibrated(opt, ck, &cfg, &plan, sum, err);
        goto done;
    }

    nq_writer_options wo = {.out_dir = opt->out_dir, .input_dir = opt->in_dir,
                            .max_shard_bytes = opt->max_shard_bytes, .force = opt->force};
    w = nq_writer_create(&wo, err);
    if (!w)
        goto done;
    sum->tensors_in = nq_checkpoint_count(ck);
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        const nq_plan_module *m = nq_module_of_weight(&plan, t->name);
        sum->bytes_in += t->nbytes;
        sum->params_in += t->numel;
        if (m && m->format != NQ_FORMAT_KEEP) {
            if (nq_declare_quantized(w, m, err) != 0)
                goto done;
        } else if (nq_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err) != 0) {
            goto done;
        }
    }
    if (nq_writer_begin(w, err) != 0)
        goto done;
    q = nq_write_queue_start(w, err);
    if (!q)
        goto done;
    /* 256 MB ahead: keeps the disk busy through an encoding step.  The
     * prefetcher is only an optimization: if it cannot start, go on. */
    {
        nq_error ignored = {0};
        pf = nq_prefetcher_start(ck, 256ull << 20, &ignored);
    }
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        const nq_plan_module *m = nq_module_of_weight(&plan, t->name);
        if (opt->log)
            fprintf(opt->log, "\r[%zu/%zu] %-70.70s", i + 1, nq_checkpoint_count(ck), t->name);
        nq_prefetcher_advance(pf, i);
        if (nq_interrupt_check(err) != 0)
            goto done;
        int r;
        if (m && m->format != NQ_FORMAT_KEEP) {
            r = write_quantized(q, t, m, opt, sum, err);
        } else {
            nq_write_piece whole = {t->data, (size_t)t->nbytes, false};
            r = nq_write_queue_push(q, &whole, 1, t, err);
        }
        if (r != 0)
            goto done;
    }
    int qrc = nq_write_queue_finish(q, err);
    q = NULL;
    if (qrc != 0)
        goto done;
    if (opt->log)
        fprintf(opt->log, "\r%-90s\r", "");
    if (nq_write_metadata_files(w, opt, &cfg, &plan, false, err) != 0)
        goto done;
    sum->shards = nq_writer_shard_count(w);
    sum->tensors_out = nq_writer_tensor_count(w);
    sum->bytes_out = nq_writer_total_bytes(w);
    if (nq_writer_commit(w, err) != 0)
        goto done;
    rc = 0;
done:
    nq_prefetcher_stop(pf);
    if (q) {
        nq_error ignored = {0};
        nq_write_queue_finish(q, &ignored);
    }
    nq_writer_free(w);
    nq_plan_free(&plan);
    nq_checkpoint_close(ck);
    return rc;
}
