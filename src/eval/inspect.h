/* `nemoq inspect`: a description of a checkpoint directory as one JSON
 * document (the --json output), and its human-readable rendering.  It sits
 * with verify, beside the exporters whose metadata it reads back (in model/
 * it made model/ and export/ depend on each other). */
#ifndef NQ_EVAL_INSPECT_H
#define NQ_EVAL_INSPECT_H

#include <jansson.h>
#include <stdio.h>

#include "core/error.h"

/* Returns a new JSON object (caller json_decref's it) or NULL. */
json_t *nq_inspect(const char *path, nq_error *err);
void nq_inspect_print(FILE *out, const json_t *doc);

#endif
