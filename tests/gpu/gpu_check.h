/* Shared by the GPU test files (tests/gpu/): one line per check, counted
 * for the final "N passed, N failed". */
#ifndef NQ_GPU_CHECK_H
#define NQ_GPU_CHECK_H

#include <stdbool.h>

#include "cuda/cuda.h"

void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* gpu_nano_width.c: the Nano-width reference model on the GPU against
 * transformers (tests/fixtures/nano_width). */
void test_nano_width_gpu(nq_cuda *gpu, const char *src_dir);
/* gpu_nano_width.c: the device router against nq_moe_select. */
void test_router_gpu(nq_cuda *gpu);
/* gpu_gemm.c: the GEMM modes against a float64 host GEMM; the mode of gpu
 * is restored at the end. */
void test_gemm_modes_gpu(nq_cuda *gpu);

#endif
