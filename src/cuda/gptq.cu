/* GPTQ's core on the GPU (cuda.h, nq_cuda_gptq): algo/gptq.c's inverse
 * Cholesky and blocked column sweep, step for step.
 *
 *   U: cuSOLVER DPOTRF / DPOTRI / DPOTRF on the damped Hessian (LAPACK's
 *      calls on the CPU), transposed into row-major with zeros below.
 *   Sweep: W in float64, row-major as on the CPU.  Per block of 128
 *      columns one kernel launch with one warp per row: the row's 128
 *      columns sit in shared memory, the block's group scales are computed
 *      by as many lanes as there are groups (from the weights as they stand
 *      at the block's start, as gptq.c and the reference do), then for each
 *      column every lane computes the same code and error (the row's
 *      sequence is inherently serial) and each lane updates the later
 *      columns it owns (c = lane mod 32): per element the same updates in
 *      the same order as gptq.c's loop.  Then cuBLAS DGEMM spreads the
 *      block's errors over the columns after it (gptq.c: cblas_dgemm).
 *   Batches: nq_cuda_gptq_batch runs several weights at once, one per
 *      stream (GPTQ_SLOTS streams, each with its own cuBLAS and cuSOLVER
 *      handle and buffers): one module of a Nano expert keeps a fraction of
 *      the GPU busy (a 2688-column Cholesky, 1856 row warps), so the
 *      uploads, factorizations and sweeps of the next modules overlap it.
 *      Every job's arithmetic is the same whichever stream runs it.
 *
 * cuSOLVER is opened with dlopen on the first GPTQ (its library and its
 * dependencies add ~0.2-0.5 s to the start of every process that links
 * them, including CPU-only commands); without it GPTQ on the GPU is a
 * one-line error naming the library.
 *
 * The scale searches and encoders (formats.cuh) are device copies of formats/
 * (nvfp4.c, int4.c, floatconv.h, fp8.h): the same float / double
 * operations in the same order.  This file is compiled with -fmad=false so
 * that no a * b + c is fused into one rounding the host code does not have
 * (CMakeLists.txt).  What can still differ from the CPU is the order of
 * the sums inside cuSOLVER's factorizations and the DGEMM (OpenBLAS on the
 * CPU): U and the trailing updates may differ in the last bits, which can
 * move a weight across a rounding boundary now and then; the GPU tests
 * measure how many bytes differ and the held-out KL.  With a diagonal
 * Hessian every step is exact on both sides and the bytes are identical
 * (tested, in order and in act-order). */
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/internal.cuh"

extern "C" {
#include "core/parallel.h"
}

#define GPTQ_BLOCK 128
#define GPTQ_SLOTS 8
#define SWEEP_WARPS 8

#include "cuda/formats.cuh"

/* ---- cuSOLVER, opened on first use ------------------------------------ */

#define NQ_STR2(x) #x
#define NQ_STR(x) NQ_STR2(x)
#define CUSOLVER_SONAME "libcusolver.so." NQ_STR(CUSOLVER_VER_MAJOR)

typedef cusolverStatus_t (*fn_create)(cusolverDnHandle_t *);
typedef cusolverStatus_t (*fn_destroy)(cusolverDnHandle_t);
typedef cusolverStatus_t (*fn_set_stream)(cusolverDnHandle_t, cudaStream_t);
typedef cusolverStatus_t (*fn_bufsize)(cusolverDnHandle_t, cublasFillMode_t, int, double *, int,
                                       int *);
typedef cusolverStatus_t (*fn_factor)(cusolverDnHandle_t, cublasFillMode_t, int, double *, int,
                                      double *, int, int *);

static struct {
    fn_create create;
    fn_destroy destroy;
    fn_set_stream set_stream;
    fn_bufsize potrf_size, potri_size;
    fn_factor potrf, potri;
    char error[512];
} sol;
static pthread_once_t sol_once = PTHREAD_ONCE_INIT;

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (!p && !sol.error[0])
        snprintf(sol.error, sizeof sol.error, "%s has no %s", CUSOLVER_SONAME, name);
    return p;
}

static void sol_load(void)
{
    void *lib = dlopen(CUSOLVER_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        snprintf(sol.error, sizeof sol.error,
                 "GPTQ on the GPU needs cuSOLVER (%s, part of the CUDA toolkit) and it could not "
                 "be loaded: %s; add its directory to LD_LIBRARY_PATH or use --device cpu",
                 CUSOLVER_SONAME, why ? why : "not found");
        return;
    }
    sol.create = (fn_create)sym(lib, "cusolverDnCreate");
    sol.destroy = (fn_destroy)sym(lib, "cusolverDnDestroy");
    sol.set_stream = (fn_set_stream)sym(lib, "cusolverDnSetStream");
    sol.potrf_size = (fn_bufsize)sym(lib, "cusolverDnDpotrf_bufferSize");
    sol.potri_size = (fn_bufsize)sym(lib, "cusolverDnDpotri_bufferSize");
    sol.potrf = (fn_factor)sym(lib, "cusolverDnDpotrf");
    sol.potri = (fn_factor)sym(lib, "cusolverDnDpotri");
}

/* ---- streams and handles, per device, kept for the process ------------- */

typedef struct gslot {
    cudaStream_t stream;
    cublasHandle_t blas;
    cusolverDnHandle_t solver;
    /* pinned staging for the job's Hessian, weight and dead flags: copies
     * from pageable memory run at a few GB/s, a Nano up_proj brings 78 MB */
    uint8_t *pin;
    size_t pin_bytes;
} gslot;

#define MAX_DEVICES 64
static gslot *slots_of[MAX_DEVICES];
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

/* The GPTQ_SLOTS streams of the current device, created on first use (a
 * cuSOLVER handle takes milliseconds to create: per call it would cost
 * more than a small module's whole GPTQ). */
static gslot *device_slots(nq_error *err)
{
    pthread_once(&sol_once, sol_load);
    if (sol.error[0]) {
        nq_fail(err, "%s", sol.error);
        return NULL;
    }
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= MAX_DEVICES) {
        cudaGetLastError();
        nq_fail(err, "cuda gptq: no current device");
        return NULL;
    }
    pthread_mutex_lock(&slots_lock);
    gslot *s = slots_of[dev];
    if (!s) {
        s = (gslot *)calloc(GPTQ_SLOTS, sizeof *s);
        int k = 0;
        for (; s && k < GPTQ_SLOTS; k++) {
            if (cudaStreamCreateWithFlags(&s[k].stream, cudaStreamNonBlocking) != cudaSuccess)
                break;
            if (cublasCreate(&s[k].blas) != CUBLAS_STATUS_SUCCESS) {
                cudaStreamDestroy(s[k].stream);
                break;
            }
            if (sol.create(&s[k].solver) != CUSOLVER_STATUS_SUCCESS) {
                cublasDestroy(s[k].blas);
                cudaStreamDestroy(s[k].stream);
                break;
            }
            cublasSetStream(s[k].blas, s[k].stream);
            sol.set_stream(s[k].solver, s[k].stream);
        }
        if (!s || k < GPTQ_SLOTS) {
            for (int i = 0; s && i < k; i++) {
                sol.destroy(s[i].solver);
                cublasDestroy(s[i].blas);
                cudaStreamDestroy(s[i].stream);
            }
            free(s);
            s = NULL;
            cudaGetLastError();
            nq_fail(err, "cuda gptq: could not create streams and cuBLAS/cuSOLVER handles");
        }
        slots_of[dev] = s;
    }
    pthread_mutex_unlock(&slots_lock);
    return s;
}

/* ---- kernels ----------------------------------------------------------- */

static unsigned nblocks(size_t count, unsigned threads)
{
    return (unsigned)((count + threads - 1) / threads);
}

/* The damped Hessian's diagonal as gptq.c sets it: dead inputs (H_ii = 0)
 * get 1, then every diagonal + damp. */
__global__ static void g_damp(double *a, int64_t n, const uint8_t *dead, double damp)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    double v = dead[i] ? 1.0 : a[i * n + i];
    a[i * n + i] = v + damp;
}

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

/* wc[r cols + c] = dead[c] ? 0 : w[r cols + c] (row-major, as gptq.c's W). */
__global__ static void g_load_w(const float *w, const uint8_t *dead, int64_t rows, int64_t cols,
                                double *wc)
{
    size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (k >= (size_t)(rows * cols))
        return;
    wc[k] = dead[k % (size_t)cols] ? 0.0 : (double)w[k];
}

/* --optimize's NVFP4 scale searches (gptq.c's search_scale and
 * block_loss, nq_gptq_nvfp4_opts): the GPTQ loss of the 16 columns from k
 * of the row (ws: as updated so far) quantized with scale code s8. */
__device__ static double d_block_loss(const double *ws, int k, const double *u, int64_t n,
                                      int64_t i, uint8_t s8, float gs)
{
    double loc[16];
    for (int c = 0; c < 16; c++)
        loc[c] = ws[k + c];
    float sv = d_e4m3_to_f32(s8) * gs;
    double loss = 0.0;
    for (int q = 0; q < 16; q++) {
        float x = (float)loc[q];
        double qv = (double)d_e2m1_value(d_e2m1_encode(x / sv)) * sv;
        const double *ur = u + (i + q) * n + i;
        double e = (loc[q] - qv) / ur[q];
        loss += e * e;
        for (int c = q + 1; c < 16; c++)
            loc[c] -= e * ur[c];
    }
    return loss;
}

/* The scale of the block at column i (k in the shared row) with the least
 * GPTQ loss among search_scale's candidates, in its order (max scale,
 * then down to lo, then up to hi; or the scale to 4); the lanes try them
 * in parallel and the first candidate with the least loss wins, as the
 * CPU's sequential "c == 0 || l < best" picks it. */
__device__ static uint8_t d_search_scale(const double *ws, int k, const double *u, int64_t n,
                                         int64_t i, float gs, float lo, float hi,
                                         bool four_over_six, int lane)
{
    float x[16];
    for (int c = 0; c < 16; c++)
        x[c] = (float)ws[k + c];
    uint8_t max_code = d_nvfp4_scale_max(x, gs);
    int n_down = 0, n_up = 0;
    uint8_t fos = 0;
    if (four_over_six) {
        float amax = 0.0f;
        for (int c = 0; c < 16; c++)
            amax = fabsf(x[c]) > amax ? fabsf(x[c]) : amax;
        float sc = amax / (4.0f * gs);
        if (sc >= 0.001953125f && d_f32_to_e4m3(sc) != max_code) {
            fos = d_f32_to_e4m3(sc);
            n_down = 1;
        }
    } else {
        float ref = d_e4m3_to_f32(max_code);
        for (int code = max_code - 1; code >= 1 && d_e4m3_to_f32((uint8_t)code) >= lo * ref;
             code--)
            n_down++;
        for (int code = max_code + 1;
             code <= 0x7e && d_e4m3_to_f32((uint8_t)code) <= hi * ref; code++)
            n_up++;
    }
    int nc = 1 + n_down + n_up;
    /* this lane's candidates: the first of its least losses (NaN never wins) */
    int bi = -1;
    double bl = 0.0, l0 = 0.0;
    for (int c = lane; c < nc; c += 32) {
        uint8_t code = c == 0              ? max_code
                       : four_over_six     ? fos
                       : c <= n_down       ? (uint8_t)(max_code - c)
                                           : (uint8_t)(max_code + (c - n_down));
        double l = d_block_loss(ws, k, u, n, i, code, gs);
        if (c == 0)
            l0 = l;
        if (l == l && (bi < 0 || l < bl)) {
            bi = c;
            bl = l;
        }
    }
    /* the least loss over the lanes, ties to the lower index */
    for (int off = 16; off > 0; off >>= 1) {
        int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        double ol = __shfl_xor_sync(0xffffffffu, bl, off);
        if (oi >= 0 && (bi < 0 || ol < bl || (ol == bl && oi < bi))) {
            bi = oi;
            bl = ol;
        }
    }
    /* candidate 0 with a NaN loss: the CPU keeps it (nothing is < NaN) */
    l0 = __shfl_sync(0xffffffffu, l0, 0);
    if (bi < 0 || l0 != l0)
        bi = 0;
    return bi == 0               ? max_code
           : four_over_six       ? fos
           : bi <= n_down        ? (uint8_t)(max_code - bi)
                                 : (uint8_t)(max_code + (bi - n_down));
}

/* One block [i1, i2) of columns, one warp per row a: gptq_rows' loop body
 * for that row.  wc, E (ld GPTQ_BLOCK): row-major.  perm / static16:
 * act-order (column i of the job is column perm[i] of the weight, with the
 * static scale of that column's group).  info: the factorizations' three
 * info words; nonzero: the Hessian was not positive definite, nothing to
 * do (the caller discards the job). */
__global__ static void __launch_bounds__(SWEEP_WARPS * 32)
    g_sweep(int fmt, const double *wc, int64_t rows, int64_t n, int64_t i1, int64_t i2,
            const double *u, int group, bool mse, float gs, bool search, float lo, float hi,
            bool four_over_six, const int64_t *perm, const uint16_t *static16, uint8_t *codes,
            uint16_t *scales16, uint8_t *scales8, double *E, double *loss, const int *info)
{
    __shared__ double wsh[SWEEP_WARPS][GPTQ_BLOCK];
    __shared__ float ssh[SWEEP_WARPS][GPTQ_BLOCK];
    if (info[0] != 0 || info[1] != 0 || info[2] != 0)
        return;
    int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    int64_t a = blockIdx.x * (int64_t)SWEEP_WARPS + wp;
    if (a >= rows) /* the whole warp: no block-wide barrier below */
        return;
    int bw = (int)(i2 - i1);
    double *ws = wsh[wp];
    float *sv = ssh[wp];
    const double *wr = wc + a * n + i1;
    for (int k = lane; k < bw; k += 32)
        ws[k] = wr[k];
    __syncwarp();
    if (static16) {
        for (int k = lane; k < bw; k += 32)
            sv[k] = d_f16_to_f32(static16[(perm[i1 + k] / group) * rows + a]);
    } else if (search) {
        /* chosen as each block's first column comes up (below) */
    } else {
        /* the block's group scales, from its weights as they stand now */
        for (int gi = lane; gi < bw / group; gi += 32) {
            int64_t i = i1 + (int64_t)gi * group;
            float gbuf[GPTQ_BLOCK];
            for (int g = 0; g < group; g++)
                gbuf[g] = (float)ws[gi * group + g];
            float s;
            if (fmt == 0) {
                uint16_t s16 = mse ? d_int4_scale_mse(gbuf, group) : d_int4_scale_max(gbuf, group);
                s = d_f16_to_f32(s16);
                scales16[(i / group) * rows + a] = s16;
            } else {
                uint8_t s8 = mse ? d_nvfp4_scale_mse(gbuf, gs) : d_nvfp4_scale_max(gbuf, gs);
                s = d_e4m3_to_f32(s8) * gs;
                scales8[a * (n / 16) + i / 16] = s8;
            }
            for (int g = 0; g < group; g++)
                sv[gi * group + g] = s;
        }
    }
    __syncwarp();
    double l = 0.0;
    unsigned prev = 0;
    float cur = 0.0f;
    for (int k = 0; k < bw; k++) {
        int64_t i = i1 + k;
        if (search && k % 16 == 0) {
            /* from the row as updated so far, as gptq.c's search_scale */
            uint8_t s8 = d_search_scale(ws, k, u, n, i, gs, lo, hi, four_over_six, lane);
            cur = d_e4m3_to_f32(s8) * gs;
            if (lane == 0)
                scales8[a * (n / 16) + i / 16] = s8;
        }
        double wi = ws[k];
        float x = (float)wi, s = search ? cur : sv[k];
        double q;
        unsigned code;
        if (fmt == 0) {
            code = d_int4_code(x, s);
            q = (double)s * ((int)code - 8);
        } else {
            code = d_e2m1_encode(x / s);
            q = (double)d_e2m1_value((uint8_t)code) * s;
        }
        double d = u[i * n + i];
        double e = (wi - q) / d;
        l += (wi - q) * (wi - q) / (d * d) / 2.0;
        if (lane == (k & 31)) {
            if (fmt == 0)
                codes[a * n + (perm ? perm[i] : i)] = (uint8_t)code;
            else if (i % 2) /* the pair's byte, low nibble first (i1 is even) */
                codes[a * (n / 2) + i / 2] = (uint8_t)(prev | (code << 4));
            E[a * GPTQ_BLOCK + k] = e;
        }
        prev = code;
        const double *ur = u + i * n + i1;
        for (int c = lane; c < bw; c += 32)
            if (c > k)
                ws[c] -= e * ur[c];
        __syncwarp();
    }
    if (lane == 0)
        loss[a] += l;
}

/* ---- the driver ------------------------------------------------------------ */

static int gerr(nq_error *err, const char *what, cudaError_t e)
{
    cudaGetLastError();
    return nq_fail(err, "cuda gptq: %s: %s", what, cudaGetErrorString(e));
}

#define GCK(call)                                                          \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess)                                             \
            return gerr(err, #call, e_);                                   \
    } while (0)

#define SCK(call)                                                          \
    do {                                                                   \
        cusolverStatus_t s_ = (call);                                      \
        if (s_ != CUSOLVER_STATUS_SUCCESS)                                 \
            return nq_fail(err, "cusolver: %s: status %d", #call, (int)s_); \
    } while (0)

/* One slot's device buffers, sized for the largest job of the batch. */
typedef struct sbuf {
    double *a, *u, *wc, *E, *loss, *work;
    float *w;
    uint8_t *dead, *codes, *sc;
    int64_t *perm;
    uint16_t *st16;
    int *info;
    nq_cuda_gptq_job *job; /* in flight, or NULL */
} sbuf;

typedef struct sizes {
    size_t nn, rn, rows, n, code, sc, st16;
    int lwork;
} sizes;

static size_t code_bytes(const nq_cuda_gptq_job *j)
{
    return (size_t)(j->rows * j->cols) / (j->fmt == 0 ? 1 : 2);
}

static size_t scale_bytes(const nq_cuda_gptq_job *j)
{
    return j->fmt == 0 ? (size_t)(j->cols / j->group) * (size_t)j->rows * 2
                       : (size_t)(j->rows * j->cols) / 16;
}

static int buf_alloc(nq_cuda *g, sbuf *b, const sizes *z, nq_error *err)
{
    return nqb_alloc(g, (void **)&b->a, z->nn * 8, err) ||
           nqb_alloc(g, (void **)&b->u, z->nn * 8, err) ||
           nqb_alloc(g, (void **)&b->wc, z->rn * 8, err) ||
           nqb_alloc(g, (void **)&b->E, z->rows * GPTQ_BLOCK * 8, err) ||
           nqb_alloc(g, (void **)&b->loss, z->rows * 8, err) ||
           nqb_alloc(g, (void **)&b->w, z->rn * 4, err) ||
           nqb_alloc(g, (void **)&b->dead, z->n, err) ||
           nqb_alloc(g, (void **)&b->codes, z->code, err) ||
           nqb_alloc(g, (void **)&b->sc, z->sc, err) ||
           nqb_alloc(g, (void **)&b->perm, z->n * 8, err) ||
           nqb_alloc(g, (void **)&b->st16, z->st16, err) ||
           nqb_alloc(g, (void **)&b->info, 3 * sizeof(int), err)
               ? -1
               : 0;
}

static void buf_free(nq_cuda *g, sbuf *b, const sizes *z)
{
    nqb_free(g, b->a, z->nn * 8);
    nqb_free(g, b->u, z->nn * 8);
    nqb_free(g, b->wc, z->rn * 8);
    nqb_free(g, b->E, z->rows * GPTQ_BLOCK * 8);
    nqb_free(g, b->loss, z->rows * 8);
    nqb_free(g, b->work, (size_t)z->lwork * 8);
    nqb_free(g, b->w, z->rn * 4);
    nqb_free(g, b->dead, z->n);
    nqb_free(g, b->codes, z->code);
    nqb_free(g, b->sc, z->sc);
    nqb_free(g, b->perm, z->n * 8);
    nqb_free(g, b->st16, z->st16);
    nqb_free(g, b->info, 3 * sizeof(int));
}

typedef struct pcopy {
    uint8_t *dst;
    const uint8_t *src;
} pcopy;

#define PCOPY_CHUNK ((size_t)1 << 20)

static int pcopy_range(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    pcopy *c = (pcopy *)ctx;
    memcpy(c->dst + begin, c->src + begin, end - begin);
    return 0;
}

/* memcpy with several threads (one thread copies ~5-10 GB/s). */
static void par_copy(void *dst, const void *src, size_t bytes)
{
    pcopy c = {(uint8_t *)dst, (const uint8_t *)src};
    int t = nq_default_threads();
    nq_parallel_for(bytes, PCOPY_CHUNK, t > 8 ? 8 : t, pcopy_range, &c);
}

/* Enqueues job j on slot s: nothing waits for the device. */
static int issue(nq_cuda_gptq_job *j, gslot *s, sbuf *b, int lwork, nq_error *err)
{
    static_assert(sizeof(bool) == 1, "bool arrays are copied as bytes");
    cudaStream_t st = s->stream;
    int64_t n = j->cols, rows = j->rows;
    size_t nn = (size_t)(n * n), rn = (size_t)(rows * n);
    const double one = 1.0, minus = -1.0;
    b->job = j;
    /* the slot's previous job is finished: its staging is free */
    uint8_t *ph = s->pin, *pw = s->pin + nn * 8, *pd = pw + rn * 4;
    par_copy(ph, j->hessian, nn * 8);
    par_copy(pw, j->w, rn * 4);
    memcpy(pd, j->dead, (size_t)n);
    GCK(cudaMemcpyAsync(b->a, ph, nn * 8, cudaMemcpyHostToDevice, st));
    GCK(cudaMemcpyAsync(b->dead, pd, (size_t)n, cudaMemcpyHostToDevice, st));
    GCK(cudaMemsetAsync(b->info, 0, 3 * sizeof(int), st));
    g_damp<<<nblocks((size_t)n, 256), 256, 0, st>>>(b->a, n, b->dead, j->damp_abs);
    GCK(cudaGetLastError());
    SCK(sol.potrf(s->solver, CUBLAS_FILL_MODE_UPPER, (int)n, b->a, (int)n, b->work, lwork,
                  b->info));
    SCK(sol.potri(s->solver, CUBLAS_FILL_MODE_UPPER, (int)n, b->a, (int)n, b->work, lwork,
                  b->info + 1));
    g_mirror<<<nblocks(nn, 256), 256, 0, st>>>(b->a, (int)n);
    GCK(cudaGetLastError());
    SCK(sol.potrf(s->solver, CUBLAS_FILL_MODE_UPPER, (int)n, b->a, (int)n, b->work, lwork,
                  b->info + 2));
    g_upper_rowmajor<<<nblocks(nn, 256), 256, 0, st>>>(b->a, (int)n, b->u);
    GCK(cudaGetLastError());
    GCK(cudaMemcpyAsync(b->w, pw, rn * 4, cudaMemcpyHostToDevice, st));
    g_load_w<<<nblocks(rn, 256), 256, 0, st>>>(b->w, b->dead, rows, n, b->wc);
    GCK(cudaGetLastError());
    GCK(cudaMemsetAsync(b->loss, 0, (size_t)rows * 8, st));
    if (j->perm) {
        GCK(cudaMemcpyAsync(b->perm, j->perm, (size_t)n * 8, cudaMemcpyHostToDevice, st));
        GCK(cudaMemcpyAsync(b->st16, j->static16, (size_t)(n / j->group) * (size_t)rows * 2,
                            cudaMemcpyHostToDevice, st));
    }
    for (int64_t i1 = 0; i1 < n; i1 += GPTQ_BLOCK) {
        int64_t i2 = i1 + GPTQ_BLOCK < n ? i1 + GPTQ_BLOCK : n, bw = i2 - i1;
        g_sweep<<<nblocks((size_t)rows, SWEEP_WARPS), SWEEP_WARPS * 32, 0, st>>>(
            j->fmt, b->wc, rows, n, i1, i2, b->u, j->group, j->mse, j->gs, j->search, j->lo,
            j->hi, j->four_over_six, j->perm ? b->perm : NULL, j->perm ? b->st16 : NULL, b->codes, (uint16_t *)b->sc,
            b->sc, b->E, b->loss, b->info);
        GCK(cudaGetLastError());
        if (i2 < n) {
            /* W[:, i2:] -= E[:, :bw] U[i1:i2, i2:] (row-major); read as
             * column-major: W^T[i2:, :] -= U[i1:i2, i2:]^T E^T, and the
             * row-major U block read as column-major is that transpose */
            cublasStatus_t cs = cublasDgemm(s->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)(n - i2),
                                            (int)rows, (int)bw, &minus, b->u + i2 + i1 * n,
                                            (int)n, b->E, GPTQ_BLOCK, &one, b->wc + i2, (int)n);
            if (cs != CUBLAS_STATUS_SUCCESS)
                return nq_fail(err, "cuda gptq: cublasDgemm: status %d", (int)cs);
        }
    }
    return 0;
}

/* Waits for the job on slot s and copies its results out. */
static int finish(const gslot *s, sbuf *b, nq_error *err)
{
    nq_cuda_gptq_job *j = b->job;
    cudaStream_t st = s->stream;
    int hinfo[3];
    b->job = NULL;
    GCK(cudaMemcpyAsync(hinfo, b->info, sizeof hinfo, cudaMemcpyDeviceToHost, st));
    GCK(cudaStreamSynchronize(st));
    j->proxy_loss = 0.0;
    j->status = hinfo[0] != 0 || hinfo[1] != 0 || hinfo[2] != 0;
    if (j->status) /* not positive definite: the caller dampens more */
        return 0;
    GCK(cudaMemcpyAsync(j->codes, b->codes, code_bytes(j), cudaMemcpyDeviceToHost, st));
    if (!j->perm)
        GCK(cudaMemcpyAsync(j->fmt == 0 ? (void *)j->scales16 : (void *)j->scales8, b->sc,
                            scale_bytes(j), cudaMemcpyDeviceToHost, st));
    double *hl = (double *)malloc((size_t)j->rows * 8);
    if (!hl)
        return nq_fail(err, "cuda gptq: out of host memory");
    cudaError_t e = cudaMemcpyAsync(hl, b->loss, (size_t)j->rows * 8, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(st);
    for (int64_t r = 0; e == cudaSuccess && r < j->rows; r++)
        j->proxy_loss += hl[r];
    free(hl);
    GCK(e);
    return 0;
}

extern "C" int nq_cuda_gptq_batch(nq_cuda *g, nq_cuda_gptq_job *jobs, size_t count,
                                  nq_error *err)
{
    if (count == 0)
        return 0;
    sizes z;
    memset(&z, 0, sizeof z);
    for (size_t k = 0; k < count; k++) {
        const nq_cuda_gptq_job *j = &jobs[k];
        int64_t n = j->cols;
        if (j->group <= 0 || GPTQ_BLOCK % j->group != 0 || n % j->group != 0 || n % 16 != 0 ||
            j->rows <= 0 || n > 65536)
            return nq_fail(err, "cuda gptq: a [%lld x %lld] weight with group %d is not "
                                "supported", (long long)j->rows, (long long)n, j->group);
        size_t nn = (size_t)(n * n), rn = (size_t)(j->rows * n);
        z.nn = nn > z.nn ? nn : z.nn;
        z.rn = rn > z.rn ? rn : z.rn;
        z.rows = (size_t)j->rows > z.rows ? (size_t)j->rows : z.rows;
        z.n = (size_t)n > z.n ? (size_t)n : z.n;
        z.code = code_bytes(j) > z.code ? code_bytes(j) : z.code;
        z.sc = scale_bytes(j) > z.sc ? scale_bytes(j) : z.sc;
        if (j->perm && scale_bytes(j) > z.st16)
            z.st16 = scale_bytes(j);
    }
    gslot *s = device_slots(err);
    if (!s)
        return -1;
    /* as many slots as jobs, at most GPTQ_SLOTS, within half the free
     * memory (the cuSOLVER workspace is small next to these) */
    size_t per = (z.nn * 2 + z.rn + z.rows * GPTQ_BLOCK + z.rows) * 8 + z.rn * 4 + z.n * 9 +
                 z.code + z.sc + z.st16 + 64;
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        cudaGetLastError();
        free_b = per;
    }
    size_t ns = count < GPTQ_SLOTS ? count : GPTQ_SLOTS;
    while (ns > 1 && ns * per > free_b / 2)
        ns--;
    sbuf b[GPTQ_SLOTS];
    memset(b, 0, sizeof b);
    int rc = 0;
    size_t nalloc = 0;
    for (; nalloc < ns && rc == 0; nalloc++)
        rc = buf_alloc(g, &b[nalloc], &z, err);
    for (size_t k = 0; k < count && rc == 0; k++) {
        int l1 = 0, l2 = 0, n = (int)jobs[k].cols;
        /* the sizes depend on n only */
        if (sol.potrf_size(s[0].solver, CUBLAS_FILL_MODE_UPPER, n, b[0].a, n, &l1) !=
                CUSOLVER_STATUS_SUCCESS ||
            sol.potri_size(s[0].solver, CUBLAS_FILL_MODE_UPPER, n, b[0].a, n, &l2) !=
                CUSOLVER_STATUS_SUCCESS)
            rc = nq_fail(err, "cusolver: the workspace size query failed for n = %d", n);
        l1 = l2 > l1 ? l2 : l1;
        z.lwork = l1 > z.lwork ? l1 : z.lwork;
    }
    if (z.lwork < 1)
        z.lwork = 1;
    for (size_t q = 0; q < nalloc && rc == 0; q++)
        rc = nqb_alloc(g, (void **)&b[q].work, (size_t)z.lwork * 8, err);
    /* pinned staging, grown as needed and kept with the slot */
    size_t pin_need = z.nn * 8 + z.rn * 4 + z.n;
    for (size_t q = 0; q < ns && rc == 0; q++)
        if (s[q].pin_bytes < pin_need) {
            if (s[q].pin)
                cudaFreeHost(s[q].pin);
            s[q].pin = NULL;
            s[q].pin_bytes = 0;
            if (cudaHostAlloc((void **)&s[q].pin, pin_need, cudaHostAllocDefault) != cudaSuccess) {
                cudaGetLastError();
                s[q].pin = NULL;
                rc = nq_fail(err, "cuda gptq: out of pinned host memory for %zu bytes", pin_need);
            } else {
                s[q].pin_bytes = pin_need;
            }
        }
    /* round robin: a slot's previous job is finished before the next one
     * is enqueued on it, so up to ns jobs are on the device at once */
    for (size_t k = 0; k < count && rc == 0; k++) {
        size_t q = k % ns;
        if (b[q].job)
            rc = finish(&s[q], &b[q], err);
        if (rc == 0)
            rc = issue(&jobs[k], &s[q], &b[q], z.lwork, err);
    }
    for (size_t k = 0; k < ns && rc == 0; k++) {
        size_t q = (count + k) % ns; /* the oldest first: the order they were enqueued */
        if (b[q].job)
            rc = finish(&s[q], &b[q], err);
    }
    for (size_t q = 0; q < ns; q++)
        cudaStreamSynchronize(s[q].stream);
    cudaGetLastError();
    for (size_t q = 0; q < nalloc; q++)
        buf_free(g, &b[q], &z);
    return rc;
}

extern "C" int nq_cuda_gptq(nq_cuda *g, nq_cuda_gptq_job *j, nq_error *err)
{
    if (nq_cuda_gptq_batch(g, j, 1, err) != 0)
        return -1;
    return j->status;
}
