/* Scalar conversions between f32 and the narrow float types stored in
 * checkpoints.  Decoders are exact.  Encoders round to nearest, ties to even,
 * the way PyTorch's .to(dtype) does. */
#ifndef NQ_FORMATS_FLOATCONV_H
#define NQ_FORMATS_FLOATCONV_H

#include <stdint.h>

float nq_bf16_to_f32(uint16_t h);
uint16_t nq_f32_to_bf16(float f);  /* RNE; NaN stays NaN (quiet) */
float nq_f16_to_f32(uint16_t h);
uint16_t nq_f32_to_f16(float f);   /* RNE; overflow -> inf */
/* OCP FP8 E4M3 "fn": no infinities, 0x7f/0xff are NaN, max finite 448. */
float nq_e4m3_to_f32(uint8_t b);
/* OCP FP8 E5M2: IEEE-like, with inf and NaN, max finite 57344. */
float nq_e5m2_to_f32(uint8_t b);

#endif
