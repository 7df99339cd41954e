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

/* The state update and readout of one token for one head, with the state
 * transposed to [state, head_dim] so that the loops over p (the head's
 * channels) vectorize: lane p computes exactly what the scalar loop
 *     s[p][k] = s[p][k] * dA + xdt[p] * B[k];  y[p] += s[p][k] * C[k]
 * computes, in the same order over k (no reassociation, no contraction:
 * the build does not fuse a*b+c), so every clone gives the same bits. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
static void scan_token(float *restrict st, int hd, int ns, const float *restrict xh,
                       const float *restrict B, const float *restrict C, float dt, float dA,
                       float D, float *restrict xdt, float *restrict acc, float *restrict yh)
{
    for (int p = 0; p < hd; p++) {
        xdt[p] = xh[p] * dt;
        acc[p] = 0.0f;
    }
    for (int k = 0; k < ns; k++) {
        float b = B[k], c = C[k];
        float *sk = st + (size_t)k * hd;
        for (int p = 0; p < hd; p++) {
            float v = sk[p] * dA;
            float u = xdt[p] * b;
            v = v + u;
            sk[p] = v;
            float w = v * c;
            acc[p] = acc[p] + w;
        }
    }
    for (int p = 0; p < hd; p++) {
        float d = D * xh[p];
        yh[p] = acc[p] + d;
    }
}

/* The causal conv of one token over every channel (before the SiLU), with
 * the weights transposed to [kernel, channel]: the same sum per channel,
 * bias first and then k = 0..K-1 in order, vectorized across channels. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
static void conv_token(float *restrict out, const float *restrict win, const float *restrict wt,
                       const float *restrict bias, int conv_dim, int K)
{
    for (int ch = 0; ch < conv_dim; ch++)
        out[ch] = bias ? bias[ch] : 0.0f;
    for (int k = 0; k < K; k++) {
        const float *wk = wt + (size_t)k * conv_dim, *xk = win + (size_t)k * conv_dim;
        for (int ch = 0; ch < conv_dim; ch++) {
            float v = wk[ch] * xk[ch];
            out[ch] = out[ch] + v;
        }
    }
}

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
    float *st = malloc(((size_t)hd * ns + 2 * (size_t)hd) * sizeof *st);
    if (!st)
        return -1;
    float *xdt = st + (size_t)hd * ns, *acc = xdt + hd;
    for (size_t h = begin; h < end; h++) {
        int g = (int)h / heads_per_group;
        float A = j->w->A[h], D = j->w->D[h];
        float *s = j->ssm + h * (size_t)hd * ns;   /* [head_dim, state] */
        for (int p = 0; p < hd; p++)
            for (int k = 0; k < ns; k++)
                st[(size_t)k * hd + p] = s[(size_t)p * ns + k];
        for (int t = 0; t < j->n; t++) {
            const float *row = j->xbc + (size_t)t * conv_dim;
            const float *xh = row + h * (size_t)hd;
            const float *B = row + inter + (size_t)g * ns;
            const float *C = row + inter + (size_t)c->n_groups * ns + (size_t)g * ns;
            float dt = j->dt[(size_t)t * c->mamba_num_heads + h];
            float dA = expf(dt * A);
            scan_token(st, hd, ns, xh, B, C, dt, dA, D, xdt, acc,
                       j->y + (size_t)t * inter + h * (size_t)hd);
        }
        for (int p = 0; p < hd; p++)
            for (int k = 0; k < ns; k++)
                s[(size_t)p * ns + k] = st[(size_t)k * hd + p];
    }
    free(st);
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
    float *wt = malloc((size_t)K * conv_dim * sizeof *wt);
    if (!proj || !win || !xbc || !dt || !scan || !wt) {
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
    for (int k = 0; k < K; k++)
        for (int ch = 0; ch < conv_dim; ch++)
            wt[(size_t)k * conv_dim + ch] = w->conv_w[(size_t)ch * K + k];
    for (int t = 0; t < n; t++) {
        float *out = xbc + (size_t)t * conv_dim;
        conv_token(out, win + (size_t)t * conv_dim, wt, w->conv_b, conv_dim, K);
        for (int ch = 0; ch < conv_dim; ch++)
            out[ch] = silu(out[ch]);
    }
    memcpy(conv_state, win + (size_t)n * conv_dim, (size_t)(K - 1) * conv_dim * sizeof *win);

    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++) {
            float v = softplus(proj[(size_t)t * proj_dim + inter + conv_dim + h] + w->dt_bias[h]);
            dt[(size_t)t * nh + h] = v < dt_min ? dt_min : v;
        }

    scan_job job = {.cfg = cfg, .w = w, .xbc = xbc, .dt = dt, .ssm = ssm_state, .y = scan, .n = n};
    double macs = 2.0 * n * inter * cfg->ssm_state_size;
    if (nq_parallel_for((size_t)nh, 1, nq_exec_threads(ex, macs), scan_heads, &job) != 0) {
        nq_fail(ex->err, "%smamba: out of memory for the scan", ex->prefix);
        goto done;
    }

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
    free(wt);
    return rc;
}
