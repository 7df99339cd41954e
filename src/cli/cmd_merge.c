#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "export/lora.h"
#include "export/quantize.h"
#include "io/outdir.h"
#include "io/writer.h"

static const char *usage =
    "usage: nemoq merge IN OUT --lora DIR[:WEIGHT] [--lora DIR[:WEIGHT] ...] [options]\n"
    "  Merge PEFT LoRA adapters into a checkpoint and write it in its source dtype\n"
    "  (the same atomic writer as quantize; config.json records the adapters).\n"
    "\n"
    "  --lora DIR[:WEIGHT]    adapter directory (adapter_config.json +\n"
    "                         adapter_model.safetensors); repeatable, applied in order;\n"
    "                         WEIGHT multiplies its scaling (default 1)\n"
    "  --threads N            worker threads (default: all cores); output is identical\n"
    "  --max-shard-size SIZE  e.g. 5GB (default), 500MB\n"
    "  --force                replace a non-empty OUT\n"
    "  --clean-stale          remove temporaries (.OUT.nemoq-tmp-*) of killed runs\n";

int nq_cmd_merge(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    nq_quantize_options opt = {.log = isatty(2) ? stderr : NULL};
    nq_lora_spec *loras = NULL;
    size_t nloras = 0;
    bool bad = false, clean_stale = false;
    int rc = 2;
    for (int i = 1; i < argc && !bad; i++) {
        const char *v = NULL;
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            rc = 0;
            goto finish;
        } else if (nq_arg_value(argc, argv, &i, "--lora", &v, &bad)) {
            if (bad)
                break;
            if (nq_cli_add_lora(v, &loras, &nloras) != 0) {
                bad = true;
                break;
            }
        } else if (nq_arg_threads(argc, argv, &i, &opt.threads, &bad) ||
                   nq_arg_shard_size(argc, argv, &i, &opt.max_shard_bytes, &bad)) {
            /* read into opt */
        } else if (strcmp(a, "--force") == 0) {
            opt.force = true;
        } else if (strcmp(a, "--clean-stale") == 0) {
            clean_stale = true;
        } else {
            bad = !nq_arg_in_out(a, "merge: unknown flag", "merge", &in, &out);
        }
    }
    if (bad)
        goto finish;
    if (!in || !out || nloras == 0) {
        nq_cli_error("merge: %s", !in    ? "no input checkpoint given"
                                  : !out ? "no output directory given"
                                         : "no --lora adapter given");
        fputs(usage, stderr);
        goto finish;
    }
    opt.in_dir = in;
    opt.out_dir = out;
    opt.lora = loras;
    opt.nlora = nloras;
    if (opt.threads <= 0)
        opt.threads = nq_default_threads();
    /* the output path is checked before any work, as quantize does */
    nq_error err = {0};
    nq_writer_options out_check = {.out_dir = out, .input_dir = in, .force = opt.force};
    if (nq_writer_check(&out_check, &err) != 0) {
        nq_cli_error("%s", err.msg);
        rc = 1;
        goto finish;
    }
    nq_outdir_stale(out, clean_stale, stderr);
    json_t *described = json_array();
    opt.lora_report = described;
    nq_quantize_summary sum;
    nq_interrupt_install();
    int mrc = nq_merge(&opt, &sum, &err);
    nq_interrupt_uninstall();
    if (mrc != 0) {
        nq_cli_error("%s", err.msg);
        rc = 1;
    } else {
        printf("wrote %s: %zu tensors in %d shard(s), %.1f MB\n", out, sum.tensors_out,
               sum.shards, sum.bytes_out / 1e6);
        nq_lora_print_summary(stdout, described);
        rc = 0;
    }
    json_decref(described);
finish:
    for (size_t k = 0; k < nloras; k++)
        free(loras[k].owned);
    free(loras);
    return rc;
}
