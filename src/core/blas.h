/* One-time OpenBLAS setup shared by everything that multiplies matrices. */
#ifndef NQ_CORE_BLAS_H
#define NQ_CORE_BLAS_H

/* Idempotent and thread-safe.  Sets OpenBLAS to one thread (parallelism is
 * ours, in fixed chunks: a multi-threaded BLAS would make each product's
 * rounding depend on its own thread count).  And when a DYNAMIC_ARCH
 * OpenBLAS did not recognise the CPU and fell back to its SSE3 "Prescott"
 * kernels although the CPU has AVX2/AVX-512 (OpenBLAS 0.3.21, Debian 12's,
 * does not know Sapphire Rapids and later, nor CPUs that a hypervisor
 * reports with a masked model), it selects the Haswell (AVX2+FMA) or
 * SkylakeX (AVX-512) kernels, as OPENBLAS_CORETYPE would; an
 * OPENBLAS_CORETYPE set by the user is left alone. */
void nq_blas_init(void);

/* The OpenBLAS kernel family in use ("SkylakeX", "Haswell", ...), or
 * "unknown" when the library does not say. */
const char *nq_blas_core(void);

#endif
