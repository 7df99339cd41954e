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
 * damped H (dead inputs' H_ii taken as 1); NULL when H is not positive
 * definite. */
static double *inverse_cholesky_upper(const double *h, const bool *dead, int n, double damp_abs)
{
    double *a = malloc((size_t)n * n * sizeof *a);
    if (!a)
        return NULL;
    memcpy(a, h, (size_t)n * n * sizeof *a);
    for (int i = 0; i < n; i++)
        a[(size_t)i * n + i] = (dead[i] ? 1.0 : a[(size_t)i * n + i]) + damp_abs;
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
    const double *hessian;
    nq_gptq_stats *st;
    const char *name;     /* for errors, or NULL */
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

static void name_error(nq_error *err, const char *name)
{
    if (name)
        nq_error_name(err, "tensor", name);
}

/* Dead inputs (H_ii = 0) and the dampening base mean(diag H) with dead
 * diagonals taken as 1, from the diagonal alone. */
static int hessian_diag(const double *h, int64_t n, bool *dead, double *mean, nq_gptq_stats *st,
                        nq_error *err)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double v = h[i * n + i];
        if (!isfinite(v) || v < 0)
            return nq_fail(err, "gptq: Hessian diagonal %lld is %g", (long long)i, v);
        dead[i] = v == 0.0;
        st->dead_columns += dead[i];
        sum += dead[i] ? 1.0 : v;
    }
    *mean = sum / (double)n;
    return 0;
}

static int run_cpu(gptq_job *j, const bool *dead, double mean_diag, double percdamp, int threads,
                   nq_error *err)
{
    nq_gptq_stats *st = j->st;
    int64_t n = j->cols;
    double *u = NULL;
    int rc = -1;
    j->chunk_loss = calloc((size_t)(j->rows / GPTQ_ROW_CHUNK + 1), sizeof *j->chunk_loss);
    if (!j->chunk_loss)
        return nq_fail(err, "gptq: out of memory");
    for (int attempt = 0; attempt < 5 && !u; attempt++) {
        u = inverse_cholesky_upper(j->hessian, dead, (int)n, st->damp * mean_diag);
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
    (void)percdamp;
done:
    free(u);
    free(j->chunk_loss);
    j->chunk_loss = NULL;
    j->u = NULL;
    return rc;
}

/* GPTQ of jobs[0..count) (each with its hessian and st set): on the CPU one
 * after the other, on a GPU together (nq_cuda_gptq_batch); a job whose
 * damped Hessian is not positive definite is retried alone with 10x the
 * dampening, up to 4 times. */
static int run_batch(struct nq_cuda *gpu, gptq_job *jobs, size_t count, double percdamp,
                     int threads, nq_error *err)
{
    for (size_t k = 0; k < count; k++)
        if (jobs[k].cols > 65536)
            return nq_fail(err, "gptq: %lld input features is more than this implementation "
                                "handles",
                           (long long)jobs[k].cols);
    bool **dead = calloc(count, sizeof *dead);
    double *mean = calloc(count, sizeof *mean);
    nq_cuda_gptq_job *cj = gpu ? calloc(count, sizeof *cj) : NULL;
    int rc = -1;
    if (!dead || !mean || (gpu && !cj)) {
        nq_fail(err, "gptq: out of memory");
        goto done;
    }
    for (size_t k = 0; k < count; k++) {
        gptq_job *j = &jobs[k];
        memset(j->st, 0, sizeof *j->st);
        j->st->damp = percdamp;
        dead[k] = calloc((size_t)j->cols, sizeof **dead);
        if (!dead[k]) {
            nq_fail(err, "gptq: out of memory");
            goto done;
        }
        if (hessian_diag(j->hessian, j->cols, dead[k], &mean[k], j->st, err) != 0) {
            name_error(err, j->name);
            goto done;
        }
    }
    if (!gpu) {
        for (size_t k = 0; k < count; k++)
            if (run_cpu(&jobs[k], dead[k], mean[k], percdamp, threads, err) != 0) {
                name_error(err, jobs[k].name);
                goto done;
            }
        rc = 0;
        goto done;
    }
    for (size_t k = 0; k < count; k++) {
        gptq_job *j = &jobs[k];
        cj[k] = (nq_cuda_gptq_job){.fmt = j->fmt == FMT_INT4 ? 0 : 1, .w = j->w, .rows = j->rows,
                                   .cols = j->cols, .hessian = j->hessian, .dead = dead[k],
                                   .damp_abs = percdamp * mean[k], .group = j->group,
                                   .mse = j->mse, .gs = j->gs, .search = j->search,
                                   .four_over_six = j->four_over_six, .lo = j->lo, .hi = j->hi,
                                   .perm = j->perm,
                                   .static16 = j->static16, .codes = j->codes,
                                   .scales16 = j->scales16, .scales8 = j->scales8};
    }
    if (nq_cuda_gptq_batch(gpu, cj, count, err) != 0)
        goto done;
    for (size_t k = 0; k < count; k++) {
        nq_gptq_stats *st = jobs[k].st;
        int r = cj[k].status;
        for (int attempt = 1; attempt < 5 && r == 1; attempt++) {
            st->damp *= 10.0;
            cj[k].damp_abs = st->damp * mean[k];
            r = nq_cuda_gptq(gpu, &cj[k], err);
        }
        if (r == 1)
            nq_fail(err, "gptq: the Hessian is not positive definite even with dampening %g",
                    st->damp);
        if (r != 0) {
            name_error(err, jobs[k].name);
            goto done;
        }
        st->proxy_loss = cj[k].proxy_loss;
    }
    rc = 0;
done:
    for (size_t k = 0; dead && k < count; k++)
        free(dead[k]);
    free(dead);
    free(mean);
    free(cj);
    return rc;
}

/* ---- INT4 ------------------------------------------------------------- */

typedef struct diag_item {
    double d;
    int64_t i;
} diag_item;

/* descending H_ii (dead inputs count as 1, as the sweep takes them), ties by
 * index */
static int cmp_desc_diag(const void *a, const void *b)
{
    const diag_item *x = a, *y = b;
    if (x->d != y->d)
        return x->d > y->d ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* What one INT4 item holds while it runs. */
typedef struct int4_work {
    uint8_t *codes;
    int64_t *perm;        /* act-order */
    double *hp;           /* act-order: the permuted Hessian */
    float *wp;            /* act-order: the permuted weight */
    uint16_t *unused;     /* act-order: the job's dynamic scales (not written) */
} int4_work;

static void int4_work_free(int4_work *k)
{
    free(k->codes), free(k->perm), free(k->hp), free(k->wp), free(k->unused);
    memset(k, 0, sizeof *k);
}

static int int4_prepare(nq_gptq_item *it, int group, bool mse, bool act_order,
                        int4_work *k, gptq_job *j, nq_error *err)
{
    int64_t rows = it->rows, cols = it->cols, n = cols;
    const float *w = it->w;
    const double *hessian = it->hessian;
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
    k->codes = malloc((size_t)(rows * cols));
    if (!k->codes)
        return nq_fail(err, "gptq int4: out of memory");
    *j = (gptq_job){.fmt = FMT_INT4, .w = w, .rows = rows, .cols = cols, .group = group,
                    .mse = mse, .codes = k->codes, .scales16 = it->scales, .hessian = hessian,
                    .st = &it->st, .name = it->name};
    if (!act_order)
        return 0;
    k->perm = malloc((size_t)n * sizeof *k->perm);
    diag_item *diag = malloc((size_t)n * sizeof *diag);
    k->hp = malloc((size_t)(n * n) * sizeof *k->hp);
    k->wp = malloc((size_t)(rows * n) * sizeof *k->wp);
    k->unused = malloc((size_t)(n / group * rows) * sizeof *k->unused);
    float *gbuf = malloc((size_t)group * sizeof *gbuf);
    if (!k->perm || !diag || !k->hp || !k->wp || !k->unused || !gbuf) {
        free(diag), free(gbuf);
        return nq_fail(err, "gptq int4: out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        diag[i].d = hessian[i * n + i] == 0.0 ? 1.0 : hessian[i * n + i];
        diag[i].i = i;
    }
    /* static groups (AutoGPTQ static_groups): every scale from the weights
     * before any update, dead inputs zeroed as the sweep zeroes them */
    uint16_t *scales = it->scales;
    for (int64_t row = 0; row < rows; row++)
        for (int64_t g = 0; g < n / group; g++) {
            for (int q = 0; q < group; q++) {
                int64_t c = g * group + q;
                gbuf[q] = hessian[c * n + c] == 0.0 ? 0.0f : w[row * n + c];
            }
            double e;
            scales[g * rows + row] = mse ? nq_int4_group_scale_mse(gbuf, group, &e)
                                         : nq_int4_group_scale_max(gbuf, group);
        }
    qsort(diag, (size_t)n, sizeof *diag, cmp_desc_diag);
    for (int64_t i = 0; i < n; i++)
        k->perm[i] = diag[i].i;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++)
            k->hp[a * n + b] = hessian[k->perm[a] * n + k->perm[b]];
    for (int64_t row = 0; row < rows; row++)
        for (int64_t i = 0; i < n; i++)
            k->wp[row * n + i] = w[row * n + k->perm[i]];
    free(diag), free(gbuf);
    j->w = k->wp;
    j->hessian = k->hp;
    j->perm = k->perm;
    j->static16 = scales;
    j->scales16 = k->unused;
    return 0;
}

static int int4_finish(nq_gptq_item *it, int group, bool act_order, const int4_work *k,
                       nq_error *err)
{
    int64_t rows = it->rows, cols = it->cols;
    /* error feedback moves weights: a group may end up past what amax/7
     * in F16 can hold even when the input did not (static scales come from
     * the input) */
    for (int64_t q = 0; !act_order && q < (cols / group) * rows; q++)
        if ((it->scales[q] & 0x7fffu) >= 0x7c00u)
            return nq_fail(err, "gptq int4: the scale of group %lld of row %lld overflows F16 "
                                "after error feedback; keep the module in BF16 (--exclude MODULE)",
                           (long long)(q / rows), (long long)(q % rows));
    nq_int4_pack_gptq(k->codes, rows, cols, group, it->qweight, it->qzeros, it->g_idx);
    return 0;
}

/* Items run GPTQ_BATCH at a time: act-order holds a permuted copy of each
 * Hessian on the host meanwhile. */
#define GPTQ_BATCH 32

int nq_gptq_int4_batch_on(struct nq_cuda *gpu, nq_gptq_item *items, size_t count, int group,
                          bool mse, bool act_order, double percdamp, int threads, nq_error *err)
{
    for (size_t c0 = 0; c0 < count; c0 += GPTQ_BATCH) {
        size_t c1 = c0 + GPTQ_BATCH < count ? c0 + GPTQ_BATCH : count;
        int4_work work[GPTQ_BATCH];
        gptq_job jobs[GPTQ_BATCH];
        memset(work, 0, sizeof work);
        int rc = 0;
        for (size_t k = c0; k < c1 && rc == 0; k++)
            if ((rc = int4_prepare(&items[k], group, mse, act_order, &work[k - c0],
                                   &jobs[k - c0], err)) != 0)
                name_error(err, items[k].name);
        if (rc == 0)
            rc = run_batch(gpu, jobs, c1 - c0, percdamp, threads, err);
        for (size_t k = c0; k < c1 && rc == 0; k++)
            if ((rc = int4_finish(&items[k], group, act_order, &work[k - c0], err)) != 0)
                name_error(err, items[k].name);
        for (size_t k = 0; k < c1 - c0; k++)
            int4_work_free(&work[k]);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static int int4_one(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                    const double *hessian, int group, bool mse, bool act_order, double percdamp,
                    int threads, int32_t *qweight, int32_t *qzeros, uint16_t *scales,
                    int32_t *g_idx, nq_gptq_stats *st, nq_error *err)
{
    nq_gptq_item it = {.w = w, .rows = rows, .cols = cols, .hessian = hessian, .qweight = qweight,
                       .qzeros = qzeros, .scales = scales, .g_idx = g_idx};
    int rc = nq_gptq_int4_batch_on(gpu, &it, 1, group, mse, act_order, percdamp, threads, err);
    *st = it.st;
    return rc;
}

int nq_gptq_int4(const float *w, int64_t rows, int64_t cols, const double *hessian, int group,
                 bool mse, double percdamp, int threads, int32_t *qweight, int32_t *qzeros,
                 uint16_t *scales, int32_t *g_idx, nq_gptq_stats *st, nq_error *err)
{
    return int4_one(NULL, w, rows, cols, hessian, group, mse, false, percdamp, threads, qweight,
                    qzeros, scales, g_idx, st, err);
}

int nq_gptq_int4_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                    const double *hessian, int group, bool mse, double percdamp, int threads,
                    int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                    nq_gptq_stats *st, nq_error *err)
{
    return int4_one(gpu, w, rows, cols, hessian, group, mse, false, percdamp, threads, qweight,
                    qzeros, scales, g_idx, st, err);
}

int nq_gptq_int4_actorder(const float *w, int64_t rows, int64_t cols, const double *hessian,
                          int group, bool mse, double percdamp, int threads, int32_t *qweight,
                          int32_t *qzeros, uint16_t *scales, int32_t *g_idx, nq_gptq_stats *st,
                          nq_error *err)
{
    return int4_one(NULL, w, rows, cols, hessian, group, mse, true, percdamp, threads, qweight,
                    qzeros, scales, g_idx, st, err);
}

int nq_gptq_int4_actorder_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                             const double *hessian, int group, bool mse, double percdamp,
                             int threads, int32_t *qweight, int32_t *qzeros, uint16_t *scales,
                             int32_t *g_idx, nq_gptq_stats *st, nq_error *err)
{
    return int4_one(gpu, w, rows, cols, hessian, group, mse, true, percdamp, threads, qweight,
                    qzeros, scales, g_idx, st, err);
}

/* ---- NVFP4 ------------------------------------------------------------ */

static int nvfp4_prepare(nq_gptq_item *it, const nq_gptq_nvfp4_opts *o, gptq_job *j,
                         nq_error *err)
{
    int64_t rows = it->rows, cols = it->cols;
    const float *w = it->w;
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
    float shared = it->shared_amax;
    float amax_eff = shared > amax ? shared : amax;
    it->global_scale = o->scale_max == 448.0f || !(amax_eff > 0)
                           ? nq_nvfp4_global_scale(amax_eff)
                           : amax_eff / (6.0f * o->scale_max);
    memset(it->packed, 0, (size_t)(rows * cols / 2));
    *j = (gptq_job){.fmt = FMT_NVFP4, .w = w, .rows = rows, .cols = cols, .group = 16,
                    .mse = o->mse, .search = o->search || o->four_over_six, .lo = o->lo,
                    .hi = o->hi, .four_over_six = o->four_over_six, .gs = it->global_scale,
                    .codes = it->packed, .scales8 = it->block_scales, .hessian = it->hessian,
                    .st = &it->st, .name = it->name};
    return 0;
}

static int nvfp4_batch(struct nq_cuda *gpu, nq_gptq_item *items, size_t count,
                       const nq_gptq_nvfp4_opts *o, double percdamp, int threads, nq_error *err)
{
    for (size_t c0 = 0; c0 < count; c0 += GPTQ_BATCH) {
        size_t c1 = c0 + GPTQ_BATCH < count ? c0 + GPTQ_BATCH : count;
        gptq_job jobs[GPTQ_BATCH];
        for (size_t k = c0; k < c1; k++)
            if (nvfp4_prepare(&items[k], o, &jobs[k - c0], err) != 0) {
                name_error(err, items[k].name);
                return -1;
            }
        if (run_batch(gpu, jobs, c1 - c0, percdamp, threads, err) != 0)
            return -1;
    }
    return 0;
}

int nq_gptq_nvfp4_batch_on(struct nq_cuda *gpu, nq_gptq_item *items, size_t count, bool mse,
                           double percdamp, int threads, nq_error *err)
{
    nq_gptq_nvfp4_opts o = {.mse = mse, .scale_max = 448.0f};
    return nvfp4_batch(gpu, items, count, &o, percdamp, threads, err);
}

int nq_gptq_nvfp4_ex_batch_on(struct nq_cuda *gpu, nq_gptq_item *items, size_t count,
                              const nq_gptq_nvfp4_opts *o, double percdamp, int threads,
                              nq_error *err)
{
    return nvfp4_batch(gpu, items, count, o, percdamp, threads, err);
}

static int nvfp4_one(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                     const double *hessian, const nq_gptq_nvfp4_opts *o, double percdamp,
                     int threads, uint8_t *packed, uint8_t *block_scales, float *global_scale,
                     nq_gptq_stats *st, nq_error *err)
{
    nq_gptq_item it = {.w = w, .rows = rows, .cols = cols, .hessian = hessian,
                       .shared_amax = o->shared_amax, .packed = packed,
                       .block_scales = block_scales};
    int rc = nvfp4_batch(gpu, &it, 1, o, percdamp, threads, err);
    *global_scale = it.global_scale;
    *st = it.st;
    return rc;
}

int nq_gptq_nvfp4(const float *w, int64_t rows, int64_t cols, const double *hessian, bool mse,
                  double percdamp, int threads, float shared_amax, uint8_t *packed,
                  uint8_t *block_scales, float *global_scale, nq_gptq_stats *st, nq_error *err)
{
    return nq_gptq_nvfp4_on(NULL, w, rows, cols, hessian, mse, percdamp, threads, shared_amax,
                            packed, block_scales, global_scale, st, err);
}

int nq_gptq_nvfp4_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                     const double *hessian, bool mse, double percdamp, int threads,
                     float shared_amax, uint8_t *packed, uint8_t *block_scales,
                     float *global_scale, nq_gptq_stats *st, nq_error *err)
{
    nq_gptq_nvfp4_opts o = {.mse = mse, .scale_max = 448.0f, .shared_amax = shared_amax};
    return nvfp4_one(gpu, w, rows, cols, hessian, &o, percdamp, threads, packed, block_scales,
                     global_scale, st, err);
}

int nq_gptq_nvfp4_ex(const float *w, int64_t rows, int64_t cols, const double *hessian,
                     const nq_gptq_nvfp4_opts *o, double percdamp, int threads, uint8_t *packed,
                     uint8_t *block_scales, float *global_scale, nq_gptq_stats *st,
                     nq_error *err)
{
    return nvfp4_one(NULL, w, rows, cols, hessian, o, percdamp, threads, packed, block_scales,
                     global_scale, st, err);
}

int nq_gptq_nvfp4_ex_on(struct nq_cuda *gpu, const float *w, int64_t rows, int64_t cols,
                        const double *hessian, const nq_gptq_nvfp4_opts *o, double percdamp,
                        int threads, uint8_t *packed, uint8_t *block_scales, float *global_scale,
                        nq_gptq_stats *st, nq_error *err)
{
    return nvfp4_one(gpu, w, rows, cols, hessian, o, percdamp, threads, packed, block_scales,
                     global_scale, st, err);
}
