/* `nemoq quantize`: a BF16/F16/F32 Nemotron-H checkpoint in, a quantized
 * checkpoint out, streaming tensor by tensor (peak memory: the largest
 * quantized Linear in f32 plus its encoded form, never the model). */
#ifndef NQ_EXPORT_QUANTIZE_H
#define NQ_EXPORT_QUANTIZE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "algo/optimize.h"
#include "core/error.h"
#include "recipe/plan.h"

typedef struct nq_quantize_options {
    const char *in_dir;
    const char *out_dir;
    nq_recipe_options recipe;
    bool mse_scales;        /* --weight-scale mse */
    bool weights_only;      /* no calibration: weight formats only */
    int threads;            /* <= 0: all cores */
    uint64_t max_shard_bytes;
    bool force;
    FILE *log;              /* progress and notes; NULL: quiet */
    /* Calibration (calib/calib.h): NULL path = none. */
    const char *calib_path;
    int calib_samples, calib_len;   /* <= 0: 256 x 2048 */
    bool gptq;                      /* GPTQ for NVFP4 and INT4 modules (needs calib_path) */
    double gptq_damp;               /* <= 0: 0.01 */
    int gptq_min_rows;              /* fewer calibration rows: RTN + mse scales (<= 0: 128) */
    /* Exact equalization folded into the weights (algo/equalize.h): per
     * channel scales between each RMSNorm and the Linears it feeds (the
     * router absorbing them), between the gated RMSNorm and out_proj, and
     * between relu^2 up_proj rows and down_proj columns (needs calib_path). */
    bool equalize;
    int equalize_kinds;             /* NQ_EQ_* bits; 0 with equalize: NQ_EQ_DEFAULT */
    /* the search's objective: false = the W4A16 Hessian form
     * (nq_equalize_search), true = the served output error on the sampled
     * calibration rows, NVFP4 activations quantized (nq_equalize_search_served) */
    bool equalize_served;
    bool gptq_act_order;            /* INT4: act-order with static groups (nq_gptq_int4_actorder) */
    /* Which activations feed the next layer during calibration:
     * NQ_PROPAGATE_AUTO = quantized with GPTQ (the standard sequential
     * scheme), float otherwise (ModelOpt's max calibration). */
    enum { NQ_PROPAGATE_AUTO, NQ_PROPAGATE_FLOAT, NQ_PROPAGATE_QUANTIZED } propagate;
    bool kv_cache_fp8;              /* write FP8 KV scales when the recipe asks (default on) */
    /* --optimize / --optimize-techniques (algo/optimize.h); needs calib_path */
    nq_optimize optimize;
    /* NULL, or "float32"/"float16"/"bfloat16": written to config.json as
     * mamba_ssm_cache_dtype (vLLM's default for --mamba-ssm-cache-dtype). */
    const char *ssm_cache_dtype;
    /* Optional: a JSON array that receives one object per quantized module
     * (format, why, errors, activation amax, algorithm). Borrowed. */
    struct json_t *report_modules;
    /* AutoQuantize (export/autoquant.c): auto_bits > 0 replaces the preset's
     * formats of the searchable modules by the measured-sensitivity choice
     * under that many effective bits per parameter. */
    double auto_bits;
    bool auto_formats[3];           /* indexed by nq_format: bf16, nvfp4, fp8 */
    bool auto_active_moe;           /* --auto-cost active-moe */
    int auto_score_windows;         /* scoring windows (<= 0: 16) */
    bool auto_score_proxy;          /* --auto-score proxy: output-error proxy, no KL */
    struct json_t *auto_report;     /* optional object: groups, scores, choice, cost */
    const char *auto_scores_path;   /* reuse the scores of an earlier --report (no measuring) */
    /* Print the plan (with AutoQuantize: its scores) to stdout and stop. */
    bool dry_run;
    /* PEFT LoRA adapters merged into the weights as they stream by, in
     * order (export/lora.h); calibration and GPTQ see the merged weights.
     * nq_quantize fills merged_adapters itself (config.json records it). */
    const struct nq_lora_spec *lora;
    size_t nlora;
    /* Optional: receives one object per merged adapter, with notes. Borrowed. */
    struct json_t *lora_report;
    const struct json_t *merged_adapters;   /* internal: set by nq_quantize / nq_merge */
    /* The GPU that runs the calibration forward passes (cuda/cuda.h;
     * borrowed), or NULL for the CPU. */
    struct nq_cuda *cuda;
} nq_quantize_options;

typedef struct nq_quantize_summary {
    size_t tensors_in, tensors_out;
    size_t modules[4];      /* by nq_format */
    uint64_t bytes_in, bytes_out;
    uint64_t params_in;     /* elements of every input tensor */
    int shards;
    /* weight error over all quantized modules */
    double sq_err, sq_err_max_scale, sq_ref;
    /* calibration */
    int calib_samples, calib_len;
    size_t calib_stream_tokens;
    size_t experts_without_tokens;  /* got their layer's input scale */
    size_t gptq_modules, gptq_fallbacks;
    /* --equalize: pairs equalized (alpha > 0) of those searched, and the
     * searched W4A16 output error summed over them at alpha = 0 / chosen */
    size_t eq_pairs, eq_searched;
    double eq_err_identity, eq_err_best;
    size_t kv_layers;
    double out_sq_err, out_sq_ref;  /* output error on calibration samples */
    double calib_seconds;
    /* per kind of block (0 Mamba, 1 MoE, 2 attention, 3 MLP): layers, their
     * seconds in all (statistics forward, quantization, writing,
     * propagation) and in the statistics forward alone */
    int layers_of_kind[4];
    double layer_seconds[4], layer_stats_seconds[4];
    uint64_t peak_activation_bytes; /* activations + per-layer statistics */
} nq_quantize_summary;

int nq_quantize(const nq_quantize_options *opt, nq_quantize_summary *summary, nq_error *err);

/* `nemoq merge`: the input with opt->lora merged, every tensor in its source
 * dtype, through the same atomic writer (config.json records the adapters).
 * Uses in_dir, out_dir, lora, nlora, lora_report, threads, max_shard_bytes,
 * force, log. */
int nq_merge(const nq_quantize_options *opt, nq_quantize_summary *summary, nq_error *err);

#endif
