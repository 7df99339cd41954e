/* GPTQ's core on the GPU (cuda.h, nq_cuda_gptq): algo/gptq.c's inverse
 * Cholesky and blocked column sweep, step for step.
 *
 *   U: cuSOLVER DPOTRF / DPOTRI / DPOTRF on the damped Hessian (LAPACK's
 *      calls on the CPU), transposed into row-major with zeros below.
 *   Sweep: W in float64, column-major (element (row, col) at row + col *
 *      rows) so that the threads, one per row, read a column together.
 *      Per block of 128 columns one kernel launch: the group scales from the
 *      block's weights as they stand at its start (as gptq.c and the
 *      reference do), then column by column quantize, error / U_ii and the
 *      update of the block's later columns; then cuBLAS DGEMM spreads the
 *      block's errors over the columns after it.
 *
 * The scale searches and encoders (formats.cuh) are device copies of formats/
 * (nvfp4.c, int4.c, floatconv.h, fp8.h): the same float / double
 * operations in the same order.  This file is compiled with -fmad=false so
 * that no a * b + c is fused into one rounding the host code does not have
 * (CMakeLists.txt).  What can still differ from the CPU is the order of
 * the sums inside cuSOLVER's factorizations and the DGEMM (OpenBLAS on the
 * CPU): U and the trailing updates differ in the last bits, which moves a
 * weight across a rounding boundary now and then; the GPU tests measure how
 * many bytes differ and the held-out KL.  With a diagonal Hessian every
 * step is exact on both sides and the bytes are identical (tested). */
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/internal.cuh"

#define GPTQ_BLOCK 128

static int gerr(nq_error *err, const char *what, cudaError_t e)
{
    cudaGetLastError();
    return nq_fail(err, "cuda gptq: %s: %s", what, cudaGetErrorString(e));
}

#define GCK(call, err)                                                     \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess)                                             \
            return gerr(err, #call, e_);                                   \
    } while (0)

#include "cuda/formats.cuh"

/* ---- kernels ----------------------------------------------------------- */

/* a[j + i n] = a[i + j n] for i < j (upper triangle to lower). */
__global__ static void g_mirror(double *a, int n)
{
    size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (k >= (size_t)n * n)
        return;
    size_t i = k % (size_t)n, j = k / (size_t)n;
    if (i < j)
        a[j + i * (size_t)n] = a[i + j * (size_t)n];
}

/* u[i n + j] = a[i + j n] for i <= j, else 0: the column-major upper factor
 * as gptq.c's row-major U. */
__global__ static void g_upper_rowmajor(const double *a, int n, double *u)
{
    size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (k >= (size_t)n * n)
        return;
    size_t i = k / (size_t)n, j = k % (size_t)n;
    u[k] = i <= j ? a[i + j * (size_t)n] : 0.0;
}

/* Wc[r + c rows] = dead[c] ? 0 : w[r cols + c]. */
__global__ static void g_load_w(const float *w, const uint8_t *dead, int64_t rows, int64_t cols,
                                double *wc)
{
    size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (k >= (size_t)(rows * cols))
        return;
    size_t r = k % (size_t)rows, c = k / (size_t)rows;
    wc[k] = dead[c] ? 0.0 : (double)w[r * (size_t)cols + c];
}

/* One block [i1, i2) of columns for every row (one thread each): as
 * gptq_rows' loop body.  E: column-major [rows, GPTQ_BLOCK]. */
__global__ static void g_sweep(int fmt, double *wc, int64_t rows, int64_t n, int64_t i1,
                               int64_t i2, const double *u, int group, bool mse, float gs,
                               uint8_t *codes, uint16_t *scales16, uint8_t *scales8, double *E,
                               double *loss)
{
    int64_t a = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (a >= rows)
        return;
    float gbuf[GPTQ_BLOCK];
    float scale_val[GPTQ_BLOCK];
    /* the block's group scales, from its weights as they stand now */
    for (int64_t i = i1; i < i2; i += group) {
        for (int g = 0; g < group; g++)
            gbuf[g] = (float)wc[a + (i + g) * rows];
        int gi = (int)((i - i1) / group);
        if (fmt == 0) {
            uint16_t s = mse ? d_int4_scale_mse(gbuf, group) : d_int4_scale_max(gbuf, group);
            scale_val[gi] = d_f16_to_f32(s);
            scales16[(i / group) * rows + a] = s;
        } else {
            uint8_t s = mse ? d_nvfp4_scale_mse(gbuf, gs) : d_nvfp4_scale_max(gbuf, gs);
            scale_val[gi] = d_e4m3_to_f32(s) * gs;
            scales8[a * (n / 16) + i / 16] = s;
        }
    }
    double l = 0.0;
    for (int64_t i = i1; i < i2; i++) {
        float sv = scale_val[(i - i1) / group];
        double wi = wc[a + i * rows];
        float x = (float)wi;
        double q;
        if (fmt == 0) {
            uint8_t code = d_int4_code(x, sv);
            codes[a * n + i] = code;
            q = (double)sv * ((int)code - 8);
        } else {
            uint8_t code = d_e2m1_encode(x / sv);
            uint8_t *p = &codes[a * (n / 2) + i / 2];
            *p = (uint8_t)(i % 2 ? (*p & 0x0f) | (code << 4) : (*p & 0xf0) | code);
            q = (double)d_e2m1_value(code) * sv;
        }
        double d = u[i * n + i];
        double e = (wi - q) / d;
        l += (wi - q) * (wi - q) / (d * d) / 2.0;
        E[a + (i - i1) * rows] = e;
        const double *ur = u + i * n;
        for (int64_t c = i + 1; c < i2; c++)
            wc[a + c * rows] -= e * ur[c];
    }
    loss[a] += l;
}

/* ---- the entry point ----------------------------------------------------- */

#define SOLVER_CK(call, err)                                               \
    do {                                                                   \
        cusolverStatus_t s_ = (call);                                      \
        if (s_ != CUSOLVER_STATUS_SUCCESS) {                               \
            nq_fail(err, "cusolver: %s: status %d", #call, (int)s_);       \
            goto done;                                                     \
        }                                                                  \
    } while (0)

#define DONE_CK(call, err)                                                 \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess) {                                           \
            gerr(err, #call, e_);                                          \
            goto done;                                                     \
        }                                                                  \
    } while (0)

static unsigned nblocks(size_t count, unsigned threads)
{
    return (unsigned)((count + threads - 1) / threads);
}

extern "C" int nq_cuda_gptq(nq_cuda *g, nq_cuda_gptq_job *j, nq_error *err)
{
    int64_t n = j->cols, rows = j->rows;
    if (j->group <= 0 || GPTQ_BLOCK % j->group != 0 || n % j->group != 0 || n % 16 != 0)
        return nq_fail(err, "cuda gptq: group %d does not fit %lld columns", j->group,
                       (long long)n);
    size_t nn = (size_t)(n * n), rn = (size_t)(rows * n);
    size_t code_bytes = j->fmt == 0 ? rn : rn / 2;
    size_t sc_bytes = j->fmt == 0 ? (size_t)(n / j->group) * rows * 2 : rn / 16;
    double *a = NULL, *u = NULL, *wc = NULL, *E = NULL, *loss = NULL, *work = NULL;
    float *w = NULL;
    uint8_t *dead = NULL, *codes = NULL, *sc = NULL;
    int *info = NULL;
    size_t work_bytes = 0;
    cusolverDnHandle_t sol = NULL;
    int rc = -1, hinfo = 0, lwork = 0, lwork2 = 0;
    double one = 1.0, minus = -1.0;
    double *hl = NULL;
    if (nqb_alloc(g, (void **)&a, nn * 8, err) || nqb_alloc(g, (void **)&u, nn * 8, err) ||
        nqb_alloc(g, (void **)&wc, rn * 8, err) ||
        nqb_alloc(g, (void **)&E, (size_t)rows * GPTQ_BLOCK * 8, err) ||
        nqb_alloc(g, (void **)&loss, (size_t)rows * 8, err) ||
        nqb_alloc(g, (void **)&w, rn * 4, err) || nqb_alloc(g, (void **)&dead, (size_t)n, err) ||
        nqb_alloc(g, (void **)&codes, code_bytes, err) ||
        nqb_alloc(g, (void **)&sc, sc_bytes, err) || nqb_alloc(g, (void **)&info, sizeof(int), err))
        goto done;
    if (cusolverDnCreate(&sol) != CUSOLVER_STATUS_SUCCESS) {
        sol = NULL;
        nq_fail(err, "cusolver: could not be initialized");
        goto done;
    }
    /* the damped Hessian (symmetric: row- and column-major alike) */
    hl = (double *)malloc(nn * 8);
    if (!hl) {
        nq_fail(err, "cuda gptq: out of host memory");
        goto done;
    }
    memcpy(hl, j->hessian, nn * 8);
    for (int64_t i = 0; i < n; i++)
        hl[i * n + i] += j->damp_abs;
    DONE_CK(cudaMemcpy(a, hl, nn * 8, cudaMemcpyHostToDevice), err);
    SOLVER_CK(cusolverDnDpotrf_bufferSize(sol, CUBLAS_FILL_MODE_UPPER, (int)n, a, (int)n, &lwork),
              err);
    SOLVER_CK(cusolverDnDpotri_bufferSize(sol, CUBLAS_FILL_MODE_UPPER, (int)n, a, (int)n, &lwork2),
              err);
    if (lwork2 > lwork)
        lwork = lwork2;
    work_bytes = (size_t)(lwork > 0 ? lwork : 1) * 8;
    if (nqb_alloc(g, (void **)&work, work_bytes, err) != 0)
        goto done;
    SOLVER_CK(cusolverDnDpotrf(sol, CUBLAS_FILL_MODE_UPPER, (int)n, a, (int)n, work, lwork, info),
              err);
    DONE_CK(cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost), err);
    if (hinfo == 0) {
        SOLVER_CK(cusolverDnDpotri(sol, CUBLAS_FILL_MODE_UPPER, (int)n, a, (int)n, work, lwork,
                                   info),
                  err);
        DONE_CK(cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost), err);
    }
    if (hinfo == 0) {
        g_mirror<<<nblocks(nn, 256), 256>>>(a, (int)n);
        DONE_CK(cudaGetLastError(), err);
        SOLVER_CK(cusolverDnDpotrf(sol, CUBLAS_FILL_MODE_UPPER, (int)n, a, (int)n, work, lwork,
                                   info),
                  err);
        DONE_CK(cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost), err);
    }
    if (hinfo != 0) {
        rc = 1; /* not positive definite: the caller dampens more */
        goto done;
    }
    g_upper_rowmajor<<<nblocks(nn, 256), 256>>>(a, (int)n, u);
    DONE_CK(cudaGetLastError(), err);

    /* the sweep */
    {
        uint8_t *hd = (uint8_t *)malloc((size_t)n);
        if (!hd) {
            nq_fail(err, "cuda gptq: out of host memory");
            goto done;
        }
        for (int64_t c = 0; c < n; c++)
            hd[c] = j->dead[c] ? 1 : 0;
        cudaError_t e = cudaMemcpy(dead, hd, (size_t)n, cudaMemcpyHostToDevice);
        free(hd);
        DONE_CK(e, err);
    }
    DONE_CK(cudaMemcpy(w, j->w, rn * 4, cudaMemcpyHostToDevice), err);
    DONE_CK(cudaMemset(codes, 0, code_bytes), err);
    DONE_CK(cudaMemset(loss, 0, (size_t)rows * 8), err);
    g_load_w<<<nblocks(rn, 256), 256>>>(w, dead, rows, n, wc);
    DONE_CK(cudaGetLastError(), err);
    for (int64_t i1 = 0; i1 < n; i1 += GPTQ_BLOCK) {
        int64_t i2 = i1 + GPTQ_BLOCK < n ? i1 + GPTQ_BLOCK : n, bw = i2 - i1;
        g_sweep<<<nblocks((size_t)rows, 64), 64>>>(j->fmt, wc, rows, n, i1, i2, u, j->group,
                                                   j->mse, j->gs, codes, (uint16_t *)sc, sc, E,
                                                   loss);
        DONE_CK(cudaGetLastError(), err);
        if (i2 < n) {
            /* W[:, i2:] -= E[:, :bw] U[i1:i2, i2:]; row-major U read as
             * column-major is U^T, so U[i1:i2, i2:] = op_T of its
             * [i2:, i1:i2] block */
            cublasStatus_t s = cublasDgemm(nqb_blas(g), CUBLAS_OP_N, CUBLAS_OP_T, (int)rows,
                                           (int)(n - i2), (int)bw, &minus, E, (int)rows,
                                           u + i2 + i1 * n, (int)n, &one, wc + i2 * rows,
                                           (int)rows);
            if (s != CUBLAS_STATUS_SUCCESS) {
                nq_fail(err, "cublasDgemm: status %d", (int)s);
                goto done;
            }
        }
    }
    DONE_CK(cudaMemcpy(j->codes, codes, code_bytes, cudaMemcpyDeviceToHost), err);
    DONE_CK(cudaMemcpy(j->fmt == 0 ? (void *)j->scales16 : (void *)j->scales8, sc, sc_bytes,
                       cudaMemcpyDeviceToHost),
            err);
    {
        double *hl2 = (double *)malloc((size_t)rows * 8);
        if (!hl2) {
            nq_fail(err, "cuda gptq: out of host memory");
            goto done;
        }
        cudaError_t e = cudaMemcpy(hl2, loss, (size_t)rows * 8, cudaMemcpyDeviceToHost);
        j->proxy_loss = 0.0;
        for (int64_t r = 0; r < rows; r++)
            j->proxy_loss += hl2[r];
        free(hl2);
        DONE_CK(e, err);
    }
    rc = 0;
done:
    free(hl);
    if (sol)
        cusolverDnDestroy(sol);
    nqb_free(g, a, nn * 8);
    nqb_free(g, u, nn * 8);
    nqb_free(g, wc, rn * 8);
    nqb_free(g, E, (size_t)rows * GPTQ_BLOCK * 8);
    nqb_free(g, loss, (size_t)rows * 8);
    nqb_free(g, w, rn * 4);
    nqb_free(g, dead, (size_t)n);
    nqb_free(g, codes, code_bytes);
    nqb_free(g, sc, sc_bytes);
    nqb_free(g, info, sizeof(int));
    nqb_free(g, work, work_bytes);
    return rc;
}
