/* Which tensors of a Nemotron-H block can trade per-channel scales without
 * changing what the float model computes (the pairs of --equalize), and the
 * rescaling itself.  The choice of the scales is algo/equalize.h's.
 *
 * - RMSNorm pairs: y = rmsnorm(x) * g feeds Linears W_r: g / c and W_r diag(c)
 *   give the same W_r y.  The block's norm feeds Mamba in_proj, attention
 *   q/k/v, a dense MLP's up_proj, or the MoE router (mixer.gate, float32
 *   logits of its BF16 weight: it absorbs the scales like any reader), every
 *   routed expert's up_proj and the shared expert's up_proj.  The Mamba
 *   gated RMSNorm (weight times the normalised gated activation) feeds
 *   out_proj.
 * - relu^2 pairs: down(relu(up x)^2) is unchanged by up rows * 1/sqrt(c) and
 *   down columns * c, since relu(s u)^2 = s^2 relu(u)^2 for s > 0 (routed and
 *   shared experts, a dense relu2 MLP; not with an up_proj bias).
 * Every reader of a norm must be rescaled, so a pair is only formed when the
 * block holds exactly the readers its kind has. */
#ifndef NQ_EXPORT_EQUALIZE_H
#define NQ_EXPORT_EQUALIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"

/* pair kinds (--equalize-pairs) */
#define NQ_EQ_NORM 1     /* the block's RMSNorm and its readers */
#define NQ_EQ_GATED 2    /* the Mamba gated RMSNorm and out_proj */
#define NQ_EQ_RELU2 4    /* relu^2 up_proj rows and down_proj columns */
/* what --equalize alone turns on: the kind that lowered held-out KL on the
 * bundled model (README, "Equalization") */
#define NQ_EQ_DEFAULT NQ_EQ_GATED

typedef struct nq_eq_pair {
    int kind;            /* NQ_EQ_* */
    bool relu2;          /* src: up_proj [cols, src_in]; else an RMSNorm weight [cols] */
    char src[256];
    int64_t cols, src_in;
    int n;               /* readers: [rows, cols] Linears whose columns take c */
    char (*readers)[256];
} nq_eq_pair;

/* The pairs of block `layer`, in the order they are searched (norm, gated
 * norm, relu^2).  *out is NULL when there are none. */
int nq_eq_layer_pairs(const nq_model_config *cfg, const nq_checkpoint *ck, int layer,
                      nq_eq_pair **out, int *n, nq_error *err);
void nq_eq_pairs_free(nq_eq_pair *p, int n);

/* src / c (norm) or rows of src * 1/sqrt(c) (relu^2), in place */
void nq_eq_apply_src(const nq_eq_pair *p, float *src, const float *c);
/* columns of w [rows, cols] * c, in place */
void nq_eq_apply_reader(float *w, int64_t rows, int64_t cols, const float *c);

#endif
