/* What the CUDA backend's files share beyond cuda.h: the device object's
 * allocator and cuBLAS handle (backend.cu) and the calibration statistics
 * the Linear layers feed (stats.cu).  C++ linkage: only .cu files use it. */
#ifndef NQ_CUDA_INTERNAL_CUH
#define NQ_CUDA_INTERNAL_CUH

#include <cublas_v2.h>

#include "cuda/cuda.h"

/* backend.cu */
cublasHandle_t nqb_blas(nq_cuda *g);
/* cudaMalloc counted in nq_cuda_peak_bytes; 0 or -1 with err filled. */
int nqb_alloc(nq_cuda *g, void **p, size_t bytes, nq_error *err);
void nqb_free(nq_cuda *g, void *p, size_t bytes);
/* The statistics object of g (NULL when none is collecting). */
struct nqs_stats **nqb_stats(nq_cuda *g);
/* Grow-only device buffers of the per-module work after a layer ran (the
 * encoding, the output errors), kept from one module to the next instead
 * of a cudaMalloc/cudaFree pair each (both synchronize) until nq_cuda_trim.
 * NULL with err filled when out of memory. */
enum {
    NQB_K_W, NQB_K_Q, NQB_K_PACKED, NQB_K_SCALES, NQB_K_BSTATS, NQB_K_RSTATS, NQB_K_AMAX,
    NQB_K_X32, NQB_K_X64, NQB_K_W64, NQB_K_Y64, NQB_K_COUNT
};
void *nqb_keep(nq_cuda *g, int slot, size_t bytes, nq_error *err);

/* stats.cu: called by the backend's Linear layers and attention while
 * statistics are being collected (nq_cuda_stats_begin .. _end). */
int nqs_linear(nq_cuda *g, const char *weight_name, int layer, int expert, const float *dx,
               int rows, int in, nq_error *err);
int nqs_kv(nq_cuda *g, const float *k, const float *v, size_t count, nq_error *err);
/* acc[0] = max(acc[0], max |x| of the finite x) as float bits, acc[1] |= 1
 * when some x is not finite (device acc). */
int nqs_amax(const float *dx, size_t count, unsigned *acc, nq_error *err);
/* nq_cuda_output_error for w and q already on the device (f32 [out, in]). */
int nqs_output_error_dev(nq_cuda *g, const float *x, int rows, const float *dw32,
                         const float *dq32, int64_t out, int64_t in, double *err_sq,
                         double *ref_sq, nq_error *err);
/* Frees everything (nq_cuda_close). */
void nqs_free(nq_cuda *g);

/* gemm.cu: a Linear weight [out, in] on the device. */
enum { NQG_F32, NQG_BF16, NQG_BF16X3 };
typedef struct nqg_weight {
    void *p;  /* NULL: absent */
    int kind; /* NQG_F32: float [out, in]; NQG_BF16: bf16 [out, in] (exact); NQG_BF16X3: bf16
                 [out, 3 in], each row three times (NQ_GEMM_BF16X3K) */
} nqg_weight;
/* "f32" | "bf16x3" | "bf16x2" | "bf16x3k" -> *m; -1 for anything else. */
int nqg_parse_mode(const char *s, nq_cuda_gemm_mode *m);
/* out[i] = the high half of w[i]; true when every low half is zero (w is
 * exactly bf16). */
bool nqg_pack_bf16(const float *w, size_t count, uint16_t *out);
/* Scratch nqg_gemm needs for n rows of in features. */
size_t nqg_scratch_bytes(const nqg_weight *w, nq_cuda_gemm_mode mode, int n, int in);
/* dy[n, out] = dx[n, in] W^T, SGEMM for an f32 weight, else the bf16
 * split GEMMs of mode; 0 or -1. */
int nqg_gemm(cublasHandle_t h, const nqg_weight *w, nq_cuda_gemm_mode mode, const float *dx, int n,
             int in, int out, float *dy, void *scratch, nq_error *err);

#endif
