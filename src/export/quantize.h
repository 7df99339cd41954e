/* `nemoq quantize`: a BF16/F16/F32 Nemotron-H checkpoint in, a quantized
 * checkpoint out, streaming tensor by tensor (peak memory: the largest
 * quantized Linear in f32 plus its encoded form, never the model). */
#ifndef NQ_EXPORT_QUANTIZE_H
#define NQ_EXPORT_QUANTIZE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "recipe/plan.h"

typedef struct nq_quantize_options {
    const char *in_dir;
    const char *out_dir;
    nq_recipe_options recipe;
    bool mse_scales;        /* --weight-scale mse */
    bool weights_only;      /* no calibration: weight formats only */
    int threads;            /* <= 0: all cores */
    uint64_t max_shard_bytes;
    bool force;
    FILE *log;              /* progress and notes; NULL: quiet */
} nq_quantize_options;

typedef struct nq_quantize_summary {
    size_t tensors_in, tensors_out;
    size_t modules[4];      /* by nq_format */
    uint64_t bytes_in, bytes_out;
    int shards;
    /* weight error over all quantized modules */
    double sq_err, sq_err_max_scale, sq_ref;
} nq_quantize_summary;

int nq_quantize(const nq_quantize_options *opt, nq_quantize_summary *summary, nq_error *err);

/* Files of the input directory copied verbatim to the output: everything
 * at the top level except weights, the index, config.json (rewritten) and
 * quantization configs (replaced). */
bool nq_is_auxiliary_file(const char *name);

#endif
