/* Reading quantized modules back (verify, eval): the stored format of a
 * module and its dequantized weight. */
#ifndef NQ_EXPORT_DEQUANT_H
#define NQ_EXPORT_DEQUANT_H

#include <stdint.h>

#include "core/error.h"
#include "io/safetensors.h"

/* The format a checkpoint stores module `module` in, from its tensors. */
typedef enum nq_stored_format {
    NQ_STORED_NONE,  /* no such module */
    NQ_STORED_FLOAT, /* plain float weight */
    NQ_STORED_NVFP4,
    NQ_STORED_FP8,
    NQ_STORED_GPTQ,
} nq_stored_format;
nq_stored_format nq_stored_format_of(const nq_checkpoint *ck, const char *module);

/* Dequantizes module `module` of ck into a malloc'd f32 [rows, cols] (its
 * logical [out, in] weight), validating every companion tensor's dtype and
 * shape and that scales are finite and positive.  gptq_group is the group
 * size from quantize_config.json (used to check g_idx; 0 to infer). */
float *nq_decode_module(const nq_checkpoint *ck, const char *module, int gptq_group,
                        int64_t *rows, int64_t *cols, nq_error *err);

#endif
