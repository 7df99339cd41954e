#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/file.h"
#include "core/parallel.h"
#include "cuda/cuda.h"
#include "eval/loaded.h"
#include "eval/decode.h"
#include "eval/perplexity.h"
#include "eval/report.h"
#include "tok/tokenizer.h"

static const char *usage =
    "usage: nemoq eval MODEL --text FILE [--ctx 256] [--windows N] [--skip-windows K]\n"
    "                  [--against BASE] [--tokenizer tokenizer.json] [--threads N] [--json]\n"
    "                  [--device auto|cpu|cuda[:N]]\n"
    "  Perplexity of MODEL on FILE: the whole text tokenized as one string (no BOS/EOS),\n"
    "  cut into consecutive non-overlapping windows of --ctx tokens from the start\n"
    "  (after skipping K windows), each window run on its own and scored on its\n"
    "  ctx-1 next-token predictions; at most N windows (default: all).\n"
    "  MODEL may be a BF16/F16/F32 checkpoint or one nemoq quantized: its weights are\n"
    "  dequantized from the stored codes and, where it stores input scales and KV\n"
    "  scales, activations and keys/values are quantized on the fly as a server\n"
    "  would (W4A4 NVFP4, W8A8 FP8, FP8 KV cache).\n"
    "  --against BASE also runs BASE on the same windows and reports the mean\n"
    "  KL(base || model) per prediction, top-1 agreement and both perplexities.\n"
    "  The tokenizer is MODEL/tokenizer.json unless --tokenizer is given.\n"
    "  --device: where the forward pass runs (default cpu; auto = the first CUDA GPU\n"
    "  when this build and machine have one, else the CPU).\n"
    "  --decode [--prefill P]: score each window as a server decodes it: P tokens\n"
    "  (default 1) in one prefill step, then one token per step carrying the Mamba\n"
    "  conv/SSM state and the KV cache.\n"
    "  --ssm-cache fp32|fp16|fp16-sr[,...] (with --decode): how the SSM state is\n"
    "  stored between steps: f32, f16 round-to-nearest-even, or f16 stochastic\n"
    "  rounding with Philox-4x32 (--philox-rounds N, default 10; --seed S, default 0)\n"
    "  as FlashInfer's kernel does. Several modes run in one pass, the base once.\n"
    "  --kl-bucket N: positions per bucket of KL by position (default ctx/16).\n"
    "  --report PATH: PATH.json and PATH.html (with --decode: a plot of KL by position).\n";

/* Parses "fp16,fp16-sr" into modes; -1 on an unknown or repeated name. */
static int parse_modes(const char *v, nq_decode_options *d)
{
    d->n_modes = 0;
    char buf[64];
    size_t len = strlen(v);
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, v, len + 1);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        nq_ssm_cache m;
        if (d->n_modes == NQ_DECODE_MAX_MODES || nq_ssm_cache_parse(tok, &m) != 0)
            return -1;
        for (int k = 0; k < d->n_modes; k++)
            if (d->modes[k] == m)
                return -1;
        d->modes[d->n_modes++] = m;
    }
    return d->n_modes > 0 ? 0 : -1;
}

static json_t *series_json(const nq_decode_result *r, bool kl)
{
    json_t *a = json_array();
    for (int b = 0; a && b < r->n_buckets; b++)
        json_array_append_new(a, json_real(kl ? r->kl[b] : r->nll[b]));
    return a;
}

/* The decode part of the JSON output and of the report. */
static json_t *decode_json(const nq_decode_options *d, const nq_decode_result *res, bool has_base)
{
    json_t *modes = json_array();
    for (int k = 0; modes && k < d->n_modes; k++) {
        const nq_eval_result *r = &res[k].total;
        json_t *m = json_pack("{s:s, s:f, s:f, s:o}", "ssm_cache", nq_ssm_cache_name(d->modes[k]),
                              "nll", r->nll, "perplexity", r->ppl, "nll_by_position",
                              series_json(&res[k], false));
        if (m && has_base) {
            json_object_set_new(m, "kl", json_real(r->kl));
            json_object_set_new(m, "top1_agreement", json_real(r->top1));
            json_object_set_new(m, "kl_by_position", series_json(&res[k], true));
        }
        json_array_append_new(modes, m);
    }
    return json_pack("{s:i, s:i, s:I, s:i, s:o}", "prefill", d->prefill, "philox_rounds",
                     d->philox_rounds, "seed", (json_int_t)d->seed, "bucket", d->bucket, "modes",
                     modes);
}

void nq_cli_progress(void *ctx, const char *stage, int done, int total)
{
    (void)ctx;
    if (!isatty(STDERR_FILENO))
        return;
    int width = 30, fill = total > 0 ? done * width / total : width;
    fprintf(stderr, "\r  %-8s [%.*s%*s] %d/%d", stage, fill, "##############################",
            width - fill, "", done, total);
    if (done >= total)
        fprintf(stderr, "\r%60s\r", "");
    fflush(stderr);
}

int nq_cmd_eval(int argc, char **argv)
{
    const char *dir = NULL, *text_path = NULL, *against = NULL, *tok_path = NULL;
    const char *device = "cpu";
    const char *report_path = NULL;
    int ctx = 256, windows = 0, skip = 0, threads = 0, prefill = 1, bucket = 0;
    bool json = false, bad = false, decode = false, modes_given = false, sr_given = false;
    nq_decode_options dopt = {.n_modes = 1, .modes = {NQ_SSM_CACHE_FP32}, .philox_rounds = 10};
    for (int i = 1; i < argc && !bad; i++) {
        const char *v = NULL;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--decode") == 0) {
            decode = true;
        } else if (nq_arg_value(argc, argv, &i, "--report", &v, &bad)) {
            report_path = v;
        } else if (nq_arg_value(argc, argv, &i, "--prefill", &v, &bad)) {
            if (!bad && nq_parse_int(v, 1, 1 << 20, &prefill) != 0) {
                nq_cli_error("eval: --prefill '%s': expected a positive integer", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--ssm-cache", &v, &bad)) {
            modes_given = true;
            if (!bad && parse_modes(v, &dopt) != 0) {
                nq_cli_error("eval: --ssm-cache '%s': expected up to 3 distinct of fp32, fp16, "
                             "fp16-sr, comma-separated",
                             v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--philox-rounds", &v, &bad)) {
            sr_given = true;
            if (!bad && nq_parse_int(v, 1, 64, &dopt.philox_rounds) != 0) {
                nq_cli_error("eval: --philox-rounds '%s': expected 1..64", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--seed", &v, &bad)) {
            sr_given = true;
            if (bad)
                break;
            char *end;
            errno = 0;
            unsigned long long sd = strtoull(v, &end, 10);
            if (!*v || *end || errno || v[0] == '-') {
                nq_cli_error("eval: --seed '%s': expected an integer 0..2^64-1", v);
                bad = true;
            }
            dopt.seed = sd;
        } else if (nq_arg_value(argc, argv, &i, "--kl-bucket", &v, &bad)) {
            if (!bad && nq_parse_int(v, 1, 1 << 20, &bucket) != 0) {
                nq_cli_error("eval: --kl-bucket '%s': expected a positive integer", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--text", &v, &bad)) {
            text_path = v;
        } else if (nq_arg_value(argc, argv, &i, "--against", &v, &bad)) {
            against = v;
        } else if (nq_arg_value(argc, argv, &i, "--tokenizer", &v, &bad)) {
            tok_path = v;
        } else if (nq_arg_value(argc, argv, &i, "--device", &v, &bad)) {
            device = v;
        } else if (nq_arg_value(argc, argv, &i, "--ctx", &v, &bad)) {
            if (!bad && nq_parse_int(v, 2, 1 << 20, &ctx) != 0) {
                nq_cli_error("eval: --ctx '%s': expected an integer from 2 to %d", v, 1 << 20);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--windows", &v, &bad)) {
            if (!bad && nq_parse_int(v, 1, 1 << 30, &windows) != 0) {
                nq_cli_error("eval: --windows '%s': expected an integer from 1 to %d", v, 1 << 30);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--skip-windows", &v, &bad)) {
            if (!bad && nq_parse_int(v, 0, 1 << 30, &skip) != 0) {
                nq_cli_error("eval: --skip-windows '%s': expected an integer from 0 to %d", v, 1 << 30);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--threads", &v, &bad)) {
            if (!bad && nq_parse_int(v, 1, 1024, &threads) != 0) {
                nq_cli_error("eval: --threads '%s': expected an integer from 1 to 1024", v);
                bad = true;
            }
        } else if (argv[i][0] == '-') {
            nq_cli_error("eval: unknown flag '%s'", argv[i]);
            bad = true;
        } else if (!dir) {
            dir = argv[i];
        } else {
            nq_cli_error("eval: unexpected argument '%s'", argv[i]);
            bad = true;
        }
    }
    if (!bad && (!dir || !text_path)) {
        nq_cli_error("eval: %s", !dir ? "no model given" : "--text FILE is required");
        bad = true;
    }
    if (!bad && !decode && (modes_given || sr_given || bucket)) {
        nq_cli_error("eval: --ssm-cache, --philox-rounds, --seed and --kl-bucket need --decode");
        bad = true;
    }
    if (bad) {
        fputs(usage, stderr);
        return 2;
    }
    if (threads <= 0)
        threads = nq_default_threads();
    nq_error err = {0};
    char tok_default[4096];
    snprintf(tok_default, sizeof tok_default, "%s/tokenizer.json", dir);
    nq_tokenizer *tok = NULL;
    nq_loaded_model model = {0}, base = {0};
    char *text = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, text_len = 0;
    int rc = 1;
    nq_cuda *gpu = NULL;
    char device_desc[384];
    nq_decode_result dres[NQ_DECODE_MAX_MODES] = {0};
    json_t *doc = NULL;
    /* a report may not land inside either checkpoint; checked before any work */
    if ((report_path && (nq_report_check(report_path, dir, NULL, &err) != 0 ||
                         (against && nq_report_check(report_path, against, NULL, &err) != 0))) ||
        nq_device_open(device, &gpu, device_desc, sizeof device_desc, &err) != 0 ||
        !(tok = nq_tokenizer_load(tok_path ? tok_path : tok_default, &err)) ||
        !(text = nq_read_file(text_path, &text_len, &err)) ||
        nq_tokenizer_encode(tok, text, text_len, false, &ids, &n_ids, &err) != 0 ||
        nq_loaded_open(dir, threads, &model, &err) != 0 ||
        (against && nq_loaded_open(against, threads, &base, &err) != 0))
        goto done;
    nq_model_set_cuda(model.model, gpu);
    if (against)
        nq_model_set_cuda(base.model, gpu);
    nq_eval_result r;
    if (decode) {
        dopt.ctx = ctx;
        dopt.windows = windows;
        dopt.skip = skip;
        dopt.prefill = prefill;
        dopt.bucket = bucket ? bucket : (ctx - 1 + 15) / 16;
        dopt.progress = nq_cli_progress;
        if (nq_eval_decode(model.model, against ? base.model : NULL, ids, n_ids, &dopt, dres,
                           &err) != 0)
            goto done;
        r = dres[0].total;
    } else {
        nq_eval_options opt = {.ctx = ctx, .windows = windows, .skip = skip,
                               .progress = nq_cli_progress};
        if (nq_eval_perplexity(model.model, against ? base.model : NULL, ids, n_ids, &opt, &r,
                               &err) != 0)
            goto done;
    }
    nq_deploy_info di = nq_deploy_describe(model.deploy);
    /* With --decode the top-level numbers are the first --ssm-cache mode's;
     * "decode" holds every mode's. */
    doc = json_pack(
        "{s:s, s:s, s:I, s:i, s:i, s:i, s:I, s:f, s:f, s:{s:I, s:I, s:I, s:I, s:I, s:I}}",
        "model", dir, "text", text_path, "tokens", (json_int_t)n_ids, "ctx", r.ctx, "windows",
        r.windows, "skip_windows", skip, "predictions", (json_int_t)r.predictions, "nll", r.nll,
        "perplexity", r.ppl, "emulated", "nvfp4_weights", (json_int_t)di.nvfp4, "fp8_weights",
        (json_int_t)di.fp8, "int4_weights", (json_int_t)di.gptq, "nvfp4_activations",
        (json_int_t)di.act_nvfp4, "fp8_activations", (json_int_t)di.act_fp8, "fp8_kv_layers",
        (json_int_t)di.kv_layers);
    if (doc && r.has_base) {
        json_object_set_new(doc, "base", json_string(against));
        json_object_set_new(doc, "base_nll", json_real(r.base_nll));
        json_object_set_new(doc, "base_perplexity", json_real(r.base_ppl));
        json_object_set_new(doc, "kl", json_real(r.kl));
        json_object_set_new(doc, "top1_agreement", json_real(r.top1));
    }
    if (doc)
        json_object_set_new(doc, "device", json_string(device_desc));
    if (doc && decode)
        json_object_set_new(doc, "decode", decode_json(&dopt, dres, r.has_base));
    if (!doc) {
        nq_fail(&err, "out of memory");
        goto done;
    }
    if (json) {
        json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("\n");
    } else {
        printf("device: %s\n", device_desc);
        printf("text: %s, %zu tokens; %d windows of %d (skipped %d), %llu predictions\n",
               text_path, n_ids, r.windows, r.ctx, skip, (unsigned long long)r.predictions);
        if (di.nvfp4 + di.fp8 + di.gptq)
            printf("emulated: %zu nvfp4, %zu fp8, %zu int4 weights; %zu nvfp4 and %zu fp8 "
                   "activation quantizers; fp8 kv cache in %zu layers\n",
                   di.nvfp4, di.fp8, di.gptq, di.act_nvfp4, di.act_fp8, di.kv_layers);
        if (decode)
            printf("decode: prefill %d, then 1 token per step; philox rounds %d, seed %llu\n",
                   dopt.prefill, dopt.philox_rounds, (unsigned long long)dopt.seed);
        for (int k = 0; k < (decode ? dopt.n_modes : 1); k++) {
            const nq_eval_result *rk = decode ? &dres[k].total : &r;
            const char *tag = decode ? nq_ssm_cache_name(dopt.modes[k]) : NULL;
            if (tag)
                printf("[ssm cache %s] ", tag);
            printf("perplexity: %.4f (nll %.6f)\n", rk->ppl, rk->nll);
            if (rk->has_base) {
                if (tag)
                    printf("[ssm cache %s] ", tag);
                printf(decode ? "KL(base || model): %.4e nats/token; top-1 agreement %.4f\n"
                              : "KL(base || model): %.6f nats/token; top-1 agreement %.4f\n",
                       rk->kl, rk->top1);
            }
        }
        if (r.has_base)
            printf("base perplexity: %.4f (nll %.6f)\n", r.base_ppl, r.base_nll);
    }
    if (report_path) {
        json_t *rep = json_pack("{s:O}", "eval", doc);
        if (rep && decode && r.has_base) {
            /* the plot: one series per mode */
            json_t *series = json_array();
            for (int k = 0; series && k < dopt.n_modes; k++)
                json_array_append_new(
                    series, json_pack("{s:s, s:o}", "label", nq_ssm_cache_name(dopt.modes[k]),
                                      "kl", series_json(&dres[k], true)));
            json_object_set_new(rep, "kl_by_position",
                                json_pack("{s:i, s:i, s:o}", "bucket", dopt.bucket, "prefill",
                                          dopt.prefill, "series", series));
        }
        if (rep && decode) {
            /* the report's table is flat: one row per mode instead of "decode" */
            json_t *ev = json_object_get(rep, "eval");
            json_object_del(ev, "decode");
            json_object_set_new(ev, "prefill", json_integer(dopt.prefill));
            json_object_set_new(ev, "philox_rounds", json_integer(dopt.philox_rounds));
            json_object_set_new(ev, "seed", json_integer((json_int_t)dopt.seed));
            for (int k = 0; k < dopt.n_modes; k++) {
                char key[64];
                const char *name = nq_ssm_cache_name(dopt.modes[k]);
                snprintf(key, sizeof key, "perplexity [ssm cache %s]", name);
                json_object_set_new(ev, key, json_real(dres[k].total.ppl));
                if (r.has_base) {
                    snprintf(key, sizeof key, "kl [ssm cache %s]", name);
                    json_object_set_new(ev, key, json_real(dres[k].total.kl));
                }
            }
        }
        if (!rep || nq_report_check(report_path, dir, NULL, &err) != 0 ||
            nq_report_write(report_path, rep, &err) != 0) {
            json_decref(rep);
            if (!rep)
                nq_fail(&err, "out of memory");
            goto done;
        }
        json_decref(rep);
    }
    rc = 0;
done:
    if (rc != 0)
        nq_cli_error("%s", err.msg);
    json_decref(doc);
    for (int k = 0; k < NQ_DECODE_MAX_MODES; k++)
        nq_decode_result_free(&dres[k]);
    nq_loaded_close(&model);
    nq_loaded_close(&base);
    nq_cuda_close(gpu);
    nq_tokenizer_free(tok);
    free(text);
    free(ids);
    return rc;
}
