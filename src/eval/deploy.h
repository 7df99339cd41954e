/* What a serving engine computes with a quantized checkpoint, emulated on
 * the CPU in float32 so that evaluation measures the deployed model rather
 * than its float original:
 *
 *   weights      dequantized from the stored codes and scales (NVFP4, FP8,
 *                GPTQ INT4), exactly as the loaders' kernels interpret them;
 *   activations  of every Linear that stores an input_scale, quantized on the
 *                fly: NVFP4 per 16-element block along in_features with the
 *                calibrated global scale (input_scale) and an E4M3 block
 *                scale from the block's amax, as vLLM's scaled_fp4_quant
 *                does; FP8 per tensor with the static input_scale;
 *   KV cache     keys and values rounded through FP8 E4M3 with k_scale /
 *                v_scale when the checkpoint stores them.
 *
 * The model reads weights through nq_deploy_weight_fetch and runs with the
 * hooks nq_deploy_hooks gives. */
#ifndef NQ_EVAL_DEPLOY_H
#define NQ_EVAL_DEPLOY_H

#include <stdbool.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/forward.h"

typedef struct nq_deploy nq_deploy;

/* Reads the scales of ck (which must outlive the result).  A checkpoint
 * without any quantized module gives an emulation that changes nothing. */
nq_deploy *nq_deploy_open(const nq_checkpoint *ck, nq_error *err);
void nq_deploy_free(nq_deploy *d);

/* Weight provider (ctx = the nq_deploy). */
int nq_deploy_weight_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err);
/* Hooks that quantize activations and the KV cache (ctx = the nq_deploy). */
nq_forward_hooks nq_deploy_hooks(nq_deploy *d);

/* What was found: quantized modules by stored format, modules with an
 * input_scale, attention layers with FP8 KV scales. */
typedef struct nq_deploy_info {
    size_t nvfp4, fp8, gptq;
    size_t act_nvfp4, act_fp8;
    size_t kv_layers;
} nq_deploy_info;
nq_deploy_info nq_deploy_describe(const nq_deploy *d);

#endif
