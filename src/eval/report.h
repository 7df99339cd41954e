/* The quality report of a quantization run: PATH.json (machine-readable)
 * and PATH.html (one self-contained page: no scripts, no external files). */
#ifndef NQ_EVAL_REPORT_H
#define NQ_EVAL_REPORT_H

#include <jansson.h>
#include <stdio.h>

#include "core/error.h"

/* doc: {"summary": {...}, "modules": [{module, format, why, algorithm,
 * weight_rel_err, output_rel_err, activation_amax, calibration_rows, ...}],
 * "eval": {...} (optional)}.  `path` may end in .json (stripped).  Both
 * files are written to temporaries and renamed into place. */
int nq_report_write(const char *path, json_t *doc, nq_error *err);
/* An SVG scatter/line plot of effective bits (x) vs KL (y), as the HTML
 * report draws auto_quantize.pareto: plot = {"x_label", "y_label",
 * "series": [{"label", "line": bool, "points": [{"x", "y", "name"}]}]}.
 * 640 x 360 pixels, plot box x 70..620, y 20..315; x spans whole bits
 * [floor(min x), ceil(max x)]; y is linear over [0, max y], or, when the
 * positive values span more than 100x, logarithmic over whole decades
 * (zeros on the bottom edge).  Every point is a <circle> at those
 * coordinates with a <title>; line series are joined in the given order.
 * Nothing is written when there are no finite points. */
int nq_report_pareto_svg(FILE *f, json_t *plot);
/* Whether both files may be written (io/outpath.h: an existing, writable
 * directory outside input_dir and output_dir, not a directory's name): run
 * before any work, and again just before writing. */
int nq_report_check(const char *path, const char *input_dir, const char *output_dir,
                    nq_error *err);

#endif
