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
#include "eval/perplexity.h"
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
    "  when this build and machine have one, else the CPU).\n";

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
    int ctx = 256, windows = 0, skip = 0, threads = 0;
    bool json = false, bad = false;
    for (int i = 1; i < argc && !bad; i++) {
        const char *v;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (nq_arg_value(argc, argv, &i, "--text", &v, &bad)) {
            text_path = v;
        } else if (nq_arg_value(argc, argv, &i, "--against", &v, &bad)) {
            against = v;
        } else if (nq_arg_value(argc, argv, &i, "--tokenizer", &v, &bad)) {
            tok_path = v;
        } else if (nq_arg_value(argc, argv, &i, "--device", &v, &bad)) {
            device = v;
        } else if (nq_arg_value(argc, argv, &i, "--ctx", &v, &bad)) {
            if (nq_parse_int(v, 2, 1 << 20, &ctx) != 0) {
                nq_cli_error("eval: --ctx '%s': expected an integer >= 2", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--windows", &v, &bad)) {
            if (nq_parse_int(v, 1, 1 << 30, &windows) != 0) {
                nq_cli_error("eval: --windows '%s': expected a positive integer", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--skip-windows", &v, &bad)) {
            if (nq_parse_int(v, 0, 1 << 30, &skip) != 0) {
                nq_cli_error("eval: --skip-windows '%s': expected an integer >= 0", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--threads", &v, &bad)) {
            if (nq_parse_int(v, 1, 1024, &threads) != 0) {
                nq_cli_error("eval: --threads '%s': expected 1..1024", v);
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
    if (nq_device_open(device, &gpu, device_desc, sizeof device_desc, &err) != 0)
        goto done;
    if (!(tok = nq_tokenizer_load(tok_path ? tok_path : tok_default, &err)) ||
        !(text = nq_read_file(text_path, &text_len, &err)) ||
        nq_tokenizer_encode(tok, text, text_len, false, &ids, &n_ids, &err) != 0 ||
        nq_loaded_open(dir, threads, &model, &err) != 0 ||
        (against && nq_loaded_open(against, threads, &base, &err) != 0))
        goto done;
    nq_model_set_cuda(model.model, gpu);
    if (against)
        nq_model_set_cuda(base.model, gpu);
    nq_eval_options opt = {.ctx = ctx, .windows = windows, .skip = skip,
                           .progress = nq_cli_progress};
    nq_eval_result r;
    if (nq_eval_perplexity(model.model, against ? base.model : NULL, ids, n_ids, &opt, &r,
                           &err) != 0)
        goto done;
    nq_deploy_info di = nq_deploy_describe(model.deploy);
    if (json) {
        json_t *doc = json_pack(
            "{s:s, s:s, s:I, s:i, s:i, s:i, s:I, s:f, s:f, s:{s:I, s:I, s:I, s:I, s:I, s:I}}",
            "model", dir, "text", text_path, "tokens", (json_int_t)n_ids, "ctx", r.ctx,
            "windows", r.windows, "skip_windows", skip, "predictions",
            (json_int_t)r.predictions, "nll", r.nll, "perplexity", r.ppl, "emulated",
            "nvfp4_weights", (json_int_t)di.nvfp4, "fp8_weights", (json_int_t)di.fp8,
            "int4_weights", (json_int_t)di.gptq, "nvfp4_activations", (json_int_t)di.act_nvfp4,
            "fp8_activations", (json_int_t)di.act_fp8, "fp8_kv_layers",
            (json_int_t)di.kv_layers);
        if (doc)
            json_object_set_new(doc, "device", json_string(device_desc));
        if (doc && r.has_base) {
            json_object_set_new(doc, "base", json_string(against));
            json_object_set_new(doc, "base_nll", json_real(r.base_nll));
            json_object_set_new(doc, "base_perplexity", json_real(r.base_ppl));
            json_object_set_new(doc, "kl", json_real(r.kl));
            json_object_set_new(doc, "top1_agreement", json_real(r.top1));
        }
        if (!doc) {
            nq_fail(&err, "out of memory");
            goto done;
        }
        json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("\n");
        json_decref(doc);
    } else {
        printf("device: %s\n", device_desc);
        printf("text: %s, %zu tokens; %d windows of %d (skipped %d), %llu predictions\n",
               text_path, n_ids, r.windows, r.ctx, skip, (unsigned long long)r.predictions);
        if (di.nvfp4 + di.fp8 + di.gptq)
            printf("emulated: %zu nvfp4, %zu fp8, %zu int4 weights; %zu nvfp4 and %zu fp8 "
                   "activation quantizers; fp8 kv cache in %zu layers\n",
                   di.nvfp4, di.fp8, di.gptq, di.act_nvfp4, di.act_fp8, di.kv_layers);
        printf("perplexity: %.4f (nll %.6f)\n", r.ppl, r.nll);
        if (r.has_base) {
            printf("base perplexity: %.4f (nll %.6f)\n", r.base_ppl, r.base_nll);
            printf("KL(base || model): %.6f nats/token; top-1 agreement %.4f\n", r.kl, r.top1);
        }
    }
    rc = 0;
done:
    if (rc != 0)
        nq_cli_error("%s", err.msg);
    nq_loaded_close(&model);
    nq_loaded_close(&base);
    nq_cuda_close(gpu);
    nq_tokenizer_free(tok);
    free(text);
    free(ids);
    return rc;
}
