#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/parallel.h"
#include "export/quantize.h"
#include "io/safetensors.h"
#include "recipe/plan.h"

static const char *usage =
    "usage: nemoq quantize IN OUT --recipe NAME [options]\n"
    "       nemoq quantize IN --recipe NAME --dry-run     (IN may be a config.json)\n"
    "\n"
    "  --recipe NAME          nvfp4-conservative | nvfp4-aggressive | fp8-conservative |\n"
    "                         fp8-aggressive | int4\n"
    "  --recipe-file FILE     JSON: {\"preset\", \"exclude\": [GLOB], \"include\": {GLOB: FORMAT},\n"
    "                         \"int4_group_size\"}; its rules come before the flags below\n"
    "  --exclude GLOB         keep matching modules in their source precision (repeatable)\n"
    "  --include GLOB=FORMAT  quantize matching Linears as nvfp4|fp8|int4|bf16 (repeatable)\n"
    "  --weight-scale max|mse block/group scales: amax-based (ModelOpt's default) or the\n"
    "                         least-squared-error scale among nearby representable ones\n"
    "  --group-size N         int4 group size, 32|64|128 (default 128, lowered to fit the\n"
    "                         routed experts when not given)\n"
    "  --weights-only         write NVFP4/FP8 weights without activation scales\n"
    "  --threads N            worker threads (default: all cores); output is identical\n"
    "  --max-shard-size SIZE  e.g. 5GB (default), 500MB\n"
    "  --force                replace a non-empty OUT\n"
    "  --dry-run              print the plan (every module, its format, why) and exit\n";

int nq_cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *preset = NULL, *recipe_file = NULL;
    nq_recipe_rule *rules = NULL, *file_rules = NULL;
    size_t nrules = 0, nfile_rules = 0;
    nq_quantize_options opt = {.threads = 0, .log = isatty(2) ? stderr : NULL};
    bool dry_run = false, bad = false;
    int group = 0, rc = 2;
    for (int i = 1; i < argc && !bad; i++) {
        const char *v = NULL;
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            free(rules);
            return 0;
        } else if (nq_arg_value(argc, argv, &i, "--recipe", &v, &bad)) {
            preset = v;
        } else if (nq_arg_value(argc, argv, &i, "--recipe-file", &v, &bad)) {
            recipe_file = v;
        } else if (nq_arg_value(argc, argv, &i, "--exclude", &v, &bad) ||
                   nq_arg_value(argc, argv, &i, "--include", &v, &bad)) {
            if (bad)
                break;
            bool keep = strncmp(a, "--exclude", 9) == 0;
            nq_recipe_rule r = {.keep = keep};
            const char *eq = keep ? NULL : strrchr(v, '=');
            if (!keep && (!eq || nq_format_from_name(eq + 1, &r.format) != 0)) {
                nq_cli_error("--include '%s': expected GLOB=FORMAT with FORMAT nvfp4, fp8, int4 or bf16", v);
                bad = true;
                break;
            }
            size_t glen = keep ? strlen(v) : (size_t)(eq - v);
            if (glen == 0 || glen >= sizeof r.glob) {
                nq_cli_error("%s: empty or too long pattern", keep ? "--exclude" : "--include");
                bad = true;
                break;
            }
            memcpy(r.glob, v, glen);
            r.glob[glen] = '\0';
            if (!keep && r.format == NQ_FORMAT_KEEP)
                r.keep = true;
            nq_recipe_rule *g = realloc(rules, (nrules + 1) * sizeof *g);
            if (!g) {
                bad = true;
                break;
            }
            rules = g;
            rules[nrules++] = r;
        } else if (nq_arg_value(argc, argv, &i, "--weight-scale", &v, &bad)) {
            if (bad)
                break;
            if (strcmp(v, "max") == 0)
                opt.mse_scales = false;
            else if (strcmp(v, "mse") == 0)
                opt.mse_scales = true;
            else {
                nq_cli_error("--weight-scale '%s': expected max or mse", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--group-size", &v, &bad)) {
            if (!bad && (nq_parse_int(v, 32, 128, &group) != 0 ||
                         (group != 32 && group != 64 && group != 128))) {
                nq_cli_error("--group-size '%s': expected 32, 64 or 128", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--threads", &v, &bad)) {
            if (!bad && nq_parse_int(v, 1, 1024, &opt.threads) != 0) {
                nq_cli_error("--threads '%s': expected a number from 1 to 1024", v);
                bad = true;
            }
        } else if (nq_arg_value(argc, argv, &i, "--max-shard-size", &v, &bad)) {
            if (!bad && nq_parse_size(v, &opt.max_shard_bytes) != 0) {
                nq_cli_error("--max-shard-size '%s': expected a size such as 5GB or 500MB", v);
                bad = true;
            }
        } else if (strcmp(a, "--weights-only") == 0) {
            opt.weights_only = true;
        } else if (strcmp(a, "--force") == 0) {
            opt.force = true;
        } else if (strcmp(a, "--dry-run") == 0) {
            dry_run = true;
        } else if (a[0] == '-') {
            nq_cli_error("quantize: unknown flag '%s'", a);
            bad = true;
        } else if (!in) {
            in = a;
        } else if (!out) {
            out = a;
        } else {
            nq_cli_error("quantize: unexpected argument '%s'", a);
            bad = true;
        }
    }
    if (bad)
        goto finish;
    nq_error err = {0};
    int file_group = 0;
    if (recipe_file && nq_recipe_file_load(recipe_file, &preset, &file_rules, &nfile_rules,
                                           &file_group, &err) != 0) {
        nq_cli_error("%s", err.msg);
        rc = 2;
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
                                     .int4_group_explicit = group || file_group};
    opt.in_dir = in;
    opt.out_dir = out;
    if (opt.threads <= 0)
        opt.threads = nq_default_threads();

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
                nq_plan_free(&plan);
                rc = 0;
            }
        }
        nq_checkpoint_close(ck);
        if (rc != 0)
            nq_cli_error("%s", err.msg);
        free(all);
        goto finish;
    }

    nq_quantize_summary sum;
    if (nq_quantize(&opt, &sum, &err) != 0) {
        nq_cli_error("%s", err.msg);
        rc = 1;
    } else {
        printf("wrote %s: %zu tensors in %d shard(s), %.1f MB (from %.1f MB)\n", out,
               sum.tensors_out, sum.shards, sum.bytes_out / 1e6, sum.bytes_in / 1e6);
        printf("modules: %zu nvfp4, %zu fp8, %zu int4, %zu kept\n", sum.modules[NQ_FORMAT_NVFP4],
               sum.modules[NQ_FORMAT_FP8], sum.modules[NQ_FORMAT_INT4], sum.modules[NQ_FORMAT_KEEP]);
        if (sum.sq_ref > 0) {
            printf("weight error: relative RMS %.5f over the quantized modules",
                   sqrt(sum.sq_err / sum.sq_ref));
            if (opt.mse_scales && sum.sq_err_max_scale > 0)
                printf(" (mse scales: %.1f%% less squared error than max scales)",
                       100.0 * (1.0 - sum.sq_err / sum.sq_err_max_scale));
            printf("\n");
        }
        if (opt.weights_only && sum.modules[NQ_FORMAT_NVFP4] + sum.modules[NQ_FORMAT_FP8] > 0)
            printf("note: --weights-only: no activation scales were written, so this checkpoint "
                   "is NOT servable as W4A4/W8A8 (NVFP4 is declared W4A16_NVFP4)\n");
        rc = 0;
    }
    free(all);
finish:
    free(rules);
    free(file_rules);
    return rc;
}
