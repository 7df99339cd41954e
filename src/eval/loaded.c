#include "eval/loaded.h"

#include <stdio.h>
#include <string.h>

int nq_loaded_open(const char *dir, int threads, nq_loaded_model *lm, nq_error *err)
{
    memset(lm, 0, sizeof *lm);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!(lm->ck = nq_checkpoint_open(dir, err)) ||
        nq_model_config_load(path, &lm->cfg, err) != 0 ||
        !(lm->deploy = nq_deploy_open(lm->ck, err)) ||
        !(lm->model = nq_model_open(lm->ck, &lm->cfg, err))) {
        nq_loaded_close(lm);
        return -1;
    }
    nq_model_set_weights(lm->model,
                         (nq_weight_provider){.fetch = nq_deploy_weight_fetch, .ctx = lm->deploy});
    nq_forward_hooks hooks = nq_deploy_hooks(lm->deploy);
    nq_model_set_hooks(lm->model, &hooks);
    nq_model_set_threads(lm->model, threads);
    return 0;
}

void nq_loaded_close(nq_loaded_model *lm)
{
    nq_model_close(lm->model);
    nq_deploy_free(lm->deploy);
    nq_checkpoint_close(lm->ck);
    memset(lm, 0, sizeof *lm);
}
