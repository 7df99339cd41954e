/* Calibration: the text a model is run on while it is quantized, and the
 * statistics gathered from one block's Linear inputs.
 *
 * Data (nq_calib_tokens): a UTF-8 text file, or JSONL where every line is
 * {"text": "..."} or a chat record {"messages": [{"role": r, "content": c},
 * ...]}.  Chat records are rendered in the ChatML form Nemotron 3's
 * template produces ("<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message)
 * when the tokenizer has those tokens, else as "ROLE: CONTENT\n" lines.
 * Documents are tokenized without BOS/EOS and concatenated (documents
 * separated by the EOS token when there is one); from that stream
 * `samples` windows of `len` tokens are taken at evenly spaced,
 * non-overlapping offsets (the same every run).  When the stream holds fewer
 * than samples x len tokens, len is clipped to the stream and samples to
 * what fits; the caller is told.
 *
 * Statistics (nq_calib_stats): per quantized Linear its input amax, the
 * number of input rows, optionally the Hessian sum x x^T (double) for GPTQ,
 * and the first NQ_CALIB_SAMPLE_ROWS input rows (to measure the output error
 * of the quantized weight); per attention block the K and V amax.  Routed
 * experts see only the tokens routed to them. */
#ifndef NQ_CALIB_CALIB_H
#define NQ_CALIB_CALIB_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "model/forward.h"
#include "recipe/plan.h"
#include "tok/tokenizer.h"

#define NQ_CALIB_SAMPLE_ROWS 256

int nq_calib_tokens(const char *path, const nq_tokenizer *tok, int samples, int len,
                    int32_t **ids, int *out_samples, int *out_len, size_t *stream_tokens,
                    nq_error *err);

/* Candidate NVFP4 activation global scales of the act-scale search: amax /
 * 2688 times 2^(-k/4), k = 0..NQ_ACT_CANDIDATES-1. */
#define NQ_ACT_CANDIDATES 12
/* Log2 histogram of |x| / amax for the percentile choice: bin k holds
 * 2^-(k+1)/8 < |x|/amax <= 2^-k/8; the last bin everything below. */
#define NQ_ACT_HIST_BINS 160

typedef struct nq_linear_stats {
    const nq_plan_module *module;
    float amax;
    uint64_t rows;             /* input rows seen (tokens routed, for experts) */
    double *hessian;           /* [in, in] sum x x^T (both triangles), or NULL */
    float *sample;             /* [sample_rows, in] */
    int sample_rows;
    /* --optimize passes (see nq_calib_stats.mode) */
    float act_gs;              /* NQ_CALIB_SERVED: the NVFP4 input global scale */
    double act_err[NQ_ACT_CANDIDATES];  /* NQ_CALIB_ACT: sum (x - fq(x))^2 per candidate */
    uint64_t act_hist[NQ_ACT_HIST_BINS];
    float act_amax_ref;        /* NQ_CALIB_ACT: the amax the candidates are relative to */
} nq_linear_stats;

typedef enum {
    NQ_CALIB_FLOAT = 0,   /* amax, samples, Hessian of the float inputs */
    NQ_CALIB_ACT,         /* act_err and act_hist of existing items (act_amax_ref set) */
    NQ_CALIB_SERVED,      /* hessian = sum xq xq^T of existing items, xq the inputs
                           * NVFP4-quantized with act_gs */
} nq_calib_mode;

typedef struct nq_calib_stats {
    const nq_plan *plan;
    bool hessians;
    nq_linear_stats *items;    /* in order of first use */
    size_t count, cap;
    float k_amax, v_amax;
    bool has_kv;
    nq_calib_mode mode;
} nq_calib_stats;

/* Hooks filling s (ctx = s).  Inputs of modules the plan keeps are ignored. */
nq_forward_hooks nq_calib_hooks(nq_calib_stats *s);
/* The statistics of a module, or NULL when it saw no input. */
nq_linear_stats *nq_calib_find(nq_calib_stats *s, const char *module);
/* The candidate global scale k of the act-scale search for amax. */
float nq_calib_act_candidate(float amax, int k);
/* The same statistics computed on a GPU (cuda/cuda.h, "calibration
 * statistics"): begin before the layer's blocks run on g with no host
 * hooks, collect after them; collect fills s as the hooks would have
 * (amax, rows, sampled rows, Hessians, K/V amax, the same errors for
 * non-finite activations) and ends the GPU's collection. */
struct nq_cuda;
int nq_calib_device_begin(nq_calib_stats *s, struct nq_cuda *g, nq_error *err);
int nq_calib_device_collect(nq_calib_stats *s, struct nq_cuda *g, nq_error *err);
/* Frees every item, keeps plan and the hessians flag. */
void nq_calib_stats_reset(nq_calib_stats *s);

#endif
