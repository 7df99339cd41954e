/* Whole small files (text, JSON) into memory. */
#ifndef NQ_CORE_FILE_H
#define NQ_CORE_FILE_H

#include <stddef.h>

#include "core/error.h"

/* malloc'd contents plus a terminating NUL (not counted in *len); NULL with
 * a one-line error naming the file on failure. */
char *nq_read_file(const char *path, size_t *len, nq_error *err);

#endif
