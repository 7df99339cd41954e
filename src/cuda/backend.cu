/* The CUDA backend: device, weight upload, the blocks and the head (cuda.h).
 * The structure of every mixer follows its CPU twin in model/ line by line;
 * the comments there say where each detail comes from in transformers. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/cuda.h"
#include "cuda/internal.cuh"
#include "cuda/kernels.cuh"

/* ---- errors ------------------------------------------------------------ */

static int cuda_fail(nq_error *err, const char *what, cudaError_t e)
{
    cudaGetLastError(); /* clear a non-sticky error */
    return nq_fail(err, "cuda: %s: %s", what, cudaGetErrorString(e));
}

#define CK(call, err)                                                      \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess)                                             \
            return cuda_fail(err, #call, e_);                              \
    } while (0)

#define CK_LAUNCH(err) CK(cudaGetLastError(), err)

#define CKB(call, err)                                                     \
    do {                                                                   \
        cublasStatus_t s_ = (call);                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                   \
            return nq_fail(err, "cublas: %s: status %d", #call, (int)s_);  \
    } while (0)

static unsigned blocks_for(size_t count, unsigned threads)
{
    return (unsigned)((count + threads - 1) / threads);
}

/* ---- phase timing (NEMOQ_CUDA_TIMING) ------------------------------------ */

enum {
    P_HOST, P_UPLOAD, P_XCOPY, P_NORM_ADD, P_M_IN, P_M_CONV, P_M_SCAN, P_M_GNORM, P_M_OUT, P_A_QKV,
    P_A_KV_HOST, P_A_ATTN, P_A_O, P_E_GATE, P_E_ROUTE, P_E_LOAD, P_E_EXPERTS, P_E_SHARED,
    P_E_COMBINE, P_MLP, P_FINAL, P_COUNT
};
static const char *const phase_names[P_COUNT] = {
    "host (outside the backend)", "weight upload", "x host<->device", "norm + residual add",
    "mamba in_proj", "mamba conv+dt", "mamba scan", "mamba gated norm", "mamba out_proj",
    "attention q/k/v", "attention K/V to host", "attention kernel", "attention o_proj",
    "moe gate GEMM", "moe routing", "moe expert upload", "moe routed experts", "moe shared expert",
    "moe gather+combine", "mlp", "norm_f + lm_head + logits copy"};

/* ---- the device object ------------------------------------------------- */

/* Device allocations that live until the weights they hold change. */
typedef struct alloc_list {
    void **ptr;
    size_t *bytes;
    int n, cap;
} alloc_list;

typedef struct dev_mlp {
    nqg_weight up, down;
    float *up_b, *down_b;
    int inter;
} dev_mlp;

typedef struct dev_block {
    float *norm;
    nqg_weight in_proj, out_proj, q, k, v, o, gate;
    float *in_proj_b, *conv_w, *conv_b, *dt_bias, *A, *D, *norm_w, *out_proj_b;
    dev_mlp mlp, shared;
    float *score_bias;
    dev_mlp *experts; /* host array [n_experts] of device pointers */
    int n_experts;
} dev_block;

/* A block's weights on the device, kept after the block ran while the
 * cache's budget allows, so that repeated passes over a model whose host
 * weights stay (same weights_id) do not upload them again. */
typedef struct cached_block {
    uint64_t id, used;
    dev_block blk;
    alloc_list allocs;
} cached_block;

#define NQ_CUDA_CACHE_SLOTS 128

/* Grow-only scratch buffers, one per role. */
enum {
    S_X, S_XN, S_Y, S_PROJ, S_XBC, S_DT, S_SCAN, S_STATE, S_Q, S_K, S_V, S_ATT, S_H, S_XIN,
    S_OUT, S_SHARED, S_REWRITE, S_LOGITS, S_IDX, S_ROWS, S_W, S_RESIDENT, S_EXPERTS, S_EWEIGHTS,
    S_KEYS, S_VALS, S_SKEYS, S_SVALS, S_START, S_SORT_TEMP, S_SPLIT, S_SAVED, S_COUNT
};

struct nq_cuda {
    int device;
    char desc[320];
    cublasHandle_t blas;
    size_t cur_bytes, peak_bytes;
    size_t shared_max;          /* opt-in shared memory per block */
    cached_block cache[NQ_CUDA_CACHE_SLOTS];
    int ncache;
    cached_block *cur;          /* the block being run */
    uint64_t tick;
    size_t cache_budget;        /* bytes of weights kept between blocks */
    bool tf32;
    nq_cuda_gemm_mode gemm_mode;
    uint16_t *pack;             /* host staging of bf16 weights */
    size_t pack_count;
    /* NEMOQ_CUDA_TIMING=1: wall time per phase (the device synchronized at
     * every mark), printed to stderr by nq_cuda_close. */
    bool timing;
    int phase;
    double phase_t, phase_s[32];
    bool have_head;
    uint64_t head_id;
    float *norm_f;
    nqg_weight lm_head;
    alloc_list head_allocs;
    void *scratch[S_COUNT];
    size_t scratch_bytes[S_COUNT];
    struct nqs_stats *stats;    /* calibration statistics (stats.cu), or NULL */
    int chunk_rows;             /* nq_cuda_set_chunk_rows, 0: NQ_CUDA_CHUNK_ROWS */
    void *keep[NQB_K_COUNT];    /* nqb_keep */
    size_t keep_bytes[NQB_K_COUNT];
};

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Charges the time since the last mark to the phase then running and
 * starts phase p. */
static void mark(nq_cuda *g, int p)
{
    if (!g->timing)
        return;
    cudaDeviceSynchronize();
    double t = wall();
    g->phase_s[g->phase] += t - g->phase_t;
    g->phase_t = t;
    g->phase = p;
}

static int dalloc(nq_cuda *g, void **p, size_t bytes, nq_error *err)
{
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return nq_fail(err, "cuda: out of GPU memory for %zu bytes (%zu in use): %s", bytes,
                       g->cur_bytes, cudaGetErrorString(e));
    }
    g->cur_bytes += bytes;
    if (g->cur_bytes > g->peak_bytes)
        g->peak_bytes = g->cur_bytes;
    return 0;
}

static void dfree(nq_cuda *g, void *p, size_t bytes)
{
    if (p) {
        cudaFree(p);
        g->cur_bytes -= bytes;
    }
}

static void list_free(nq_cuda *g, alloc_list *l)
{
    for (int i = 0; i < l->n; i++)
        dfree(g, l->ptr[i], l->bytes[i]);
    free(l->ptr);
    free(l->bytes);
    memset(l, 0, sizeof *l);
}

/* A new device array of `bytes` recorded in l. */
static int dalloc_listed(nq_cuda *g, alloc_list *l, size_t bytes, void **out, nq_error *err)
{
    *out = NULL;
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 32;
        void **p = (void **)realloc(l->ptr, (size_t)cap * sizeof *p);
        if (p)
            l->ptr = p;
        size_t *b = p ? (size_t *)realloc(l->bytes, (size_t)cap * sizeof *b) : NULL;
        if (b)
            l->bytes = b;
        if (!p || !b)
            return nq_fail(err, "cuda: out of host memory");
        l->cap = cap;
    }
    void *d;
    if (dalloc(g, &d, bytes, err) != 0)
        return -1;
    l->ptr[l->n] = d;
    l->bytes[l->n] = bytes;
    l->n++;
    *out = d;
    return 0;
}

/* Uploads count floats of host h into a new device array recorded in l;
 * h == NULL gives *out = NULL. */
static int upload(nq_cuda *g, alloc_list *l, const float *h, size_t count, float **out, nq_error *err)
{
    *out = NULL;
    if (!h)
        return 0;
    void *d;
    if (dalloc_listed(g, l, count * sizeof(float), &d, err) != 0)
        return -1;
    CK(cudaMemcpy(d, h, count * sizeof(float), cudaMemcpyHostToDevice), err);
    *out = (float *)d;
    return 0;
}

/* Uploads the Linear weight h [out, in] (NULL: w->p = NULL).  In a bf16
 * mode a weight whose values are all exactly bf16 goes up as bf16 (half
 * the bytes), else as f32: a weight is never rounded. */
static int upload_weight(nq_cuda *g, alloc_list *l, const float *h, size_t out, size_t in,
                         nqg_weight *w, nq_error *err)
{
    w->p = NULL;
    w->kind = NQG_F32;
    size_t count = out * in;
    if (!h)
        return 0;
    if (g->gemm_mode != NQ_GEMM_F32) {
        if (g->pack_count < count) {
            uint16_t *p = (uint16_t *)realloc(g->pack, count * sizeof *p);
            if (!p)
                return nq_fail(err, "cuda: out of host memory");
            g->pack = p;
            g->pack_count = count;
        }
        if (nqg_pack_bf16(h, count, g->pack)) {
            int reps = g->gemm_mode == NQ_GEMM_BF16X3K ? 3 : 1;
            /* one float's bytes = two bf16s: the list records the size */
            float *d;
            size_t fl = (count * reps + 1) / 2;
            if (dalloc_listed(g, l, fl * sizeof(float), (void **)&d, err) != 0)
                return -1;
            for (int r = 0; r < reps; r++)
                CK(cudaMemcpy2D((uint16_t *)d + r * in, reps * in * sizeof(uint16_t), g->pack,
                                in * sizeof(uint16_t), in * sizeof(uint16_t), out,
                                cudaMemcpyHostToDevice),
                   err);
            w->p = d;
            w->kind = reps == 3 ? NQG_BF16X3 : NQG_BF16;
            return 0;
        }
    }
    float *d;
    if (upload(g, l, h, count, &d, err) != 0)
        return -1;
    w->p = d;
    return 0;
}

static void *scratch(nq_cuda *g, int slot, size_t bytes, nq_error *err)
{
    if (g->scratch_bytes[slot] < bytes) {
        dfree(g, g->scratch[slot], g->scratch_bytes[slot]);
        g->scratch[slot] = NULL;
        g->scratch_bytes[slot] = 0;
        if (dalloc(g, &g->scratch[slot], bytes, err) != 0)
            return NULL;
        g->scratch_bytes[slot] = bytes;
    }
    return g->scratch[slot];
}

#define SCRATCH_F(g, slot, count, err) ((float *)scratch(g, slot, (size_t)(count) * sizeof(float), err))

extern "C" bool nq_cuda_built(void) { return true; }

extern "C" int nq_cuda_device_count(nq_error *err)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        nq_fail(err, "%s", cudaGetErrorString(e));
        return 0;
    }
    if (count == 0)
        nq_fail(err, "the CUDA driver reports no device");
    return count;
}

extern "C" nq_cuda *nq_cuda_open(int device, nq_error *err)
{
    cudaDeviceProp prop;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&prop, device);
    if (e == cudaSuccess)
        e = cudaFree(0); /* creates the context now, so failures show here */
    if (e != cudaSuccess) {
        cuda_fail(err, "opening the device", e);
        return NULL;
    }
    nq_cuda *g = (nq_cuda *)calloc(1, sizeof *g);
    if (!g) {
        nq_fail(err, "cuda: out of host memory");
        return NULL;
    }
    g->device = device;
    g->shared_max = prop.sharedMemPerBlockOptin;
    snprintf(g->desc, sizeof g->desc, "cuda:%d (%s, %.1f GiB)", device, prop.name,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS) {
        nq_fail(err, "cuda:%d: cuBLAS could not be initialized", device);
        free(g);
        return NULL;
    }
    /* Plain FP32 products (no TF32) and no atomics: reference-grade and
     * reproducible. */
    cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH);
    cublasSetAtomicsMode(g->blas, CUBLAS_ATOMICS_NOT_ALLOWED);
    /* the tiled attention and scan kernels stage their tiles in dynamic
     * shared memory beyond the default 48 KiB */
    g->shared_max = prop.sharedMemPerBlockOptin;
    e = nqk_attention_setup();
    if (e == cudaSuccess)
        e = nqk_scan_setup();
    if (e != cudaSuccess) {
        cuda_fail(err, "kernel shared memory", e);
        nq_cuda_close(g);
        return NULL;
    }
    /* Weights kept on the device between blocks: min(4 GiB, 1/16 of the
     * GPU) unless NEMOQ_CUDA_WEIGHT_CACHE_MIB says otherwise (0: one block
     * at a time, as streaming a large model does anyway). */
    g->cache_budget = prop.totalGlobalMem / 16 < (4ull << 30) ? prop.totalGlobalMem / 16
                                                               : (4ull << 30);
    const char *tm = getenv("NEMOQ_CUDA_TIMING");
    g->timing = tm && *tm && strcmp(tm, "0") != 0;
    g->phase = P_HOST;
    g->phase_t = wall();
    g->gemm_mode = NQ_GEMM_DEFAULT;
    const char *gm = getenv("NEMOQ_CUDA_GEMM");
    if (gm && *gm && nqg_parse_mode(gm, &g->gemm_mode) != 0) {
        nq_fail(err, "NEMOQ_CUDA_GEMM=%s: expected f32, bf16x3, bf16x2 or bf16x3k", gm);
        nq_cuda_close(g);
        return NULL;
    }
    const char *cm = getenv("NEMOQ_CUDA_WEIGHT_CACHE_MIB");
    if (cm && *cm)
        g->cache_budget = (size_t)strtoull(cm, NULL, 10) << 20;
    return g;
}

static size_t list_bytes(const alloc_list *l)
{
    size_t t = 0;
    for (int i = 0; i < l->n; i++)
        t += l->bytes[i];
    return t;
}

static void evict(nq_cuda *g, int i)
{
    cached_block *c = &g->cache[i];
    list_free(g, &c->allocs);
    free(c->blk.experts);
    if (g->cur == c)
        g->cur = NULL;
    if (i != g->ncache - 1) {
        if (g->cur == &g->cache[g->ncache - 1])
            g->cur = c;
        *c = g->cache[g->ncache - 1];
    }
    memset(&g->cache[g->ncache - 1], 0, sizeof *c);
    g->ncache--;
}

static void evict_lru(nq_cuda *g)
{
    int lru = 0;
    for (int i = 1; i < g->ncache; i++)
        if (g->cache[i].used < g->cache[lru].used)
            lru = i;
    evict(g, lru);
}

static size_t cache_bytes(const nq_cuda *g)
{
    size_t t = 0;
    for (int i = 0; i < g->ncache; i++)
        t += list_bytes(&g->cache[i].allocs);
    return t;
}

extern "C" void nq_cuda_close(nq_cuda *g)
{
    if (!g)
        return;
    nq_cuda_timing_report(g, "at close");
    nqs_free(g);
    while (g->ncache > 0)
        evict(g, g->ncache - 1);
    list_free(g, &g->head_allocs);
    for (int i = 0; i < S_COUNT; i++)
        dfree(g, g->scratch[i], g->scratch_bytes[i]);
    nq_cuda_trim(g);
    cublasDestroy(g->blas);
    free(g->pack);
    free(g);
}

extern "C" void nq_cuda_timing_report(nq_cuda *g, const char *label)
{
    if (!g->timing)
        return;
    mark(g, P_HOST);
    double total = 0;
    for (int i = 0; i < P_COUNT; i++)
        total += g->phase_s[i];
    if (total > 0) {
        fprintf(stderr, "cuda timing (%s), %s: %.4f s in all\n", g->desc, label, total);
        for (int i = 0; i < P_COUNT; i++)
            if (g->phase_s[i] > 0)
                fprintf(stderr, "  %-32s %9.4f s  %5.1f%%\n", phase_names[i], g->phase_s[i],
                        100.0 * g->phase_s[i] / total);
    }
    memset(g->phase_s, 0, sizeof g->phase_s);
}

extern "C" const char *nq_cuda_describe(const nq_cuda *g) { return g->desc; }
cublasHandle_t nqb_blas(nq_cuda *g) { return g->blas; }
int nqb_alloc(nq_cuda *g, void **p, size_t bytes, nq_error *err) { return dalloc(g, p, bytes, err); }
void nqb_free(nq_cuda *g, void *p, size_t bytes) { dfree(g, p, bytes); }
struct nqs_stats **nqb_stats(nq_cuda *g) { return &g->stats; }
extern "C" size_t nq_cuda_peak_bytes(const nq_cuda *g) { return g->peak_bytes; }

void *nqb_keep(nq_cuda *g, int slot, size_t bytes, nq_error *err)
{
    if (g->keep_bytes[slot] < bytes) {
        dfree(g, g->keep[slot], g->keep_bytes[slot]);
        g->keep[slot] = NULL;
        g->keep_bytes[slot] = 0;
        if (dalloc(g, &g->keep[slot], bytes, err) != 0)
            return NULL;
        g->keep_bytes[slot] = bytes;
    }
    return g->keep[slot];
}

extern "C" void nq_cuda_trim(nq_cuda *g)
{
    for (int i = 0; i < NQB_K_COUNT; i++) {
        dfree(g, g->keep[i], g->keep_bytes[i]);
        g->keep[i] = NULL;
        g->keep_bytes[i] = 0;
    }
}

extern "C" void *nq_cuda_host_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return p;
}

extern "C" void nq_cuda_host_free(void *p)
{
    if (p)
        cudaFreeHost(p);
}

/* ---- weights ------------------------------------------------------------ */

static int upload_mlp(nq_cuda *g, const nq_mlp_weights *w, int hidden, dev_mlp *d, nq_error *err)
{
    alloc_list *l = &g->cur->allocs;
    d->inter = w->inter;
    return upload_weight(g, l, w->up, w->inter, hidden, &d->up, err) ||
           upload(g, l, w->up_b, w->inter, &d->up_b, err) ||
           upload_weight(g, l, w->down, hidden, w->inter, &d->down, err) ||
           upload(g, l, w->down_b, hidden, &d->down_b, err)
               ? -1
               : 0;
}

static int fill_block(nq_cuda *g, const nq_model_config *c, const nq_cuda_block *b, nq_error *err);

static int ensure_block(nq_cuda *g, const nq_model_config *c, const nq_cuda_block *b, nq_error *err)
{
    for (int i = 0; i < g->ncache; i++)
        if (g->cache[i].id == b->weights_id) {
            g->cur = &g->cache[i];
            g->cur->used = ++g->tick;
            return 0;
        }
    int H = c->hidden_size;
    size_t need = 0; /* floats of the block without routed experts */
    switch (b->kind) {
    case NQ_BLOCK_MAMBA:
        need = (size_t)nq_mamba_in_proj_dim(c) * H + (size_t)H * nq_mamba_intermediate(c);
        break;
    case NQ_BLOCK_ATTENTION:
        need = (size_t)2 * H * (c->num_attention_heads + c->num_key_value_heads) * c->head_dim;
        break;
    case NQ_BLOCK_MLP:
        need = (size_t)2 * H * c->intermediate_size;
        break;
    case NQ_BLOCK_MOE:
        need = (size_t)H * (c->n_routed_experts + 2 * c->moe_shared_expert_intermediate_size);
        break;
    }
    g->cur = NULL;
    while (g->ncache > 0 && (g->ncache == NQ_CUDA_CACHE_SLOTS ||
                             cache_bytes(g) + need * sizeof(float) > g->cache_budget))
        evict_lru(g);
    g->cur = &g->cache[g->ncache++];
    memset(g->cur, 0, sizeof *g->cur);
    g->cur->used = ++g->tick;
    if (fill_block(g, c, b, err) != 0) {
        evict(g, (int)(g->cur - g->cache));
        return -1;
    }
    g->cur->id = b->weights_id; /* complete: usable from now on */
    return 0;
}

/* Uploads block b into the fresh cache entry g->cur. */
static int fill_block(nq_cuda *g, const nq_model_config *c, const nq_cuda_block *b, nq_error *err)
{
    int H = c->hidden_size;
    alloc_list *l = &g->cur->allocs;
    dev_block *d = &g->cur->blk;
    if (upload(g, l, b->norm, H, &d->norm, err) != 0)
        return -1;
    switch (b->kind) {
    case NQ_BLOCK_MAMBA: {
        const nq_mamba2_weights *w = b->mamba;
        size_t P = nq_mamba_in_proj_dim(c), inter = nq_mamba_intermediate(c);
        size_t conv_dim = nq_mamba_conv_dim(c), nh = c->mamba_num_heads;
        if (upload_weight(g, l, w->in_proj, P, H, &d->in_proj, err) ||
            upload(g, l, w->in_proj_b, P, &d->in_proj_b, err) ||
            upload(g, l, w->conv_w, conv_dim * c->conv_kernel, &d->conv_w, err) ||
            upload(g, l, w->conv_b, conv_dim, &d->conv_b, err) ||
            upload(g, l, w->dt_bias, nh, &d->dt_bias, err) || upload(g, l, w->A, nh, &d->A, err) ||
            upload(g, l, w->D, nh, &d->D, err) || upload(g, l, w->norm_w, inter, &d->norm_w, err) ||
            upload_weight(g, l, w->out_proj, H, inter, &d->out_proj, err) ||
            upload(g, l, w->out_proj_b, H, &d->out_proj_b, err))
            return -1;
        break;
    }
    case NQ_BLOCK_ATTENTION: {
        const nq_attention_weights *w = b->attn;
        size_t qd = (size_t)c->num_attention_heads * c->head_dim;
        size_t kvd = (size_t)c->num_key_value_heads * c->head_dim;
        if (upload_weight(g, l, w->q, qd, H, &d->q, err) ||
            upload_weight(g, l, w->k, kvd, H, &d->k, err) ||
            upload_weight(g, l, w->v, kvd, H, &d->v, err) ||
            upload_weight(g, l, w->o, H, qd, &d->o, err))
            return -1;
        break;
    }
    case NQ_BLOCK_MLP:
        if (upload_mlp(g, b->mlp, H, &d->mlp, err) != 0)
            return -1;
        break;
    case NQ_BLOCK_MOE: {
        const nq_moe_weights *w = b->moe;
        if (c->n_routed_experts > NQ_CUDA_MAX_EXPERTS || c->num_experts_per_tok > NQ_CUDA_MAX_TOPK)
            return nq_fail(err, "layer: %d experts, top-%d: the CUDA router handles at most %d, "
                           "top-%d", c->n_routed_experts, c->num_experts_per_tok,
                           NQ_CUDA_MAX_EXPERTS, NQ_CUDA_MAX_TOPK);
        if (upload_weight(g, l, w->gate, (size_t)c->n_routed_experts, H, &d->gate, err) != 0 ||
            upload(g, l, w->score_bias, (size_t)c->n_routed_experts, &d->score_bias, err) != 0)
            return -1;
        if (w->shared.up && upload_mlp(g, &w->shared, H, &d->shared, err) != 0)
            return -1;
        d->experts = (dev_mlp *)calloc((size_t)c->n_routed_experts, sizeof *d->experts);
        if (!d->experts)
            return nq_fail(err, "cuda: out of host memory");
        d->n_experts = c->n_routed_experts;
        break;
    }
    }
    return 0;
}

/* ---- Linear with the host hooks ------------------------------------------ */

static int download(void *h, const void *d, size_t bytes, nq_error *err)
{
    CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost), err);
    return 0;
}

static int gemm(nq_cuda *g, const nqg_weight *w, const float *dx, int n, int in, int out,
                float *dy, nq_error *err)
{
    size_t sb = nqg_scratch_bytes(w, g->gemm_mode, n, in);
    void *sc = sb ? scratch(g, S_SPLIT, sb, err) : NULL;
    if (sb && !sc)
        return -1;
    return nqg_gemm(g->blas, w, g->gemm_mode, dx, n, in, out, dy, sc, err);
}

/* dy[n, out] = dx[n, in] W^T (+ b), firing the hooks on a host copy of dx
 * exactly as nq_linear does (linear_input, then rewrite_input). */
static int linear(nq_cuda *g, const nq_exec *ex, const char *suffix, int expert,
                  const int32_t *token_index, const float *dx, int n, int in,
                  const nqg_weight *dW, const float *db, int out, float *dy)
{
    nq_error *err = ex->err;
    if (n <= 0)
        return 0;
    const nq_forward_hooks *hk = ex->hooks;
    char name[256];
    if (g->stats || (hk && (hk->linear_input || hk->rewrite_input)))
        snprintf(name, sizeof name, "%s%s", ex->prefix ? ex->prefix : "", suffix);
    /* calibration statistics on the GPU (stats.cu), before any rewrite as
     * the host hook sees the input */
    if (g->stats && nqs_linear(g, name, ex->layer, expert, dx, n, in, err) != 0)
        return -1;
    if (hk && (hk->linear_input || hk->rewrite_input)) {
        size_t count = (size_t)n * in;
        float *hx = (float *)malloc(count * sizeof *hx);
        float *hr = hk->rewrite_input ? (float *)malloc(count * sizeof *hr) : NULL;
        int rc = -1;
        if (!hx || (hk->rewrite_input && !hr)) {
            nq_fail(err, "%s: out of host memory for %d x %d inputs", name, n, in);
            goto hooks_done;
        }
        if (download(hx, dx, count * sizeof *hx, err) != 0)
            goto hooks_done;
        {
            nq_linear_input ev = {};
            ev.weight_name = name;
            ev.layer = ex->layer;
            ev.expert = expert;
            ev.x = hx;
            ev.rows = n;
            ev.in_features = in;
            ev.out_features = out;
            ev.token_index = token_index;
            if (hk->linear_input && hk->linear_input(hk->ctx, &ev, err) != 0)
                goto hooks_done;
            int r = hk->rewrite_input ? hk->rewrite_input(hk->ctx, &ev, hr, err) : 0;
            if (r < 0)
                goto hooks_done;
            if (r > 0) {
                float *dr = SCRATCH_F(g, S_REWRITE, count, err);
                if (!dr)
                    goto hooks_done;
                cudaError_t e = cudaMemcpy(dr, hr, count * sizeof *hr, cudaMemcpyHostToDevice);
                if (e != cudaSuccess) {
                    cuda_fail(err, "uploading a rewritten input", e);
                    goto hooks_done;
                }
                dx = dr;
            }
        }
        rc = 0;
    hooks_done:
        free(hx);
        free(hr);
        if (rc != 0)
            return -1;
    }
    if (gemm(g, dW, dx, n, in, out, dy, err) != 0)
        return -1;
    if (db) {
        size_t count = (size_t)n * out;
        nqk_add_bias<<<blocks_for(count, 256), 256>>>(dy, db, n, out);
        CK_LAUNCH(err);
    }
    return 0;
}

/* y = down(act(up(x))); dh: scratch [n, inter]. */
static int mlp(nq_cuda *g, const nq_exec *ex, const char *names, int expert,
               const int32_t *token_index, const dev_mlp *w, nq_act act, const float *dx, int n,
               int hidden, float *dh, float *dy)
{
    char up[128], down[128];
    snprintf(up, sizeof up, "%sup_proj.weight", names);
    snprintf(down, sizeof down, "%sdown_proj.weight", names);
    if (linear(g, ex, up, expert, token_index, dx, n, hidden, &w->up, w->up_b, w->inter, dh) != 0)
        return -1;
    size_t count = (size_t)n * w->inter;
    nqk_act<<<blocks_for(count, 256), 256>>>(dh, count, (int)act);
    CK_LAUNCH(ex->err);
    return linear(g, ex, down, expert, token_index, dh, n, w->inter, &w->down, w->down_b, hidden,
                  dy);
}

/* ---- mixers ---------------------------------------------------------------- */

/* The mixers run on `samples` fresh sequences of len tokens, n = samples *
 * len rows; the states are filled only for one sequence. */
static int mamba(nq_cuda *g, const nq_exec *ex, const nq_model_config *c, const nq_cuda_block *b,
                 const float *dxn, int samples, int len, float *dy)
{
    int n = samples * len;
    bool keep_state = samples == 1;
    nq_error *err = ex->err;
    const dev_block *d = &g->cur->blk;
    int H = c->hidden_size, nh = c->mamba_num_heads, K = c->conv_kernel;
    int inter = nq_mamba_intermediate(c), conv_dim = nq_mamba_conv_dim(c);
    int P = nq_mamba_in_proj_dim(c), ns = c->ssm_state_size, hd = c->mamba_head_dim;
    if (ns > NQ_CUDA_MAX_STATE)
        return nq_fail(err, "%smamba: ssm_state_size %d exceeds the CUDA scan's %d", ex->prefix,
                       ns, NQ_CUDA_MAX_STATE);
    float *proj = SCRATCH_F(g, S_PROJ, (size_t)n * P, err);
    float *xbc = SCRATCH_F(g, S_XBC, (size_t)n * conv_dim, err);
    float *dt = SCRATCH_F(g, S_DT, (size_t)n * nh, err);
    float *scan = SCRATCH_F(g, S_SCAN, (size_t)n * inter, err);
    float *state = keep_state ? SCRATCH_F(g, S_STATE, (size_t)nh * hd * ns, err) : NULL;
    if (!proj || !xbc || !dt || !scan || (keep_state && !state))
        return -1;
    mark(g, P_M_IN);
    if (linear(g, ex, "in_proj.weight", -1, NULL, dxn, n, H, &d->in_proj, d->in_proj_b, P, proj))
        return -1;
    mark(g, P_M_CONV);
    size_t cnt = (size_t)n * conv_dim;
    nqk_conv_silu<<<blocks_for(cnt, 256), 256>>>(proj, P, inter, conv_dim, d->conv_w, d->conv_b, K,
                                                 n, len, xbc);
    CK_LAUNCH(err);
    if (keep_state && b->conv_state) {
        /* The last K-1 conv inputs (zeros before the sequence's start). */
        for (int j = 0; j < K - 1; j++) {
            int src = n + j - (K - 1);
            float *row = b->conv_state + (size_t)j * conv_dim;
            if (src < 0)
                memset(row, 0, (size_t)conv_dim * sizeof *row);
            else if (download(row, proj + (size_t)src * P + inter, (size_t)conv_dim * sizeof *row,
                              err) != 0)
                return -1;
        }
    }
    cnt = (size_t)n * nh;
    nqk_dt<<<blocks_for(cnt, 256), 256>>>(proj, P, inter + conv_dim, d->dt_bias, nh, n, b->dt_min,
                                          dt);
    CK_LAUNCH(err);
    mark(g, P_M_SCAN);
    nqk_scan(xbc, conv_dim, inter, c->n_groups, ns, hd, nh, dt, d->A, d->D, samples, len, scan,
             state);
    CK_LAUNCH(err);
    if (keep_state && b->ssm_state &&
        download(b->ssm_state, state, (size_t)nh * hd * ns * sizeof(float), err) != 0)
        return -1;
    mark(g, P_M_GNORM);
    nqk_gated_norm<<<dim3((unsigned)n, (unsigned)c->n_groups), 256>>>(
        scan, proj, P, d->norm_w, inter, inter / c->n_groups, c->layer_norm_epsilon);
    CK_LAUNCH(err);
    mark(g, P_M_OUT);
    return linear(g, ex, "out_proj.weight", -1, NULL, scan, n, inter, &d->out_proj, d->out_proj_b,
                  H, dy);
}

static int attention(nq_cuda *g, const nq_exec *ex, const nq_model_config *c,
                     const nq_cuda_block *b, const float *dxn, int samples, int len, float *dy)
{
    int n = samples * len;
    float *k_cache = samples == 1 ? b->k_cache : NULL, *v_cache = samples == 1 ? b->v_cache : NULL;
    nq_error *err = ex->err;
    const dev_block *d = &g->cur->blk;
    int H = c->hidden_size, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    int hd = c->head_dim, qdim = nh * hd, kvdim = nkv * hd;
    if (hd > NQ_ATT_MAX_HD)
        return nq_fail(err, "%sattention: head_dim %d exceeds the CUDA kernel's %d", ex->prefix,
                       hd, NQ_ATT_MAX_HD);
    float *q = SCRATCH_F(g, S_Q, (size_t)n * qdim, err);
    float *k = SCRATCH_F(g, S_K, (size_t)n * kvdim, err);
    float *v = SCRATCH_F(g, S_V, (size_t)n * kvdim, err);
    float *att = SCRATCH_F(g, S_ATT, (size_t)n * qdim, err);
    if (!q || !k || !v || !att)
        return -1;
    mark(g, P_A_QKV);
    if (linear(g, ex, "q_proj.weight", -1, NULL, dxn, n, H, &d->q, NULL, qdim, q) != 0 ||
        linear(g, ex, "k_proj.weight", -1, NULL, dxn, n, H, &d->k, NULL, kvdim, k) != 0 ||
        linear(g, ex, "v_proj.weight", -1, NULL, dxn, n, H, &d->v, NULL, kvdim, v) != 0)
        return -1;
    mark(g, P_A_KV_HOST);
    if (g->stats && nqs_kv(g, k, v, (size_t)n * kvdim, err) != 0)
        return -1;
    bool hook = ex->hooks && ex->hooks->kv_output;
    if (hook || k_cache) {
        size_t bytes = (size_t)n * kvdim * sizeof(float);
        float *hk = k_cache ? k_cache : (float *)malloc(bytes);
        float *hv = v_cache ? v_cache : (float *)malloc(bytes);
        int rc = -1;
        if (!hk || !hv)
            nq_fail(err, "%sattention: out of host memory", ex->prefix);
        else if (download(hk, k, bytes, err) == 0 && download(hv, v, bytes, err) == 0) {
            rc = 0;
            if (hook) {
                nq_kv_output kv = {ex->layer, hk, hv, n, kvdim};
                rc = ex->hooks->kv_output(ex->hooks->ctx, &kv, err);
                /* the hook may rewrite them (KV-cache emulation) */
                if (rc == 0 && (cudaMemcpy(k, hk, bytes, cudaMemcpyHostToDevice) != cudaSuccess ||
                                cudaMemcpy(v, hv, bytes, cudaMemcpyHostToDevice) != cudaSuccess))
                    rc = cuda_fail(err, "uploading keys/values", cudaGetLastError());
            }
        }
        if (hk != k_cache)
            free(hk);
        if (hv != v_cache)
            free(hv);
        if (rc != 0)
            return -1;
    }
    float scale = (float)pow((double)hd, -0.5);
    mark(g, P_A_ATTN);
    nqk_attention(q, k, v, samples, len, nh, nkv, hd, scale, att);
    CK_LAUNCH(err);
    mark(g, P_A_O);
    return linear(g, ex, "o_proj.weight", -1, NULL, att, n, qdim, &d->o, NULL, H, dy);
}

/* Routing on the device (router.cu): selection, the stable sort of the
 * rows by expert, their tokens and the combine's rows/weights; only the
 * per-expert row counts come to the host (for the GEMM loop), plus what
 * the hooks need. */
static int moe(nq_cuda *g, const nq_exec *ex, const nq_model_config *c, const nq_cuda_block *b,
               const float *dxn, int n, float *dy)
{
    nq_error *err = ex->err;
    dev_block *d = &g->cur->blk;
    int H = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    int total = n * K;
    const nq_forward_hooks *hk = ex->hooks;
    bool want_tok = hk && (hk->linear_input || hk->rewrite_input);
    bool want_route = hk && hk->routing;
    float *dlogits = SCRATCH_F(g, S_LOGITS, (size_t)n * E, err);
    int32_t *dexp = (int32_t *)scratch(g, S_EXPERTS, (size_t)total * sizeof(int32_t), err);
    float *dw = SCRATCH_F(g, S_EWEIGHTS, (size_t)total, err);
    int32_t *keys = (int32_t *)scratch(g, S_KEYS, (size_t)total * sizeof(int32_t), err);
    int32_t *vals = (int32_t *)scratch(g, S_VALS, (size_t)total * sizeof(int32_t), err);
    int32_t *skeys = (int32_t *)scratch(g, S_SKEYS, (size_t)total * sizeof(int32_t), err);
    int32_t *svals = (int32_t *)scratch(g, S_SVALS, (size_t)total * sizeof(int32_t), err);
    int32_t *dstart = (int32_t *)scratch(g, S_START, (size_t)(E + 1) * sizeof(int32_t), err);
    int32_t *dtok = (int32_t *)scratch(g, S_IDX, (size_t)total * sizeof(int32_t), err);
    int32_t *drows = (int32_t *)scratch(g, S_ROWS, (size_t)total * sizeof(int32_t), err);
    float *drw = SCRATCH_F(g, S_W, (size_t)total, err);
    if (!dlogits || !dexp || !dw || !keys || !vals || !skeys || !svals || !dstart || !dtok ||
        !drows || !drw)
        return -1;
    mark(g, P_E_GATE);
    if (linear(g, ex, "gate.weight", -1, NULL, dxn, n, H, &d->gate, NULL, E, dlogits) != 0)
        return -1;
    mark(g, P_E_ROUTE);
    nqk_moe_select<<<blocks_for((size_t)n, 128), 128>>>(
        dlogits, d->score_bias, n, E, c->n_group > 0 ? c->n_group : 1, c->topk_group, K,
        c->norm_topk_prob ? 1 : 0, c->routed_scaling_factor, dexp, dw, keys, vals, drw);
    CK_LAUNCH(err);
    size_t temp_bytes = 0;
    CK(nqk_moe_sort(NULL, &temp_bytes, keys, skeys, vals, svals, total, E), err);
    void *temp = scratch(g, S_SORT_TEMP, temp_bytes, err);
    if (!temp)
        return -1;
    CK(nqk_moe_sort(temp, &temp_bytes, keys, skeys, vals, svals, total, E), err);
    nqk_moe_place<<<blocks_for((size_t)total, 256), 256>>>(svals, total, K, dtok, drows);
    CK_LAUNCH(err);
    nqk_moe_starts<<<blocks_for((size_t)E + 1, 128), 128>>>(skeys, total, E, dstart);
    CK_LAUNCH(err);

    int rc = -1;
    int32_t *start = (int32_t *)malloc((size_t)(E + 1) * sizeof *start);
    int32_t *tok = want_tok ? (int32_t *)malloc((size_t)total * sizeof *tok) : NULL;
    float *logits = NULL, *weights = NULL;
    int32_t *experts = NULL;
    float *xin, *hbuf, *out, *sh = NULL;
    if (!start || (want_tok && !tok)) {
        nq_fail(err, "%smoe: out of host memory for %d tokens", ex->prefix, n);
        goto done;
    }
    if (download(start, dstart, (size_t)(E + 1) * sizeof *start, err) != 0 ||
        (want_tok && download(tok, dtok, (size_t)total * sizeof *tok, err) != 0))
        goto done;
    if (want_route) {
        logits = (float *)malloc((size_t)n * E * sizeof *logits);
        experts = (int32_t *)malloc((size_t)total * sizeof *experts);
        weights = (float *)malloc((size_t)total * sizeof *weights);
        if (!logits || !experts || !weights) {
            nq_fail(err, "%smoe: out of host memory for %d tokens", ex->prefix, n);
            goto done;
        }
        if (download(logits, dlogits, (size_t)n * E * sizeof *logits, err) != 0 ||
            download(experts, dexp, (size_t)total * sizeof *experts, err) != 0 ||
            download(weights, dw, (size_t)total * sizeof *weights, err) != 0)
            goto done;
        nq_routing r = {ex->layer, n, K, E, logits, experts, weights};
        if (hk->routing(hk->ctx, &r, err) != 0) {
            nq_fail(err, "%sgate: routing hook failed", ex->prefix);
            goto done;
        }
    }
    if (start[E] != total) {
        nq_fail(err, "%smoe: the router placed %d of %d rows", ex->prefix, start[E], total);
        goto done;
    }
    mark(g, P_E_LOAD);
    for (int e = 0; e < E; e++) {
        if (start[e + 1] == start[e] || d->experts[e].up.p)
            continue;
        if (!b->moe->experts[e].up && b->load_expert(b->load_ctx, e, err) != 0)
            goto done;
        if (upload_mlp(g, &b->moe->experts[e], H, &d->experts[e], err) != 0) {
            memset(&d->experts[e], 0, sizeof d->experts[e]); /* (its allocations stay listed) */
            goto done;
        }
    }
    xin = SCRATCH_F(g, S_XIN, (size_t)total * H, err);
    hbuf = SCRATCH_F(g, S_H, (size_t)(total > n ? total : n) *
                                 (c->moe_intermediate_size > c->moe_shared_expert_intermediate_size
                                      ? c->moe_intermediate_size
                                      : c->moe_shared_expert_intermediate_size),
                     err);
    out = SCRATCH_F(g, S_OUT, (size_t)total * H, err);
    if (!xin || !hbuf || !out)
        goto done;
    mark(g, P_E_COMBINE);
    nqk_gather_rows<<<blocks_for((size_t)total * H, 256), 256>>>(dxn, dtok, total, H, xin);
    if (cudaGetLastError() != cudaSuccess) {
        nq_fail(err, "%smoe: gather kernel failed", ex->prefix);
        goto done;
    }
    mark(g, P_E_EXPERTS);
    for (int e = 0; e < E; e++) {
        int cnt = start[e + 1] - start[e];
        if (cnt == 0)
            continue;
        char names[32];
        snprintf(names, sizeof names, "experts.%d.", e);
        size_t off = (size_t)start[e] * H;
        if (mlp(g, ex, names, e, tok ? tok + start[e] : NULL, &d->experts[e], b->act, xin + off,
                cnt, H, hbuf, out + off) != 0)
            goto done;
    }
    mark(g, P_E_SHARED);
    if (d->shared.up.p) {
        if (!(sh = SCRATCH_F(g, S_SHARED, (size_t)n * H, err)) ||
            mlp(g, ex, "shared_experts.", -1, NULL, &d->shared, b->act, dxn, n, H, hbuf, sh) != 0)
            goto done;
    }
    mark(g, P_E_COMBINE);
    nqk_moe_combine<<<blocks_for((size_t)n * H, 256), 256>>>(out, drows, drw, K, sh, n, H, dy);
    if (cudaGetLastError() != cudaSuccess) {
        nq_fail(err, "%smoe: combine kernel failed", ex->prefix);
        goto done;
    }
    rc = 0;
done:
    free(start);
    free(tok);
    free(logits);
    free(experts);
    free(weights);
    return rc;
}

/* ---- entry points ------------------------------------------------------------ */

/* One chunk of whole sequences. */
/* dx: the chunk's rows of the device-resident residual stream. */
static int run_chunk(nq_cuda *g, const nq_exec *ex, const nq_model_config *c,
                     const nq_cuda_block *b, float *dx, int samples, int len)
{
    nq_error *err = ex->err;
    int H = c->hidden_size, n = samples * len;
    size_t plane = (size_t)n * H;
    float *dxn = SCRATCH_F(g, S_XN, plane, err);
    float *dy = SCRATCH_F(g, S_Y, plane, err);
    if (!dxn || !dy)
        return -1;
    mark(g, P_NORM_ADD);
    nqk_rmsnorm<<<(unsigned)n, 256>>>(dx, g->cur->blk.norm, H, c->layer_norm_epsilon, dxn);
    CK_LAUNCH(err);
    int rc = -1;
    switch (b->kind) {
    case NQ_BLOCK_MAMBA:
        rc = mamba(g, ex, c, b, dxn, samples, len, dy);
        break;
    case NQ_BLOCK_ATTENTION:
        rc = attention(g, ex, c, b, dxn, samples, len, dy);
        break;
    case NQ_BLOCK_MLP: {
        float *h = SCRATCH_F(g, S_H, (size_t)n * c->intermediate_size, err);
        mark(g, P_MLP);
        rc = h ? mlp(g, ex, "", -1, NULL, &g->cur->blk.mlp, b->act, dxn, n, H, h, dy) : -1;
        break;
    }
    case NQ_BLOCK_MOE:
        rc = moe(g, ex, c, b, dxn, n, dy);
        break;
    }
    if (rc != 0)
        return -1;
    mark(g, P_NORM_ADD);
    nqk_add<<<blocks_for(plane, 256), 256>>>(dx, dy, plane);
    CK_LAUNCH(err);
    return 0;
}

extern "C" int nq_cuda_run_block(nq_cuda *g, const nq_exec *ex, const nq_model_config *c,
                                 const nq_cuda_block *b, float *x, int samples, int len,
                                 unsigned flags)
{
    nq_error *err = ex->err;
    if (samples <= 0 || len <= 0)
        return nq_fail(err, "layer %d: %d x %d tokens", ex->layer, samples, len);
    CK(cudaSetDevice(g->device), err);
    mark(g, P_UPLOAD);
    if (ensure_block(g, c, b, err) != 0)
        return -1;
    mark(g, P_XCOPY);
    /* Whole sequences per chunk, about NQ_CUDA_CHUNK_ROWS rows: big enough
     * for full-speed GEMMs, small enough that the scratch of a Nano-size
     * layer stays a few GiB. */
    int chunk = g->chunk_rows > 0 ? g->chunk_rows : NQ_CUDA_CHUNK_ROWS;
    int per = chunk / len > 0 ? chunk / len : 1;
    size_t plane = (size_t)len * c->hidden_size, all = (size_t)samples * plane;
    if ((flags & (NQ_CUDA_X_IN | NQ_CUDA_X_OUT)) == (NQ_CUDA_X_IN | NQ_CUDA_X_OUT)) {
        /* host-resident stream: one chunk at a time through the device */
        int rows = per < samples ? per : samples;
        float *dc = SCRATCH_F(g, S_X, (size_t)rows * plane, err);
        if (!dc)
            return -1;
        for (int s = 0; s < samples; s += per) {
            int cnt = samples - s < per ? samples - s : per;
            size_t bytes = (size_t)cnt * plane * sizeof *x;
            mark(g, P_XCOPY);
            CK(cudaMemcpy(dc, x + (size_t)s * plane, bytes, cudaMemcpyHostToDevice), err);
            mark(g, P_NORM_ADD);
            if (run_chunk(g, ex, c, b, dc, cnt, len) != 0)
                return -1;
            mark(g, P_XCOPY);
            CK(cudaMemcpy(x + (size_t)s * plane, dc, bytes, cudaMemcpyDeviceToHost), err);
        }
        mark(g, P_HOST);
        return 0;
    }
    float *dx = (flags & NQ_CUDA_X_IN) ? SCRATCH_F(g, S_RESIDENT, all, err)
                                       : (float *)g->scratch[S_RESIDENT];
    if (!dx || g->scratch_bytes[S_RESIDENT] < all * sizeof(float))
        return nq_fail(err, "layer %d: no resident activations of %d x %d tokens on the GPU",
                       ex->layer, samples, len);
    if (flags & NQ_CUDA_X_IN)
        CK(cudaMemcpy(dx, x, all * sizeof *x, cudaMemcpyHostToDevice), err);
    mark(g, P_NORM_ADD);
    for (int s = 0; s < samples; s += per) {
        int cnt = samples - s < per ? samples - s : per;
        if (run_chunk(g, ex, c, b, dx + (size_t)s * plane, cnt, len) != 0)
            return -1;
    }
    mark(g, P_XCOPY);
    if (flags & NQ_CUDA_X_OUT)
        CK(cudaMemcpy(x, dx, all * sizeof *x, cudaMemcpyDeviceToHost), err);
    mark(g, P_HOST);
    return 0;
}

/* ---- the resident stream ------------------------------------------------ */

extern "C" int nq_cuda_resident_embed(nq_cuda *g, const float *table, int64_t vocab, int hidden,
                                      const int32_t *ids, size_t n, nq_error *err)
{
    if (n == 0 || n > (size_t)INT32_MAX)
        return nq_fail(err, "embedding: %zu tokens", n);
    CK(cudaSetDevice(g->device), err);
    mark(g, P_XCOPY);
    size_t tb = (size_t)vocab * hidden * sizeof(float);
    float *dx = SCRATCH_F(g, S_RESIDENT, n * hidden, err);
    int32_t *di = (int32_t *)scratch(g, S_IDX, n * sizeof(int32_t), err);
    if (!dx || !di)
        return -1;
    void *dt;
    if (dalloc(g, &dt, tb, err) != 0)
        return -1;
    cudaError_t e = cudaMemcpy(dt, table, tb, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemcpy(di, ids, n * sizeof(int32_t), cudaMemcpyHostToDevice);
    if (e == cudaSuccess) {
        nqk_gather_rows<<<blocks_for(n * hidden, 256), 256>>>((const float *)dt, di, (int)n,
                                                              hidden, dx);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess)
        e = cudaDeviceSynchronize();
    dfree(g, dt, tb);
    mark(g, P_HOST);
    if (e != cudaSuccess)
        return cuda_fail(err, "embedding on the device", e);
    return 0;
}

extern "C" int nq_cuda_resident_save(nq_cuda *g, nq_error *err)
{
    size_t bytes = g->scratch_bytes[S_RESIDENT];
    if (!g->scratch[S_RESIDENT])
        return nq_fail(err, "cuda: no resident activations to save");
    CK(cudaSetDevice(g->device), err);
    void *d = scratch(g, S_SAVED, bytes, err);
    if (!d)
        return -1;
    CK(cudaMemcpy(d, g->scratch[S_RESIDENT], bytes, cudaMemcpyDeviceToDevice), err);
    return 0;
}

extern "C" int nq_cuda_resident_restore(nq_cuda *g, nq_error *err)
{
    size_t bytes = g->scratch_bytes[S_RESIDENT];
    if (!g->scratch[S_RESIDENT] || g->scratch_bytes[S_SAVED] < bytes)
        return nq_fail(err, "cuda: no saved activations to restore");
    CK(cudaSetDevice(g->device), err);
    CK(cudaMemcpy(g->scratch[S_RESIDENT], g->scratch[S_SAVED], bytes, cudaMemcpyDeviceToDevice),
       err);
    return 0;
}

extern "C" int nq_cuda_resident_download(nq_cuda *g, float *x, size_t count, nq_error *err)
{
    if (g->scratch_bytes[S_RESIDENT] < count * sizeof *x)
        return nq_fail(err, "cuda: %zu resident values asked, %zu held", count,
                       g->scratch_bytes[S_RESIDENT] / sizeof *x);
    CK(cudaSetDevice(g->device), err);
    return download(x, g->scratch[S_RESIDENT], count * sizeof *x, err);
}

extern "C" void nq_cuda_resident_free(nq_cuda *g)
{
    int slots[2] = {S_RESIDENT, S_SAVED};
    for (int i = 0; i < 2; i++) {
        dfree(g, g->scratch[slots[i]], g->scratch_bytes[slots[i]]);
        g->scratch[slots[i]] = NULL;
        g->scratch_bytes[slots[i]] = 0;
    }
}

extern "C" int nq_cuda_mem_info(nq_cuda *g, size_t *free_bytes, size_t *total_bytes,
                                nq_error *err)
{
    CK(cudaSetDevice(g->device), err);
    CK(cudaMemGetInfo(free_bytes, total_bytes), err);
    return 0;
}

extern "C" int nq_cuda_run_final(nq_cuda *g, const nq_exec *ex, const nq_model_config *c,
                                 uint64_t head_id, const float *norm_f, const float *lm_head,
                                 const float *x, int n, float *normed_out, float *logits)
{
    nq_error *err = ex->err;
    int H = c->hidden_size, V = c->vocab_size;
    size_t plane = (size_t)n * H;
    if (n <= 0)
        return 0;
    CK(cudaSetDevice(g->device), err);
    mark(g, P_FINAL);
    if (!g->have_head || g->head_id != head_id) {
        list_free(g, &g->head_allocs);
        g->have_head = false;
        if (upload(g, &g->head_allocs, norm_f, H, &g->norm_f, err) != 0 ||
            upload_weight(g, &g->head_allocs, lm_head, (size_t)V, H, &g->lm_head, err) != 0)
            return -1;
        g->have_head = true;
        g->head_id = head_id;
    }
    float *dx = SCRATCH_F(g, S_X, plane, err);
    float *dxn = SCRATCH_F(g, S_XN, plane, err);
    if (!dx || !dxn)
        return -1;
    CK(cudaMemcpy(dx, x, plane * sizeof *x, cudaMemcpyHostToDevice), err);
    nqk_rmsnorm<<<(unsigned)n, 256>>>(dx, g->norm_f, H, c->layer_norm_epsilon, dxn);
    CK_LAUNCH(err);
    if (normed_out && download(normed_out, dxn, plane * sizeof(float), err) != 0)
        return -1;
    if (!logits)
        return 0;
    if (!g->lm_head.p)
        return nq_fail(err, "lm_head.weight: not given to the CUDA backend");
    float *dl = SCRATCH_F(g, S_LOGITS, (size_t)n * V, err);
    if (!dl || linear(g, ex, "lm_head.weight", -1, NULL, dxn, n, H, &g->lm_head, NULL, V, dl) != 0)
        return -1;
    int rc = download(logits, dl, (size_t)n * V * sizeof(float), err);
    mark(g, P_HOST);
    return rc;
}

extern "C" int nq_cuda_moe_select(nq_cuda *g, const nq_model_config *c, const float *logits,
                                  const float *score_bias, int n, int32_t *experts,
                                  float *weights, nq_error *err)
{
    int E = c->n_routed_experts, K = c->num_experts_per_tok;
    if (n <= 0)
        return 0;
    if (E > NQ_CUDA_MAX_EXPERTS || K > NQ_CUDA_MAX_TOPK)
        return nq_fail(err, "cuda router: %d experts, top-%d: at most %d, top-%d", E, K,
                       NQ_CUDA_MAX_EXPERTS, NQ_CUDA_MAX_TOPK);
    CK(cudaSetDevice(g->device), err);
    size_t total = (size_t)n * K;
    float *dl = SCRATCH_F(g, S_LOGITS, (size_t)n * E, err);
    float *db = score_bias ? SCRATCH_F(g, S_SHARED, (size_t)E, err) : NULL;
    int32_t *dexp = (int32_t *)scratch(g, S_EXPERTS, total * sizeof(int32_t), err);
    float *dw = SCRATCH_F(g, S_EWEIGHTS, total, err);
    int32_t *keys = (int32_t *)scratch(g, S_KEYS, total * sizeof(int32_t), err);
    int32_t *vals = (int32_t *)scratch(g, S_VALS, total * sizeof(int32_t), err);
    float *drw = SCRATCH_F(g, S_W, total, err);
    if (!dl || (score_bias && !db) || !dexp || !dw || !keys || !vals || !drw)
        return -1;
    CK(cudaMemcpy(dl, logits, (size_t)n * E * sizeof *logits, cudaMemcpyHostToDevice), err);
    if (db)
        CK(cudaMemcpy(db, score_bias, (size_t)E * sizeof *db, cudaMemcpyHostToDevice), err);
    nqk_moe_select<<<blocks_for((size_t)n, 128), 128>>>(
        dl, db, n, E, c->n_group > 0 ? c->n_group : 1, c->topk_group, K, c->norm_topk_prob ? 1 : 0,
        c->routed_scaling_factor, dexp, dw, keys, vals, drw);
    CK_LAUNCH(err);
    if (download(experts, dexp, total * sizeof *experts, err) != 0 ||
        download(weights, dw, total * sizeof *weights, err) != 0)
        return -1;
    return 0;
}

extern "C" void nq_cuda_set_chunk_rows(nq_cuda *g, int rows) { g->chunk_rows = rows > 0 ? rows : 0; }

extern "C" void nq_cuda_set_tf32(nq_cuda *g, bool on)
{
    g->tf32 = on;
    cublasSetMathMode(g->blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
}

/* Drops every weight on the device (they go up again in the form the GEMM
 * mode wants). */
static void drop_weights(nq_cuda *g)
{
    while (g->ncache > 0)
        evict(g, g->ncache - 1);
    list_free(g, &g->head_allocs);
    g->have_head = false;
}

extern "C" void nq_cuda_set_gemm_mode(nq_cuda *g, nq_cuda_gemm_mode m)
{
    if (m != g->gemm_mode)
        drop_weights(g);
    g->gemm_mode = m;
}

extern "C" nq_cuda_gemm_mode nq_cuda_gemm_mode_get(const nq_cuda *g) { return g->gemm_mode; }

extern "C" int nq_cuda_gemm(nq_cuda *g, const float *x, int n, int in, const float *w, int out,
                            float *y, bool *bf16, nq_error *err)
{
    alloc_list l = {};
    nqg_weight dw;
    void *dx = NULL, *dy = NULL;
    size_t xb = (size_t)n * in * sizeof(float), yb = (size_t)n * out * sizeof(float);
    int rc = -1;
    if (cudaSetDevice(g->device) != cudaSuccess || n <= 0 || in <= 0 || out <= 0) {
        nq_fail(err, "cuda gemm: bad device or shape %d x %d x %d", n, in, out);
        return -1;
    }
    if (upload_weight(g, &l, w, (size_t)out, (size_t)in, &dw, err) == 0 &&
        dalloc_listed(g, &l, xb, &dx, err) == 0 && dalloc_listed(g, &l, yb, &dy, err) == 0) {
        cudaError_t e = cudaMemcpy(dx, x, xb, cudaMemcpyHostToDevice);
        if (e != cudaSuccess)
            cuda_fail(err, "cuda gemm: upload", e);
        else if (gemm(g, &dw, (const float *)dx, n, in, out, (float *)dy, err) == 0 &&
                 download(y, dy, yb, err) == 0)
            rc = 0;
    }
    *bf16 = dw.kind != NQG_F32;
    list_free(g, &l);
    return rc;
}
