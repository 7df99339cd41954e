/* A checkpoint opened for running: its config, the deployment emulation of
 * its quantized modules (eval/deploy.h) and the model reading through it.
 * A float checkpoint runs as is (the emulation finds nothing to change). */
#ifndef NQ_EVAL_LOADED_H
#define NQ_EVAL_LOADED_H

#include "core/error.h"
#include "eval/deploy.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward.h"

typedef struct nq_loaded_model {
    nq_checkpoint *ck;
    nq_model_config cfg;
    nq_deploy *deploy;
    nq_model *model;
} nq_loaded_model;

int nq_loaded_open(const char *dir, int threads, nq_loaded_model *lm, nq_error *err);
void nq_loaded_close(nq_loaded_model *lm);

#endif
