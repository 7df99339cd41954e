/* Flag parsing shared by the subcommands, so that a flag two commands take
 * is read, checked and reported the same way in both. */
#ifndef NQ_CLI_ARGS_H
#define NQ_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* If argv[*i] is `name VALUE` or `name=VALUE`, sets *value, advances *i and
 * returns true. A missing VALUE prints an error and sets *bad. */
bool nq_arg_value(int argc, char **argv, int *i, const char *name, const char **value, bool *bad);
/* Parses "5GB", "500MB", "1.5GiB", "123" (bytes). -1 on error. */
int nq_parse_size(const char *s, uint64_t *out);
/* Parses a positive int in [lo, hi]. -1 on error. */
int nq_parse_int(const char *s, int lo, int hi, int *out);

/* The typed flags below match as nq_arg_value does and return true when
 * argv[*i] is the flag.  A missing value, or one they refuse, prints one
 * line and sets *bad (the caller then stops and exits 2); *out is written
 * only for an accepted value. */

/* VALUE is one of choices[0..n-1]: *index gets its position.  A refusal
 * reads "NAME 'VALUE': expected A, B or C", the choices in their order. */
bool nq_arg_choice(int argc, char **argv, int *i, const char *name, const char *const *choices,
                   size_t n, int *index, bool *bad);
/* An integer in [lo, hi]; a refusal reads "NAME 'VALUE': expected EXPECTED". */
bool nq_arg_int(int argc, char **argv, int *i, const char *name, int lo, int hi,
                const char *expected, int *out, bool *bad);
/* A number x with lo < x < hi (x <= hi when hi_inclusive); a refusal reads
 * "NAME 'VALUE': expected EXPECTED". */
bool nq_arg_number(int argc, char **argv, int *i, const char *name, double lo, double hi,
                   bool hi_inclusive, const char *expected, double *out, bool *bad);
/* --threads N, 1 to 1024. */
bool nq_arg_threads(int argc, char **argv, int *i, int *out, bool *bad);
/* --max-shard-size SIZE (nq_parse_size). */
bool nq_arg_shard_size(int argc, char **argv, int *i, uint64_t *out, bool *bad);
/* --gptq-damp F, in (0, 1). */
bool nq_arg_gptq_damp(int argc, char **argv, int *i, double *out, bool *bad);

/* A word that no flag of the command matched: one starting with '-' is
 * refused as "UNKNOWN 'WORD'" (UNKNOWN says whose flag, e.g. "merge: unknown
 * flag"); otherwise it fills *in, then *out, and a third is refused as
 * "CMD: unexpected argument 'WORD'".  Returns false after printing a
 * refusal. */
bool nq_arg_in_out(const char *word, const char *unknown, const char *cmd, const char **in,
                   const char **out);

#endif
