/* AutoQuantize, the measuring half: for every searchable group and candidate
 * format, the KL divergence KL(float || quantized) of the next-token
 * distribution, averaged over the scoring tokens, when only that group is
 * quantized (ModelOpt auto_quantize's forward-only kl_div method).
 *
 * "Quantized" is what the export writes and a server computes: weights
 * encoded with the export's encoder (round-to-nearest with max or mse
 * scales, or GPTQ for NVFP4 when asked, with the export's fallback to
 * round-to-nearest + mse scales for modules with too few calibration rows)
 * and dequantized; the group's inputs fake-quantized with the input scales the
 * calibration would write (NVFP4 per 16-block with the global scale
 * amax / (6 x 448), FP8 per tensor amax / 448; routed experts: the max over
 * the layer's experts), through eval/deploy's emulation.  The KV cache is
 * left in float so that only the group's effect is measured.
 *
 * Layer by layer: a float pass over the scoring windows caches each layer's
 * input and the float log-probabilities; then a float pass over all
 * calibration windows, layer by layer, records every searchable Linear's
 * input amax (and, for GPTQ, its Hessian from float inputs: only the group
 * is quantized, so its inputs are the float model's), and as soon as layer
 * L's statistics are complete its groups are scored by running layer L with
 * the group quantized and layers L+1..end in float from the cached input:
 * (num_layers - L) layer evaluations per window and format.  Only one
 * layer's Hessians are held at a time. */
#ifndef NQ_ALGO_SENSITIVITY_H
#define NQ_ALGO_SENSITIVITY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "recipe/autoq.h"
#include "recipe/plan.h"

typedef struct nq_sensitivity_options {
    const int32_t *ids;      /* calibration windows [samples, len] */
    int samples, len;
    int score_windows;       /* scoring subset: this many windows, evenly spread */
    bool mse_scales;
    bool gptq;               /* NVFP4 weights by GPTQ, as the export with --algo gptq */
    double gptq_damp;        /* <= 0: 0.01 */
    int gptq_min_rows;       /* fewer calibration rows: round-to-nearest + mse (<= 0: 128) */
    bool proxy_only;         /* scores = the proxy below; no KL */
    int threads;
    FILE *log;               /* progress; NULL: quiet */
} nq_sensitivity_options;

typedef struct nq_sensitivity_cost {
    uint64_t layer_evals;    /* block evaluations of one window */
    uint64_t score_tokens;   /* tokens whose next-token distributions are compared */
    double seconds;          /* everything, float pass included */
    double float_pass_seconds;  /* the float pass over the scoring windows */
    uint64_t gptq_modules;      /* NVFP4 module encodings by GPTQ */
    uint64_t gptq_fallbacks;    /* ... by round-to-nearest + mse (too few rows) */
} nq_sensitivity_cost;

/* Fills aq->groups[*].score[NVFP4 / FP8] for every searchable group whose
 * format is allowed (others and bf16 stay 0), and two cheaper measures:
 *
 *   out_err = sum over the group's modules of (rows_m / tokens) x mean over
 *             its sampled calibration rows of || x W^T - q(x) Q^T ||^2
 *             (x a float input row, q the input emulation, Q the quantized
 *             weight; rows_m the rows the module saw, fewer than the tokens
 *             for routed experts; the first NQ_CALIB_SAMPLE_ROWS rows)
 *   res_err = mean over the scoring tokens of || h_L' - h_L ||^2, h_L the
 *             residual stream after the group's block L, ' with the group
 *             quantized (one block evaluation)
 *
 * With opt->proxy_only the KL of each group is not measured: score = proxy
 * = res_err x c_L, where c_L, the layer's curvature, is the KL per unit of
 * res_err when all of layer L's searchable groups are quantized at once
 * (NVFP4 where every group allows it, else FP8) — how much the rest of the
 * model amplifies an error of the kind quantization makes at layer L.  Per
 * scoring window that is one (num_layers - L)-block run per layer plus one
 * block per group and format, instead of num_layers - L blocks per group
 * and format. */
int nq_sensitivity_measure(const nq_checkpoint *ck, const nq_model_config *cfg,
                           const nq_plan *plan, nq_autoq *aq, const nq_sensitivity_options *opt,
                           nq_sensitivity_cost *cost, nq_error *err);

#endif
