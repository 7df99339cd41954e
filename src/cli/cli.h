/* Subcommands of the nemoq command-line tool. Each returns the exit code:
 * 0 success, 1 failure (message printed), 2 usage error. */
#ifndef NQ_CLI_H
#define NQ_CLI_H

#include <stdbool.h>
#include <stddef.h>

int nq_cmd_inspect(int argc, char **argv);
int nq_cmd_quantize(int argc, char **argv);
int nq_cmd_merge(int argc, char **argv);
int nq_cmd_verify(int argc, char **argv);
int nq_cmd_eval(int argc, char **argv);
/* GGUF (cmd_gguf.c) */
int nq_cmd_convert(int argc, char **argv);
int nq_cmd_quantize_gguf(int argc, char **argv);
int nq_inspect_gguf(const char *path, bool as_json);
int nq_is_gguf_path(const char *path);

/* Appends the --lora argument DIR[:WEIGHT] to *specs (grown with realloc;
 * the caller frees it and each spec's `owned`).  Prints the error and
 * returns -1 on a bad argument or no memory. */
struct nq_lora_spec;
int nq_cli_add_lora(const char *arg, struct nq_lora_spec **specs, size_t *n);

/* Progress bar on stderr when it is a terminal (nq_eval_options.progress). */
void nq_cli_progress(void *ctx, const char *stage, int done, int total);

/* Prints "nemoq: MESSAGE" to stderr. */
void nq_cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
