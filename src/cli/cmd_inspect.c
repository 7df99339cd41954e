#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "eval/inspect.h"
#include "export/lora.h"

static const char *usage =
    "usage: nemoq inspect DIR [--json]\n"
    "       nemoq inspect FILE.gguf [--json]\n"
    "       nemoq inspect ADAPTER_DIR [--base MODEL_DIR] [--json]\n"
    "  Describe a safetensors checkpoint: model type, block pattern,\n"
    "  parameters and bytes by role, dtypes, per-layer table, quantization.\n"
    "  For a PEFT LoRA adapter (a directory with adapter_config.json): targets,\n"
    "  ranks, alphas, scalings, parameters; with --base, the base tensors it\n"
    "  lands on (every key checked as merge would).\n";

static bool is_adapter(const char *dir)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return stat(path, &st) == 0;
}

int nq_cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL, *base = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        bool bad = false;
        if (nq_arg_value(argc, argv, &i, "--base", &v, &bad)) {
            if (bad)
                return 2;
            base = v;
        } else if (strcmp(argv[i], "--json") == 0) {
            as_json = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            nq_cli_error("inspect: unknown flag '%s'", argv[i]);
            fputs(usage, stderr);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            nq_cli_error("inspect: unexpected argument '%s' (one checkpoint at a time)", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        nq_cli_error("inspect: no checkpoint directory given");
        fputs(usage, stderr);
        return 2;
    }
    if (nq_is_gguf_path(dir))
        return nq_inspect_gguf(dir, as_json);
    nq_error err = {0};
    bool adapter = is_adapter(dir);
    if (base && !adapter) {
        nq_cli_error("inspect: --base applies to a LoRA adapter directory (%s has no "
                     "adapter_config.json)", dir);
        return 2;
    }
    json_t *doc = adapter ? nq_adapter_inspect(dir, base, &err) : nq_inspect(dir, &err);
    if (!doc) {
        nq_cli_error("%s", err.msg);
        return 1;
    }
    if (as_json) {
        json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
    } else if (adapter) {
        nq_adapter_inspect_print(stdout, doc);
    } else {
        nq_inspect_print(stdout, doc);
    }
    json_decref(doc);
    return fflush(stdout) == 0 ? 0 : 1;
}
