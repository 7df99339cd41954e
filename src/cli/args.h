/* Small helpers for subcommand flag parsing. */
#ifndef NQ_CLI_ARGS_H
#define NQ_CLI_ARGS_H

#include <stdbool.h>
#include <stdint.h>

/* If argv[*i] is `name VALUE` or `name=VALUE`, sets *value, advances *i and
 * returns true. A missing VALUE prints an error and sets *bad. */
bool nq_arg_value(int argc, char **argv, int *i, const char *name, const char **value, bool *bad);
/* Parses "5GB", "500MB", "1.5GiB", "123" (bytes). -1 on error. */
int nq_parse_size(const char *s, uint64_t *out);
/* Parses a positive int in [lo, hi]. -1 on error. */
int nq_parse_int(const char *s, int lo, int hi, int *out);

#endif
