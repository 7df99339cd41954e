/* AutoQuantize step of the quantize pipeline (autoquant.c), called by
 * nq_quantize before the plan is written. */
#ifndef NQ_EXPORT_AUTOQUANT_H
#define NQ_EXPORT_AUTOQUANT_H

#include "export/quantize.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "recipe/plan.h"

/* AutoQuantize (autoquant.c): measures, searches and rewrites plan's
 * formats of the searchable modules; prints the table to stdout. */
int nq_autoquantize_plan(const nq_quantize_options *opt, const nq_checkpoint *ck,
                         const nq_model_config *cfg, nq_plan *plan, nq_error *err);

#endif
