/* Merging PEFT LoRA adapters into a checkpoint while it streams.
 *
 * nq_lora_attach resolves every key of every adapter against the
 * checkpoint's tensors (both namings of Nemotron-H: NVIDIA's remote-code
 * `backbone.*` with per-expert `experts.J.up_proj`, and transformers 5's
 * `model.*` with experts fused into 3-D parameters reached through
 * target_parameters), checks every shape, rank and option, and fails with a
 * one-line error before anything is written.  It then marks each touched
 * tensor of the checkpoint as produced (io/safetensors.h nq_tensor_source):
 * whoever reads that tensor's bytes (the encoders, the calibration forward
 * pass, the writer) gets the merged weights, formed from the base tensor and
 * the adapters' small A/B slices at that moment and freed after.  Nothing
 * else changes in the pipeline, and memory stays one tensor in f32.
 *
 * The arithmetic is PEFT's merge_and_unload (peft 0.21, lora/layer.py):
 *   Linear     W' = W + s.(B.A)           s = alpha/r, or alpha/sqrt(r) (rsLoRA)
 *   Embedding  W' = W + s.(B.A)^T         A = lora_embedding_A [r, V], B [H, r]
 *   DoRA       W' = m / ||W + dW||_row . (W + dW),  row norm over the inputs
 *   experts    A [r.E, in] rows e.r+k, B [out, r.E] columns k.E+e  (ParamWrapper)
 *   modules_to_save: the adapter's tensor replaces the base's.
 * B.A is summed over k in order with fused multiply-adds (what torch's CPU
 * matmul does for these shapes), every delta is added in f32 and the result
 * is rounded once to the base dtype (RNE), however many adapters touch it.
 * With several adapters (in order) each one's WEIGHT multiplies its scaling;
 * DoRA's norm is taken on the weight merged so far. */
#ifndef NQ_EXPORT_LORA_H
#define NQ_EXPORT_LORA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "core/error.h"
#include "io/adapter.h"
#include "io/safetensors.h"

typedef struct nq_lora_spec {
    const char *dir;
    double weight;      /* multiplies the adapter's scaling; 1 = as trained */
    char *owned;        /* set by nq_lora_spec_parse when it copied DIR; caller frees */
} nq_lora_spec;

/* DIR or DIR:WEIGHT (WEIGHT a finite number).  -1 and an error otherwise.
 * An existing path is taken whole even if it contains ':'. */
int nq_lora_spec_parse(const char *arg, nq_lora_spec *out, nq_error *err);

typedef struct nq_lora nq_lora;

/* Opens the adapters, resolves them against ck and installs the merge on
 * the touched tensors.  in_config_path: the base's config.json (to check
 * base_model_name_or_path when it names a local directory); may be NULL.
 * threads: for forming deltas (<= 0: 1); the bytes never depend on it.
 * The returned object must outlive every read of ck's tensors. */
nq_lora *nq_lora_attach(nq_checkpoint *ck, const nq_lora_spec *specs, size_t n,
                        const char *in_config_path, int threads, nq_error *err);
void nq_lora_free(nq_lora *l);

/* One object per adapter, in order: name (the directory's last component),
 * weight, r, lora_alpha, use_rslora, use_dora, lora_modules (LoRA pairs),
 * tensors (base tensors it changes), replaced_tensors (modules_to_save),
 * base_model_name_or_path, and with with_notes: notes (strings, e.g.
 * untrained Mamba out_proj B).  New reference. */
json_t *nq_lora_describe(const nq_lora *l, bool with_notes);
/* config.json text with "nemoq_merged_adapters": ADAPTERS added before the
 * closing brace (every original byte kept), or appended to an existing list
 * (then re-serialized).  malloc'd, NUL-terminated; NULL on error. */
char *nq_lora_config_record(const char *text, size_t len, const char *source_name,
                            const json_t *adapters, size_t *out_len, nq_error *err);

/* "merged LoRA NAME (weight W, r R, alpha A): T tensors ..." per adapter of
 * an nq_lora_describe(.., true) array, plus its notes.  NULL: nothing. */
void nq_lora_print_summary(FILE *out, const json_t *described);

/* Base tensors changed by at least one adapter. */
size_t nq_lora_tensor_count(const nq_lora *l);

/* `nemoq inspect ADAPTER_DIR`: the adapter alone (config, ranks, alphas,
 * scalings, modules, parameters); with a base checkpoint also the base
 * tensors each module lands on (resolution errors are reported as with
 * attach).  New reference, NULL on error. */
json_t *nq_adapter_inspect(const char *dir, const char *base_dir, nq_error *err);
void nq_adapter_inspect_print(FILE *out, const json_t *doc);

#endif
