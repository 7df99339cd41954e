#include "algo/equalize.h"

#include "formats/nvfp4.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void nq_equalize_scales(const double *rms, int64_t cols, double alpha, float *c)
{
    double mx = 0.0;
    for (int64_t k = 0; k < cols; k++)
        mx = rms[k] > mx ? rms[k] : mx;
    double floor_ = mx > 0 ? NQ_EQ_RMS_FLOOR * mx : 1.0;
    double lo = INFINITY, hi = 0.0;
    for (int64_t k = 0; k < cols; k++) {
        double m = rms[k] > floor_ ? rms[k] : floor_;
        double v = pow(m, alpha);
        c[k] = (float)v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    /* AWQ's normalisation: the geometric middle of the range maps to 1 */
    double norm = sqrt(hi * lo);
    for (int64_t k = 0; k < cols; k++)
        c[k] = (float)(c[k] / norm);
}

/* sum over rows of d H d^T, d = w - q diag(1/c): dd [rows, cols] and hd
 * [rows, cols] are scratch */
static double output_error(const nq_eq_consumer *e, int64_t cols, const float *q, const float *c,
                           double *dd, double *hd)
{
    int64_t rows = e->rows;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++)
            dd[r * cols + k] = (double)e->w[r * cols + k] - (double)q[r * cols + k] / (double)c[k];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)cols, 1.0,
                dd, (int)cols, e->hessian, (int)cols, 0.0, hd, (int)cols);
    double tot = 0.0;
    for (int64_t k = 0; k < rows * cols; k++)
        tot += dd[k] * hd[k];
    return tot;
}

/* q = qdq(w diag(s)): the reader's weight with its columns scaled by the
 * candidate, quantized and dequantized; ws [rows, cols] is scratch */
static int qdq_scaled(nq_qdq_fn qdq, void *ctx, const float *w, int64_t rows, int64_t cols,
                      const float *s, float *ws, float *q, nq_error *err)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++)
            ws[r * cols + k] = w[r * cols + k] * s[k];
    return qdq(ctx, ws, rows, cols, q, err);
}

/* Keeps candidate g of the grid (error e, scales cand) in res and c when it
 * errs strictly less than the best so far: ties keep the smaller alpha, so
 * the identity (g = 0) wins unless something is strictly better. */
static void keep_if_best(int g, int grid, double e, const float *cand, int64_t cols,
                         double *best, float *c, nq_eq_result *res)
{
    if (g == 0)
        res->err_identity = e;
    if (e < *best) {
        *best = e;
        res->alpha = (double)g / grid;
        res->err_best = e;
        res->identity = g == 0;
        memcpy(c, cand, (size_t)cols * sizeof *c);
    }
}

int nq_equalize_search(const nq_eq_consumer *cons, int n, int64_t cols, const double *rms,
                       int grid, float *c, nq_eq_result *res, nq_error *err)
{
    int64_t maxrows = 0;
    for (int j = 0; j < n; j++)
        maxrows = cons[j].rows > maxrows ? cons[j].rows : maxrows;
    float *cand = malloc((size_t)cols * sizeof *cand);
    float *ws = malloc((size_t)(maxrows * cols) * sizeof *ws);
    float *q = malloc((size_t)(maxrows * cols) * sizeof *q);
    double *d = malloc((size_t)(maxrows * cols) * sizeof *d);
    double *hd = malloc((size_t)(maxrows * cols) * sizeof *hd);
    int rc = -1;
    if (!cand || !ws || !q || !d || !hd) {
        nq_fail(err, "equalize: out of memory");
        goto done;
    }
    /* nothing folded unless a candidate's error is finite and lowest (a NaN
     * error never compares less, which left res unset) */
    *res = (nq_eq_result){.identity = true};
    double best = INFINITY;
    for (int g = 0; g < grid; g++) {
        double alpha = (double)g / grid;
        nq_equalize_scales(rms, cols, alpha, cand);
        double e = 0.0;
        for (int j = 0; j < n; j++) {
            const nq_eq_consumer *x = &cons[j];
            if (qdq_scaled(x->qdq, x->qdq_ctx, x->w, x->rows, cols, cand, ws, q, err) != 0)
                goto done;
            e += output_error(x, cols, q, cand, d, hd);
        }
        keep_if_best(g, grid, e, cand, cols, &best, c, res);
    }
    rc = 0;
done:
    free(cand);
    free(ws);
    free(q);
    free(d);
    free(hd);
    return rc;
}

/* ---- the served objective ---------------------------------------------- */

/* sum of squares of ref - xq q^T: xq [xr, cols], q [rows, cols], ref and
 * y [xr, rows] */
static double served_error(const float *ref, const float *xq, int xr, const float *q,
                           int64_t rows, int64_t cols, float *y)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, xr, (int)rows, (int)cols, 1.0f, xq,
                (int)cols, q, (int)cols, 0.0f, y, (int)rows);
    double e = 0.0;
    for (int64_t k = 0; k < (int64_t)xr * rows; k++) {
        double d = (double)ref[k] - (double)y[k];
        e += d * d;
    }
    return e;
}

int nq_equalize_search_served(const nq_eq_sample_consumer *cons, int n, int64_t cols,
                              const double *rms, int grid, float *c, nq_eq_result *res,
                              nq_error *err)
{
    int64_t maxw = 0, maxx = 0, maxy = 0;
    bool act = false;
    for (int j = 0; j < n; j++) {
        const nq_eq_sample_consumer *x = &cons[j];
        maxw = x->rows * cols > maxw ? x->rows * cols : maxw;
        maxx = (int64_t)x->xrows * cols > maxx ? (int64_t)x->xrows * cols : maxx;
        maxy = (int64_t)x->xrows * x->rows > maxy ? (int64_t)x->xrows * x->rows : maxy;
        act |= x->act_nvfp4;
    }
    if (act && cols % NQ_NVFP4_BLOCK != 0)
        return nq_fail(err, "equalize: %lld input channels are not whole NVFP4 blocks",
                       (long long)cols);
    float *cand = malloc((size_t)cols * sizeof *cand);
    float *ws = malloc((size_t)(maxw ? maxw : 1) * sizeof *ws);
    float *q = malloc((size_t)(maxw ? maxw : 1) * sizeof *q);
    float *xs = malloc((size_t)(maxx ? maxx : 1) * sizeof *xs);
    float *y = malloc((size_t)(maxy ? maxy : 1) * sizeof *y);
    float **ref = calloc((size_t)(n ? n : 1), sizeof *ref);
    int rc = -1;
    if (!cand || !ws || !q || !xs || !y || !ref) {
        nq_fail(err, "equalize: out of memory");
        goto done;
    }
    for (int j = 0; j < n; j++) {
        const nq_eq_sample_consumer *x = &cons[j];
        /* the float layer's output (the equalized float layer computes the
         * same) */
        ref[j] = malloc((size_t)((int64_t)x->xrows * x->rows) * sizeof **ref);
        if (!ref[j]) {
            nq_fail(err, "equalize: out of memory");
            goto done;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, x->xrows, (int)x->rows, (int)cols,
                    1.0f, x->x, (int)cols, x->w, (int)cols, 0.0f, ref[j], (int)x->rows);
    }
    /* nothing folded unless a candidate's error is finite and lowest (a NaN
     * error never compares less, which left res unset) */
    *res = (nq_eq_result){.identity = true};
    double best = INFINITY;
    for (int g = 0; g < grid; g++) {
        double alpha = (double)g / grid;
        nq_equalize_scales(rms, cols, alpha, cand);
        /* the input scale the pipeline will compute from the equalized
         * activations */
        float amax = 0.0f;
        for (int j = 0; j < n; j++)
            for (int64_t k = 0; k < (int64_t)cons[j].xrows * cols; k++) {
                float a = fabsf(cons[j].x[k] / cand[k % cols]);
                amax = a > amax ? a : amax;
            }
        float gs = nq_nvfp4_global_scale(amax);
        double e = 0.0;
        for (int j = 0; j < n; j++) {
            const nq_eq_sample_consumer *x = &cons[j];
            if (qdq_scaled(x->qdq, x->qdq_ctx, x->w, x->rows, cols, cand, ws, q, err) != 0)
                goto done;
            int64_t nx = (int64_t)x->xrows * cols;
            for (int64_t k = 0; k < nx; k++)
                xs[k] = x->x[k] / cand[k % cols];
            if (x->act_nvfp4)
                nq_nvfp4_fake_quant(xs, nx, gs);
            e += served_error(ref[j], xs, x->xrows, q, x->rows, cols, y);
        }
        keep_if_best(g, grid, e, cand, cols, &best, c, res);
    }
    rc = 0;
done:
    for (int j = 0; ref && j < n; j++)
        free(ref[j]);
    free(ref);
    free(cand), free(ws), free(q), free(xs), free(y);
    return rc;
}
