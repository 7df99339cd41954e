/* NVFP4 round-to-nearest of one weight on the GPU (cuda.h,
 * nq_cuda_encode_nvfp4): formats/nq_encode_nvfp4's bytes (the tensor amax,
 * the global scale from it on the host with the same float operations,
 * one thread per block of 16 with formats.cuh's max or MSE scale search and
 * E2M1 encoder), then the error statistics calibrated.c reports from the
 * dequantized weight, which never leaves the GPU.
 *
 * Statistics: per block in double, per row summed over its blocks in order
 * by one thread, over the rows on the host in order: deterministic, but
 * not the CPU encoder's float lane sums (the reported errors agree to
 * rounding, the bytes exactly). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/formats.cuh"
#include "cuda/internal.cuh"

static int eerr(nq_error *err, const char *what, cudaError_t e)
{
    cudaGetLastError();
    return nq_fail(err, "cuda: %s: %s", what, cudaGetErrorString(e));
}

/* One block of 16 per thread: codes, scale, dequantized values, and the
 * block's sum (w - deq)^2, the same with the max scale, sum w^2. */
__global__ static void e_nvfp4_blocks(const float *w, int64_t nblocks, float gs, bool mse,
                                      uint8_t *packed, uint8_t *scales, float *deq,
                                      double *bstats)
{
    int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (b >= nblocks)
        return;
    const float *x = w + b * 16;
    float xb[16];
    for (int i = 0; i < 16; i++)
        xb[i] = x[i];
    uint8_t smax = d_nvfp4_scale_max(xb, gs);
    uint8_t s = mse ? d_nvfp4_scale_mse(xb, gs) : smax;
    float denom = d_e4m3_to_f32(s) * gs, dmax = d_e4m3_to_f32(smax) * gs;
    double e = 0, emax = 0, r = 0;
    for (int i = 0; i < 16; i += 2) {
        uint8_t lo = d_e2m1_encode(xb[i] / denom), hi = d_e2m1_encode(xb[i + 1] / denom);
        packed[b * 8 + i / 2] = (uint8_t)(lo | (hi << 4));
        float q0 = d_e2m1_value(lo) * denom, q1 = d_e2m1_value(hi) * denom;
        deq[b * 16 + i] = q0;
        deq[b * 16 + i + 1] = q1;
        double d0 = (double)xb[i] - q0, d1 = (double)xb[i + 1] - q1;
        e += d0 * d0;
        e += d1 * d1;
    }
    for (int i = 0; i < 16; i++) {
        float qm = d_e2m1_value(d_e2m1_encode(xb[i] / dmax)) * dmax;
        double dm = (double)xb[i] - qm;
        emax += dm * dm;
        r += (double)xb[i] * xb[i];
    }
    scales[b] = s;
    bstats[b * 3] = e;
    bstats[b * 3 + 1] = emax;
    bstats[b * 3 + 2] = r;
}

__global__ static void e_row_sums(const double *bstats, int64_t rows, int64_t per_row,
                                  double *rstats)
{
    int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (r >= rows)
        return;
    double a = 0, b = 0, c = 0;
    for (int64_t k = 0; k < per_row; k++) {
        const double *s = bstats + (r * per_row + k) * 3;
        a += s[0];
        b += s[1];
        c += s[2];
    }
    rstats[r * 3] = a;
    rstats[r * 3 + 1] = b;
    rstats[r * 3 + 2] = c;
}

#define ECK(call)                                                          \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess) {                                           \
            eerr(err, #call, e_);                                          \
            goto done;                                                     \
        }                                                                  \
    } while (0)

extern "C" int nq_cuda_encode_nvfp4(nq_cuda *g, const float *w, int64_t out, int64_t in, bool mse,
                                    const float *x, int rows, uint8_t *packed, uint8_t *scales,
                                    float *global_scale, double stats[5], nq_error *err)
{
    memset(stats, 0, 5 * sizeof *stats);
    if (in % 16 != 0)
        return nq_fail(err, "in_features %lld is not a multiple of 16", (long long)in);
    size_t wn = (size_t)(out * in), nb = wn / 16;
    float *dw = NULL, *dq = NULL;
    uint8_t *dp = NULL, *ds = NULL;
    double *bst = NULL, *rst = NULL, *hr = NULL;
    unsigned *amax = NULL, ha[2];
    float a, gs;
    int rc = -1;
    if (!(dw = (float *)nqb_keep(g, NQB_K_W, wn * 4, err)) ||
        !(dq = (float *)nqb_keep(g, NQB_K_Q, wn * 4, err)) ||
        !(dp = (uint8_t *)nqb_keep(g, NQB_K_PACKED, wn / 2, err)) ||
        !(ds = (uint8_t *)nqb_keep(g, NQB_K_SCALES, nb, err)) ||
        !(bst = (double *)nqb_keep(g, NQB_K_BSTATS, nb * 3 * 8, err)) ||
        !(rst = (double *)nqb_keep(g, NQB_K_RSTATS, (size_t)out * 3 * 8, err)) ||
        !(amax = (unsigned *)nqb_keep(g, NQB_K_AMAX, 2 * sizeof(unsigned), err)))
        goto done;
    if (!(hr = (double *)malloc((size_t)out * 3 * 8))) {
        nq_fail(err, "cuda: out of host memory");
        goto done;
    }
    ECK(cudaMemcpy(dw, w, wn * 4, cudaMemcpyHostToDevice));
    ECK(cudaMemset(amax, 0, 2 * sizeof(unsigned)));
    if (nqs_amax(dw, wn, amax, err) != 0)
        goto done;
    ECK(cudaMemcpy(ha, amax, sizeof ha, cudaMemcpyDeviceToHost));
    if (ha[1]) {
        nq_fail(err, "non-finite weight");
        goto done;
    }
    memcpy(&a, &ha[0], sizeof a);
    /* nq_nvfp4_global_scale */
    gs = a > 0 ? a / (6.0f * 448.0f) : 1.0f;
    e_nvfp4_blocks<<<(unsigned)((nb + 127) / 128), 128>>>(dw, (int64_t)nb, gs, mse, dp, ds, dq,
                                                         bst);
    ECK(cudaGetLastError());
    e_row_sums<<<(unsigned)((out + 127) / 128), 128>>>(bst, out, in / 16, rst);
    ECK(cudaGetLastError());
    ECK(cudaMemcpy(packed, dp, wn / 2, cudaMemcpyDeviceToHost));
    ECK(cudaMemcpy(scales, ds, nb, cudaMemcpyDeviceToHost));
    ECK(cudaMemcpy(hr, rst, (size_t)out * 3 * 8, cudaMemcpyDeviceToHost));
    for (int64_t r = 0; r < out; r++) {
        stats[0] += hr[r * 3];
        stats[1] += hr[r * 3 + 1];
        stats[2] += hr[r * 3 + 2];
    }
    if (x && rows > 0 &&
        nqs_output_error_dev(g, x, rows, dw, dq, out, in, &stats[3], &stats[4], err) != 0)
        goto done;
    *global_scale = gs;
    rc = 0;
done:
    free(hr);
    return rc;
}
