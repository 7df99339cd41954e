/* The Mamba-2 mixer of Nemotron-H (transformers' NemotronHMamba2Mixer).
 *
 * What was checked in transformers 5.17 modeling_nemotron_h.py:
 * - in_proj output is split [gate z: intermediate | xBC: conv_dim | dt: heads]
 *   (projection_size = intermediate + conv_dim + heads, so the "d_mlp" parts
 *   of older Mamba-2 code are empty); conv_dim = intermediate +
 *   2 * n_groups * ssm_state_size; xBC after the conv is split [x | B | C].
 * - causal depthwise conv1d (padding kernel-1, keep the first seq_len
 *   outputs) with bias, then the mamba_hidden_act (SiLU).
 * - dt = softplus(dt + dt_bias), then torch.clamp(dt, time_step_limit) where
 *   the mixer sets time_step_limit = (config.time_step_min, inf): the
 *   config's own time_step_limit field is NOT used.  (The single-token cached
 *   path, mamba2_selective_state_update, skips the clamp; we clamp on every
 *   path so that decoding equals the full forward.)
 * - A = -exp(A_log); B and C are shared by the heads of a group
 *   (repeat_interleave: head h uses group h / (heads / n_groups)).
 * - The chunked SSD scan (mamba2_chunk_scan, chunk_size) is the sequential
 *   recurrence  s = s * exp(dt*A) + (x*dt) B ;  y = s C + D x  regrouped;
 *   we run the recurrence itself, in f32, which is also what the decoding
 *   path does.  The two agree to rounding (tests compare with the chunked
 *   reference outputs).
 * - y goes through Zamba2RMSNormGated (zamba2/modeling_zamba2.py): y *
 *   silu(z) BEFORE the norm, RMS over groups of intermediate/n_groups
 *   channels, eps = layer_norm_epsilon, then * weight; then out_proj. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "model/layers.h"

/* torch.nn.functional.softplus with beta 1, threshold 20. */
static float softplus(float v)
{
    return v > 20.0f ? v : log1pf(expf(v));
}

static float silu(float v)
{
    return v / (1.0f + expf(-v));
}

typedef struct {
    const nq_model_config *cfg;
    const nq_mamba2_weights *w;
    const float *xbc;   /* conv output [n, conv_dim] */
    const float *dt;    /* [n, heads] after softplus and clamp */
    float *ssm;         /* [heads, head_dim, state] */
    float *y;           /* [n, intermediate] */
    int n;
} scan_job;

/* One head over all tokens: heads are independent, so they are the work
 * items; each head's arithmetic order is fixed. */
static int scan_heads(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    const scan_job *j = ctx;
    const nq_model_config *c = j->cfg;
    int hd = c->mamba_head_dim, ns = c->ssm_state_size;
    int inter = nq_mamba_intermediate(c), conv_dim = nq_mamba_conv_dim(c);
    int heads_per_group = c->mamba_num_heads / c->n_groups;
    for (size_t h = begin; h < end; h++) {
        int g = (int)h / heads_per_group;
        float A = j->w->A[h], D = j->w->D[h];
        float *s = j->ssm + h * (size_t)hd * ns;
        for (int t = 0; t < j->n; t++) {
            const float *row = j->xbc + (size_t)t * conv_dim;
            const float *xh = row + h * (size_t)hd;
            const float *B = row + inter + (size_t)g * ns;
            const float *C = row + inter + (size_t)c->n_groups * ns + (size_t)g * ns;
            float dt = j->dt[(size_t)t * c->mamba_num_heads + h];
            float dA = expf(dt * A);
            float *yh = j->y + (size_t)t * inter + h * (size_t)hd;
            for (int p = 0; p < hd; p++) {
                float xdt = xh[p] * dt;
                float *sp = s + (size_t)p * ns;
                float acc = 0.0f;
                for (int k = 0; k < ns; k++) {
                    sp[k] = sp[k] * dA + xdt * B[k];
                    acc += sp[k] * C[k];
                }
                yh[p] = acc + D * xh[p];
            }
        }
    }
    return 0;
}

int nq_mamba2_forward(const nq_exec *ex, const nq_model_config *cfg, const nq_mamba2_weights *w,
                      float dt_min, const float *x, int n, float *conv_state, float *ssm_state,
                      float *y)
{
    int H = cfg->hidden_size, nh = cfg->mamba_num_heads, K = cfg->conv_kernel;
    int inter = nq_mamba_intermediate(cfg), conv_dim = nq_mamba_conv_dim(cfg);
    int proj_dim = nq_mamba_in_proj_dim(cfg);
    int ngroup_ch = inter / cfg->n_groups;
    int rc = -1;

    float *proj = malloc((size_t)n * proj_dim * sizeof *proj);
    float *win = malloc((size_t)(n + K - 1) * conv_dim * sizeof *win);
    float *xbc = malloc((size_t)n * conv_dim * sizeof *xbc);
    float *dt = malloc((size_t)n * nh * sizeof *dt);
    float *scan = malloc((size_t)n * inter * sizeof *scan);
    if (!proj || !win || !xbc || !dt || !scan) {
        nq_fail(ex->err, "%smamba: out of memory for %d tokens", ex->prefix, n);
        goto done;
    }
    if (nq_linear(ex, "in_proj.weight", -1, NULL, x, n, H, w->in_proj, w->in_proj_b, proj_dim,
                  proj) != 0)
        goto done;

    /* Conv window: the K-1 inputs kept from earlier tokens, then this call's. */
    memcpy(win, conv_state, (size_t)(K - 1) * conv_dim * sizeof *win);
    for (int t = 0; t < n; t++)
        memcpy(win + (size_t)(K - 1 + t) * conv_dim, proj + (size_t)t * proj_dim + inter,
               (size_t)conv_dim * sizeof *win);
    for (int t = 0; t < n; t++) {
        float *out = xbc + (size_t)t * conv_dim;
        for (int ch = 0; ch < conv_dim; ch++) {
            const float *wk = w->conv_w + (size_t)ch * K;
            float acc = w->conv_b ? w->conv_b[ch] : 0.0f;
            for (int k = 0; k < K; k++)
                acc += wk[k] * win[(size_t)(t + k) * conv_dim + ch];
            out[ch] = silu(acc);
        }
    }
    memcpy(conv_state, win + (size_t)n * conv_dim, (size_t)(K - 1) * conv_dim * sizeof *win);

    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++) {
            float v = softplus(proj[(size_t)t * proj_dim + inter + conv_dim + h] + w->dt_bias[h]);
            dt[(size_t)t * nh + h] = v < dt_min ? dt_min : v;
        }

    scan_job job = {.cfg = cfg, .w = w, .xbc = xbc, .dt = dt, .ssm = ssm_state, .y = scan, .n = n};
    double macs = 2.0 * n * inter * cfg->ssm_state_size;
    if (nq_parallel_for((size_t)nh, 1, nq_exec_threads(ex, macs), scan_heads, &job) != 0)
        goto done;

    /* Gated RMSNorm, gate first (Zamba2RMSNormGated, norm_before_gate off). */
    for (int t = 0; t < n; t++) {
        float *row = scan + (size_t)t * inter;
        const float *z = proj + (size_t)t * proj_dim;
        for (int i = 0; i < inter; i++)
            row[i] *= silu(z[i]);
        for (int g = 0; g < cfg->n_groups; g++) {
            float *grp = row + (size_t)g * ngroup_ch;
            double ss = 0.0;
            for (int i = 0; i < ngroup_ch; i++)
                ss += (double)grp[i] * grp[i];
            float r = 1.0f / sqrtf((float)(ss / ngroup_ch) + cfg->layer_norm_epsilon);
            for (int i = 0; i < ngroup_ch; i++)
                grp[i] = w->norm_w[(size_t)g * ngroup_ch + i] * (grp[i] * r);
        }
    }
    rc = nq_linear(ex, "out_proj.weight", -1, NULL, scan, n, inter, w->out_proj, w->out_proj_b, H,
                   y);
done:
    free(proj);
    free(win);
    free(xbc);
    free(dt);
    free(scan);
    return rc;
}
