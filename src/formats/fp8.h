/* FP8 E4M3 ("e4m3fn": no infinities, max finite 448) encoding and the
 * per-tensor FP8 scheme ModelOpt exports for quant_algo "FP8". */
#ifndef NQ_FORMATS_FP8_H
#define NQ_FORMATS_FP8_H

#include <stdint.h>

#define NQ_E4M3_MAX 448.0f

/* Round to nearest, ties to even; magnitudes beyond 448 saturate to 448
 * (sign kept); NaN maps to 0x7f. */
uint8_t nq_f32_to_e4m3(float f);
/* weight_scale = amax / 448 (1.0 for an all-zero tensor, so it stays a valid
 * positive scale). */
float nq_fp8_tensor_scale(float amax);
/* The stored byte of x under `scale`: e4m3(bf16(x / scale)), as ModelOpt
 * computes it for BF16 weights (see fp8.c). */
uint8_t nq_fp8_quantize_value(float x, float scale);

#endif
