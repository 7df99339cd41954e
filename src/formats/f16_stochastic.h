/* f32 -> f16 stochastic rounding, bit for bit the software path of the
 * serving kernels (FlashInfer include/flashinfer/mamba/conversion.cuh,
 * cvt_rs_f16_sw, used on every GPU without the Blackwell cvt.rs
 * instruction):
 *   13 random bits are added to |x|'s f32 bit pattern, just below the f16
 *   mantissa (f32 has 23 mantissa bits, f16 10: 13 are dropped), and the
 *   sum is truncated to f16; a carry out of the dropped bits rounds up, so
 *   x rounds up with probability (dropped part) / 2^13.
 *   After the add: an f32 exponent field of 255 gives NaN (0x7e00) if any
 *   mantissa bit is set, else Inf — so Inf plus non-zero noise becomes NaN,
 *   as in the kernel; an exponent above 142 (|x| >= 65536) gives Inf; below
 *   113 (|x| < 2^-14, the f16 subnormal range) gives zero: f16 subnormals
 *   are flushed, not rounded.  The sign is kept, so -0 and flushed negative
 *   values give 0x8000. */
#ifndef NQ_FORMATS_F16_STOCHASTIC_H
#define NQ_FORMATS_F16_STOCHASTIC_H

#include <stdint.h>

/* rand13: only bits 12..0 are used. */
uint16_t nq_f32_to_f16_sr(float x, uint32_t rand13);

#endif
