#include "export/quantize.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/interrupt.h"
#include "core/parallel.h"
#include "export/autoquant.h"
#include "export/calibrated.h"
#include "export/lora.h"
#include "export/metadata.h"
#include "export/output.h"
#include "formats/encode.h"
#include "io/safetensors.h"
#include "io/prefetch.h"
#include "io/write_queue.h"
#include "io/writer.h"
#include "model/config.h"

static int write_quantized(nq_write_queue *q, const nq_tensor *t, const nq_plan_module *m,
                           const nq_quantize_options *opt, nq_quantize_summary *sum, nq_error *err)
{
    if (t->ndim != 2 || t->shape[0] != m->out_features || t->shape[1] != m->in_features)
        return nq_fail(err, "tensor '%s': shape does not match the plan", t->name);
    /* Encode straight from the mapping (BF16/F16/F32); any other float type
     * is widened to f32 first. */
    float *x = NULL;
    void *merged = NULL;
    const unsigned char *data = nq_tensor_bytes(t, &merged, err);
    if (!data)
        return -1;
    nq_weight_view v = {data, t->dtype, m->out_features, m->in_features};
    if (t->dtype != NQ_BF16 && t->dtype != NQ_F16 && t->dtype != NQ_F32) {
        if (!(x = nq_tensor_load_f32(t, true, err))) {
            free(merged);
            return -1;
        }
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
            rc = nq_encode_nvfp4_view_shared(&v, m->shared_amax, opt->mse_scales, opt->threads,
                                             packed, scales, gs, &st, err);
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
    free(merged);
    nq_tensor_release(t);
    if (rc != 0) {
        for (int k = 0; k < n; k++)
            free((void *)pieces[k].data);
        /* the encoders name the problem; make sure the tensor is named too */
        nq_error_name(err, "tensor", t->name);
        return -1;
    }
    if (nq_write_queue_push(q, pieces, n, NULL, err) != 0)
        return -1;
    sum->sq_err += st.sq_err;
    sum->sq_err_max_scale += st.sq_err_max_scale;
    sum->sq_ref += st.sq_ref;
    return 0;
}

static bool is_qkv(const char *name)
{
    size_t n = strlen(name);
    return n > 7 && (strcmp(name + n - 7, ".q_proj") == 0 || strcmp(name + n - 7, ".k_proj") == 0 ||
                     strcmp(name + n - 7, ".v_proj") == 0);
}

static int weight_amax(const nq_checkpoint *ck, const char *module, int threads, float *amax,
                       nq_error *err)
{
    char name[300];
    snprintf(name, sizeof name, "%s.weight", module);
    const nq_tensor *t = nq_checkpoint_find(ck, name);
    if (!t || t->ndim != 2)
        return nq_fail(err, "tensor '%s': missing or not 2-D", name);
    float *x = NULL;
    void *merged = NULL;
    const unsigned char *data = nq_tensor_bytes(t, &merged, err); /* LoRA merged, as encoded */
    if (!data)
        return -1;
    nq_weight_view v = {data, t->dtype, t->shape[0], t->shape[1]};
    if (t->dtype != NQ_BF16 && t->dtype != NQ_F16 && t->dtype != NQ_F32) {
        if (!(x = nq_tensor_load_f32(t, true, err))) {
            free(merged);
            return -1;
        }
        v.data = x;
        v.dtype = NQ_F32;
    }
    int rc = nq_weight_view_amax(&v, threads, amax, err);
    free(x);
    free(merged);
    nq_tensor_release(t);
    if (rc != 0)
        nq_error_name(err, "tensor", name);
    return rc;
}

/* ModelOpt's HF export gives the NVFP4 q/k/v of an attention layer one
 * global scale, from the max of their weight amax (preprocess_linear_fusion),
 * and vLLM depends on it: its fused qkv_proj keeps a single weight_scale_2,
 * the max of the three, and applies it to all three shards without
 * requantizing, so a shard encoded with a smaller global scale of its own
 * would be dequantized too large.  (FP8 needs nothing: vLLM requantizes FP8
 * shards to the max scale.) */
static int share_qkv_amax(const nq_checkpoint *ck, nq_plan *plan, int threads, nq_error *err)
{
    for (size_t i = 0; i < plan->count; i++) {
        nq_plan_module *m = &plan->modules[i];
        if (m->format != NQ_FORMAT_NVFP4 || !is_qkv(m->name) || m->shared_amax > 0)
            continue;
        size_t prefix = strlen(m->name) - 6, sib[3];
        int n = 0;
        for (size_t j = 0; j < plan->count && n < 3; j++) {
            const nq_plan_module *s = &plan->modules[j];
            if (s->format == NQ_FORMAT_NVFP4 && is_qkv(s->name) && strlen(s->name) == prefix + 6 &&
                strncmp(s->name, m->name, prefix) == 0)
                sib[n++] = j;
        }
        if (n < 2)
            continue;
        float shared = 0;
        for (int k = 0; k < n; k++) {
            float a;
            if (weight_amax(ck, plan->modules[sib[k]].name, threads, &a, err) != 0)
                return -1;
            if (a > shared)
                shared = a;
        }
        /* a module of all zeros keeps scale 1.0 (nq_nvfp4_global_scale) */
        for (int k = 0; k < n; k++)
            plan->modules[sib[k]].shared_amax = shared > 0 ? shared : 0;
    }
    return 0;
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

/* Installs the adapters' merge on ck's tensors (every adapter key checked
 * before anything is written) and records them for config.json. */
static nq_lora *attach_lora(nq_checkpoint *ck, nq_quantize_options *o, const char *cfg_path,
                            json_t **record, nq_error *err)
{
    *record = NULL;
    if (o->nlora == 0)
        return NULL;
    nq_lora *l = nq_lora_attach(ck, o->lora, o->nlora, cfg_path, o->threads, err);
    if (!l)
        return NULL;
    *record = nq_lora_describe(l, false);
    o->merged_adapters = *record;
    if (o->lora_report) {
        json_t *d = nq_lora_describe(l, true);
        json_array_extend(o->lora_report, d);
        json_decref(d);
    }
    return l;
}

int nq_quantize(const nq_quantize_options *opt_in, nq_quantize_summary *sum, nq_error *err)
{
    memset(sum, 0, sizeof *sum);
    nq_quantize_options o = *opt_in;
    const nq_quantize_options *opt = &o;
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
    json_t *record = NULL;
    nq_lora *lora = NULL;
    int rc = -1;
    if (o.nlora && !(lora = attach_lora(ck, &o, cfg_path, &record, err)))
        goto done;
    if (nq_model_config_load(cfg_path, &cfg, err) != 0 ||
        reject_quantized_input(ck, opt->in_dir, err) != 0 ||
        nq_plan_build(&cfg, ck, &opt->recipe, &plan, err) != 0)
        goto done;
    if (nq_plan_refuse_empty(&plan, opt->in_dir, err) != 0)
        goto done;
    bool needs_act = nq_plan_count(&plan, NQ_FORMAT_NVFP4) + nq_plan_count(&plan, NQ_FORMAT_FP8) > 0;
    if (opt->calib_path && opt->weights_only) {
        nq_fail(err, "--weights-only and --calib exclude each other: calibration exists to write "
                     "activation scales");
        goto done;
    }
    if (opt->optimize.enabled && !opt->calib_path) {
        nq_fail(err, "--optimize needs --calib FILE (its techniques are chosen on calibration "
                     "data)");
        goto done;
    }
    if (opt->equalize && !opt->calib_path) {
        nq_fail(err, "--equalize needs --calib FILE (its scales come from calibration data)");
        goto done;
    }
    if (opt->equalize_served && !opt->equalize) {
        nq_fail(err, "--equalize-objective needs --equalize or --equalize-pairs");
        goto done;
    }
    if (opt->gptq_act_order && !opt->gptq) {
        nq_fail(err, "--gptq-act-order needs --algo gptq");
        goto done;
    }
    if (opt->gptq && !opt->calib_path) {
        nq_fail(err, "--algo gptq needs --calib FILE (its Hessians come from calibration data)");
        goto done;
    }
    if ((opt->optimize.served_hessian || opt->optimize.hessian_scales ||
         opt->optimize.four_over_six || opt->optimize.global_sweep ||
         opt->optimize.int4_act_order) &&
        !opt->gptq) {
        nq_fail(err, "--optimize-techniques: served-hessian, hessian-scales, four-over-six, "
                     "global-sweep and int4-act-order act through GPTQ: add --algo gptq");
        goto done;
    }
    if (needs_act && !opt->weights_only && !opt->calib_path) {
        nq_fail(err, "recipe %s: NVFP4/FP8 (W4A4/W8A8) need activation scales: give --calib FILE "
                     "(text or JSONL), or add --weights-only to write only the quantized weights "
                     "(not servable as W4A4/W8A8)",
                plan.recipe);
        goto done;
    }
    if (opt->auto_bits > 0 && nq_autoquantize_plan(opt, ck, &cfg, &plan, err) != 0)
        goto done;
    if (opt->dry_run) {
        nq_plan_print(stdout, &plan);
        rc = 0;
        goto done;
    }
    for (int f = 0; f < 4; f++)
        sum->modules[f] = nq_plan_count(&plan, (nq_format)f);
    /* --equalize rescales q/k/v after this point: calibrated.c then takes
     * the shared amax again from the equalized weights */
    if (share_qkv_amax(ck, &plan, opt->threads, err) != 0)
        goto done;
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
        if (m && m->format != NQ_FORMAT_KEEP)
            r = write_quantized(q, t, m, opt, sum, err);
        else
            r = nq_push_tensor(q, t, err);
        if (r != 0) {
            /* The writer thread may already have failed on an earlier tensor
             * (a NaN in a copied one): that is the first cause to name. */
            nq_error earlier = {0};
            if (nq_write_queue_finish(q, &earlier) != 0 && earlier.msg[0])
                *err = earlier;
            q = NULL;
            goto done;
        }
    }
    int qrc = nq_write_queue_finish(q, err);
    q = NULL;
    if (qrc != 0)
        goto done;
    if (nq_output_commit(w, opt, &cfg, &plan, false, sum, err) != 0)
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
    nq_lora_free(lora);
    json_decref(record);
    return rc;
}

int nq_merge(const nq_quantize_options *opt_in, nq_quantize_summary *sum, nq_error *err)
{
    memset(sum, 0, sizeof *sum);
    nq_quantize_options o = *opt_in;
    if (o.nlora == 0)
        return nq_fail(err, "merge: no --lora adapter given");
    nq_checkpoint *ck = nq_checkpoint_open(o.in_dir, err);
    if (!ck)
        return -1;
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", o.in_dir);
    nq_model_config cfg;
    nq_plan plan = {0};
    nq_writer *w = NULL;
    nq_write_queue *q = NULL;
    json_t *record = NULL;
    int rc = -1;
    nq_lora *lora = attach_lora(ck, &o, cfg_path, &record, err);
    if (!lora || nq_model_config_load(cfg_path, &cfg, err) != 0)
        goto done;
    nq_writer_options wo = {.out_dir = o.out_dir, .input_dir = o.in_dir,
                            .max_shard_bytes = o.max_shard_bytes, .force = o.force};
    if (!(w = nq_writer_create(&wo, err)))
        goto done;
    size_t n = nq_checkpoint_count(ck);
    sum->tensors_in = n;
    for (size_t i = 0; i < n; i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        sum->bytes_in += t->nbytes;
        sum->params_in += t->numel;
        if (nq_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err) != 0)
            goto done;
    }
    if (nq_writer_begin(w, err) != 0 || !(q = nq_write_queue_start(w, err)))
        goto done;
    for (size_t i = 0; i < n; i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        if (o.log)
            fprintf(o.log, "\r[%zu/%zu] %-70.70s", i + 1, n, t->name);
        if (nq_interrupt_check(err) != 0 || nq_push_tensor(q, t, err) != 0)
            goto done;
    }
    int qrc = nq_write_queue_finish(q, err);
    q = NULL;
    if (qrc != 0)
        goto done;
    /* an empty plan: config.json gets only the adapters' record */
    if (nq_output_commit(w, &o, &cfg, &plan, false, sum, err) != 0)
        goto done;
    rc = 0;
done:
    if (q) {
        nq_error ignored = {0};
        nq_write_queue_finish(q, &ignored);
    }
    nq_writer_free(w);
    nq_checkpoint_close(ck);
    nq_lora_free(lora);
    json_decref(record);
    return rc;
}
