/* GGUF commands: `quantize --format gguf`, `convert`, and `inspect` of a
 * .gguf file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "export/gguf.h"
#include "export/quantize.h"
#include "io/gguf.h"
#include "io/gguf_inspect.h"
#include "io/outdir.h"
#include "io/outpath.h"

static const char *quantize_usage =
    "usage: nemoq quantize IN OUT.gguf --format gguf --recipe gguf-nvfp4 [options]\n"
    "\n"
    "  Routed experts in NVFP4 (ggml's block_nvfp4 with the per-tensor scale as\n"
    "  a .scale tensor), everything else in the --gguf-rest type; norms, router,\n"
    "  conv1d and SSM parameters in F32 (what llama.cpp's converter writes).\n"
    "  --gguf-rest q8_0|bf16|f16|f32  type of the other matrices (default q8_0)\n"
    "  --weight-scale max|mse  NVFP4 block scales (default max)\n"
    "  --calib FILE            calibrate first (activation scales; needed for --algo gptq)\n"
    "  --calib-samples N, --calib-len L, --algo rtn|gptq, --gptq-damp F  as for safetensors\n"
    "  --threads N             worker threads (output identical for any N)\n"
    "  --force                 replace an existing OUT\n"
    "  --clean-stale           remove temporaries (.OUT.nemoq-tmp-*) of killed runs\n";

static const char *convert_usage =
    "usage: nemoq convert IN OUT.gguf [--gguf-rest q8_0|bf16|f16|f32] [--force] [--clean-stale]\n"
    "  IN: a Nemotron-H checkpoint, BF16/F16/F32 or NVFP4 (nemoq or ModelOpt).\n"
    "  NVFP4 modules are repacked bit for bit (llama.cpp's convert_hf_to_gguf.py\n"
    "  layout), float matrices written in the --gguf-rest type (default q8_0).\n";

/* --gguf-rest TYPE, the type of the matrices that are not routed experts */
static bool arg_gguf_rest(int argc, char **argv, int *i, uint32_t *type, bool *bad)
{
    const char *v = NULL;
    if (!nq_arg_value(argc, argv, i, "--gguf-rest", &v, bad))
        return false;
    if (!*bad && nq_gguf_rest_type_from_name(v, type) != 0) {
        nq_cli_error("--gguf-rest '%s': expected q8_0, bf16, f16 or f32", v);
        *bad = true;
    }
    return true;
}

static void print_summary(const char *out, const nq_gguf_summary *s)
{
    printf("wrote %s: %zu tensors (%zu nvfp4, %zu q8_0, %zu bf16/f16, %zu f32), %.2f MB, %.3f bits per weight\n",
           out, s->tensors, s->by_type[0], s->by_type[1], s->by_type[2], s->by_type[3],
           (double)s->bytes / 1e6, s->params ? 8.0 * (double)s->weight_bytes / (double)s->params : 0.0);
    if (s->experts_quantized)
        printf("experts quantized to NVFP4: %zu matrices\n", s->experts_quantized);
    if (s->nvfp4_repacked)
        printf("NVFP4 matrices repacked from the input: %zu\n", s->nvfp4_repacked);
}

static int run_export(nq_gguf_options *o)
{
    nq_gguf_summary s;
    nq_error err = {0};
    nq_interrupt_install();
    int rc = nq_gguf_export(o, &s, &err);
    nq_interrupt_uninstall();
    if (rc != 0) {
        nq_cli_error("%s", err.msg);
        return 1;
    }
    print_summary(o->out_path, &s);
    return 0;
}

int nq_cmd_quantize_gguf(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *recipe = NULL;
    nq_gguf_options o = {.rest_type = NQ_GGML_Q8_0, .log = isatty(2) ? stderr : NULL};
    nq_quantize_options q = {.log = isatty(2) ? stderr : NULL};
    bool bad = false, clean_stale = false;
    static const char *const weight_scales[] = {"max", "mse"}, *const algos[] = {"rtn", "gptq"};
    int choice = 0;
    for (int i = 1; i < argc && !bad; i++) {
        const char *v = NULL, *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(quantize_usage, stdout);
            return 0;
        } else if (nq_arg_value(argc, argv, &i, "--format", &v, &bad)) {
            /* checked by the caller */
        } else if (nq_arg_value(argc, argv, &i, "--recipe", &v, &bad)) {
            recipe = v;
        } else if (arg_gguf_rest(argc, argv, &i, &o.rest_type, &bad)) {
            /* read into o */
        } else if (nq_arg_choice(argc, argv, &i, "--weight-scale", weight_scales, 2, &choice, &bad)) {
            if (!bad)
                o.mse_scales = q.mse_scales = choice == 1;
        } else if (nq_arg_threads(argc, argv, &i, &o.threads, &bad)) {
            /* read into o */
        } else if (nq_arg_value(argc, argv, &i, "--calib", &v, &bad)) {
            q.calib_path = v;
        } else if (nq_arg_int(argc, argv, &i, "--calib-samples", 1, 1 << 20, "a positive integer",
                              &q.calib_samples, &bad) ||
                   nq_arg_int(argc, argv, &i, "--calib-len", 2, 1 << 20, "an integer >= 2",
                              &q.calib_len, &bad) ||
                   nq_arg_gptq_damp(argc, argv, &i, &q.gptq_damp, &bad)) {
            /* read into q */
        } else if (nq_arg_choice(argc, argv, &i, "--algo", algos, 2, &choice, &bad)) {
            if (!bad)
                q.gptq = choice == 1;
        } else if (strcmp(a, "--force") == 0) {
            o.force = true;
        } else if (strcmp(a, "--clean-stale") == 0) {
            clean_stale = true;
        } else {
            bad = !nq_arg_in_out(a, "quantize --format gguf: unknown or unsupported flag", "quantize",
                                 &in, &out);
        }
    }
    if (!bad && (!in || !out)) {
        nq_cli_error("quantize --format gguf: expected IN and OUT.gguf");
        bad = true;
    }
    if (!bad && (!recipe || strcmp(recipe, "gguf-nvfp4") != 0)) {
        nq_cli_error("quantize --format gguf: --recipe must be gguf-nvfp4 (routed experts NVFP4, the rest --gguf-rest)");
        bad = true;
    }
    if (!bad && q.gptq && !q.calib_path) {
        nq_cli_error("--algo gptq needs --calib");
        bad = true;
    }
    if (bad) {
        fputs(quantize_usage, stderr);
        return 2;
    }
    if (o.threads <= 0)
        o.threads = nq_default_threads();
    o.in_dir = in;
    o.out_path = out;
    nq_outdir_stale(out, clean_stale, stderr);
    if (!q.calib_path) {
        o.quantize_experts = true;
        return run_export(&o);
    }
    /* Calibrated: the routed experts go through the safetensors pipeline
     * (calibration, GPTQ, MSE) into a hidden staging checkpoint beside OUT,
     * which is then repacked; the staging directory is always removed. */
    struct stat st;
    nq_error perr = {0};
    if (stat(out, &st) == 0 && !o.force) {
        nq_cli_error("%s: already exists (use --force to replace it)", out);
        return 1;
    }
    if (nq_outpath_check_file(out, in, NULL, "OUT", &perr) != 0 ||
        nq_inpath_check_file(q.calib_path, "--calib", &perr) != 0) {
        nq_cli_error("%s", perr.msg);
        return 1;
    }
    /* a locked temporary as every output's, so --clean-stale finds it when
     * a killed run leaves it */
    char *stage = NULL, ck[4200];
    int stage_lock = -1;
    if (nq_outdir_temp(out, &stage, &stage_lock, &perr) != 0) {
        nq_cli_error("%s", perr.msg);
        return 1;
    }
    snprintf(ck, sizeof ck, "%s/ckpt", stage);
    nq_recipe_rule rules[2] = {{.glob = "*", .keep = true},
                               {.glob = "backbone.layers.*.mixer.experts.*", .format = NQ_FORMAT_NVFP4}};
    q.in_dir = in;
    q.out_dir = ck;
    q.recipe.preset = "nvfp4-conservative";
    q.recipe.rules = rules;
    q.recipe.nrules = 2;
    q.threads = o.threads;
    q.kv_cache_fp8 = false; /* llama.cpp reads no K/V scales */
    nq_quantize_summary qs;
    nq_error err = {0};
    nq_interrupt_install();
    int rc = nq_quantize(&q, &qs, &err);
    nq_interrupt_uninstall();
    if (rc != 0) {
        nq_cli_error("%s", err.msg);
        nq_remove_tree(stage);
        close(stage_lock);
        free(stage);
        return 1;
    }
    printf("calibrated: %d x %d tokens; %zu NVFP4 expert matrices%s\n", qs.calib_samples, qs.calib_len,
           qs.modules[NQ_FORMAT_NVFP4], q.gptq ? " (GPTQ)" : "");
    o.in_dir = ck;
    rc = run_export(&o);
    nq_remove_tree(stage);
    close(stage_lock);
    free(stage);
    return rc;
}

int nq_cmd_convert(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    nq_gguf_options o = {.rest_type = NQ_GGML_Q8_0, .log = isatty(2) ? stderr : NULL};
    bool bad = false, clean_stale = false;
    for (int i = 1; i < argc && !bad; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(convert_usage, stdout);
            return 0;
        } else if (arg_gguf_rest(argc, argv, &i, &o.rest_type, &bad)) {
            /* read into o */
        } else if (strcmp(a, "--force") == 0) {
            o.force = true;
        } else if (strcmp(a, "--clean-stale") == 0) {
            clean_stale = true;
        } else {
            bad = !nq_arg_in_out(a, "convert: unknown flag", "convert", &in, &out);
        }
    }
    if (!bad && (!in || !out)) {
        nq_cli_error("convert: expected IN and OUT.gguf");
        bad = true;
    }
    if (bad) {
        fputs(convert_usage, stderr);
        return 2;
    }
    o.in_dir = in;
    o.out_path = out;
    o.threads = nq_default_threads();
    nq_outdir_stale(out, clean_stale, stderr);
    return run_export(&o);
}

/* ---- inspect ---- */

static void print_value(const nq_gguf_kv *kv)
{
    const unsigned char *p = kv->data;
    uint32_t t = kv->type == NQ_GGUF_ARRAY ? kv->arr_type : kv->type;
    uint64_t n = kv->type == NQ_GGUF_ARRAY ? kv->n : 1, show = n < 8 ? n : 8;
    if (kv->type == NQ_GGUF_ARRAY)
        printf("[%s x %llu] ", nq_gguf_vtype_name(t), (unsigned long long)n);
    for (uint64_t i = 0; i < show; i++) {
        if (i)
            printf(", ");
        if (t == NQ_GGUF_STRING) {
            const char *s;
            uint64_t len;
            if (kv->type == NQ_GGUF_ARRAY)
                nq_gguf_kv_str_at(kv, i, &s, &len);
            else {
                len = 0;
                for (int b = 7; b >= 0; b--)
                    len = (len << 8) | p[b];
                s = (const char *)p + 8;
            }
            putchar('"');
            for (uint64_t j = 0; j < len && j < 80; j++) {
                unsigned char c = (unsigned char)s[j];
                if (c == '"' || c == '\\')
                    printf("\\%c", c);
                else if (c < 0x20 || c == 0x7f)
                    printf("\\x%02x", c);
                else
                    putchar(c);
            }
            printf(len > 80 ? "...\"" : "\"");
            continue;
        }
        const unsigned char *e = p + i * nq_gguf_vtype_size(t);
        uint64_t u = 0;
        for (int b = (int)nq_gguf_vtype_size(t) - 1; b >= 0; b--)
            u = (u << 8) | e[b];
        switch (t) {
        case NQ_GGUF_BOOL: printf("%s", u ? "true" : "false"); break;
        case NQ_GGUF_I8: printf("%d", (int8_t)u); break;
        case NQ_GGUF_I16: printf("%d", (int16_t)u); break;
        case NQ_GGUF_I32: printf("%d", (int32_t)u); break;
        case NQ_GGUF_I64: printf("%lld", (long long)(int64_t)u); break;
        case NQ_GGUF_F32: { uint32_t w = (uint32_t)u; float f; memcpy(&f, &w, 4); printf("%g", (double)f); break; }
        case NQ_GGUF_F64: { double d; memcpy(&d, &u, 8); printf("%g", d); break; }
        default: printf("%llu", (unsigned long long)u);
        }
    }
    if (show < n)
        printf(", ...");
    putchar('\n');
}

int nq_inspect_gguf(const char *path, bool as_json)
{
    nq_error err = {0};
    nq_gguf_file *f = nq_gguf_open(path, &err);
    if (!f) {
        nq_cli_error("%s", err.msg);
        return 1;
    }
    if (as_json) {
        json_t *doc = nq_gguf_inspect_json(f, path);
        int rc = doc && json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? 0 : 1;
        json_decref(doc);
        nq_gguf_close(f);
        if (rc != 0)
            nq_cli_error("%s: out of memory describing it", path);
        fputc('\n', stdout);
        return fflush(stdout) == 0 ? rc : 1;
    }
    const char *arch = NULL;
    uint64_t al = 0;
    nq_gguf_get_str(f, "general.architecture", &arch, &al);
    printf("GGUF v%u, %zu tensors, %zu metadata keys, alignment %llu, data at %llu (%.2f MB file)\n",
           f->version, f->ntensors, f->nkv, (unsigned long long)f->alignment,
           (unsigned long long)f->data_offset, (double)f->size / 1e6);
    if (arch)
        printf("architecture %.*s\n", (int)al, arch);
    printf("\nmetadata:\n");
    for (size_t i = 0; i < f->nkv; i++) {
        printf("  %-48s ", f->kv[i].key);
        print_value(&f->kv[i]);
    }
    uint64_t by_count[NQ_GGML_TYPE_COUNT] = {0}, by_el[NQ_GGML_TYPE_COUNT] = {0},
             by_bytes[NQ_GGML_TYPE_COUNT] = {0}, el = 0, bytes = 0;
    printf("\ntensors:\n  %-36s %-8s %-24s %12s %8s\n", "name", "type", "shape (ggml order)", "bytes", "bits/w");
    for (size_t i = 0; i < f->ntensors; i++) {
        const nq_gguf_tensor *t = &f->tensors[i];
        const char *tn = "?";
        nq_ggml_type_info(t->type, NULL, NULL, &tn);
        char shape[64];
        int o = 0;
        for (uint32_t d = 0; d < t->ndim && o < (int)sizeof shape; d++)
            o += snprintf(shape + o, sizeof shape - (size_t)o, "%s%lld", d ? ", " : "", (long long)t->ne[d]);
        if (t->ndim == 0)
            snprintf(shape, sizeof shape, "scalar");
        printf("  %-36s %-8s %-24s %12llu %8.3f\n", t->name, tn, shape, (unsigned long long)t->nbytes,
               t->nelements ? 8.0 * (double)t->nbytes / (double)t->nelements : 0.0);
        by_count[t->type]++;
        by_el[t->type] += t->nelements;
        by_bytes[t->type] += t->nbytes;
        el += t->nelements;
        bytes += t->nbytes;
    }
    printf("\nby type:\n");
    for (int ty = 0; ty < NQ_GGML_TYPE_COUNT; ty++) {
        if (!by_count[ty])
            continue;
        const char *tn = "?";
        nq_ggml_type_info((uint32_t)ty, NULL, NULL, &tn);
        printf("  %-8s %5llu tensors %14llu elements %14llu bytes  %.3f bits/w\n", tn,
               (unsigned long long)by_count[ty], (unsigned long long)by_el[ty],
               (unsigned long long)by_bytes[ty], by_el[ty] ? 8.0 * (double)by_bytes[ty] / (double)by_el[ty] : 0.0);
    }
    printf("total    %5zu tensors %14llu elements %14llu bytes  %.3f bits/w\n", f->ntensors,
           (unsigned long long)el, (unsigned long long)bytes, el ? 8.0 * (double)bytes / (double)el : 0.0);
    nq_gguf_close(f);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* Whether `path` names a GGUF file (by its magic). */
int nq_is_gguf_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    FILE *fp = fopen(path, "rb");
    char m[4] = {0};
    size_t n = fp ? fread(m, 1, 4, fp) : 0;
    if (fp)
        fclose(fp);
    size_t l = strlen(path);
    return (n == 4 && memcmp(m, "GGUF", 4) == 0) || (l > 5 && strcmp(path + l - 5, ".gguf") == 0);
}
