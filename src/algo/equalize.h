/* Exact equalization (AWQ, Lin et al. 2023, search form; SmoothQuant's
 * migration without activation quantization): a Linear W fed by an input x
 * computes the same as W diag(c) fed by x / c for any positive c.  When the
 * division can be folded into what produces x (an RMSNorm weight, the rows
 * of a relu^2 up_projection: relu(s u)^2 = s^2 relu(u)^2) the float model is
 * unchanged, while the quantizer sees W diag(c): columns whose inputs are
 * large get more of the grid.
 *
 * nq_equalize_search picks c = m^alpha / sqrt(max(m^alpha) min(m^alpha)),
 * m the inputs' RMS per channel (clamped below at NQ_EQ_RMS_FLOOR of its max:
 * a channel calibration barely saw must not get a scale so small that its
 * weights round to zero, since held-out text may use it), alpha on
 * the grid 0, 1/grid, ..., (grid-1)/grid (alpha = 0 is c = 1: no change), the
 * first alpha minimising the summed output error of the consumers sharing
 * the input,
 *
 *   E(alpha) = sum_j  sum_r (W_j - Q_j(W_j diag c) diag(1/c))_r H_j (...)_r^T
 *
 * H_j = sum x x^T over consumer j's calibration inputs (float64), Q_j its
 * round-to-nearest quantize-dequantize (the caller's format and scale rule).
 * This is the W4A16 output error on the calibration set, exactly. */
#ifndef NQ_ALGO_EQUALIZE_H
#define NQ_ALGO_EQUALIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

#define NQ_EQ_RMS_FLOOR 1e-2

/* w [rows, cols] -> out [rows, cols]: the weight a loader reconstructs. */
typedef int (*nq_qdq_fn)(void *ctx, const float *w, int64_t rows, int64_t cols, float *out,
                         nq_error *err);

typedef struct nq_eq_consumer {
    const float *w;           /* [rows, cols] float weight */
    int64_t rows;
    const double *hessian;    /* [cols, cols], both triangles */
    nq_qdq_fn qdq;
    void *qdq_ctx;
} nq_eq_consumer;

typedef struct nq_eq_result {
    double alpha;
    double err_best, err_identity;   /* E at the chosen scales and with none */
    bool identity;                   /* the chosen scales are all 1 (nothing to fold) */
} nq_eq_result;

/* rms[cols]: the channels' input RMS.  c[cols] receives the scales. */
int nq_equalize_search(const nq_eq_consumer *cons, int n, int64_t cols, const double *rms,
                       int grid, float *c, nq_eq_result *res, nq_error *err);

/* The scales for one alpha (as the search computes them). */
void nq_equalize_scales(const double *rms, int64_t cols, double alpha, float *c);

/* ---- the served (W4A4) objective --------------------------------------
 *
 * nq_equalize_search_served has the same candidates (c from rms, alpha on
 * 0, 1/grid, ..., (grid-1)/grid, alpha = 0 the identity, the first minimum
 * kept) but minimises what the server computes: for every consumer j with
 * calibration input rows X_j [n_j, cols],
 *
 *   E(c) = sum_j || X_j W_j^T - A(X_j diag(1/c)) Q_j(W_j diag c)^T ||^2
 *
 * (the float layer's output against the quantized layer's on the inputs
 * the equalized model feeds it), A the NVFP4 activation quantizer of a W4A4
 * server (per-16 blocks, max block scale, global scale gs = amax / 2688
 * with amax the largest |X_j / c| over all the consumers' rows: the
 * input_scale the pipeline recomputes from the equalized activations),
 * or the identity for consumers whose activations stay in float (INT4,
 * W4A16).  Float32 products, double sums.  (SmoothQuant's candidates,
 * max|x|^alpha / max|w|^(1-alpha) from the sampled rows, were measured and
 * dropped: README, "NVFP4 W4A4: equalization and damping".) */
typedef struct nq_eq_sample_consumer {
    const float *w;           /* [rows, cols] float weight */
    int64_t rows;
    const float *x;           /* [xrows, cols] calibration inputs */
    int xrows;
    bool act_nvfp4;           /* the served layer NVFP4-quantizes its inputs */
    nq_qdq_fn qdq;
    void *qdq_ctx;
} nq_eq_sample_consumer;

/* cols % 16 == 0 when any consumer has act_nvfp4.  rms[cols] as for
 * nq_equalize_search; c[cols] receives the scales. */
int nq_equalize_search_served(const nq_eq_sample_consumer *cons, int n, int64_t cols,
                              const double *rms, int grid, float *c, nq_eq_result *res,
                              nq_error *err);

#endif
