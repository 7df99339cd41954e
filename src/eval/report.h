/* The quality report of a quantization run: PATH.json (machine-readable)
 * and PATH.html (one self-contained page: no scripts, no external files). */
#ifndef NQ_EVAL_REPORT_H
#define NQ_EVAL_REPORT_H

#include <jansson.h>

#include "core/error.h"

/* doc: {"summary": {...}, "modules": [{module, format, why, algorithm,
 * weight_rel_err, output_rel_err, activation_amax, calibration_rows, ...}],
 * "eval": {...} (optional)}.  `path` may end in .json (stripped).  Both
 * files are written to temporaries and renamed into place. */
int nq_report_write(const char *path, json_t *doc, nq_error *err);
/* Whether both files may be written (io/outpath.h: an existing, writable
 * directory outside input_dir and output_dir, not a directory's name): run
 * before any work, and again just before writing. */
int nq_report_check(const char *path, const char *input_dir, const char *output_dir,
                    nq_error *err);

#endif
