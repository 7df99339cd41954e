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

/* PER: state entries per lane (ns <= 32 * PER); a compile-time bound so
 * that the sequential step is only the work ns needs. */
template <int PER>
__global__ void nqk_scan_per(const float *xbc, int conv_dim, int inter, int ngroups, int ns, int hd,
                             int nh, const float *dt, const float *A, const float *D, int len,
                             float *y, float *state_out)
{
    enum { T = NQ_SCAN_T, W = NQ_SCAN_W };
    extern __shared__ float sm[];
    float *sB = sm;                  /* [T][ns] */
    float *sC = sB + T * ns;         /* [T][ns] */
    float *sdA = sC + T * ns;        /* [T] */
    float *sdt = sdA + T;            /* [T] */
    float *sx = sdt + T;             /* [T][W] */
    float *sy = sx + T * W;          /* [T][W] */
    float *spart = sy + T * W;       /* [W][T][33]: per-lane partial dot products */
    int h = blockIdx.y, seq = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int p0 = blockIdx.x * W, p = p0 + warp, g = h / (nh / ngroups);
    bool active = p < hd;
    xbc += (size_t)seq * len * conv_dim;
    dt += (size_t)seq * len * nh;
    y += (size_t)seq * len * inter;
    float Ah = A[h], Dh = D[h];
    float *part = spart + warp * T * 33;
    float s[PER];
#pragma unroll
    for (int j = 0; j < PER; j++)
        s[j] = 0.0f;
    for (int t0 = 0; t0 < len; t0 += T) {
        int tn = len - t0 < T ? len - t0 : T;
        __syncthreads(); /* the previous tile is consumed */
        for (int i = threadIdx.x; i < tn * ns; i += blockDim.x) {
            int tt = i / ns, k = i % ns;
            const float *bc = xbc + (size_t)(t0 + tt) * conv_dim + inter;
            sB[tt * ns + k] = bc[(size_t)g * ns + k];
            sC[tt * ns + k] = bc[(size_t)ngroups * ns + (size_t)g * ns + k];
        }
        for (int i = threadIdx.x; i < tn; i += blockDim.x) {
            float d = dt[(size_t)(t0 + i) * nh + h];
            sdt[i] = d;
            sdA[i] = expf(d * Ah);
        }
        for (int i = threadIdx.x; i < tn * W; i += blockDim.x) {
            int tt = i / W, w = i % W;
            sx[i] = p0 + w < hd ? xbc[(size_t)(t0 + tt) * conv_dim + (size_t)h * hd + p0 + w] : 0.0f;
        }
        __syncthreads();
        if (active) {
            for (int tt = 0; tt < tn; tt++) {
                float dA = sdA[tt], xdt = sx[tt * W + warp] * sdt[tt];
                const float *B = sB + tt * ns, *C = sC + tt * ns;
                float acc = 0.0f;
#pragma unroll
                for (int j = 0; j < PER; j++) {
                    int k = lane + 32 * j;
                    if (k < ns) {
                        s[j] = s[j] * dA + xdt * B[k];
                        acc += s[j] * C[k];
                    }
                }
                part[tt * 33 + lane] = acc;
            }
            __syncwarp();
            if (lane < tn) {
                float sum = 0.0f;
                for (int l = 0; l < 32; l++)
                    sum += part[lane * 33 + l];
                sy[lane * W + warp] = sum + Dh * sx[lane * W + warp];
            }
        }
        __syncthreads();
        for (int i = threadIdx.x; i < tn * W; i += blockDim.x) {
            int tt = i / W, w = i % W;
            if (p0 + w < hd)
                y[(size_t)(t0 + tt) * inter + (size_t)h * hd + p0 + w] = sy[i];
        }
    }
    if (!state_out || !active)
        return;
    float *so = state_out + (((size_t)seq * nh + h) * hd + p) * ns;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int k = lane + 32 * j;
        if (k < ns)
            so[k] = s[j];
    }
}

cudaError_t nqk_scan_setup(void)
{
    int bytes = (int)nqk_scan_shared(NQ_CUDA_MAX_STATE);
    cudaError_t e = cudaFuncSetAttribute(nqk_scan_per<1>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(nqk_scan_per<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(nqk_scan_per<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(nqk_scan_per<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    return e;
}

void nqk_scan(const float *xbc, int conv_dim, int inter, int ngroups, int ns, int hd, int nh,
              const float *dt, const float *A, const float *D, int samples, int len, float *y,
              float *state_out)
{
    dim3 grid((unsigned)((hd + NQ_SCAN_W - 1) / NQ_SCAN_W), (unsigned)nh, (unsigned)samples);
    size_t sh = nqk_scan_shared(ns);
    unsigned threads = 32 * NQ_SCAN_W;
    if (ns <= 32)
        nqk_scan_per<1><<<grid, threads, sh>>>(xbc, conv_dim, inter, ngroups, ns, hd, nh, dt, A, D,
                                               len, y, state_out);
    else if (ns <= 64)
        nqk_scan_per<2><<<grid, threads, sh>>>(xbc, conv_dim, inter, ngroups, ns, hd, nh, dt, A, D,
                                               len, y, state_out);
    else if (ns <= 128)
        nqk_scan_per<4><<<grid, threads, sh>>>(xbc, conv_dim, inter, ngroups, ns, hd, nh, dt, A, D,
                                               len, y, state_out);
    else
        nqk_scan_per<8><<<grid, threads, sh>>>(xbc, conv_dim, inter, ngroups, ns, hd, nh, dt, A, D,
                                               len, y, state_out);
}

/* DC: head_dim / 32 rounded up, the output columns per lane. */
template <int DC>
__global__ void nqk_attention_dc(const float *q, const float *k, const float *v, int len, int nh,
                                 int nkv, int hd, float scale, float *out)
{
    enum { BQ = NQ_ATT_BQ, BK = 32, QW = NQ_ATT_BQ / 8 };
    extern __shared__ float sh[];
    float *sq = sh;                    /* [BQ][hd] */
    float *sk = sq + BQ * hd;          /* [BK][hd + 1] (padded: lane j reads row j) */
    float *sv = sk + BK * (hd + 1);    /* [BK][hd] */
    float *sp = sv + BK * hd;          /* [8 warps][QW][BK] */
    int h = blockIdx.y, kvh = h / (nh / nkv), qdim = nh * hd, kvdim = nkv * hd;
    size_t base = (size_t)blockIdx.z * len;
    q += base * qdim;
    k += base * kvdim;
    v += base * kvdim;
    out += base * qdim;
    int q0 = blockIdx.x * BQ, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    for (int i = tid; i < BQ * hd; i += blockDim.x) {
        int r = i / hd, d = i % hd;
        sq[i] = q0 + r < len ? q[(size_t)(q0 + r) * qdim + (size_t)h * hd + d] : 0.0f;
    }
    float m[QW], l[QW], o[QW][DC];
#pragma unroll
    for (int a = 0; a < QW; a++) {
        m[a] = -INFINITY;
        l[a] = 0.0f;
#pragma unroll
        for (int c = 0; c < DC; c++)
            o[a][c] = 0.0f;
    }
    int qlast = (q0 + BQ < len ? q0 + BQ : len) - 1;
    int wq0 = q0 + warp * QW; /* this warp's first query */
    float *wp = sp + warp * QW * BK;
    for (int kt = 0; kt <= qlast; kt += BK) {
        __syncthreads();
        for (int i = tid; i < BK * hd; i += blockDim.x) {
            int r = i / hd, d = i % hd;
            bool in = kt + r < len;
            sk[r * (hd + 1) + d] = in ? k[(size_t)(kt + r) * kvdim + (size_t)kvh * hd + d] : 0.0f;
            sv[i] = in ? v[(size_t)(kt + r) * kvdim + (size_t)kvh * hd + d] : 0.0f;
        }
        __syncthreads();
        if (wq0 >= len || kt > wq0 + QW - 1)
            continue; /* every key of the tile is after this warp's queries */
        float dot[QW];
#pragma unroll
        for (int a = 0; a < QW; a++)
            dot[a] = 0.0f;
        const float *kr = sk + lane * (hd + 1);
        for (int d = 0; d < hd; d++) {
            float kv = kr[d];
#pragma unroll
            for (int a = 0; a < QW; a++)
                dot[a] += sq[(warp * QW + a) * hd + d] * kv;
        }
        int j = kt + lane;
#pragma unroll
        for (int a = 0; a < QW; a++) {
            int i = wq0 + a;
            float sc = (i < len && j <= i) ? dot[a] * scale : -INFINITY;
            float mt = sc;
            for (int off = 16; off > 0; off >>= 1)
                mt = fmaxf(mt, __shfl_xor_sync(FULL_MASK, mt, off));
            float pj = 0.0f;
            if (mt != -INFINITY) { /* warp-uniform */
                float mnew = fmaxf(m[a], mt);
                float corr = expf(m[a] - mnew);
                pj = sc == -INFINITY ? 0.0f : expf(sc - mnew);
                float ps = pj;
                for (int off = 16; off > 0; off >>= 1)
                    ps += __shfl_xor_sync(FULL_MASK, ps, off);
                l[a] = l[a] * corr + ps;
#pragma unroll
                for (int c = 0; c < DC; c++)
                    o[a][c] *= corr;
                m[a] = mnew;
            }
            wp[a * BK + lane] = pj;
        }
        __syncwarp();
        for (int jj = 0; jj < BK; jj++) {
            float vv[DC];
#pragma unroll
            for (int c = 0; c < DC; c++) {
                int d = lane + 32 * c;
                vv[c] = d < hd ? sv[jj * hd + d] : 0.0f;
            }
#pragma unroll
            for (int a = 0; a < QW; a++) {
                float pb = wp[a * BK + jj];
#pragma unroll
                for (int c = 0; c < DC; c++)
                    o[a][c] += pb * vv[c];
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (int a = 0; a < QW; a++) {
        int i = wq0 + a;
        if (i >= len)
            break;
        float inv = 1.0f / l[a];
#pragma unroll
        for (int c = 0; c < DC; c++) {
            int d = lane + 32 * c;
            if (d < hd)
                out[(size_t)i * qdim + (size_t)h * hd + d] = o[a][c] * inv;
        }
    }
}

cudaError_t nqk_attention_setup(void)
{
    int bytes = (int)nqk_attention_shared(NQ_ATT_MAX_HD);
    cudaError_t e = cudaFuncSetAttribute(nqk_attention_dc<1>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(nqk_attention_dc<2>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(nqk_attention_dc<3>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(nqk_attention_dc<4>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 bytes);
    return e;
}

void nqk_attention(const float *q, const float *k, const float *v, int samples, int len, int nh,
                   int nkv, int hd, float scale, float *out)
{
    dim3 grid((unsigned)((len + NQ_ATT_BQ - 1) / NQ_ATT_BQ), (unsigned)nh, (unsigned)samples);
    size_t sh = nqk_attention_shared(hd);
    switch ((hd + 31) / 32) {
    case 1:
        nqk_attention_dc<1><<<grid, 256, sh>>>(q, k, v, len, nh, nkv, hd, scale, out);
        break;
    case 2:
        nqk_attention_dc<2><<<grid, 256, sh>>>(q, k, v, len, nh, nkv, hd, scale, out);
        break;
    case 3:
        nqk_attention_dc<3><<<grid, 256, sh>>>(q, k, v, len, nh, nkv, hd, scale, out);
        break;
    default:
        nqk_attention_dc<4><<<grid, 256, sh>>>(q, k, v, len, nh, nkv, hd, scale, out);
        break;
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
