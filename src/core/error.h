/* Error reporting shared by every module.
 *
 * Convention: a function that can fail returns int (0 on success, -1 on
 * failure) or a pointer (NULL on failure) and, on failure, fills the
 * caller's nq_error with ONE line that names the file, tensor or flag and
 * the problem.  The first error written wins: lower layers set the
 * specific cause, upper layers do not overwrite it. */
#ifndef NQ_CORE_ERROR_H
#define NQ_CORE_ERROR_H

#include <stddef.h>

typedef struct nq_error {
    char msg[1024];
} nq_error;

/* Formats msg into err (if err is non-NULL and still empty) and returns -1,
 * so callers can write `return nq_fail(err, "...", ...);`. */
int nq_fail(nq_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void nq_error_clear(nq_error *err);

/* Makes sure an error names what failed: unless the message already
 * contains `name`, it becomes "WHAT 'NAME': message" (e.g. an encoder's
 * "element 5 is NaN" becomes "tensor 'x.weight': element 5 is NaN"). */
void nq_error_name(nq_error *err, const char *what, const char *name);

/* One "warning: ..." line on stderr, whatever the progress log: warnings
 * about the input (text that is not UTF-8, ...) must reach the user even
 * when stderr is not a terminal. */
void nq_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
