#include "algo/gptq.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "cuda/cuda.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"

/* LAPACK (in libopenblas): Cholesky factorization and inverse from it. */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

#define GPTQ_BLOCK 128
#define GPTQ_ROW_CHUNK 16

/* U with H^-1 = U^T U, row-major [n, n] (zero below the diagonal), from the
 * damped H; NULL when H is not positive definite. */
static double *inverse_cholesky_upper(const double *h, int n, double damp_abs)
{
    double *a = malloc((size_t)n * n * sizeof *a);
    if (!a)
        return NULL;
    memcpy(a, h, (size_t)n * n * sizeof *a);
    for (int i = 0; i < n; i++)
        a[(size_t)i * n + i] += damp_abs;
    int info = 0;
    /* a is symmetric, so row- and column-major read the same matrix */
    dpotrf_("U", &n, a, &n, &info);
    if (info == 0)
        dpotri_("U", &n, a, &n, &info);
    if (info != 0) {
        free(a);
        return NULL;
    }
    /* the inverse is in the upper triangle (column-major): mirror it */
    for (int j = 0; j < n; j++)
        for (int i = 0; i < j; i++)
            a[(size_t)i * n + j] = a[(size_t)j * n + i] = a[(size_t)j * n + i];
    for (int j = 0; j < n; j++)
        for (int i = j + 1; i < n; i++)
            a[(size_t)j * n + i] = a[(size_t)i * n + j];
    dpotrf_("U", &n, a, &n, &info);
    if (info != 0) {
        free(a);
        return NULL;
    }
    /* column-major upper U(i, j), i <= j, sits at a[i + j n]: transpose into
     * row-major and clear the other triangle */
    double *u = calloc((size_t)n * n, sizeof *u);
    if (u)
        for (int j = 0; j < n; j++)
            for (int i = 0; i <= j; i++)
                u[(size_t)i * n + j] = a[(size_t)i + (size_t)j * n];
    free(a);
    return u;
}

typedef enum { FMT_INT4, FMT_NVFP4 } gptq_format;

typedef struct gptq_job {
    gptq_format fmt;
    const float *w;
    int64_t rows, cols;
    const double *u;
    const bool *dead;
    int group;            /* INT4 group, 16 for NVFP4 */
    bool mse;
    bool search;          /* NVFP4: scales by the GPTQ loss (nq_gptq_nvfp4_opts) */
    float lo, hi;
    bool four_over_six;
    float gs;             /* NVFP4 global scale */
    uint8_t *codes;       /* INT4: [rows, cols] 0..15; NVFP4: packed [rows, cols/2] */
    uint16_t *scales16;   /* INT4 [cols/group, rows] */
    /* INT4 act-order: column i of the job is column perm[i] of the weight,
     * quantized with the static scale of that column's group */
    const int64_t *perm;
    const uint16_t *static16;   /* [cols/group, rows] */
    uint8_t *scales8;     /* NVFP4 [rows, cols/16] */
    double *chunk_loss;   /* per chunk */
    bool oom;
} gptq_job;

/* The GPTQ loss of one 16-column NVFP4 block of a row (w: the row's
 * weights as updated so far, from column i) quantized with scale code s8,
 * running the block's own error feedback as the main loop does. */
static double block_loss(const gptq_job *j, const double *w, int64_t i, uint8_t s8)
{
    int64_t n = j->cols;
    double loc[16];
    memcpy(loc, w + i, sizeof loc);
    float sv = nq_e4m3_to_f32(s8) * j->gs;
    double loss = 0.0;
    for (int k = 0; k < 16; k++) {
        float x = (float)loc[k];
        double q = (double)nq_e2m1_value(nq_e2m1_encode(x / sv)) * sv;
        const double *ur = j->u + (i + k) * n + i;
        double e = (loc[k] - q) / ur[k];
        loss += e * e;
        for (int c = k + 1; c < 16; c++)
            loc[c] -= e * ur[c];
    }
    return loss;
}

/* The scale of the block starting at column i with the least GPTQ loss among
 * the candidates of nq_gptq_nvfp4_opts (ties keep the max scale). */
static uint8_t search_scale(const gptq_job *j, const double *w, int64_t i)
{
    float x[16];
    for (int k = 0; k < 16; k++)
        x[k] = (float)w[i + k];
    uint8_t max_code = nq_nvfp4_block_scale_max(x, j->gs);
    uint8_t cand[130];
    int nc = 0;
    cand[nc++] = max_code;
    if (j->four_over_six) {
        float amax = 0.0f;
        for (int k = 0; k < 16; k++)
            amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
        float s = amax / (4.0f * j->gs);
        if (s >= 0.001953125f && nq_f32_to_e4m3(s) != max_code)
            cand[nc++] = nq_f32_to_e4m3(s);
    } else {
        float ref = nq_e4m3_to_f32(max_code);
        for (int code = max_code - 1; code >= 1 && nq_e4m3_to_f32((uint8_t)code) >= j->lo * ref;
             code--)
            cand[nc++] = (uint8_t)code;
        for (int code = max_code + 1;
             code <= 0x7e && nq_e4m3_to_f32((uint8_t)code) <= j->hi * ref; code++)
            cand[nc++] = (uint8_t)code;
    }
    uint8_t best = max_code;
    double best_loss = 0.0;
    for (int c = 0; c < nc; c++) {
        double l = block_loss(j, w, i, cand[c]);
        if (c == 0 || l < best_loss) {
            best_loss = l;
            best = cand[c];
        }
    }
    return best;
}

static int gptq_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    gptq_job *j = ctx;
    int64_t n = j->cols, r = (int64_t)(end - begin);
    double *W = malloc((size_t)(r * n) * sizeof *W);
    double *E = malloc((size_t)(r * GPTQ_BLOCK) * sizeof *E);
    double *S = malloc((size_t)(r * GPTQ_BLOCK) * sizeof *S);
    float *gbuf = malloc((size_t)j->group * sizeof *gbuf);
    float *scale_val = malloc((size_t)r * sizeof *scale_val);
    uint16_t *s16 = malloc((size_t)r * sizeof *s16);
    uint8_t *s8 = malloc((size_t)r * sizeof *s8);
    if (!W || !E || !S || !gbuf || !scale_val || !s16 || !s8) {
        j->oom = true;
        free(W), free(E), free(S), free(gbuf), free(scale_val), free(s16), free(s8);
        return -1;
    }
    for (int64_t a = 0; a < r; a++)
        for (int64_t c = 0; c < n; c++)
            W[a * n + c] = j->dead[c] ? 0.0 : (double)j->w[((int64_t)begin + a) * n + c];
    double loss = 0.0;
    for (int64_t i1 = 0; i1 < n; i1 += GPTQ_BLOCK) {
        int64_t i2 = i1 + GPTQ_BLOCK < n ? i1 + GPTQ_BLOCK : n, bw = i2 - i1;
        /* Scales come from the block's weights as they stand at its start,
         * as the reference does (find_params(W[:, i:i+g]) reads W, while
         * the within-block updates go to its copy W1). */
        for (int64_t a = 0; a < r; a++)
            memcpy(S + a * GPTQ_BLOCK, W + a * n + i1, (size_t)bw * sizeof *S);
        for (int64_t i = i1; i < i2; i++) {
            if (j->static16) {
                for (int64_t a = 0; a < r; a++) {
                    s16[a] = j->static16[(j->perm[i] / j->group) * j->rows + (int64_t)begin + a];
                    scale_val[a] = nq_f16_to_f32(s16[a]);
                }
            } else if (i % j->group == 0) {
                /* the group's scale, from the weights as updated so far */
                for (int64_t a = 0; a < r; a++) {
                    for (int g = 0; g < j->group; g++)
                        gbuf[g] = (float)S[a * GPTQ_BLOCK + (i - i1) + g];
                    int64_t row = (int64_t)begin + a;
                    if (j->fmt == FMT_INT4) {
                        double e;
                        s16[a] = j->mse ? nq_int4_group_scale_mse(gbuf, j->group, &e)
                                        : nq_int4_group_scale_max(gbuf, j->group);
                        scale_val[a] = nq_f16_to_f32(s16[a]);
                        j->scales16[(i / j->group) * j->rows + row] = s16[a];
                    } else if (j->search) {
                        s8[a] = search_scale(j, W + a * n, i);
                        scale_val[a] = nq_e4m3_to_f32(s8[a]) * j->gs;
                        j->scales8[row * (n / 16) + i / 16] = s8[a];
                    } else {
                        double e;
                        s8[a] = j->mse ? nq_nvfp4_block_scale_mse(gbuf, j->gs, &e)
                                       : nq_nvfp4_block_scale_max(gbuf, j->gs);
                        scale_val[a] = nq_e4m3_to_f32(s8[a]) * j->gs;
                        j->scales8[row * (n / 16) + i / 16] = s8[a];
                    }
                }
            }
            double d = j->u[i * n + i];
            for (int64_t a = 0; a < r; a++) {
                int64_t row = (int64_t)begin + a;
                float x = (float)W[a * n + i];
                double q;
                if (j->fmt == FMT_INT4) {
                    uint8_t code;
                    nq_int4_encode_group(&x, 1, s16[a], &code);
                    j->codes[row * n + (j->perm ? j->perm[i] : i)] = code;
                    q = (double)scale_val[a] * ((int)code - 8);
                } else {
                    uint8_t code = nq_e2m1_encode(x / scale_val[a]);
                    uint8_t *p = &j->codes[row * (n / 2) + i / 2];
                    *p = (uint8_t)(i % 2 ? (*p & 0x0f) | (code << 4) : (*p & 0xf0) | code);
                    q = (double)nq_e2m1_value(code) * scale_val[a];
                }
                double e = (W[a * n + i] - q) / d;
                loss += (W[a * n + i] - q) * (W[a * n + i] - q) / (d * d) / 2.0;
                E[a * GPTQ_BLOCK + (i - i1)] = e;
                const double *ur = j->u + i * n;
                double *wr = W + a * n;
                for (int64_t c = i + 1; c < i2; c++)
                    wr[c] -= e * ur[c];
            }
        }
        if (i2 < n)
            /* W[:, i2:] -= E[:, :bw] U[i1:i2, i2:] */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)r, (int)(n - i2), (int)bw,
                        -1.0, E, GPTQ_BLOCK, j->u + i1 * n + i2, (int)n, 1.0, W + i2, (int)n);
    }
    j->chunk_loss[begin / GPTQ_ROW_CHUNK] = loss;
    free(W), free(E), free(S), free(gbuf), free(scale_val), free(s16), free(s8);
    return 0;
}

/* The inverse Cholesky and the sweep on GPU g (cuda/gptq.cu): 0, 1 when
 * the damped Hessian is not positive definite, -1 on error. */
static int run_gpu(struct nq_cuda *g, gptq_job *j, const double *h, const bool *dead,
                   double damp_abs, double *loss, nq_error *err)
{
    nq_cuda_gptq_job cj = {.fmt = j->fmt == FMT_INT4 ? 0 : 1, .w = j->w, .rows = j->rows,
                           .cols = j->cols, .hessian = h, .dead = dead, .damp_abs = damp_abs,
                           .group = j->group, .mse = j->mse, .gs = j->gs, .codes = j->codes,
                           .scales16 = j->scales16, .scales8 = j->scales8};
    int r = nq_cuda_gptq(g, &cj, err);
    *loss = cj.proxy_loss;
    return r;
}

static int run(struct nq_cuda *gpu, gptq_job *j, const double *hessian, double percdamp,
               int threads, nq_gptq_stats *st, nq_error *err)
{
    int64_t n = j->cols;
    memset(st, 0, sizeof *st);
    if (n > 65536)
        return nq_fail(err, "gptq: %lld input features is more than this implementation "
                            "handles",
                       (long long)n);
    double *h = malloc((size_t)(n * n) * sizeof *h);
    bool *dead = calloc((size_t)n, sizeof *dead);
    j->chunk_loss = calloc((size_t)(j->rows / GPTQ_ROW_CHUNK + 1), sizeof *j->chunk_loss);
    double *u = NULL;
    int rc = -1;
    if (!h || !dead || !j->chunk_loss) {
        nq_fail(err, "gptq: out of memory for a %lld x %lld Hessian", (long long)n, (long long)n);
        goto done;
    }
    memcpy(h, hessian, (size_t)(n * n) * sizeof *h);
    double mean_diag = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double v = h[i * n + i];
        if (!isfinite(v) || v < 0) {
            nq_fail(err, "gptq: Hessian diagonal %lld is %g", (long long)i, v);
            goto done;
        }
        if (v == 0.0) {
            dead[i] = true;
            st->dead_columns++;
            h[i * n + i] = 1.0;
        }
        mean_diag += h[i * n + i];
    }
    mean_diag /= (double)n;
    st->damp = percdamp;
    if (gpu) {
        int r = 1;
        for (int attempt = 0; attempt < 5 && r == 1; attempt++) {
            r = run_gpu(gpu, j, h, dead, st->damp * mean_diag, &st->proxy_loss, err);
            if (r == 1)
                st->damp *= 10.0;
        }
        if (r == 1)
            nq_fail(err, "gptq: the Hessian is not positive definite even with dampening %g",
                    st->damp / 10.0);
        rc = r == 0 ? 0 : -1;
        goto done;
    }
    for (int attempt = 0; attempt < 5 && !u; attempt++) {
        u = inverse_cholesky_upper(h, (int)n, st->damp * mean_diag);
        if (!u)
            st->damp *= 10.0;
    }
    if (!u) {
        nq_fail(err, "gptq: the Hessian is not positive definite even with dampening %g",
                st->damp / 10.0);
        goto done;
    }
    j->u = u;
    j->dead = dead;
    if (nq_parallel_for((size_t)j->rows, GPTQ_ROW_CHUNK, threads, gptq_rows, j) != 0 || j->oom) {
        nq_fail(err, "gptq: out of memory");
        goto done;
    }
    for (int64_t c = 0; c <= j->rows / GPTQ_ROW_CHUNK; c++)
        st->proxy_loss += j->chunk_loss[c];
    rc = 0;
done:
    free(h);
    free(dead);
    free(u);
    free(j->chunk_loss);
    return rc;
}

int nq_gptq_int4(const float *w, int64_t rows, int64_t cols, const double *hessian, int group,
                 bool mse, double percdamp, int threads, int32_t *qweight, int32_t *qzeros,
                 uint16_t *scales, int32_t *g_idx, nq_gptq_stats *st, nq_error *err)
{
    return nq_gptq_int4_on(NULL, w, rows, cols, hessian, group, mse, percdamp, threads, qweight,
                           qzeros, scales, g_idx, st, err);
}

int nq_gptq_nvfp4(const float *w, int64_t rows, int64_t cols, const double *hessian, bool mse,
                  double percdamp, int threads, float shared_amax, uint8_t *packed,
                  uint8_t *block_scales, float *global_scale, nq_gptq_stats *st, nq_error *err)
{
    return nq_gptq_nvfp4_on(NULL, w, rows, cols, hessian, mse, percdamp, threads, shared_amax,
                            packed, block_scales, global_scale, st, err);
}

int nq_gptq_int4_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                    const double *hessian, int group, bool mse, double percdamp, int threads,
                    int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                    nq_gptq_stats *st, nq_error *err)
{
    if (group <= 0 || GPTQ_BLOCK % group != 0 || cols % group != 0 || cols % 8 != 0 ||
        rows % 8 != 0)
        return nq_fail(err, "gptq int4: shape [%lld, %lld] does not fit group %d",
                       (long long)rows, (long long)cols, group);
    float amax = 0.0f;
    for (int64_t i = 0; i < rows * cols; i++) {
        float a = fabsf(w[i]);
        if (!(a <= amax)) {
            if (!isfinite(a))
                return nq_fail(err, "gptq int4: element %lld is %s", (long long)i,
                               a != a ? "NaN" : "infinite");
            amax = a;
        }
    }
    if (nq_int4_check_amax(amax, err) != 0)
        return -1;
    uint8_t *codes = malloc((size_t)(rows * cols));
    if (!codes)
        return nq_fail(err, "gptq int4: out of memory");
    gptq_job j = {.fmt = FMT_INT4, .w = w, .rows = rows, .cols = cols, .group = group,
                  .mse = mse, .codes = codes, .scales16 = scales};
    int rc = run(gpu, &j, hessian, percdamp, threads, st, err);
    /* error feedback moves weights: a group may end up past what amax/7
     * in F16 can hold even when the input did not */
    for (int64_t k = 0; rc == 0 && k < (cols / group) * rows; k++)
        if ((scales[k] & 0x7fffu) >= 0x7c00u)
            rc = nq_fail(err, "gptq int4: the scale of group %lld of row %lld overflows F16 after "
                              "error feedback; keep the module in BF16 (--exclude MODULE)",
                         (long long)(k / rows), (long long)(k % rows));
    if (rc == 0)
        nq_int4_pack_gptq(codes, rows, cols, group, qweight, qzeros, g_idx);
    free(codes);
    return rc;
}

typedef struct diag_item {
    double d;
    int64_t i;
} diag_item;

/* descending H_ii (dead inputs count as 1, as run() sets them), ties by index */
static int cmp_desc_diag(const void *a, const void *b)
{
    const diag_item *x = a, *y = b;
    if (x->d != y->d)
        return x->d > y->d ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int nq_gptq_int4_actorder(const float *w, int64_t rows, int64_t cols, const double *hessian,
                          int group, bool mse, double percdamp, int threads, int32_t *qweight,
                          int32_t *qzeros, uint16_t *scales, int32_t *g_idx, nq_gptq_stats *st,
                          nq_error *err)
{
    if (group <= 0 || GPTQ_BLOCK % group != 0 || cols % group != 0 || cols % 8 != 0 ||
        rows % 8 != 0)
        return nq_fail(err, "gptq int4: shape [%lld, %lld] does not fit group %d",
                       (long long)rows, (long long)cols, group);
    float amax = 0.0f;
    for (int64_t i = 0; i < rows * cols; i++) {
        float a = fabsf(w[i]);
        if (!(a <= amax)) {
            if (!isfinite(a))
                return nq_fail(err, "gptq int4: element %lld is %s", (long long)i,
                               a != a ? "NaN" : "infinite");
            amax = a;
        }
    }
    if (nq_int4_check_amax(amax, err) != 0)
        return -1;
    int64_t n = cols;
    uint8_t *codes = malloc((size_t)(rows * cols));
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    diag_item *diag = malloc((size_t)n * sizeof *diag);
    double *hp = malloc((size_t)(n * n) * sizeof *hp);
    float *wp = malloc((size_t)(rows * n) * sizeof *wp);
    float *gbuf = malloc((size_t)group * sizeof *gbuf);
    int rc = -1;
    if (!codes || !perm || !diag || !hp || !wp || !gbuf) {
        nq_fail(err, "gptq int4: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        diag[i].d = hessian[i * n + i] == 0.0 ? 1.0 : hessian[i * n + i];
        diag[i].i = i;
    }
    /* static groups (AutoGPTQ static_groups): every scale from the weights
     * before any update, dead inputs zeroed as run() zeroes them */
    for (int64_t row = 0; row < rows; row++)
        for (int64_t g = 0; g < n / group; g++) {
            for (int k = 0; k < group; k++) {
                int64_t c = g * group + k;
                gbuf[k] = hessian[c * n + c] == 0.0 ? 0.0f : w[row * n + c];
            }
            double e;
            scales[g * rows + row] = mse ? nq_int4_group_scale_mse(gbuf, group, &e)
                                         : nq_int4_group_scale_max(gbuf, group);
        }
    qsort(diag, (size_t)n, sizeof *diag, cmp_desc_diag);
    for (int64_t i = 0; i < n; i++)
        perm[i] = diag[i].i;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++)
            hp[a * n + b] = hessian[perm[a] * n + perm[b]];
    for (int64_t row = 0; row < rows; row++)
        for (int64_t i = 0; i < n; i++)
            wp[row * n + i] = w[row * n + perm[i]];
    gptq_job j = {.fmt = FMT_INT4, .w = wp, .rows = rows, .cols = cols, .group = group,
                  .mse = mse, .codes = codes, .perm = perm, .static16 = scales};
    uint16_t *unused = malloc((size_t)(n / group * rows) * sizeof *unused);
    j.scales16 = unused;
    /* act-order runs on the CPU (cuda/gptq.cu has no permuted static groups) */
    rc = unused ? run(NULL, &j, hp, percdamp, threads, st, err)
                : nq_fail(err, "gptq int4: out of memory");
    free(unused);
    if (rc == 0)
        nq_int4_pack_gptq(codes, rows, cols, group, qweight, qzeros, g_idx);
done:
    free(codes), free(perm), free(diag), free(hp), free(wp), free(gbuf);
    return rc;
}

static int gptq_nvfp4_impl(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                           const double *hessian, const nq_gptq_nvfp4_opts *o, double percdamp,
                           int threads, uint8_t *packed, uint8_t *block_scales,
                           float *global_scale, nq_gptq_stats *st, nq_error *err);

int nq_gptq_nvfp4_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                     const double *hessian, bool mse, double percdamp, int threads,
                     float shared_amax, uint8_t *packed, uint8_t *block_scales,
                     float *global_scale, nq_gptq_stats *st, nq_error *err)
{
    nq_gptq_nvfp4_opts o = {.mse = mse, .scale_max = 448.0f, .shared_amax = shared_amax};
    return gptq_nvfp4_impl(gpu, w, rows, cols, hessian, &o, percdamp, threads, packed,
                           block_scales, global_scale, st, err);
}

/* --optimize's options (the scale searches) run on the CPU only */
int nq_gptq_nvfp4_ex(const float *w, int64_t rows, int64_t cols, const double *hessian,
                     const nq_gptq_nvfp4_opts *o, double percdamp, int threads, uint8_t *packed,
                     uint8_t *block_scales, float *global_scale, nq_gptq_stats *st,
                     nq_error *err)
{
    return gptq_nvfp4_impl(NULL, w, rows, cols, hessian, o, percdamp, threads, packed,
                           block_scales, global_scale, st, err);
}

static int gptq_nvfp4_impl(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                           const double *hessian, const nq_gptq_nvfp4_opts *o, double percdamp,
                           int threads, uint8_t *packed, uint8_t *block_scales,
                           float *global_scale, nq_gptq_stats *st, nq_error *err)
{
    if (cols % 16 != 0)
        return nq_fail(err, "gptq nvfp4: in_features %lld is not a multiple of 16",
                       (long long)cols);
    float amax = 0.0f;
    for (int64_t i = 0; i < rows * cols; i++) {
        float a = fabsf(w[i]);
        if (!(a <= amax)) {
            if (!isfinite(a))
                return nq_fail(err, "gptq nvfp4: non-finite weight at element %lld",
                               (long long)i);
            amax = a;
        }
    }
    float amax_eff = o->shared_amax > amax ? o->shared_amax : amax;
    *global_scale = o->scale_max == 448.0f || !(amax_eff > 0)
                        ? nq_nvfp4_global_scale(amax_eff)
                        : amax_eff / (6.0f * o->scale_max);
    memset(packed, 0, (size_t)(rows * cols / 2));
    gptq_job j = {.fmt = FMT_NVFP4, .w = w, .rows = rows, .cols = cols, .group = 16,
                  .mse = o->mse, .search = o->search || o->four_over_six, .lo = o->lo, .hi = o->hi,
                  .four_over_six = o->four_over_six, .gs = *global_scale, .codes = packed,
                  .scales8 = block_scales};
    return run(gpu, &j, hessian, percdamp, threads, st, err);
}

