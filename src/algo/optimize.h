/* `--optimize`: the quality techniques beyond plain GPTQ + MSE scales, as one
 * set of switches.  Every technique is one row of the table in optimize.c
 * (name, what it does, what it costs); `--optimize` turns on the rows marked
 * default (the measured winners, README "Optimize"), `--optimize-techniques
 * LIST` exactly the named ones (for ablations).  Adding a technique: a field
 * here, a row in the table, and its use where the pipeline reads the field.
 * Every technique keeps the output format plain (ModelOpt NVFP4/FP8, GPTQ
 * INT4): only the chosen values change. */
#ifndef NQ_ALGO_OPTIMIZE_H
#define NQ_ALGO_OPTIMIZE_H

#include <stdbool.h>
#include <stdio.h>

#include "core/error.h"

typedef enum {
    NQ_ACT_SCALE_AMAX = 0,   /* input_scale = amax / 2688 (ModelOpt's max calibration) */
    NQ_ACT_SCALE_PERCENTILE, /* the 99.99th percentile of |x| instead of the amax */
    NQ_ACT_SCALE_MSE,        /* the candidate with the least activation quantization error */
} nq_act_scale_rule;

typedef struct nq_optimize {
    bool enabled;            /* any technique on (set by nq_optimize_parse) */
    /* GPTQ (NVFP4 and INT4 modules; implies --algo gptq) */
    bool served_hessian;     /* NVFP4: Hessian from the NVFP4-quantized inputs a W4A4 server sees */
    /* NVFP4 weight scales */
    bool hessian_scales;     /* per block: the E4M3 scale with the least output (GPTQ) loss */
    bool four_over_six;      /* per block: scaled to 6 or to 4; global scale amax / (6 x 256) */
    bool global_sweep;       /* weight_scale_2 = amax / (6 x M), M in 448, 384, 320, 256: least GPTQ loss */
    /* NVFP4 equalization: every --equalize pair kind, the served (W4A4)
     * objective, searched on NVFP4 readers; --equalize* flags override */
    bool equalize_nvfp4;
    /* INT4 */
    bool int4_act_order;     /* GPTQ in act-order with static groups (as --gptq-act-order) */
    /* activations */
    nq_act_scale_rule act_scale;
} nq_optimize;

/* Fills o from a comma-separated list of technique names ("default" = the
 * winners, "none" = nothing); an unknown name is an error naming it and the
 * valid ones. */
int nq_optimize_parse(const char *list, nq_optimize *o, nq_error *err);
/* The winners: what plain `--optimize` turns on. */
void nq_optimize_default(nq_optimize *o);
/* "name,name,..." of what o turns on ("none" when nothing), into buf. */
void nq_optimize_describe(const nq_optimize *o, char *buf, size_t size);
/* The table, one line per technique (name, default or not, effect, cost),
 * for --help. */
void nq_optimize_print_table(FILE *f);

#endif
