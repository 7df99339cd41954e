#include "algo/equalize.h"

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
    double best = INFINITY;
    for (int g = 0; g < grid; g++) {
        double alpha = (double)g / grid;
        nq_equalize_scales(rms, cols, alpha, cand);
        double e = 0.0;
        for (int j = 0; j < n; j++) {
            const nq_eq_consumer *x = &cons[j];
            for (int64_t r = 0; r < x->rows; r++)
                for (int64_t k = 0; k < cols; k++)
                    ws[r * cols + k] = x->w[r * cols + k] * cand[k];
            if (x->qdq(x->qdq_ctx, ws, x->rows, cols, q, err) != 0)
                goto done;
            e += output_error(x, cols, q, cand, d, hd);
        }
        if (g == 0)
            res->err_identity = e;
        if (e < best) {
            best = e;
            res->alpha = alpha;
            res->err_best = e;
            memcpy(c, cand, (size_t)cols * sizeof *c);
        }
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
