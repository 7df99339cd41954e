/* nemoq: quantize Nemotron-H checkpoints. A thin dispatcher: each subcommand
 * parses its flags and calls the library. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

void nq_cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("nemoq: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} commands[] = {
    {"inspect", nq_cmd_inspect, "describe a checkpoint (roles, dtypes, layers, quantization) or a LoRA adapter"},
    {"quantize", nq_cmd_quantize, "quantize a checkpoint with a recipe (NVFP4, FP8, INT4)"},
    {"merge", nq_cmd_merge, "merge PEFT LoRA adapters into a checkpoint (source dtype)"},
    {"eval", nq_cmd_eval, "perplexity and KL divergence against a base model (quantization emulated)"},
    {"verify", nq_cmd_verify, "check a quantized checkpoint (and its error against the source)"},
    {"convert", nq_cmd_convert, "write a checkpoint (BF16 or NVFP4) as a GGUF file for llama.cpp"},
};

static void print_usage(FILE *out)
{
    fprintf(out, "usage: nemoq COMMAND [ARGS]   (nemoq COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("nemoq %s\n", NEMOQ_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        print_usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    nq_cli_error("unknown command '%s'", argv[1]);
    print_usage(stderr);
    return 2;
}
