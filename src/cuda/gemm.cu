/* The Linear layers' GEMMs (internal.cuh): f32 SGEMM, or exact-input bf16
 * tensor-core GEMMs for weights that bf16 holds exactly.
 *
 * Why the split is exact: the checkpoints store their weights in BF16, so
 * W widened to f32 is exactly a bf16 matrix.  An f32 activation x splits
 * into x1 = bf16(x), x2 = bf16(x - x1), x3 = bf16(x - x1 - x2) with
 * x = x1 + x2 + x3 exactly (each residual is exact in f32: x has 24
 * significant bits, x1 takes the top 8 (9 with rounding's sign), x2 the
 * next 8, x3 the rest).  A bf16 x bf16 product has at most 16 significant
 * bits, exact in the tensor cores' f32 accumulator, so
 * X W^T = X1 W^T + X2 W^T + X3 W^T differs from the f32 SGEMM only in the
 * order of the f32 additions — the same kind of difference as CPU vs GPU.
 * Two terms (x1 + x2: 16 of the 24 bits) leave a relative error of at most
 * 2^-17 per input.
 *
 * The terms' GEMMs accumulate into y smallest first (beta = 1 after the
 * first), or (NQ_GEMM_BF16X3K) as one GEMM of depth 3K over [X1|X2|X3] and
 * a weight stored three times [W|W|W].  No atomics: the same bytes run
 * after run. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/internal.cuh"
extern "C" {
#include "core/parallel.h"
}

#define CKB(call, err)                                                     \
    do {                                                                   \
        cublasStatus_t s_ = (call);                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                   \
            return nq_fail(err, "cublas: %s: status %d", #call, (int)s_);  \
    } while (0)

extern "C" const char *nq_cuda_gemm_mode_name(nq_cuda_gemm_mode m)
{
    switch (m) {
    case NQ_GEMM_F32: return "f32";
    case NQ_GEMM_BF16X3: return "bf16x3";
    case NQ_GEMM_BF16X2: return "bf16x2";
    case NQ_GEMM_BF16X3K: return "bf16x3k";
    }
    return "?";
}

int nqg_parse_mode(const char *s, nq_cuda_gemm_mode *m)
{
    static const nq_cuda_gemm_mode all[] = {NQ_GEMM_F32, NQ_GEMM_BF16X3, NQ_GEMM_BF16X2,
                                            NQ_GEMM_BF16X3K};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (strcmp(s, nq_cuda_gemm_mode_name(all[i])) == 0) {
            *m = all[i];
            return 0;
        }
    return -1;
}

typedef struct pack_job {
    const uint32_t *w;
    uint16_t *out;
} pack_job;

/* Stops the loop (-1) at the first chunk holding a value that is not
 * exactly bf16: that weight goes up as f32 anyway. */
static int pack_range(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    pack_job *j = (pack_job *)ctx;
    uint32_t low = 0;
    for (size_t i = begin; i < end; i++) {
        low |= j->w[i] & 0xffffu;
        j->out[i] = (uint16_t)(j->w[i] >> 16);
    }
    return low ? -1 : 0;
}

bool nqg_pack_bf16(const float *w, size_t count, uint16_t *out)
{
    const size_t chunk = (size_t)1 << 20;
    pack_job j = {(const uint32_t *)w, out};
    /* a large expert or projection: a pass over ~10^8 values, so all cores */
    return nq_parallel_for(count, chunk, count > chunk ? nq_default_threads() : 1, pack_range,
                           &j) == 0;
}

/* Term t of x[r, c] goes to o[r * row_stride + t * term_stride + c]. */
__global__ void nqg_split(const float *__restrict__ x, size_t count, int in, int terms,
                          __nv_bfloat16 *__restrict__ o, size_t row_stride, size_t term_stride)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    size_t r = i / (size_t)in, c = i - r * (size_t)in;
    __nv_bfloat16 *dst = o + r * row_stride + c;
    float v = x[i];
    for (int t = 0; t < terms; t++) {
        __nv_bfloat16 h = __float2bfloat16_rn(v);
        dst[(size_t)t * term_stride] = h;
        /* exact; a non-finite input keeps its value in the first term */
        v = isfinite(v) ? v - __bfloat162float(h) : 0.0f;
    }
}

size_t nqg_scratch_bytes(const nqg_weight *w, nq_cuda_gemm_mode mode, int n, int in)
{
    if (w->kind == NQG_F32)
        return 0;
    int terms = w->kind == NQG_BF16X3 ? 3 : mode == NQ_GEMM_BF16X2 ? 2 : 3;
    return (size_t)terms * n * in * sizeof(__nv_bfloat16);
}

int nqg_gemm(cublasHandle_t h, const nqg_weight *w, nq_cuda_gemm_mode mode, const float *dx, int n,
             int in, int out, float *dy, void *scratch, nq_error *err)
{
    const float one = 1.0f, zero = 0.0f;
    /* Row-major y[n,out] = x[n,in] W[out,in]^T is column-major
     * y^T = W^T-as-stored x^T: op(A) = W (stored [in,out] col-major) ^T. */
    if (w->kind == NQG_F32) {
        CKB(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, (const float *)w->p, in,
                        dx, in, &zero, dy, out),
            err);
        return 0;
    }
    __nv_bfloat16 *xs = (__nv_bfloat16 *)scratch;
    size_t count = (size_t)n * in;
    unsigned blocks = (unsigned)((count + 255) / 256);
    if (w->kind == NQG_BF16X3) {
        nqg_split<<<blocks, 256>>>(dx, count, in, 3, xs, (size_t)3 * in, (size_t)in);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return nq_fail(err, "cuda: bf16 split: %s", cudaGetErrorString(e));
        CKB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, 3 * in, &one, w->p, CUDA_R_16BF,
                         3 * in, xs, CUDA_R_16BF, 3 * in, &zero, dy, CUDA_R_32F, out,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            err);
        return 0;
    }
    int terms = mode == NQ_GEMM_BF16X2 ? 2 : 3;
    nqg_split<<<blocks, 256>>>(dx, count, in, terms, xs, (size_t)in, count);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return nq_fail(err, "cuda: bf16 split: %s", cudaGetErrorString(e));
    for (int t = terms - 1; t >= 0; t--)
        CKB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, w->p, CUDA_R_16BF, in,
                         xs + (size_t)t * count, CUDA_R_16BF, in, t == terms - 1 ? &zero : &one,
                         dy, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            err);
    return 0;
}
