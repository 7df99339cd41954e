#include "export/calibrated_internal.h"

#include <stdlib.h>
#include <string.h>

#include "model/forward.h"

/* ---- the calibration activations --------------------------------------
 *
 * All samples x len tokens' residual stream, from the embeddings to the
 * last layer.  With a GPU they fit on (after what one layer needs), they
 * stay in its memory the whole time (cuda.h, "resident"): no host copy, no
 * transfer per layer; the layer's input, when it must be kept, is a second
 * device array.  Otherwise they are host arrays, and on a GPU each layer
 * streams them through it a chunk of NQ_CUDA_CHUNK_ROWS rows at a time. */

/* Bytes of GPU memory one layer of cfg needs beside the activations, for
 * the largest layer: 4 x its parameters (f32; bf16 weights take half), 4 x
 * the scratch of one chunk of `rows` rows, 6 x rows x the widest Linear
 * input (its split into 3 bf16 terms), 8 x in^2 per quantized Linear with
 * Hessians, the
 * statistics' 272 MiB, 4 GiB for the backend's cache of earlier blocks'
 * weights and 1 GiB for cuBLAS, the encoding of one module and
 * fragmentation.  README ("Peak GPU memory") gives the same formula. */
static uint64_t layer_device_bytes(const nq_model_config *c, int64_t rows, bool hessians)
{
    uint64_t H = (uint64_t)c->hidden_size, worst = 0;
    for (int l = 0; l < c->num_layers; l++) {
        uint64_t W = 0, w = 0, h2 = 0;
        switch ((nq_block_kind)c->pattern[l]) {
        case NQ_BLOCK_MAMBA: {
            uint64_t P = (uint64_t)nq_mamba_in_proj_dim(c), in = (uint64_t)nq_mamba_intermediate(c);
            uint64_t cd = (uint64_t)nq_mamba_conv_dim(c);
            W = P * H + H * in + cd * (uint64_t)c->conv_kernel;
            w = P + cd + (uint64_t)c->mamba_num_heads + in + 2 * H;
            h2 = H * H + in * in;
            break;
        }
        case NQ_BLOCK_ATTENTION: {
            uint64_t q = (uint64_t)c->num_attention_heads * c->head_dim;
            uint64_t kv = (uint64_t)c->num_key_value_heads * c->head_dim;
            W = 2 * H * (q + kv);
            w = 2 * q + 2 * kv + 2 * H;
            h2 = 3 * H * H + q * q;
            break;
        }
        case NQ_BLOCK_MLP: {
            uint64_t I = (uint64_t)c->intermediate_size;
            W = 2 * H * I;
            w = I + 2 * H;
            h2 = H * H + I * I;
            break;
        }
        case NQ_BLOCK_MOE: {
            uint64_t E = (uint64_t)c->n_routed_experts, K = (uint64_t)c->num_experts_per_tok;
            uint64_t I = (uint64_t)c->moe_intermediate_size;
            uint64_t Is = (uint64_t)c->moe_shared_expert_intermediate_size;
            W = E * 2 * H * I + 2 * H * Is + E * H;
            w = E + K * (2 * H + (I > Is ? I : Is)) + 3 * H;
            h2 = E * (H * H + I * I) + (Is ? H * H + Is * Is : 0);
            break;
        }
        }
        /* the widest Linear input, split into up to 3 bf16 terms (gemm.cu) */
        uint64_t I = 0;
        switch ((nq_block_kind)c->pattern[l]) {
        case NQ_BLOCK_MAMBA: I = (uint64_t)nq_mamba_intermediate(c); break;
        case NQ_BLOCK_ATTENTION: I = (uint64_t)c->num_attention_heads * c->head_dim; break;
        case NQ_BLOCK_MLP: I = (uint64_t)c->intermediate_size; break;
        case NQ_BLOCK_MOE:
            I = (uint64_t)(c->moe_intermediate_size > c->moe_shared_expert_intermediate_size
                               ? c->moe_intermediate_size
                               : c->moe_shared_expert_intermediate_size);
            break;
        }
        I = I > H ? I : H;
        uint64_t b = 4 * W + 4 * (uint64_t)rows * w + 6 * (uint64_t)rows * I +
                     (hessians ? 8 * h2 : 0);
        worst = b > worst ? b : worst;
    }
    return worst + (272ull << 20) + (5ull << 30);
}

/* Chooses where the activations live and allocates them (host arrays only
 * here; the GPU's resident stream comes with the embedding).
 * NEMOQ_CUDA_ACT_MIB sets the GPU memory they may take (e.g. 0: always
 * streamed); else what is free minus layer_device_bytes. */
int acts_open(acts *a, nq_model *model, struct nq_cuda *g, const nq_model_config *cfg,
              int S, int T, bool keep_input, bool hessians, FILE *log, nq_error *err)
{
    memset(a, 0, sizeof *a);
    a->model = model;
    a->g = g;
    a->keep_input = keep_input;
    a->S = S;
    a->T = T;
    a->plane = (size_t)T * cfg->hidden_size;
    uint64_t bytes = (uint64_t)S * a->plane * sizeof(float) * (keep_input ? 2 : 1);
    if (g) {
        int64_t per = NQ_CUDA_CHUNK_ROWS / T > 0 ? NQ_CUDA_CHUNK_ROWS / T : 1;
        int64_t rows = (per < S ? per : S) * (int64_t)T;
        uint64_t budget;
        const char *env = getenv("NEMOQ_CUDA_ACT_MIB");
        if (env && *env) {
            budget = (uint64_t)strtoull(env, NULL, 10) << 20;
        } else {
            size_t free_b = 0, total_b = 0;
            if (nq_cuda_mem_info(g, &free_b, &total_b, err) != 0)
                return -1;
            uint64_t need = layer_device_bytes(cfg, rows, hessians);
            budget = free_b > need ? free_b - need : 0;
        }
        a->resident = bytes <= budget;
        if (log)
            fprintf(log, "calibration activations: %.2f GiB (%s) %s\n", bytes / 1073741824.0,
                    keep_input ? "the layer's input and output" : "one copy",
                    a->resident ? "resident on the GPU"
                                : "on the host, streamed through the GPU a chunk at a time "
                                  "(more than the GPU memory left for them)");
        if (a->resident)
            return 0;
    }
    a->x = malloc(S * a->plane * sizeof *a->x);
    a->x_in = keep_input ? malloc(S * a->plane * sizeof *a->x_in) : NULL;
    if (!a->x || (keep_input && !a->x_in))
        return nq_fail(err, "calibration: out of memory for %d x %d x %d activations", S, T,
                       cfg->hidden_size);
    return 0;
}

void acts_close(acts *a)
{
    if (a->resident && a->g)
        nq_cuda_resident_free(a->g);
    free(a->x);
    free(a->x_in);
    a->x = a->x_in = NULL;
}

int acts_embed(acts *a, const int32_t *ids, nq_error *err)
{
    if (a->resident)
        return nq_model_embed_resident(a->model, ids, (size_t)a->S * a->T, err);
    for (int s = 0; s < a->S; s++)
        if (nq_model_embed(a->model, ids + (size_t)s * a->T, a->T, a->x + s * a->plane, err) != 0)
            return -1;
    return 0;
}

/* The layer's input, kept before it runs (keep_input only). */
int acts_save(acts *a, nq_error *err)
{
    if (!a->keep_input)
        return 0;
    if (a->resident)
        return nq_cuda_resident_save(a->g, err);
    memcpy(a->x_in, a->x, (size_t)a->S * a->plane * sizeof *a->x);
    return 0;
}

int acts_restore(acts *a, nq_error *err)
{
    if (!a->keep_input)
        return nq_fail(err, "calibration: the layer's input was not kept");
    if (a->resident)
        return nq_cuda_resident_restore(a->g, err);
    memcpy(a->x, a->x_in, (size_t)a->S * a->plane * sizeof *a->x);
    return 0;
}

/* Block l on the activations, in place. */
int acts_run(acts *a, int l, nq_error *err)
{
    return nq_model_blocks_resident(a->model, l, a->x, a->S, a->T, !a->resident, !a->resident,
                                    err);
}
