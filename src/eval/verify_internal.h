/* Pieces of `nemoq verify` shared by its files: verify.c (every module
 * decodes, companions, --against) and verify_declared.c (every declared
 * quantization field agrees with what is stored). */
#ifndef NQ_EVAL_VERIFY_INTERNAL_H
#define NQ_EVAL_VERIFY_INTERNAL_H

#include <jansson.h>
#include <stdio.h>

#include "eval/verify.h"
#include "io/safetensors.h"

/* Prints "problem: ..." to out (if not NULL) and counts it. */
void nq_verify_problem(FILE *out, nq_verify_result *res, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The declared fields of hf_quant_config.json (hf) or quantize_config.json
 * (gq), and config.json's quantization_config, against the tensors:
 * GPTQ bits (qweight packing), group_size (scales rows, with `dynamic`
 * overrides), sym (every zero point 8), desc_act (g_idx in order),
 * checkpoint_format; NVFP4 group_size (weight_scale columns); every
 * exclude_modules entry against the quantized modules (as vLLM matches
 * them); config.json's copy against the file.  NULL hf/gq: not present. */
void nq_verify_declared(const nq_checkpoint *ck, const char *dir, json_t *hf, json_t *gq,
                        FILE *out, nq_verify_result *res);

#endif
