/* GGUF export for llama.cpp: a Nemotron-H checkpoint (BF16/F16/F32, or
 * NVFP4 as nemoq or NVIDIA ModelOpt write it) into one GGUF v3 file that
 * llama.cpp loads as nemotron_h / nemotron_h_moe, streamed tensor by tensor.
 *
 * Names, shapes, types and metadata are those llama.cpp's own converter
 * writes (convert_hf_to_gguf.py, conversion/nemotron.py NemotronHModel and
 * conversion/base.py, llama-cpp-python 0.3.36's vendored llama.cpp):
 *   - NVFP4 Linears repacked into ggml's block_nvfp4 (formats/ggml_blocks.h)
 *     with the per-tensor weight_scale_2 as an F32 "<name>.scale" tensor and
 *     input_scale as "<name>.input_scale" (each omitted when it is 1);
 *     routed experts stacked per layer and projection (ffn_up_exps /
 *     ffn_down_exps, [in, out, n_expert] in ggml order, scales [n_expert]);
 *   - float Linears, embeddings and lm_head in the "rest" type (Q8_0, BF16,
 *     F16 or F32; a Q8_0 row that is not a multiple of 32 falls back to F16
 *     as gguf-py does);
 *   - F32 for norms, 1-D tensors, the router (ffn_gate_inp), conv1d
 *     (squeezed to [C, K]), A = -exp(A_log) and D as [H, 1], dt_bias, the
 *     grouped SSM norm as [n_groups, d_inner / n_groups], exp_probs_b;
 *   - weight-only NVFP4 (W4A16_NVFP4, or experts quantized here without
 *     calibration) listed in general.tensor_extra.name/prec_a4 = false, so
 *     llama.cpp keeps those matmuls' activations above 4 bits.
 * Anything in the input that has no place in the output is an error naming
 * it, except the K/V cache scales (the converter drops them too). */
#ifndef NQ_EXPORT_GGUF_H
#define NQ_EXPORT_GGUF_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"

typedef struct nq_gguf_options {
    const char *in_dir;
    const char *out_path;
    uint32_t rest_type;       /* NQ_GGML_Q8_0, BF16, F16 or F32 */
    bool quantize_experts;    /* float routed experts -> NVFP4 (recipe gguf-nvfp4) */
    bool mse_scales;          /* for quantize_experts: MSE block scales */
    int threads;
    bool force;
    FILE *log;                /* progress; NULL: quiet */
} nq_gguf_options;

typedef struct nq_gguf_summary {
    size_t tensors;
    size_t by_type[4];        /* nvfp4, q8_0, bf16/f16, f32 */
    uint64_t bytes;           /* file size */
    uint64_t params;          /* logical elements of the weight tensors */
    uint64_t weight_bytes;    /* their stored bytes */
    size_t experts_quantized; /* expert matrices encoded to NVFP4 here */
    size_t nvfp4_repacked;    /* NVFP4 matrices repacked from the input */
} nq_gguf_summary;

int nq_gguf_export(const nq_gguf_options *opt, nq_gguf_summary *sum, nq_error *err);

/* "q8_0", "bf16", "f16", "f32" -> ggml type; -1 otherwise. */
int nq_gguf_rest_type_from_name(const char *s, uint32_t *type);

#endif
