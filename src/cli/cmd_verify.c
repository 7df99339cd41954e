#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "eval/verify.h"

static const char *usage =
    "usage: nemoq verify OUT [--against IN]\n"
    "  Re-reads a quantized checkpoint: every module decodes, companions have the\n"
    "  right dtype/shape, scales are finite and positive, hf_quant_config.json or\n"
    "  quantize_config.json agrees with what is stored. With --against, every\n"
    "  source tensor must be accounted for (unquantized ones byte-identical) and\n"
    "  each quantized module's relative error ||W - deq(Q)|| / ||W|| is printed.\n"
    "  Exit 1 on any inconsistency.\n";

int nq_cmd_verify(int argc, char **argv)
{
    const char *dir = NULL, *against = NULL;
    bool bad = false;
    for (int i = 1; i < argc && !bad; i++) {
        const char *v = NULL;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (nq_arg_value(argc, argv, &i, "--against", &v, &bad)) {
            against = v;
        } else if (argv[i][0] == '-') {
            nq_cli_error("verify: unknown flag '%s'", argv[i]);
            bad = true;
        } else if (!dir) {
            dir = argv[i];
        } else {
            nq_cli_error("verify: unexpected argument '%s'", argv[i]);
            bad = true;
        }
    }
    if (bad || !dir) {
        if (!bad)
            nq_cli_error("verify: no checkpoint given");
        fputs(usage, stderr);
        return 2;
    }
    nq_verify_result res;
    nq_error err = {0};
    int rc = nq_verify(dir, against, stdout, &res, &err);
    printf("%zu modules: %zu nvfp4, %zu fp8, %zu int4, %zu unquantized", res.modules_checked,
           res.quantized[2], res.quantized[3], res.quantized[4], res.quantized[1]);
    if (against && res.worst_module[0])
        printf("; worst relative error %.6f (%s)", res.worst_rel_err, res.worst_module);
    printf("\n");
    if (rc != 0) {
        nq_cli_error("%s", err.msg);
        return 1;
    }
    printf("ok: consistent\n");
    return 0;
}
