/* Pieces of an output checkpoint shared by the quantize pipeline's
 * weights-only (quantize.c) and calibrated (calibrated.c) paths. */
#ifndef NQ_EXPORT_OUTPUT_H
#define NQ_EXPORT_OUTPUT_H

#include <stdbool.h>

#include "export/quantize.h"
#include "io/safetensors.h"
#include "io/writer.h"
#include "model/config.h"
#include "recipe/plan.h"

/* Files of the input directory copied verbatim to the output: everything
 * at the top level except weights, the index, config.json (rewritten) and
 * quantization configs (replaced). */
bool nq_is_auxiliary_file(const char *name);
/* The plan entry for a `.weight` tensor, or NULL. */
const nq_plan_module *nq_module_of_weight(const nq_plan *plan, const char *tensor);
/* Declares the stored tensors of a quantized module (weights and weight
 * scales; not input_scale). */
int nq_declare_quantized(nq_writer *w, const nq_plan_module *m, nq_error *err);
/* Streams a stored tensor's bytes straight from the mapping (or as its
 * source, a LoRA merge, produces them). */
int nq_copy_tensor(nq_writer *w, const nq_tensor *t, nq_error *err);
/* The same through the write queue. */
struct nq_write_queue;
int nq_push_tensor(struct nq_write_queue *q, const nq_tensor *t, nq_error *err);
/* config.json, hf_quant_config.json / quantize_config.json, and the input
 * directory's auxiliary files. */
int nq_write_metadata_files(nq_writer *w, const nq_quantize_options *opt,
                            const nq_model_config *cfg, const nq_plan *plan, bool kv_fp8,
                            nq_error *err);
/* The end of a successful export, once every tensor is written: clears the
 * progress line, writes the metadata files (as above), records shards,
 * tensors and bytes in *sum, and commits the output directory. */
int nq_output_commit(nq_writer *w, const nq_quantize_options *opt, const nq_model_config *cfg,
                     const nq_plan *plan, bool kv_fp8, nq_quantize_summary *sum, nq_error *err);

#endif
