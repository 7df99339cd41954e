#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "algo/optimize.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "cuda/cuda.h"
#include "export/lora.h"
#include "export/equalize.h"
#include "export/quantize.h"
#include "io/outdir.h"
#include "io/outpath.h"
#include "io/safetensors.h"
#include "io/writer.h"
#include "recipe/plan.h"
#include "core/file.h"
#include "eval/loaded.h"
#include "eval/perplexity.h"
#include "eval/report.h"
#include "tok/tokenizer.h"
#include "formats/rounding.h"

static const char *usage =
    "usage: nemoq quantize IN OUT --recipe NAME [options]\n"
    "       nemoq quantize IN --recipe NAME --dry-run     (IN may be a config.json)\n"
    "       nemoq quantize IN OUT --auto-quantize BITS --calib FILE [options]\n"
    "\n"
    "  --recipe NAME          nvfp4-conservative | nvfp4-aggressive | fp8-conservative |\n"
    "                         fp8-aggressive | int4\n"
    "  --recipe-file FILE     JSON: {\"preset\", \"exclude\": [GLOB], \"include\": {GLOB: FORMAT},\n"
    "                         \"int4_group_size\"}; its rules come before the flags below\n"
    "  --exclude GLOB         keep matching modules in their source precision (repeatable)\n"
    "  --include GLOB=FORMAT  quantize matching Linears as nvfp4|fp8|int4|bf16 (repeatable)\n"
    "  --weight-scale max|mse block/group scales: amax-based (ModelOpt's default) or the\n"
    "                         least-squared-error scale among nearby representable ones\n"
    "  --rounding exact|modelopt-cuda  how scales divide by 448 and 2688: exactly (default;\n"
    "                         ModelOpt on the CPU), or as ModelOpt's export on a CUDA GPU\n"
    "                         (multiply by the f32 reciprocal; FP8 weights divided by the\n"
    "                         BF16-rounded scale), byte for byte\n"
    "  --group-size N         int4 group size, 32|64|128 (default 128, lowered to fit the\n"
    "                         routed experts when not given)\n"
    "  --int4-wide-groups     when the routed experts force a smaller group size, the other\n"
    "                         INT4 Linears keep the requested one (per-module `dynamic` rules)\n"
    "  --calib FILE           calibration text (.txt) or JSONL ({\"text\"} or {\"messages\"});\n"
    "                         required for NVFP4/FP8 (activation and FP8 KV-cache scales)\n"
    "  --calib-samples N      calibration windows (default 256)\n"
    "  --calib-len L          tokens per window (default 2048, clipped to the text)\n"
    "  --algo rtn|gptq        round-to-nearest (default) or GPTQ error feedback (NVFP4, INT4;\n"
    "                         needs --calib)\n"
    "  --gptq-damp F          GPTQ dampening, fraction of the mean Hessian diagonal (0.01)\n"
    "  --gptq-act-order       INT4 GPTQ: columns in order of decreasing Hessian diagonal, static\n"
    "                         group scales (stored layout unchanged: g_idx stays i / group)\n"
    "  --equalize             exact per-channel equalization folded into the weights: the Mamba\n"
    "                         gated norm -> out_proj (needs --calib)\n"
    "  --equalize-pairs LIST  equalize these pair kinds: norm (block RMSNorm -> its Linears,\n"
    "                         the router absorbing), gated, relu2 (expert up rows -> down)\n"
    "  --equalize-objective hessian|served  what the equalization search minimises: the\n"
    "                         W4A16 output error through the Hessian (default), or the served\n"
    "                         layer's on sampled calibration rows (NVFP4: W4A4, activations\n"
    "                         quantized with the recomputed input scale)\n"
    "  --propagate float|quantized  what feeds the next layer during calibration (default:\n"
    "                         quantized with gptq, float otherwise)\n"
    "  --optimize             the best measured quality at the same format and size: GPTQ +\n"
    "                         MSE scales plus the techniques marked [on] below (README\n"
    "                         \"--optimize\"); needs --calib; about 2x the calibration time\n"
    "  --optimize-techniques LIST  exactly these techniques (comma-separated; 'default' = the\n"
    "                         [on] ones; for ablations; does not imply --algo gptq),\n"
    "                         listed at the end\n"
    "  --kv-cache fp8|none    FP8 KV-cache scales when the recipe asks for them (default fp8)\n"
    "  --ssm-cache-dtype float32|float16|bfloat16  record mamba_ssm_cache_dtype in config.json\n"
    "                         (what vLLM uses when --mamba-ssm-cache-dtype is auto)\n"
    "  --report PATH          write PATH.json and PATH.html: per module format, why, errors\n"
    "  --eval FILE            after writing, perplexity and KL vs the input on FILE (emulated\n"
    "                         W4A4/W8A8/FP8 KV), into the summary and the report\n"
    "  --eval-windows N       windows of 256 tokens for --eval (default 64)\n"
    "  --lora DIR[:WEIGHT]    merge a PEFT LoRA adapter (adapter_config.json +\n"
    "                         adapter_model.safetensors) into the weights as they stream,\n"
    "                         before calibration and quantization; repeatable, applied in\n"
    "                         order; WEIGHT multiplies its scaling (default 1)\n"
    "  --weights-only         write NVFP4/FP8 weights without activation scales\n"
    "  --threads N            worker threads (default: all cores); output is identical\n"
    "  --device auto|cpu|cuda[:N]  where calibration (and --eval) forward passes run\n"
    "                         (default cpu; auto: a CUDA GPU when there is one)\n"
    "  --max-shard-size SIZE  e.g. 5GB (default), 500MB\n"
    "  --force                replace a non-empty OUT (atomically)\n"
    "  --clean-stale          remove temporaries (.OUT.nemoq-tmp-*) of killed runs\n"
    "  --dry-run              print the plan (every module, its format, why) and exit\n"
    "  --format gguf          one GGUF file for llama.cpp instead (see --format gguf --help)\n"
    "\n"
    "AutoQuantize (instead of --recipe; needs --calib):\n"
    "  --auto-quantize BITS   per group of modules servers fuse, pick nvfp4, fp8 or bf16 to\n"
    "                         minimise the summed measured KL under BITS effective bits per\n"
    "                         parameter of the searchable modules (exact knapsack)\n"
    "  --auto-formats LIST    candidates, comma-separated from nvfp4,fp8,bf16 (default all)\n"
    "  --auto-cost weight|active-moe  bits per stored weight, or per weight a token reads\n"
    "                         (routed experts count top_k / n_experts)\n"
    "  --auto-score kl|proxy  kl (default): measured KL of the model with one group\n"
    "                         quantized; proxy: the group's error in the residual stream\n"
    "                         after its block x its layer's KL per unit of that error (one\n"
    "                         full KL per layer instead of per group and format)\n"
    "  --auto-score-samples N calibration windows the KL is measured on (default 16)\n"
    "  --auto-scores FILE     reuse the scores in an earlier run's --report JSON instead of\n"
    "                         measuring (same model, groups and formats)\n";

/* Perplexity and KL of the written checkpoint against its input (with the
 * same LoRA adapters merged, so that KL measures the quantization only). */
static int run_eval(const char *out, const char *in, const nq_lora_spec *loras, size_t nloras,
                    const char *text_path, int windows, int threads, nq_cuda *gpu,
                    nq_eval_result *r, nq_error *err)
{
    char tok_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", in);
    nq_tokenizer *tok = nq_tokenizer_load(tok_path, err);
    size_t len = 0, n = 0;
    char *text = tok ? nq_read_file(text_path, &len, err) : NULL;
    int32_t *ids = NULL;
    nq_loaded_model q = {0}, b = {0};
    nq_lora *lora = NULL;
    int rc = -1;
    if (text && nq_tokenizer_encode(tok, text, len, false, &ids, &n, err) == 0 &&
        nq_loaded_open(out, threads, &q, err) == 0 && nq_loaded_open(in, threads, &b, err) == 0 &&
        (!nloras || (lora = nq_lora_attach(b.ck, loras, nloras, NULL, threads, err)))) {
        nq_model_set_cuda(q.model, gpu);
        nq_model_set_cuda(b.model, gpu);
        nq_eval_options o = {.ctx = 256, .windows = windows, .progress = nq_cli_progress};
        rc = nq_eval_perplexity(q.model, b.model, ids, n, &o, r, err);
    }
    nq_loaded_close(&q);
    nq_loaded_close(&b);
    nq_lora_free(lora);
    free(ids);
    free(text);
    nq_tokenizer_free(tok);
    return rc;
}

/* --exclude GLOB (keep) or --include GLOB=FORMAT: one more rule in *rules
 * (grown with realloc; the last matching rule wins).  -1 after printing why,
 * or silently when out of memory. */
static int add_rule(bool keep, const char *v, nq_recipe_rule **rules, size_t *n)
{
    nq_recipe_rule r = {.keep = keep};
    const char *eq = keep ? NULL : strrchr(v, '=');
    if (!keep && (!eq || nq_format_from_name(eq + 1, &r.format) != 0)) {
        nq_cli_error("--include '%s': expected GLOB=FORMAT with FORMAT nvfp4, fp8, int4 or bf16", v);
        return -1;
    }
    size_t glen = keep ? strlen(v) : (size_t)(eq - v);
    if (glen == 0 || glen >= sizeof r.glob) {
        nq_cli_error("%s: empty or too long pattern", keep ? "--exclude" : "--include");
        return -1;
    }
    memcpy(r.glob, v, glen);
    r.glob[glen] = '\0';
    if (!keep && r.format == NQ_FORMAT_KEEP)
        r.keep = true;
    nq_recipe_rule *g = realloc(*rules, (*n + 1) * sizeof *g);
    if (!g)
        return -1;
    *rules = g;
    (*rules)[(*n)++] = r;
    return 0;
}

/* --equalize-pairs LIST: its NQ_EQ_* bits, 0 after printing the refusal. */
static int equalize_pairs(const char *v)
{
    int kinds = 0;
    char buf[64];
    /* a list cut to fit could silently lose its last kinds */
    if (strlen(v) >= sizeof buf) {
        nq_cli_error("--equalize-pairs: list longer than %zu characters", sizeof buf - 1);
        return 0;
    }
    snprintf(buf, sizeof buf, "%s", v);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int kind = strcmp(tok, "norm") == 0    ? NQ_EQ_NORM
                   : strcmp(tok, "gated") == 0 ? NQ_EQ_GATED
                   : strcmp(tok, "relu2") == 0 ? NQ_EQ_RELU2
                                               : 0;
        if (!kind) {
            kinds = 0; /* one unknown name refuses the list */
            break;
        }
        kinds |= kind;
    }
    if (!kinds)
        nq_cli_error("--equalize-pairs '%s': expected a comma list of norm, gated, relu2", v);
    return kinds;
}

/* --auto-formats LIST: formats[f] set for each candidate named (the others
 * cleared).  -1 after printing the refusal. */
static int auto_formats(const char *v, bool formats[3])
{
    memset(formats, 0, 3 * sizeof *formats);
    char buf[128];
    if (strlen(v) >= sizeof buf) {
        nq_cli_error("--auto-formats: list longer than %zu characters", sizeof buf - 1);
        return -1;
    }
    snprintf(buf, sizeof buf, "%s", v);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        nq_format f;
        if (nq_format_from_name(tok, &f) != 0 || f == NQ_FORMAT_INT4) {
            nq_cli_error("--auto-formats '%s': '%s' is not one of nvfp4, fp8, bf16", v, tok);
            return -1;
        }
        formats[f] = true;
    }
    return 0;
}

/* What quantize prints on stdout once OUT is written. */
static void print_summary(const char *out, const nq_quantize_options *opt,
                          const nq_quantize_summary *sum, double bits, const json_t *lora_report)
{
    printf("wrote %s: %zu tensors in %d shard(s), %.1f MB (from %.1f MB), %.2f bits/parameter\n",
           out, sum->tensors_out, sum->shards, sum->bytes_out / 1e6, sum->bytes_in / 1e6, bits);
    nq_lora_print_summary(stdout, lora_report);
    printf("modules: %zu nvfp4, %zu fp8, %zu int4, %zu kept\n", sum->modules[NQ_FORMAT_NVFP4],
           sum->modules[NQ_FORMAT_FP8], sum->modules[NQ_FORMAT_INT4], sum->modules[NQ_FORMAT_KEEP]);
    if (sum->sq_ref > 0) {
        printf("weight error: relative RMS %.5f over the quantized modules",
               sqrt(sum->sq_err / sum->sq_ref));
        if (opt->mse_scales && !opt->gptq && sum->sq_err_max_scale > 0)
            printf(" (mse scales: %.1f%% less squared error than max scales)",
                   100.0 * (1.0 - sum->sq_err / sum->sq_err_max_scale));
        printf("\n");
    }
    if (opt->optimize.enabled) {
        char techs[256];
        nq_optimize_describe(&opt->optimize, techs, sizeof techs);
        printf("optimize: %s\n", techs);
    }
    if (opt->calib_path) {
        printf("calibration: %d x %d tokens in %.1f s; output error on calibration inputs: "
               "relative RMS %.5f; FP8 KV scales in %zu attention layers\n",
               sum->calib_samples, sum->calib_len, sum->calib_seconds,
               sum->out_sq_ref > 0 ? sqrt(sum->out_sq_err / sum->out_sq_ref) : 0.0, sum->kv_layers);
        static const char *const kinds[4] = {"Mamba", "MoE", "attention", "MLP"};
        bool any = false;
        for (int k = 0; k < 4; k++)
            if (sum->layers_of_kind[k] > 0) {
                printf("%s %s layers: %.2f s each (forward with statistics %.2f s) x %d",
                       any ? ";" : "time per layer:", kinds[k],
                       sum->layer_seconds[k] / sum->layers_of_kind[k],
                       sum->layer_stats_seconds[k] / sum->layers_of_kind[k], sum->layers_of_kind[k]);
                any = true;
            }
        if (any)
            printf("\n");
        if (opt->cuda) {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            printf("memory: GPU peak %.2f GiB allocated by nemoq; host peak RSS %.2f GiB\n",
                   nq_cuda_peak_bytes(opt->cuda) / 1073741824.0, ru.ru_maxrss / 1048576.0);
        }
        if (opt->gptq)
            printf("gptq: %zu modules; %zu fell back to rtn+mse (fewer than %d calibration rows)\n",
                   sum->gptq_modules, sum->gptq_fallbacks,
                   opt->gptq_min_rows > 0 ? opt->gptq_min_rows : 128);
        if (opt->equalize || opt->optimize.equalize_nvfp4)
            printf("equalize: %zu of %zu searched pairs rescaled; their round-to-nearest output "
                   "error on calibration inputs %.1f%% lower than unscaled\n",
                   sum->eq_pairs, sum->eq_searched,
                   sum->eq_err_identity > 0
                       ? 100.0 * (1.0 - sum->eq_err_best / sum->eq_err_identity)
                       : 0.0);
        if (sum->experts_without_tokens)
            printf("note: %zu routed experts received no calibration token; they use their "
                   "layer's input scale (the max over its experts)\n",
                   sum->experts_without_tokens);
    }
    if (opt->weights_only && sum->modules[NQ_FORMAT_NVFP4] + sum->modules[NQ_FORMAT_FP8] > 0) {
        /* say only what is true of the formats this checkpoint holds */
        bool nv = sum->modules[NQ_FORMAT_NVFP4] > 0, f8 = sum->modules[NQ_FORMAT_FP8] > 0;
        printf("note: --weights-only: no activation scales were written, so this checkpoint "
               "is NOT servable as %s%s\n",
               nv && f8 ? "W4A4/W8A8" : nv ? "W4A4" : "W8A8",
               nv && !f8 ? " (it is declared W4A16_NVFP4, vLLM's weight-only NVFP4)"
                         : f8 ? " (FP8 weights need an input_scale per module: calibrate with "
                                "--calib)"
                              : "");
    }
}

int nq_cmd_quantize(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if ((strcmp(argv[i], "--format") == 0 && i + 1 < argc && strcmp(argv[i + 1], "gguf") == 0) ||
            strcmp(argv[i], "--format=gguf") == 0)
            return nq_cmd_quantize_gguf(argc, argv);
    const char *in = NULL, *out = NULL, *preset = NULL, *recipe_file = NULL;
    nq_recipe_rule *rules = NULL, *file_rules = NULL;
    size_t nrules = 0, nfile_rules = 0;
    nq_quantize_options opt = {.threads = 0, .log = isatty(2) ? stderr : NULL,
                               .kv_cache_fp8 = true};
    const char *report_path = NULL, *eval_path = NULL, *device = "cpu";
    int eval_windows = 64;
    nq_lora_spec *loras = NULL;
    size_t nloras = 0;
    bool dry_run = false, bad = false, clean_stale = false, auto_formats_given = false;
    bool optimize_flag = false, techniques_given = false;
    bool auto_score_given = false;
    int group = 0, rc = 2;
    bool wide_groups = false;
    static const char *const weight_scales[] = {"max", "mse"}, *const algos[] = {"rtn", "gptq"},
                             *const propagations[] = {"float", "quantized"},
                             *const ssm_cache_dtypes[] = {"float32", "float16", "bfloat16"},
                             *const kv_caches[] = {"fp8", "none"},
                             *const auto_costs[] = {"weight", "active-moe"},
                             *const auto_scores[] = {"kl", "proxy"},
                             *const equalize_objectives[] = {"hessian", "served"};
    int choice = 0;
    for (int i = 1; i < argc && !bad; i++) {
        const char *v = NULL;
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            fputs("\n--optimize techniques ([on]: part of plain --optimize):\n", stdout);
            nq_optimize_print_table(stdout);
            free(rules);
            return 0;
        } else if (nq_arg_value(argc, argv, &i, "--recipe", &v, &bad)) {
            preset = v;
        } else if (nq_arg_value(argc, argv, &i, "--recipe-file", &v, &bad)) {
            recipe_file = v;
        } else if (nq_arg_value(argc, argv, &i, "--exclude", &v, &bad) ||
                   nq_arg_value(argc, argv, &i, "--include", &v, &bad)) {
            if (!bad && add_rule(strncmp(a, "--exclude", 9) == 0, v, &rules, &nrules) != 0)
                bad = true;
        } else if (nq_arg_choice(argc, argv, &i, "--weight-scale", weight_scales, 2, &choice, &bad)) {
            if (!bad)
                opt.mse_scales = choice == 1;
        } else if (nq_arg_value(argc, argv, &i, "--rounding", &v, &bad)) {
            nq_rounding r;
            if (bad)
                break;
            if (nq_parse_rounding(v, &r) != 0) {
                nq_cli_error("--rounding '%s': expected exact or modelopt-cuda", v);
                bad = true;
            } else {
                nq_set_rounding(r);
            }
        } else if (nq_arg_value(argc, argv, &i, "--group-size", &v, &bad)) {
            if (!bad && (nq_parse_int(v, 32, 128, &group) != 0 ||
                         (group != 32 && group != 64 && group != 128))) {
                nq_cli_error("--group-size '%s': expected 32, 64 or 128", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--device", &v, &bad)) {
            device = v;
        } else if (nq_arg_threads(argc, argv, &i, &opt.threads, &bad) ||
                   nq_arg_shard_size(argc, argv, &i, &opt.max_shard_bytes, &bad) ||
                   nq_arg_int(argc, argv, &i, "--calib-samples", 1, 1 << 20,
                              "an integer from 1 to 1048576", &opt.calib_samples, &bad) ||
                   nq_arg_int(argc, argv, &i, "--calib-len", 2, 1 << 20,
                              "an integer from 2 to 1048576", &opt.calib_len, &bad) ||
                   nq_arg_gptq_damp(argc, argv, &i, &opt.gptq_damp, &bad) ||
                   nq_arg_int(argc, argv, &i, "--eval-windows", 1, 1 << 20,
                              "an integer from 1 to 1048576", &eval_windows, &bad) ||
                   nq_arg_number(argc, argv, &i, "--auto-quantize", 0, 16, true,
                                 "bits per parameter in (0, 16]", &opt.auto_bits, &bad) ||
                   nq_arg_int(argc, argv, &i, "--auto-score-samples", 1, 1 << 20,
                              "a positive integer", &opt.auto_score_windows, &bad)) {
            /* read into opt */
        } else if (nq_arg_value(argc, argv, &i, "--calib", &v, &bad)) {
            opt.calib_path = v;
        } else if (nq_arg_choice(argc, argv, &i, "--algo", algos, 2, &choice, &bad)) {
            /* the last --algo given wins, as for every other flag */
            if (!bad)
                opt.gptq = choice == 1;
        } else if (strcmp(argv[i], "--equalize") == 0) {
            opt.equalize = true;
        } else if (nq_arg_value(argc, argv, &i, "--equalize-pairs", &v, &bad)) {
            opt.equalize = true;
            opt.equalize_kinds = bad ? 0 : equalize_pairs(v);
            bad = bad || opt.equalize_kinds == 0;
        } else if (nq_arg_choice(argc, argv, &i, "--equalize-objective", equalize_objectives, 2,
                                 &choice, &bad)) {
            if (!bad)
                opt.equalize_served = choice == 1;
        } else if (strcmp(argv[i], "--int4-wide-groups") == 0) {
            wide_groups = true;
        } else if (strcmp(argv[i], "--gptq-act-order") == 0) {
            opt.gptq_act_order = true;
        } else if (nq_arg_choice(argc, argv, &i, "--propagate", propagations, 2, &choice, &bad)) {
            if (!bad)
                opt.propagate = choice == 0 ? NQ_PROPAGATE_FLOAT : NQ_PROPAGATE_QUANTIZED;
        } else if (nq_arg_choice(argc, argv, &i, "--ssm-cache-dtype", ssm_cache_dtypes, 3, &choice,
                                 &bad)) {
            if (!bad)
                opt.ssm_cache_dtype = ssm_cache_dtypes[choice];
        } else if (nq_arg_choice(argc, argv, &i, "--kv-cache", kv_caches, 2, &choice, &bad)) {
            if (!bad)
                opt.kv_cache_fp8 = choice == 0;
        } else if (nq_arg_value(argc, argv, &i, "--lora", &v, &bad)) {
            if (bad)
                break;
            if (nq_cli_add_lora(v, &loras, &nloras) != 0) {
                bad = true;
                break;
            }
        } else if (nq_arg_value(argc, argv, &i, "--report", &v, &bad)) {
            report_path = v;
        } else if (nq_arg_value(argc, argv, &i, "--eval", &v, &bad)) {
            eval_path = v;
        } else if (nq_arg_value(argc, argv, &i, "--auto-formats", &v, &bad)) {
            if (bad)
                break;
            auto_formats_given = true;
            bad = auto_formats(v, opt.auto_formats) != 0;
        } else if (nq_arg_choice(argc, argv, &i, "--auto-cost", auto_costs, 2, &choice, &bad)) {
            if (!bad)
                opt.auto_active_moe = choice == 1;
        } else if (nq_arg_choice(argc, argv, &i, "--auto-score", auto_scores, 2, &choice, &bad)) {
            if (!bad)
                opt.auto_score_proxy = choice == 1;
            auto_score_given = true;
        } else if (nq_arg_value(argc, argv, &i, "--auto-scores", &v, &bad)) {
            opt.auto_scores_path = v;
        } else if (strcmp(a, "--optimize") == 0) {
            optimize_flag = true;
        } else if (nq_arg_value(argc, argv, &i, "--optimize-techniques", &v, &bad)) {
            nq_error oe = {0};
            if (!bad && nq_optimize_parse(v, &opt.optimize, &oe) != 0) {
                nq_cli_error("%s", oe.msg);
                bad = true;
            }
            techniques_given = true;
        } else if (strcmp(a, "--weights-only") == 0) {
            opt.weights_only = true;
        } else if (strcmp(a, "--force") == 0) {
            opt.force = true;
        } else if (strcmp(a, "--clean-stale") == 0) {
            clean_stale = true;
        } else if (strcmp(a, "--dry-run") == 0) {
            dry_run = true;
        } else {
            bad = !nq_arg_in_out(a, "quantize: unknown flag", "quantize", &in, &out);
        }
    }
    if (bad)
        goto finish;
    if (optimize_flag) {
        /* GPTQ + MSE scales are part of the best combination */
        opt.gptq = true;
        opt.mse_scales = true;
        if (!techniques_given)
            nq_optimize_default(&opt.optimize);
        opt.optimize.enabled = true;
    }
    nq_error err = {0};
    int file_group = 0;
    if (recipe_file && nq_recipe_file_load(recipe_file, &preset, &file_rules, &nfile_rules,
                                           &file_group, &err) != 0) {
        nq_cli_error("%s", err.msg);
        rc = 2;
        goto finish;
    }
    if (opt.auto_bits > 0) {
        if (preset) {
            nq_cli_error("quantize: --auto-quantize chooses the formats itself; drop --recipe "
                         "(use --include/--exclude to pin modules)");
            goto finish;
        }
        if (nloras) {
            nq_cli_error("quantize: --lora with --auto-quantize is not supported: the "
                         "sensitivities would be measured on the weights without the adapter");
            goto finish;
        }
        if (!opt.calib_path) {
            nq_cli_error("quantize: --auto-quantize needs --calib FILE (sensitivities are "
                         "measured on the model's output over calibration text)");
            goto finish;
        }
        if (!auto_formats_given)
            opt.auto_formats[NQ_FORMAT_KEEP] = opt.auto_formats[NQ_FORMAT_NVFP4] =
                opt.auto_formats[NQ_FORMAT_FP8] = true;
        /* the base plan: every Linear but embeddings, lm_head, routers and
         * conv1d quantizable; the search then sets their formats */
        preset = "nvfp4-aggressive";
    } else if (auto_formats_given || opt.auto_active_moe || opt.auto_score_windows ||
               opt.auto_scores_path || auto_score_given) {
        nq_cli_error("quantize: --auto-formats, --auto-cost, --auto-score, --auto-score-samples "
                     "and --auto-scores need --auto-quantize BITS");
        goto finish;
    }
    if (!in || (!out && !dry_run) || !preset) {
        nq_cli_error("quantize: %s", !in ? "no input checkpoint given"
                                     : !preset ? "no --recipe given"
                                               : "no output directory given");
        fputs(usage, stderr);
        goto finish;
    }
    /* recipe-file rules first, then the command line's, last match wins */
    nq_recipe_rule *all = malloc((nrules + nfile_rules + 1) * sizeof *all);
    if (!all)
        goto finish;
    if (nfile_rules)
        memcpy(all, file_rules, nfile_rules * sizeof *all);
    if (nrules)
        memcpy(all + nfile_rules, rules, nrules * sizeof *all);
    opt.recipe = (nq_recipe_options){.preset = preset, .rules = all,
                                     .nrules = nrules + nfile_rules,
                                     .int4_group_size = group ? group : file_group,
                                     .int4_group_explicit = group || file_group,
                                     .int4_wide_groups = wide_groups};
    opt.in_dir = in;
    opt.out_dir = out;
    if (opt.threads <= 0)
        opt.threads = nq_default_threads();

    if (dry_run && opt.auto_bits > 0) {
        /* AutoQuantize measures on the weights: the full pipeline up to the plan */
        opt.dry_run = true;
        nq_interrupt_install();
        rc = nq_quantize(&opt, &(nq_quantize_summary){0}, &err) == 0 ? 0 : 1;
        nq_interrupt_uninstall();
        if (rc != 0)
            nq_cli_error("%s", err.msg);
        free(all);
        goto finish;
    }
    if (dry_run) {
        nq_model_config cfg;
        struct stat st;
        char cfg_path[4096];
        bool is_dir = stat(in, &st) == 0 && S_ISDIR(st.st_mode);
        snprintf(cfg_path, sizeof cfg_path, is_dir ? "%s/config.json" : "%s", in);
        nq_checkpoint *ck = NULL;
        rc = 1;
        if (nq_model_config_load(cfg_path, &cfg, &err) == 0) {
            /* with weights present the plan uses their real shapes */
            if (is_dir) {
                nq_error probe = {0};
                ck = nq_checkpoint_open(in, &probe);
            }
            nq_plan plan;
            if (nq_plan_build(&cfg, ck, &opt.recipe, &plan, &err) == 0) {
                nq_plan_print(stdout, &plan);
                rc = nq_plan_refuse_empty(&plan, in, &err) == 0 ? 0 : 1;
                nq_plan_free(&plan);
            }
        }
        nq_checkpoint_close(ck);
        if (rc != 0)
            nq_cli_error("%s", err.msg);
        free(all);
        goto finish;
    }

    /* Every path is checked before any work: a typo must not cost a long
     * run, and nothing may be written inside the input. */
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", in);
    nq_writer_options out_check = {.out_dir = out, .input_dir = in, .force = opt.force};
    if (nq_writer_check(&out_check, &err) != 0 ||
        (report_path && nq_report_check(report_path, in, out, &err) != 0) ||
        (opt.calib_path && nq_inpath_check_file(opt.calib_path, "--calib", &err) != 0) ||
        (eval_path && (nq_inpath_check_file(eval_path, "--eval", &err) != 0 ||
                       nq_inpath_check_file(tok_path, "--eval needs", &err) != 0))) {
        nq_cli_error("%s", err.msg);
        rc = 1;
        free(all);
        goto finish;
    }
    char device_desc[384];
    if (nq_device_open(device, &opt.cuda, device_desc, sizeof device_desc, &err) != 0) {
        nq_cli_error("%s", err.msg);
        rc = 1;
        free(all);
        goto finish;
    }
    if (opt.cuda || strcmp(device, "cpu") != 0)
        printf("device: %s\n", device_desc);
    nq_outdir_stale(out, clean_stale, stderr);

    json_t *report_modules = report_path ? json_array() : NULL;
    json_t *auto_report = report_path && opt.auto_bits > 0 ? json_object() : NULL;
    json_t *lora_report = nloras ? json_array() : NULL;
    opt.report_modules = report_modules;
    opt.auto_report = auto_report;
    opt.lora = loras;
    opt.nlora = nloras;
    opt.lora_report = lora_report;
    nq_quantize_summary sum;
    nq_interrupt_install();
    int qrc = nq_quantize(&opt, &sum, &err);
    /* the output is committed (or removed): plain Ctrl-C again from here */
    nq_interrupt_uninstall();
    if (qrc != 0) {
        nq_cli_error("%s", err.msg);
        rc = 1;
        json_decref(report_modules);
        json_decref(auto_report);
        json_decref(lora_report);
        free(all);
        goto finish;
    }
    rc = 0;
    double bits = sum.params_in ? 8.0 * (double)sum.bytes_out / (double)sum.params_in : 0.0;
    print_summary(out, &opt, &sum, bits, lora_report);
    json_t *eval_doc = NULL;
    if (eval_path) {
        nq_eval_result r;
        if (run_eval(out, in, loras, nloras, eval_path, eval_windows, opt.threads, opt.cuda, &r,
                     &err) != 0) {
            nq_cli_error("--eval: %s", err.msg);
            rc = 1;
        } else {
            printf("eval on %s (%d windows of %d): perplexity %.4f (input %.4f), KL %.6f "
                   "nats/token, top-1 agreement %.4f\n",
                   eval_path, r.windows, r.ctx, r.ppl, r.base_ppl, r.kl, r.top1);
            eval_doc = json_pack("{s:s, s:i, s:i, s:I, s:f, s:f, s:f, s:f}", "text", eval_path,
                                 "windows", r.windows, "ctx", r.ctx, "predictions",
                                 (json_int_t)r.predictions, "perplexity", r.ppl,
                                 "input_perplexity", r.base_ppl, "kl", r.kl, "top1_agreement",
                                 r.top1);
        }
    }
    if (report_path && rc == 0) {
        json_t *summary = json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:f, s:f}", "input", in,
            "output", out, "recipe", opt.auto_bits > 0 ? "auto-quantize" : preset, "algorithm", opt.gptq ? "gptq" : "rtn",
            "weight_scale", opt.mse_scales ? "mse" : "max", "rounding",
            nq_rounding_name(nq_get_rounding()), "bytes_in", (json_int_t)sum.bytes_in,
            "bytes_out", (json_int_t)sum.bytes_out, "bits_per_parameter", bits,
            "nvfp4_modules", (json_int_t)sum.modules[NQ_FORMAT_NVFP4], "fp8_modules",
            (json_int_t)sum.modules[NQ_FORMAT_FP8], "int4_modules",
            (json_int_t)sum.modules[NQ_FORMAT_INT4], "kept_modules",
            (json_int_t)sum.modules[NQ_FORMAT_KEEP], "weight_rel_rms",
            sum.sq_ref > 0 ? sqrt(sum.sq_err / sum.sq_ref) : 0.0, "output_rel_rms",
            sum.out_sq_ref > 0 ? sqrt(sum.out_sq_err / sum.out_sq_ref) : 0.0);
        if (summary && opt.optimize.enabled) {
            char techs[256];
            nq_optimize_describe(&opt.optimize, techs, sizeof techs);
            json_object_set_new(summary, "optimize", json_string(techs));
        }
        if (summary && opt.calib_path) {
            json_object_set_new(summary, "calibration", json_string(opt.calib_path));
            json_object_set_new(summary, "calibration_tokens",
                                json_integer((json_int_t)sum.calib_samples * sum.calib_len));
            json_object_set_new(summary, "fp8_kv_layers", json_integer((json_int_t)sum.kv_layers));
            json_object_set_new(summary, "experts_without_tokens",
                                json_integer((json_int_t)sum.experts_without_tokens));
            json_object_set_new(summary, "equalize",
                                json_boolean(opt.equalize || opt.optimize.equalize_nvfp4));
            if (opt.equalize || opt.optimize.equalize_nvfp4)
                json_object_set_new(summary, "equalized_pairs",
                                    json_integer((json_int_t)sum.eq_pairs));
        }
        json_t *doc = json_pack("{s:o, s:O}", "summary", summary, "modules", report_modules);
        if (doc && eval_doc)
            json_object_set(doc, "eval", eval_doc);
        if (doc && auto_report)
            json_object_set(doc, "auto_quantize", auto_report);
        if (doc && lora_report)
            json_object_set(doc, "lora_adapters", lora_report);
        if (!doc || nq_report_check(report_path, in, out, &err) != 0 ||
            nq_report_write(report_path, doc, &err) != 0) {
            nq_cli_error("--report: %s", doc ? err.msg : "out of memory");
            rc = 1;
        }
        json_decref(doc);
    }
    json_decref(eval_doc);
    json_decref(auto_report);
    json_decref(report_modules);
    json_decref(lora_report);
    free(all);
finish:
    nq_cuda_close(opt.cuda);
    for (size_t k = 0; k < nloras; k++)
        free(loras[k].owned);
    free(loras);
    free(rules);
    free(file_rules);
    return rc;
}
