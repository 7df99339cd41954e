/* Shared by the calibrated quantize path's files: export/calibrated.c (the
 * pass, layer by layer), calibrated_encode.c (one module encoded, written
 * and dequantized), calibrated_equalize.c (exact equalization),
 * calibrated_gptq.c (GPTQ of several modules at once on the GPU) and
 * calibrated_acts.c (the calibration activations, host or GPU). */
#ifndef NQ_EXPORT_CALIBRATED_INTERNAL_H
#define NQ_EXPORT_CALIBRATED_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "calib/calib.h"
#include "cuda/cuda.h"
#include "export/calibrated.h"
#include "formats/encode.h"
#include "io/writer.h"
#include "model/forward.h"

/* ---- one module, encoded (calibrated_encode.c) -------------------------- */

typedef struct encoded {
    const nq_plan_module *m;
    uint8_t *packed, *scales8;   /* NVFP4 */
    uint8_t *fp8;                /* FP8 */
    float gs;                    /* NVFP4 weight_scale_2 / FP8 weight_scale */
    int32_t *qw, *qz, *gi;       /* INT4 */
    uint16_t *sc;
    nq_encode_stats st;
    const char *algo;
} encoded;

void encoded_free(encoded *e);
void symmetrize(double *h, int64_t d);
const char *gptq_algo_name(const nq_quantize_options *opt, nq_format f);
int encode_module(const float *x, const nq_plan_module *m, const nq_quantize_options *opt,
                  const double *hessian, const double *local_h, encoded *e, nq_error *err);
int write_encoded(nq_writer *w, const encoded *e, nq_error *err);
int dequantize(const encoded *e, float *out, nq_error *err);

/* ---- layer order (calibrated.c) ------------------------------------------ */

typedef struct order_item {
    size_t index;
    int key;    /* -1 embeddings, L the head, else the layer */
} order_item;

/* ---- the per-layer weight override for propagating quantized outputs --- */

typedef struct override_entry {
    char name[300];      /* "...weight" */
    float *w;
} override_entry;

typedef struct override_ctx {
    const nq_checkpoint *ck;
    override_entry *e;
    size_t n;
    const struct override_ctx *next;   /* asked before the checkpoint */
} override_ctx;

static inline const override_entry *override_find(const override_ctx *o, const char *name)
{
    for (; o; o = o->next)
        for (size_t i = 0; i < o->n; i++)
            if (strcmp(o->e[i].name, name) == 0)
                return &o->e[i];
    return NULL;
}

/* ---- exact equalization (calibrated_equalize.c) -------------------------- */

int equalized_qkv_amax(const override_ctx *eq, const nq_checkpoint *ck, const char *weight,
                       int threads, float *out, nq_error *err);
int equalize_layer(int l, const nq_model_config *cfg, const nq_checkpoint *ck,
                   const nq_plan *plan, nq_calib_stats *stats, const nq_quantize_options *opt,
                   override_ctx *eq, nq_quantize_summary *sum, nq_error *err);
int write_kept(nq_writer *w, const nq_tensor *t, const float *v, nq_error *err);

/* ---- GPTQ of several modules at once on the GPU (calibrated_gptq.c) ------ */

#define GPTQ_WINDOW 32

typedef struct gptq_pre {
    size_t k;                   /* position in the write order */
    float *wf;                  /* the f32 weight, owned until taken */
    encoded e;
} gptq_pre;

typedef struct gptq_window {
    gptq_pre p[GPTQ_WINDOW];
    int n, next;                /* entries, the next one to take */
} gptq_window;

void window_clear(gptq_window *gw);
gptq_pre *window_take(gptq_window *gw, size_t k, size_t n, const order_item *order,
                      const nq_checkpoint *ck, const nq_plan *plan,
                      const nq_quantize_options *opt, const override_ctx *eq,
                      nq_calib_stats *stats, int min_rows, const nq_plan_module *m,
                      const char *tensor, int *rc, nq_error *err);

/* ---- the calibration activations (calibrated_acts.c) --------------------- */

typedef struct acts {
    nq_model *model;
    struct nq_cuda *g;
    bool resident, keep_input;
    float *x, *x_in;   /* host, when not resident (x_in: keep_input) */
    int S, T;
    size_t plane;
} acts;

int acts_open(acts *a, nq_model *model, struct nq_cuda *g, const nq_model_config *cfg, int S,
              int T, bool keep_input, bool hessians, FILE *log, nq_error *err);
void acts_close(acts *a);
int acts_embed(acts *a, const int32_t *ids, nq_error *err);
int acts_save(acts *a, nq_error *err);
int acts_restore(acts *a, nq_error *err);
int acts_run(acts *a, int l, nq_error *err);

#endif
