/* Kernels of the CUDA backend; see kernels.cuh.  No --use_fast_math: expf,
 * log1pf, erff, division and sqrtf are the accurate (IEEE where CUDA
 * guarantees it) versions, like the CPU's libm. */
#include <math.h>

#include "cuda/kernels.cuh"

#define FULL_MASK 0xffffffffu

/* Sum of a double per thread over a 256-thread block, in a fixed tree
 * order; every thread gets the total. */
__device__ static double block_sum_256(double v, double *red)
{
    int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (tid < s)
            red[tid] += red[tid + s];
        __syncthreads();
    }
    double total = red[0];
    __syncthreads();
    return total;
}

__device__ static float silu(float v) { return v / (1.0f + expf(-v)); }

__global__ void nqk_rmsnorm(const float *x, const float *w, int dim, float eps, float *y)
{
    __shared__ double red[256];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = y + (size_t)blockIdx.x * dim;
    double ss = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += (double)xr[i] * xr[i];
    ss = block_sum_256(ss, red);
    float var = (float)(ss / dim);
    float r = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = w[i] * (xr[i] * r);
}

__global__ void nqk_gated_norm(float *scan, const float *proj, int proj_dim, const float *w,
                               int inter, int gch, float eps)
{
    __shared__ double red[256];
    int t = blockIdx.x, g = blockIdx.y;
    float *row = scan + (size_t)t * inter + (size_t)g * gch;
    const float *z = proj + (size_t)t * proj_dim + (size_t)g * gch;
    double ss = 0.0;
    for (int i = threadIdx.x; i < gch; i += blockDim.x) {
        float v = row[i] * silu(z[i]);
        row[i] = v;
        ss += (double)v * v;
    }
    ss = block_sum_256(ss, red);
    float r = 1.0f / sqrtf((float)(ss / gch) + eps);
    const float *wg = w + (size_t)g * gch;
    for (int i = threadIdx.x; i < gch; i += blockDim.x)
        row[i] = wg[i] * (row[i] * r);
}

__global__ void nqk_conv_silu(const float *proj, int proj_dim, int off, int conv_dim,
                              const float *cw, const float *cb, int K, int n, int len, float *xbc)
{
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * conv_dim)
        return;
    int t = (int)(idx / conv_dim), ch = (int)(idx % conv_dim);
    int tl = t % len; /* position inside its sequence */
    float acc = cb ? cb[ch] : 0.0f;
    for (int k = 0; k < K; k++) {
        int back = k - (K - 1);
        float v = tl + back >= 0 ? proj[(size_t)(t + back) * proj_dim + off + ch] : 0.0f;
        acc += cw[(size_t)ch * K + k] * v;
    }
    xbc[idx] = silu(acc);
}

__global__ void nqk_dt(const float *proj, int proj_dim, int off, const float *dt_bias, int nh, int n,
                       float dt_min, float *dt)
{
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * nh)
        return;
    int t = (int)(idx / nh), h = (int)(idx % nh);
    float v = proj[(size_t)t * proj_dim + off + h] + dt_bias[h];
    v = v > 20.0f ? v : log1pf(expf(v)); /* torch softplus, threshold 20 */
    dt[idx] = v < dt_min ? dt_min : v;
}

__global__ void nqk_scan(const float *xbc, int conv_dim, int inter, int ngroups, int ns, int hd,
                         int nh, const float *dt, const float *A, const float *D, int samples,
                         int len, float *y, float *state_out)
{
    enum { PER = NQ_CUDA_MAX_STATE / 32 };
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (warp >= (size_t)samples * nh * hd)
        return; /* whole warps: blockDim is a multiple of 32 */
    int seq = (int)(warp / ((size_t)nh * hd)), hp = (int)(warp % ((size_t)nh * hd));
    int h = hp / hd, p = hp % hd, g = h / (nh / ngroups);
    xbc += (size_t)seq * len * conv_dim;
    dt += (size_t)seq * len * nh;
    y += (size_t)seq * len * inter;
    float Ah = A[h], Dh = D[h];
    float s[PER];
#pragma unroll
    for (int j = 0; j < PER; j++)
        s[j] = 0.0f;
    for (int t = 0; t < len; t++) {
        const float *row = xbc + (size_t)t * conv_dim;
        float xv = row[(size_t)h * hd + p];
        const float *B = row + inter + (size_t)g * ns;
        const float *C = row + inter + (size_t)ngroups * ns + (size_t)g * ns;
        float dtv = dt[(size_t)t * nh + h];
        float dA = expf(dtv * Ah), xdt = xv * dtv;
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < PER; j++) {
            int k = lane + 32 * j;
            if (k < ns) {
                s[j] = s[j] * dA + xdt * B[k];
                acc += s[j] * C[k];
            }
        }
        for (int o = 16; o > 0; o >>= 1)
            acc += __shfl_down_sync(FULL_MASK, acc, o);
        if (lane == 0)
            y[(size_t)t * inter + (size_t)h * hd + p] = acc + Dh * xv;
    }
    if (!state_out)
        return;
    float *so = state_out + (((size_t)seq * nh + h) * hd + p) * ns;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int k = lane + 32 * j;
        if (k < ns)
            so[k] = s[j];
    }
}

__global__ void nqk_attention(const float *q, const float *k, const float *v, int len, int nh,
                              int nkv, int hd, float scale, float *out)
{
    extern __shared__ float sh[];
    __shared__ float red[32];
    int i = blockIdx.x, h = blockIdx.y;
    int kvh = h / (nh / nkv), qdim = nh * hd, kvdim = nkv * hd;
    size_t base = (size_t)blockIdx.z * len; /* first row of this sequence */
    q += base * qdim;
    k += base * kvdim;
    v += base * kvdim;
    out += base * qdim;
    int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5, nwarps = blockDim.x >> 5;
    float *qs = sh, *p = sh + hd;
    for (int d = tid; d < hd; d += blockDim.x)
        qs[d] = q[(size_t)i * qdim + (size_t)h * hd + d];
    __syncthreads();
    int keys = i + 1; /* causal: keys 0..i */
    for (int s = wid; s < keys; s += nwarps) {
        const float *kr = k + (size_t)s * kvdim + (size_t)kvh * hd;
        float dot = 0.0f;
        for (int d = lane; d < hd; d += 32)
            dot += qs[d] * kr[d];
        for (int o = 16; o > 0; o >>= 1)
            dot += __shfl_down_sync(FULL_MASK, dot, o);
        if (lane == 0)
            p[s] = dot * scale;
    }
    __syncthreads();
    /* max: exact whatever the order */
    float mx = -INFINITY;
    for (int s = tid; s < keys; s += blockDim.x)
        mx = fmaxf(mx, p[s]);
    for (int o = 16; o > 0; o >>= 1)
        mx = fmaxf(mx, __shfl_down_sync(FULL_MASK, mx, o));
    if (lane == 0)
        red[wid] = mx;
    __syncthreads();
    if (tid == 0) {
        float m = red[0];
        for (int w = 1; w < nwarps; w++)
            m = fmaxf(m, red[w]);
        red[0] = m;
    }
    __syncthreads();
    mx = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (int s = tid; s < keys; s += blockDim.x) {
        float e = expf(p[s] - mx);
        p[s] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_down_sync(FULL_MASK, sum, o);
    if (lane == 0)
        red[wid] = sum;
    __syncthreads();
    if (tid == 0) {
        float t = 0.0f;
        for (int w = 0; w < nwarps; w++)
            t += red[w];
        red[0] = 1.0f / t;
    }
    __syncthreads();
    float inv = red[0];
    for (int s = tid; s < keys; s += blockDim.x)
        p[s] *= inv;
    __syncthreads();
    const float *vb = v + (size_t)kvh * hd;
    for (int d = tid; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < keys; s++)
            acc += p[s] * vb[(size_t)s * kvdim + d];
        out[(size_t)i * qdim + (size_t)h * hd + d] = acc;
    }
}

__global__ void nqk_act(float *x, uint64_t count, int act)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    float v = x[i];
    switch (act) {
    case 0: {
        float r = v > 0.0f ? v : 0.0f;
        x[i] = r * r;
        break;
    }
    case 1:
        x[i] = v > 0.0f ? v : 0.0f;
        break;
    case 2:
        x[i] = v / (1.0f + expf(-v));
        break;
    case 3:
        x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        break;
    default:
        x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        break;
    }
}

__global__ void nqk_add_bias(float *y, const float *b, int rows, int cols)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)rows * cols)
        y[i] += b[i % cols];
}

__global__ void nqk_add(float *x, const float *y, uint64_t count)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count)
        x[i] += y[i];
}

__global__ void nqk_gather_rows(const float *x, const int32_t *idx, int rows, int dim, float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * dim)
        return;
    size_t r = i / dim, c = i % dim;
    out[i] = x[(size_t)idx[r] * dim + c];
}

__global__ void nqk_moe_combine(const float *out, const int32_t *rows, const float *w, int k,
                                const float *shared, int n, int dim, float *y)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * dim)
        return;
    size_t t = i / dim, c = i % dim;
    float acc = 0.0f;
    for (int j = 0; j < k; j++)
        acc += out[(size_t)rows[t * k + j] * dim + c] * w[t * k + j];
    if (shared)
        acc += shared[i];
    y[i] = acc;
}
