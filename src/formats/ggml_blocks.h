/* ggml's block formats that nemoq writes into GGUF files.
 *
 * Q8_0 (ggml-common.h block_q8_0): 32 elements, an f16 scale d then 32 int8
 * codes; quantize_row_q8_0_ref: d = amax / 127, q = roundf(x * (1/d))
 * (half away from zero), d stored as f16 rounded to nearest even.
 *
 * NVFP4 (block_nvfp4): 64 elements = 4 sub-blocks of 16; 4 bytes of UE4M3
 * sub-block scales, then 32 bytes of E2M1 codes where byte 8s+j holds
 * element j of sub-block s in its low nibble and element j+8 in its high
 * nibble.  Value = kvalues_mxfp4[code] (E2M1 doubled) * ue4m3(d) / 2, i.e.
 * e2m1(code) * e4m3(d): the same numbers as ModelOpt's block, without the
 * per-tensor scale, which llama.cpp keeps in a separate F32 ".scale" tensor
 * and multiplies into the matmul output.  nq_ggml_nvfp4_from_modelopt is
 * the repack llama.cpp's converter does (conversion/base.py _nvfp4_pack):
 * nibbles regrouped, scale bytes copied with the sign bit stripped. */
#ifndef NQ_FORMATS_GGML_BLOCKS_H
#define NQ_FORMATS_GGML_BLOCKS_H

#include <stdint.h>

#define NQ_Q8_0_BLOCK 32
#define NQ_Q8_0_BYTES 34
#define NQ_GGML_NVFP4_BLOCK 64
#define NQ_GGML_NVFP4_BYTES 36

/* n % 32 == 0; out receives n / 32 * 34 bytes. */
void nq_q8_0_quantize_row(const float *x, int64_t n, uint8_t *out);
void nq_q8_0_dequantize_row(const uint8_t *in, int64_t n, float *out);

/* One ModelOpt NVFP4 row (packed [cols/2], scales [cols/16], cols % 64 == 0)
 * into cols / 64 ggml blocks (cols / 64 * 36 bytes). */
void nq_ggml_nvfp4_from_modelopt(const uint8_t *packed, const uint8_t *scales, int64_t cols,
                                 uint8_t *out);
/* dequantize_row_nvfp4: without the per-tensor scale. */
void nq_ggml_nvfp4_dequantize_row(const uint8_t *in, int64_t n, float *out);

#endif
