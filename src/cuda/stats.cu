/* Calibration statistics on the GPU (cuda.h, "calibration statistics"):
 * amax, row counts, sampled rows and float64 Hessians of Linear inputs, and
 * the K/V amax, computed where the activations lie.
 *
 * amax: max |x| is the same whatever order the values are compared in, so
 * the blocks combine their maxima with atomicMax on the float's bits (a
 * non-negative float orders like its bit pattern) and the result is exact
 * and reproducible.  NaN / infinity set a flag instead (calib/ turns it into
 * the CPU path's error).
 *
 * Hessians: X^T X of the float inputs, accumulated in float64 like the CPU
 * path (calib.c: rows converted to double, cblas_dsyrk).  Products of two
 * floats are exact in double, so CPU and GPU differ only in the order of the
 * double sums (relative differences ~1e-16).  cuBLAS DSYRK with atomics off
 * is deterministic: the same bytes run after run. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/internal.cuh"

/* Rows converted to double per DSYRK call: bounds the scratch to about
 * 256 MiB (rows x in x 8 bytes) whatever the chunk size. */
#define NQS_CONVERT_BYTES (256u << 20)

typedef struct nqs_item {
    char *name;
    int layer, expert, in;
    uint64_t rows;
    unsigned *d_amax;   /* [0] float bits of the max, [1] non-finite flag */
    double *d_hess;     /* [in, in] column-major upper triangle, or NULL */
    float *sample;      /* host */
    int sample_rows;
} nqs_item;

struct nqs_stats {
    nq_cuda_stats_spec spec;
    nqs_item *items;
    size_t n, cap;
    char **skip;        /* names not observed */
    size_t nskip, capskip;
    size_t last;        /* the item found last: Linears come in a fixed order */
    double *conv;       /* scratch: rows as double */
    size_t conv_bytes;
    unsigned *d_kv;     /* k bits, k flag, v bits, v flag */
    bool kv_seen;
};

static int cuda_err(nq_error *err, const char *what, cudaError_t e)
{
    cudaGetLastError();
    return nq_fail(err, "cuda: %s: %s", what, cudaGetErrorString(e));
}

#define SCK(call, err)                                                     \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess)                                             \
            return cuda_err(err, #call, e_);                               \
    } while (0)

/* acc[0] = max(acc[0], max |x|) over finite x (as float bits), acc[1] = 1
 * if some x is not finite.  Grid-stride; block 256. */
__global__ void nqs_amax_kernel(const float *x, size_t count, unsigned *acc)
{
    __shared__ unsigned red[256];
    unsigned m = 0, bad = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float a = fabsf(x[i]);
        if (isfinite(a)) {
            unsigned b = __float_as_uint(a);
            m = b > m ? b : m;
        } else {
            bad = 1;
        }
    }
    red[threadIdx.x] = m;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s && red[threadIdx.x + s] > red[threadIdx.x])
            red[threadIdx.x] = red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        atomicMax(acc, red[0]);
    if (bad)
        atomicOr(acc + 1, 1u);
}

__global__ void nqs_to_double(const float *x, size_t count, double *y)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < count)
        y[i] = (double)x[i];
}

/* h[j + i d] = h[i + j d] for i < j: the full symmetric matrix from the
 * column-major upper triangle DSYRK fills. */
__global__ void nqs_mirror(double *h, int d)
{
    size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (k >= (size_t)d * d)
        return;
    size_t i = k % (size_t)d, j = k / (size_t)d;
    if (i < j)
        h[j + i * (size_t)d] = h[i + j * (size_t)d];
}

static int launch_amax(const float *dx, size_t count, unsigned *acc, nq_error *err)
{
    if (count == 0)
        return 0;
    size_t blocks = (count + 255) / 256;
    if (blocks > 4096)
        blocks = 4096;
    nqs_amax_kernel<<<(unsigned)blocks, 256>>>(dx, count, acc);
    SCK(cudaGetLastError(), err);
    return 0;
}

int nqs_amax(const float *dx, size_t count, unsigned *acc, nq_error *err)
{
    return launch_amax(dx, count, acc, err);
}

static nqs_stats *get(nq_cuda *g) { return *nqb_stats(g); }

extern "C" int nq_cuda_stats_begin(nq_cuda *g, const nq_cuda_stats_spec *spec, nq_error *err)
{
    nq_cuda_stats_end(g);
    nqs_stats *s = (nqs_stats *)calloc(1, sizeof *s);
    if (!s)
        return nq_fail(err, "cuda: out of host memory");
    s->spec = *spec;
    *nqb_stats(g) = s;
    if (nqb_alloc(g, (void **)&s->d_kv, 4 * sizeof(unsigned), err) != 0)
        return -1;
    SCK(cudaMemset(s->d_kv, 0, 4 * sizeof(unsigned)), err);
    return 0;
}

extern "C" void nq_cuda_stats_end(nq_cuda *g)
{
    nqs_stats *s = g ? get(g) : NULL;
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        nqs_item *it = &s->items[i];
        nqb_free(g, it->d_amax, 2 * sizeof(unsigned));
        if (it->d_hess)
            nqb_free(g, it->d_hess, (size_t)it->in * it->in * sizeof(double));
        free(it->name);
        free(it->sample);
    }
    for (size_t i = 0; i < s->nskip; i++)
        free(s->skip[i]);
    free(s->skip);
    free(s->items);
    nqb_free(g, s->conv, s->conv_bytes);
    nqb_free(g, s->d_kv, 4 * sizeof(unsigned));
    free(s);
    *nqb_stats(g) = NULL;
}

void nqs_free(nq_cuda *g) { nq_cuda_stats_end(g); }

/* The item of weight_name, created on first sight; *out NULL when the name
 * is not observed. */
static int find_item(nq_cuda *g, nqs_stats *s, const char *name, int layer, int expert, int in,
                     nqs_item **out, nq_error *err)
{
    *out = NULL;
    if (s->last < s->n && strcmp(s->items[s->last].name, name) == 0) {
        *out = &s->items[s->last];
        return 0;
    }
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->items[i].name, name) == 0) {
            s->last = i;
            *out = &s->items[i];
            return 0;
        }
    for (size_t i = 0; i < s->nskip; i++)
        if (strcmp(s->skip[i], name) == 0)
            return 0;
    int w = s->spec.wanted ? s->spec.wanted(s->spec.ctx, name, in, err) : 1;
    if (w < 0)
        return -1;
    if (w == 0) {
        if (s->nskip == s->capskip) {
            size_t cap = s->capskip ? s->capskip * 2 : 32;
            char **p = (char **)realloc(s->skip, cap * sizeof *p);
            if (!p)
                return nq_fail(err, "cuda: out of host memory");
            s->skip = p;
            s->capskip = cap;
        }
        if (!(s->skip[s->nskip] = strdup(name)))
            return nq_fail(err, "cuda: out of host memory");
        s->nskip++;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        nqs_item *p = (nqs_item *)realloc(s->items, cap * sizeof *p);
        if (!p)
            return nq_fail(err, "cuda: out of host memory");
        s->items = p;
        s->cap = cap;
    }
    nqs_item *it = &s->items[s->n];
    memset(it, 0, sizeof *it);
    it->layer = layer;
    it->expert = expert;
    it->in = in;
    it->name = strdup(name);
    if (s->spec.sample_rows > 0)
        it->sample = (float *)malloc((size_t)s->spec.sample_rows * in * sizeof(float));
    if (!it->name || (s->spec.sample_rows > 0 && !it->sample)) {
        free(it->name);
        free(it->sample);
        return nq_fail(err, "%s: out of host memory for statistics", name);
    }
    s->n++; /* from here on nq_cuda_stats_end frees it */
    size_t hb = (size_t)in * in * sizeof(double);
    if (nqb_alloc(g, (void **)&it->d_amax, 2 * sizeof(unsigned), err) != 0)
        return -1;
    SCK(cudaMemset(it->d_amax, 0, 2 * sizeof(unsigned)), err);
    if (s->spec.hessians) {
        if (nqb_alloc(g, (void **)&it->d_hess, hb, err) != 0) {
            it->d_hess = NULL;
            return nq_fail(err, "%s: no GPU memory for its %d x %d Hessian", name, in, in);
        }
        SCK(cudaMemset(it->d_hess, 0, hb), err);
    }
    s->last = s->n - 1;
    *out = it;
    return 0;
}

int nqs_linear(nq_cuda *g, const char *name, int layer, int expert, const float *dx, int rows,
               int in, nq_error *err)
{
    nqs_stats *s = get(g);
    if (!s || rows <= 0)
        return 0;
    nqs_item *it;
    if (find_item(g, s, name, layer, expert, in, &it, err) != 0)
        return -1;
    if (!it)
        return 0;
    size_t count = (size_t)rows * in;
    if (launch_amax(dx, count, it->d_amax, err) != 0)
        return -1;
    int take = s->spec.sample_rows - it->sample_rows;
    if (take > rows)
        take = rows;
    if (take > 0) {
        SCK(cudaMemcpy(it->sample + (size_t)it->sample_rows * in, dx,
                       (size_t)take * in * sizeof(float), cudaMemcpyDeviceToHost),
            err);
        it->sample_rows += take;
    }
    if (it->d_hess) {
        size_t per = NQS_CONVERT_BYTES / ((size_t)in * sizeof(double));
        if (per < 1)
            per = 1;
        if (per > (size_t)rows)
            per = (size_t)rows;
        size_t need = per * in * sizeof(double);
        if (s->conv_bytes < need) {
            nqb_free(g, s->conv, s->conv_bytes);
            s->conv = NULL;
            s->conv_bytes = 0;
            if (nqb_alloc(g, (void **)&s->conv, need, err) != 0) {
                s->conv = NULL;
                return -1;
            }
            s->conv_bytes = need;
        }
        const double one = 1.0;
        for (size_t r0 = 0; r0 < (size_t)rows; r0 += per) {
            size_t r = (size_t)rows - r0 < per ? (size_t)rows - r0 : per;
            size_t cnt = r * in;
            nqs_to_double<<<(unsigned)((cnt + 255) / 256), 256>>>(dx + r0 * in, cnt, s->conv);
            SCK(cudaGetLastError(), err);
            /* row-major X[r, in] is column-major X^T [in, r]: H += X^T X =
             * (X^T)(X^T)^T, the column-major upper triangle */
            cublasStatus_t st = cublasDsyrk(nqb_blas(g), CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, in,
                                            (int)r, &one, s->conv, in, &one, it->d_hess, in);
            if (st != CUBLAS_STATUS_SUCCESS)
                return nq_fail(err, "%s: cublasDsyrk: status %d", name, (int)st);
        }
    }
    it->rows += (uint64_t)rows;
    return 0;
}

int nqs_kv(nq_cuda *g, const float *k, const float *v, size_t count, nq_error *err)
{
    nqs_stats *s = get(g);
    if (!s)
        return 0;
    s->kv_seen = true;
    return launch_amax(k, count, s->d_kv, err) || launch_amax(v, count, s->d_kv + 2, err) ? -1
                                                                                           : 0;
}

extern "C" size_t nq_cuda_stats_count(const nq_cuda *g)
{
    nqs_stats *s = *nqb_stats((nq_cuda *)g);
    return s ? s->n : 0;
}

extern "C" int nq_cuda_stats_item(nq_cuda *g, size_t i, nq_cuda_linear_stat *out,
                                  double *hessian, nq_error *err)
{
    nqs_stats *s = get(g);
    if (!s || i >= s->n)
        return nq_fail(err, "cuda: statistics item %zu does not exist", i);
    nqs_item *it = &s->items[i];
    unsigned a[2];
    SCK(cudaMemcpy(a, it->d_amax, sizeof a, cudaMemcpyDeviceToHost), err);
    memset(out, 0, sizeof *out);
    out->weight_name = it->name;
    out->layer = it->layer;
    out->expert = it->expert;
    out->in_features = it->in;
    memcpy(&out->amax, &a[0], sizeof out->amax);
    out->nonfinite = a[1] != 0;
    out->rows = it->rows;
    out->sample = it->sample;
    out->sample_rows = it->sample_rows;
    if (hessian) {
        if (!it->d_hess)
            return nq_fail(err, "%s: no Hessian was collected", it->name);
        size_t d = (size_t)it->in;
        nqs_mirror<<<(unsigned)((d * d + 255) / 256), 256>>>(it->d_hess, (int)d);
        SCK(cudaGetLastError(), err);
        SCK(cudaMemcpy(hessian, it->d_hess, d * d * sizeof(double), cudaMemcpyDeviceToHost), err);
    }
    return 0;
}

extern "C" int nq_cuda_stats_kv(nq_cuda *g, float *k_amax, float *v_amax, bool *seen,
                                bool *nonfinite, nq_error *err)
{
    nqs_stats *s = get(g);
    *seen = s && s->kv_seen;
    *nonfinite = false;
    *k_amax = *v_amax = 0.0f;
    if (!*seen)
        return 0;
    unsigned a[4];
    SCK(cudaMemcpy(a, s->d_kv, sizeof a, cudaMemcpyDeviceToHost), err);
    memcpy(k_amax, &a[0], sizeof *k_amax);
    memcpy(v_amax, &a[2], sizeof *v_amax);
    *nonfinite = a[1] || a[3];
    return 0;
}

/* ---- the output error of a quantized weight -------------------------- */

/* Per sampled row t of the outputs (column-major [out, rows], the
 * weight's in y, the dequantized weight's in y + yn): s[2t] = sum over j of
 * (a - b)^2, s[2t + 1] = sum of a^2, j in order, one thread per row: a
 * fixed order, so the same sums run after run. */
__global__ void nqs_row_sq(const double *y, int64_t out, int rows, size_t yn, double *s)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows)
        return;
    const double *a = y + (size_t)t * out, *b = a + yn;
    double es = 0.0, rs = 0.0;
    for (int64_t j = 0; j < out; j++) {
        double d = a[j] - b[j];
        es += d * d;
        rs += a[j] * a[j];
    }
    s[2 * t] = es;
    s[2 * t + 1] = rs;
}

/* The output errors for a weight and its dequantized form already on the
 * device (f32 [out, in] each): uploads x, converts everything to double,
 * runs the two DGEMMs and sums the squares per row on the device (the
 * rows' sums added on the host in order): only 2 x rows doubles come
 * back, not the 2 x rows x out outputs. */
int nqs_output_error_dev(nq_cuda *g, const float *x, int rows, const float *dw32,
                         const float *dq32, int64_t out, int64_t in, double *err_sq,
                         double *ref_sq, nq_error *err)
{
    *err_sq = *ref_sq = 0.0;
    if (rows <= 0)
        return 0;
    size_t xn = (size_t)rows * in, wn = (size_t)(out * in), yn = (size_t)rows * out;
    float *dx32 = NULL;
    double *dx = NULL, *dw = NULL, *dy = NULL;
    double *hy = (double *)malloc(2 * (size_t)rows * sizeof(double));
    int rc = -1;
    const double one = 1.0, zero = 0.0;
    cudaError_t e;
    if (!hy) {
        nq_fail(err, "cuda: out of host memory");
        goto done;
    }
    if (!(dx32 = (float *)nqb_keep(g, NQB_K_X32, xn * 4, err)) ||
        !(dx = (double *)nqb_keep(g, NQB_K_X64, xn * 8, err)) ||
        !(dw = (double *)nqb_keep(g, NQB_K_W64, wn * 8, err)) ||
        !(dy = (double *)nqb_keep(g, NQB_K_Y64, 2 * yn * 8 + 2 * (size_t)rows * 8, err)))
        goto done;
    if ((e = cudaMemcpy(dx32, x, xn * 4, cudaMemcpyHostToDevice)) != cudaSuccess) {
        cuda_err(err, "uploading calibration rows", e);
        goto done;
    }
    nqs_to_double<<<(unsigned)((xn + 255) / 256), 256>>>(dx32, xn, dx);
    for (int pass = 0; pass < 2; pass++) {
        nqs_to_double<<<(unsigned)((wn + 255) / 256), 256>>>(pass ? dq32 : dw32, wn, dw);
        if ((e = cudaGetLastError()) != cudaSuccess) {
            cuda_err(err, "converting a weight", e);
            goto done;
        }
        /* row-major Y[rows, out] = X W^T: column-major Y^T = W X^T */
        cublasStatus_t s = cublasDgemm(nqb_blas(g), CUBLAS_OP_T, CUBLAS_OP_N, (int)out, rows,
                                       (int)in, &one, dw, (int)in, dx, (int)in, &zero,
                                       dy + pass * yn, (int)out);
        if (s != CUBLAS_STATUS_SUCCESS) {
            nq_fail(err, "cublasDgemm: status %d", (int)s);
            goto done;
        }
    }
    nqs_row_sq<<<(unsigned)((rows + 127) / 128), 128>>>(dy, out, rows, yn, dy + 2 * yn);
    if ((e = cudaGetLastError()) != cudaSuccess ||
        (e = cudaMemcpy(hy, dy + 2 * yn, 2 * (size_t)rows * 8, cudaMemcpyDeviceToHost)) !=
            cudaSuccess) {
        cuda_err(err, "summing the output errors", e);
        goto done;
    }
    {
        /* export/calibrated.c's order over the rows */
        double es = 0.0, rs = 0.0;
        for (int t = 0; t < rows; t++) {
            es += hy[2 * t];
            rs += hy[2 * t + 1];
        }
        *err_sq = es;
        *ref_sq = rs;
    }
    rc = 0;
done:
    free(hy);
    return rc;
}

extern "C" int nq_cuda_output_error(nq_cuda *g, const float *x, int rows, const float *w,
                                    const float *q, int64_t out, int64_t in, double *err_sq,
                                    double *ref_sq, nq_error *err)
{
    *err_sq = *ref_sq = 0.0;
    if (rows <= 0)
        return 0;
    size_t wn = (size_t)(out * in);
    float *dw = (float *)nqb_keep(g, NQB_K_W, wn * 4, err);
    float *dq = dw ? (float *)nqb_keep(g, NQB_K_Q, wn * 4, err) : NULL;
    if (!dq)
        return -1;
    cudaError_t e = cudaMemcpy(dw, w, wn * 4, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemcpy(dq, q, wn * 4, cudaMemcpyHostToDevice);
    return e != cudaSuccess ? cuda_err(err, "uploading a weight", e)
                            : nqs_output_error_dev(g, x, rows, dw, dq, out, in, err_sq, ref_sq,
                                                   err);
}
