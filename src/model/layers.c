/* Shared layer pieces: activations, the parallel Linear, RMSNorm, MLP. */
#include "model/layers.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"

/* Output rows per work item of a Linear.  Fixed (never derived from the
 * thread count) so that every sgemm call, and hence every rounding, is the
 * same whatever the number of threads. */
#define NQ_LINEAR_ROW_CHUNK 64
/* Fewer tokens than this go through gemv, one token at a time. */
#define NQ_GEMV_MAX_TOKENS 4

/* About 50-100 microseconds of single-core work: roughly what starting and
 * joining a thread costs here. */
#define NQ_PARALLEL_MIN_MACS (1 << 20)

int nq_exec_threads(const nq_exec *ex, double macs)
{
    return macs < NQ_PARALLEL_MIN_MACS ? 1 : ex->threads;
}

int nq_act_from_name(const char *name, nq_act *out)
{
    static const struct {
        const char *name;
        nq_act act;
    } table[] = {
        {"relu2", NQ_ACT_RELU2},  {"relu", NQ_ACT_RELU},
        {"silu", NQ_ACT_SILU},    {"swish", NQ_ACT_SILU},
        {"gelu", NQ_ACT_GELU},    {"gelu_pytorch_tanh", NQ_ACT_GELU_TANH},
        {"gelu_new", NQ_ACT_GELU_TANH},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(name, table[i].name) == 0) {
            *out = table[i].act;
            return 0;
        }
    return -1;
}

void nq_act_apply(nq_act act, float *x, uint64_t count)
{
    switch (act) {
    case NQ_ACT_RELU2:
        /* transformers' ReLUSquaredActivation: square(relu(x)) */
        for (uint64_t i = 0; i < count; i++) {
            float r = x[i] > 0.0f ? x[i] : 0.0f;
            x[i] = r * r;
        }
        break;
    case NQ_ACT_RELU:
        for (uint64_t i = 0; i < count; i++)
            x[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case NQ_ACT_SILU:
        for (uint64_t i = 0; i < count; i++)
            x[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    case NQ_ACT_GELU:
        for (uint64_t i = 0; i < count; i++)
            x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        break;
    case NQ_ACT_GELU_TANH:
        for (uint64_t i = 0; i < count; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    }
}

typedef struct {
    const float *x, *W, *b;
    float *y;
    int n, in, out;
} linear_job;

static int linear_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    const linear_job *j = ctx;
    int rows = (int)(end - begin);
    const float *W = j->W + begin * (size_t)j->in;
    if (j->n < NQ_GEMV_MAX_TOKENS) {
        /* sgemm packs its operands on every call, which for a token or two
         * costs more than the product; gemv streams W once. */
        for (int t = 0; t < j->n; t++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, j->in, 1.0f, W, j->in,
                        j->x + (size_t)t * j->in, 1, 0.0f, j->y + (size_t)t * j->out + begin, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, rows, j->in, 1.0f, j->x, j->in,
                    W, j->in, 0.0f, j->y + begin, j->out);
    }
    if (j->b)
        for (int t = 0; t < j->n; t++) {
            float *yr = j->y + (size_t)t * j->out;
            for (size_t o = begin; o < end; o++)
                yr[o] += j->b[o];
        }
    return 0;
}

int nq_linear(const nq_exec *ex, const char *suffix, int expert, const int32_t *token_index,
              const float *x, int n, int in, const float *W, const float *b, int out, float *y)
{
    if (n <= 0)
        return 0;
    float *rewritten = NULL;
    if (ex->hooks && (ex->hooks->linear_input || ex->hooks->rewrite_input)) {
        char name[256];
        snprintf(name, sizeof name, "%s%s", ex->prefix ? ex->prefix : "", suffix);
        nq_linear_input ev = {
            .weight_name = name, .layer = ex->layer, .expert = expert, .x = x,
            .rows = n, .in_features = in, .out_features = out, .token_index = token_index,
        };
        if (ex->hooks->linear_input && ex->hooks->linear_input(ex->hooks->ctx, &ev, ex->err) != 0)
            return -1;
        if (ex->hooks->rewrite_input) {
            rewritten = malloc((size_t)n * in * sizeof *rewritten);
            if (!rewritten)
                return nq_fail(ex->err, "%s: out of memory for %d x %d inputs", name, n, in);
            int r = ex->hooks->rewrite_input(ex->hooks->ctx, &ev, rewritten, ex->err);
            if (r < 0) {
                free(rewritten);
                return -1;
            }
            if (r == 0) {
                free(rewritten);
                rewritten = NULL;
            } else {
                x = rewritten;
            }
        }
    }
    linear_job job = {.x = x, .W = W, .b = b, .y = y, .n = n, .in = in, .out = out};
    int rc = nq_parallel_for((size_t)out, NQ_LINEAR_ROW_CHUNK,
                             nq_exec_threads(ex, (double)n * in * out), linear_rows, &job);
    free(rewritten);
    return rc;
}

void nq_rmsnorm(const float *x, const float *weight, int n, int dim, float eps, float *y)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * dim;
        float *yr = y + (size_t)t * dim;
        /* The mean of squares is accumulated in double: closer to the exact
         * value than any f32 summation order, and torch's f32 reduction is
         * itself within a few ulps of it. */
        double ss = 0.0;
        for (int i = 0; i < dim; i++)
            ss += (double)xr[i] * xr[i];
        float var = (float)(ss / dim);
        float r = 1.0f / sqrtf(var + eps);
        for (int i = 0; i < dim; i++)
            yr[i] = weight[i] * (xr[i] * r);
    }
}

int nq_mlp_forward(const nq_exec *ex, const char *names, int expert, const int32_t *token_index,
                   const nq_mlp_weights *w, nq_act act, const float *x, int n, int hidden,
                   float *y)
{
    float *h = malloc((size_t)n * w->inter * sizeof *h);
    if (!h)
        return nq_fail(ex->err, "%s%sup_proj: out of memory for %d x %d activations",
                       ex->prefix ? ex->prefix : "", names, n, w->inter);
    char up[128], down[128];
    snprintf(up, sizeof up, "%sup_proj.weight", names);
    snprintf(down, sizeof down, "%sdown_proj.weight", names);
    int rc = nq_linear(ex, up, expert, token_index, x, n, hidden, w->up, w->up_b, w->inter, h);
    if (rc == 0) {
        nq_act_apply(act, h, (uint64_t)n * w->inter);
        rc = nq_linear(ex, down, expert, token_index, h, n, w->inter, w->down, w->down_b, hidden, y);
    }
    free(h);
    return rc;
}
