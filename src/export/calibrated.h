/* The calibrated path of the quantize pipeline (calibrated.c), called by
 * nq_quantize once the plan is built and the options are checked. */
#ifndef NQ_EXPORT_CALIBRATED_H
#define NQ_EXPORT_CALIBRATED_H

#include "export/quantize.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "recipe/plan.h"

int nq_quantize_calibrated(const nq_quantize_options *opt, const nq_checkpoint *ck,
                           const nq_model_config *cfg, const nq_plan *plan,
                           nq_quantize_summary *sum, nq_error *err);

#endif
