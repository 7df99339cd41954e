/* NVFP4 as NVIDIA ModelOpt writes it for quant_algo "NVFP4": E2M1 codes
 * (magnitudes 0 0.5 1 1.5 2 3 4 6, sign in bit 3), blocks of 16 along the
 * input dimension, an E4M3 scale per block and an f32 global scale per
 * tensor; element 2i in the low nibble of byte i.  docs/export-spec.md 2.1
 * quotes the ModelOpt code each function mirrors. */
#ifndef NQ_FORMATS_NVFP4_H
#define NQ_FORMATS_NVFP4_H

#include <stdint.h>

#define NQ_NVFP4_BLOCK 16

/* E2M1: round to nearest, ties to the even code, saturating at 6; the sign
 * bit is set for x < 0 (so -0.1 gives code 8, "-0"). */
uint8_t nq_e2m1_encode(float x);
float nq_e2m1_value(uint8_t code);

/* weight_scale_2 = amax / (6 * 448); 1.0 for an all-zero tensor (ModelOpt
 * would divide 0 by 0 there). */
float nq_nvfp4_global_scale(float amax);
/* ModelOpt's block scale: e4m3(clamp(block_amax / (6 * gs), 2^-9)), with a
 * zero block given scale 1.0. */
uint8_t nq_nvfp4_block_scale_max(const float *x, float gs);
/* Squared error of the block quantized with e4m3 scale code `scale`. */
double nq_nvfp4_block_sq_error(const float *x, uint8_t scale, float gs);
/* The e4m3 scale among the candidates near the max scale (decoded values
 * from 1/2 to 5/4 of it) with the least squared error; ties keep the max
 * scale, then the larger one. *err receives that error. */
uint8_t nq_nvfp4_block_scale_mse(const float *x, float gs, double *err);
/* Output-aware scale search (--optimize): the E4M3 scale code whose decoded
 * value lies in [lo, hi] times that of the max scale (for the max scale
 * computed as if the block maximum were mapped to 6) with the least error
 * dw^T hb dw, dw = x - dequant(x); hb is the block's 16x16 Hessian
 * (row-major, ModelOpt's local_hessian metric) or NULL for the plain squared
 * error.  Candidates are tried in code order from the max scale down, then
 * up; ties keep the earlier one, so the max scale wins every tie.  With
 * four_over_six only two candidates are tried: the block maximum mapped to 6
 * and to 4 (ModelOpt's NVFP4_FOUR_OVER_SIX).  *err receives the error. */
uint8_t nq_nvfp4_block_scale_search(const float *x, float gs, const double *hb, float lo,
                                    float hi, int four_over_six, double *err);
/* x[n] -> what an NVFP4 activation quantizer with global scale gs passes on:
 * per 16-element block, the max scale, E2M1 codes, dequantized (vLLM's
 * scaled_fp4_quant); n % 16 == 0.  In place. */
void nq_nvfp4_fake_quant(float *x, int64_t n, float gs);
/* Codes of one block: e2m1(x / (e4m3(scale) * gs)), packed into 8 bytes. */
void nq_nvfp4_encode_block(const float *x, uint8_t scale, float gs, uint8_t packed[8]);
/* Dequantizes one row of `cols` elements. */
void nq_nvfp4_decode_row(const uint8_t *packed, const uint8_t *scales, float gs, int64_t cols,
                         float *out);

#endif
