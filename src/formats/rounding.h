/* How the exporters divide by the formats' constants.  ModelOpt computes
 * NVFP4's weight_scale_2 = amax / (6 * 448), FP8's weight_scale = amax / 448
 * and the input and KV-cache scales as a tensor divided by a Python float.
 * On the CPU torch divides; on CUDA it multiplies by the f32 reciprocal of
 * the scalar (div_true_kernel_cuda with a CPU scalar operand), which differs
 * from the quotient by one ulp for some amax.  And ModelOpt's FP8 weight
 * (bf16 weight / f32 0-dim scale tensor).to(float8_e4m3fn) keeps the BF16
 * dtype: on CUDA the scale is first rounded to BF16, on the CPU it is not.
 * tests/test_formats.c checks both modes against ModelOpt's own exports
 * (tests/fixtures/formats/ *_modelopt.bin and *_modelopt_cuda.bin).
 *
 * The mode is process-wide, set once by `quantize --rounding` before any
 * work starts, and read by the per-format scale functions. */
#ifndef NQ_FORMATS_ROUNDING_H
#define NQ_FORMATS_ROUNDING_H

#include <stdbool.h>

typedef enum {
    NQ_ROUNDING_EXACT,        /* correctly rounded f32 division: ModelOpt on the CPU */
    NQ_ROUNDING_MODELOPT_CUDA /* ModelOpt's export on a CUDA device, byte for byte */
} nq_rounding;

void nq_set_rounding(nq_rounding r);
nq_rounding nq_get_rounding(void);
/* "exact" | "modelopt-cuda" -> 0 and *r, else -1 */
int nq_parse_rounding(const char *s, nq_rounding *r);
const char *nq_rounding_name(nq_rounding r);

/* x / c for a tensor x and a constant c, as the mode computes it: x / c, or
 * x * (1.0f / c) with the reciprocal rounded to f32. */
float nq_scale_div(float x, float c);

/* The divisor FP8 weights are divided by for a stored f32 weight_scale s:
 * s itself, or s rounded to BF16 (the CUDA path). */
float nq_fp8_weight_divisor(float s);

#endif
