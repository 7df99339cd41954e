/* Causal grouped-query attention of Nemotron-H (transformers'
 * NemotronHAttention, modeling_nemotron_h.py of 5.17).
 *
 * Checked there: q/k/v/o are Linear with bias=False whatever the config
 * says; head_dim comes from config.head_dim; scaling = head_dim ** -0.5
 * applied to q.k; query head h reads key/value head h / (heads / kv_heads)
 * (repeat_kv); softmax in f32.  There is NO positional encoding: the
 * module defines apply_rotary_pos_emb but forward() never calls it and the
 * model builds no rotary embedding, so rope_theta / partial_rotary_factor
 * in NVIDIA's config.json are unused (the Mamba layers carry position). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "model/layers.h"

/* Query rows per block: scores are formed for QBLOCK queries at a time
 * against every key they may see, so scratch is QBLOCK x (past+n). */
#define QBLOCK 64

typedef struct {
    const float *q;       /* [n, heads*hd] */
    const float *k, *v;   /* [past+n, kv*hd] */
    float *out;           /* [n, heads*hd] */
    float *scratch;       /* [threads][QBLOCK * (past+n)] */
    int n, past, heads, kv_heads, hd;
    float scale;
} attn_job;

/* One query head over all queries, as two sgemm calls per block of queries
 * (scores = q k^T, out = softmax(scores) v).  Keys past a query's own
 * position get probability exactly 0, so the masked products add nothing;
 * the result equals eager attention (softmax(q k^T * scale + causal mask) v)
 * to rounding. */
static int attn_heads(void *ctx, size_t begin, size_t end, int worker)
{
    const attn_job *j = ctx;
    int total = j->past + j->n;
    float *S = j->scratch + (size_t)worker * QBLOCK * total;
    int qdim = j->heads * j->hd, kvdim = j->kv_heads * j->hd;
    int group = j->heads / j->kv_heads;
    for (size_t h = begin; h < end; h++) {
        int kvh = (int)h / group;
        const float *K = j->k + (size_t)kvh * j->hd, *V = j->v + (size_t)kvh * j->hd;
        for (int i0 = 0; i0 < j->n; i0 += QBLOCK) {
            int rows = j->n - i0 < QBLOCK ? j->n - i0 : QBLOCK;
            int keys = j->past + i0 + rows; /* the last query of the block sees these */
            const float *Q = j->q + (size_t)i0 * qdim + h * (size_t)j->hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, j->hd, 1.0f, Q, qdim,
                        K, kvdim, 0.0f, S, keys);
            for (int r = 0; r < rows; r++) {
                float *p = S + (size_t)r * keys;
                int last = j->past + i0 + r; /* causal: keys 0..last */
                float mx = -INFINITY;
                for (int s = 0; s <= last; s++) {
                    p[s] *= j->scale;
                    if (p[s] > mx)
                        mx = p[s];
                }
                float sum = 0.0f;
                for (int s = 0; s <= last; s++) {
                    p[s] = expf(p[s] - mx);
                    sum += p[s];
                }
                float inv = 1.0f / sum;
                for (int s = 0; s <= last; s++)
                    p[s] *= inv;
                for (int s = last + 1; s < keys; s++)
                    p[s] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, j->hd, keys, 1.0f, S, keys,
                        V, kvdim, 0.0f, j->out + (size_t)i0 * qdim + h * (size_t)j->hd, qdim);
        }
    }
    return 0;
}

int nq_attention_forward(const nq_exec *ex, const nq_model_config *cfg,
                         const nq_attention_weights *w, const float *x, int n, int past,
                         float *k_cache, float *v_cache, float *y)
{
    int H = cfg->hidden_size, nh = cfg->num_attention_heads, nkv = cfg->num_key_value_heads;
    int hd = cfg->head_dim, qdim = nh * hd, kvdim = nkv * hd;
    int threads = nq_exec_threads(ex, 2.0 * n * (past + n) * qdim);
    if (threads < 1)
        threads = 1;
    int rc = -1;
    float *q = malloc((size_t)n * qdim * sizeof *q);
    float *att = malloc((size_t)n * qdim * sizeof *att);
    float *scratch = malloc((size_t)threads * QBLOCK * (past + n) * sizeof *scratch);
    if (!q || !att || !scratch) {
        nq_fail(ex->err, "%sattention: out of memory for %d tokens", ex->prefix, n);
        goto done;
    }
    if (nq_linear(ex, "q_proj.weight", -1, NULL, x, n, H, w->q, NULL, qdim, q) != 0 ||
        nq_linear(ex, "k_proj.weight", -1, NULL, x, n, H, w->k, NULL, kvdim,
                  k_cache + (size_t)past * kvdim) != 0 ||
        nq_linear(ex, "v_proj.weight", -1, NULL, x, n, H, w->v, NULL, kvdim,
                  v_cache + (size_t)past * kvdim) != 0)
        goto done;
    if (ex->hooks && ex->hooks->kv_output) {
        nq_kv_output kv = {.layer = ex->layer, .k = k_cache + (size_t)past * kvdim,
                           .v = v_cache + (size_t)past * kvdim, .n = n, .kv_dim = kvdim};
        if (ex->hooks->kv_output(ex->hooks->ctx, &kv, ex->err) != 0)
            goto done;
    }
    attn_job job = {
        .q = q, .k = k_cache, .v = v_cache, .out = att, .scratch = scratch, .n = n, .past = past,
        .heads = nh, .kv_heads = nkv, .hd = hd, .scale = (float)pow((double)hd, -0.5),
    };
    if (nq_parallel_for((size_t)nh, 1, threads, attn_heads, &job) != 0)
        goto done;
    rc = nq_linear(ex, "o_proj.weight", -1, NULL, att, n, qdim, w->o, NULL, H, y);
done:
    free(q);
    free(att);
    free(scratch);
    return rc;
}
