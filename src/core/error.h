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

#endif
