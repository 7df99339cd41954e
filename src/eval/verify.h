/* `nemoq verify`: re-reads a quantized checkpoint and checks that a loader
 * would find exactly what the metadata promises; with a source checkpoint,
 * also that every source tensor is accounted for and how far each quantized
 * weight is from its original. */
#ifndef NQ_EVAL_VERIFY_H
#define NQ_EVAL_VERIFY_H

#include <stdio.h>

#include "core/error.h"

typedef struct nq_verify_result {
    size_t modules_checked;
    size_t quantized[5];   /* by nq_stored_format */
    size_t problems;       /* inconsistencies found (each printed) */
    double worst_rel_err;  /* max over quantized modules, with --against */
    char worst_module[512];
} nq_verify_result;

/* Prints one line per problem and (with against) one line per quantized
 * module to `out`. Returns 0 when the checkpoint is consistent, -1 when any
 * problem was found (err then summarises) or the input cannot be read. */
int nq_verify(const char *dir, const char *against, FILE *out, nq_verify_result *res,
              nq_error *err);

#endif
