#include "export/lora.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/parallel.h"
#include "formats/floatconv.h"
#include "export/lora_internal.h"

/* ---- argument ------------------------------------------------------------ */

int nq_lora_spec_parse(const char *arg, nq_lora_spec *out, nq_error *err)
{
    out->dir = arg;
    out->weight = 1.0;
    out->owned = NULL;
    const char *colon = strrchr(arg, ':');
    struct stat st;
    if (!colon || stat(arg, &st) == 0)
        return 0;
    char *end = NULL;
    errno = 0;
    double w = strtod(colon + 1, &end);
    if (colon[1] == '\0' || !end || *end || errno || !isfinite(w))
        return nq_fail(err, "--lora '%s': expected DIR or DIR:WEIGHT with a number WEIGHT", arg);
    size_t n = (size_t)(colon - arg);
    if (n == 0)
        return nq_fail(err, "--lora '%s': empty directory", arg);
    if (!(out->owned = strndup(arg, n)))
        return nq_fail(err, "out of memory");
    out->dir = out->owned;
    out->weight = w;
    return 0;
}

/* ---- merging --------------------------------------------------------------- */

/* w[o, :] += scale * (B[o, :] . A) for rows [o0, o0 + 4) and columns
 * [i0, i0 + 32): each element is summed over k in order with fused
 * multiply-adds, which is what torch's CPU matmul gives for a small inner
 * dimension (PEFT's merges in tests/test_lora.c match bit for bit), then
 * scaled and added in f32 as PEFT does ((B @ A) * scaling, then W += it).
 * The 4 x 32 tile stays in registers while A's rows stream past; fmaf is
 * exact on every path, the clone only makes it fast. */
#define TILE_R 4
#define TILE_C 32
/* Bm and w point at the block's first row. */
__attribute__((target_clones("fma", "default")))
static void tile(const float *Bm, const float *Am, int r, int64_t I, float scale, float *w,
                 int64_t i0)
{
    float acc[TILE_R][TILE_C] = {{0}};
    for (int k = 0; k < r; k++) {
        const float *a = Am + (int64_t)k * I + i0;
        for (int q = 0; q < TILE_R; q++) {
            const float b = Bm[q * r + k];
            for (int j = 0; j < TILE_C; j++)
                acc[q][j] = fmaf(b, a[j], acc[q][j]);
        }
    }
    for (int q = 0; q < TILE_R; q++) {
        float *row = w + q * I + i0;
        for (int j = 0; j < TILE_C; j++)
            row[j] = row[j] + acc[q][j] * scale;
    }
}

/* The same for one element (edges of the tiling); b: the row's B. */
static void element(const float *b, const float *Am, int r, int64_t I, float scale, float *w,
                    int64_t i)
{
    float acc = 0.0f;
    for (int k = 0; k < r; k++)
        acc = fmaf(b[k], Am[(int64_t)k * I + i], acc);
    w[i] = w[i] + acc * scale;
}

static void widen_bf16(const unsigned char *restrict in, float *restrict w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, in + 2 * i, 2);
        w[i] = nq_bf16_to_f32_inline(h);
    }
}

static void narrow_bf16(const float *restrict w, unsigned char *restrict out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h = nq_f32_to_bf16_inline(w[i]);
        memcpy(out + 2 * i, &h, 2);
    }
}

/* Any Inf or NaN (exponent bits all set) among w[0..n). */
static bool nonfinite(const float *w, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, w + i, 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad != 0;
}

typedef struct rows_job {
    const float *Bm;            /* [O, r] */
    const float *Am;            /* [r, I] */
    const float *mag;           /* DoRA: [O], else NULL */
    int r;
    int64_t O, I;
    float scale;
    float *w;                   /* [O, I] f32, updated in place; or NULL: */
    const unsigned char *in;    /* BF16 [O, I] in, */
    unsigned char *out;         /* BF16 [O, I] out, */
    float *scratch;             /* threads x TILE_R x I */
    int *bad;                   /* per worker: a non-finite result */
} rows_job;

/* Items are blocks of TILE_R rows (the last may be short).  Without a
 * whole-tensor f32 buffer (one LoRA on a BF16 tensor, the usual case) each
 * block is widened into a per-worker scratch, merged and rounded back: the
 * same arithmetic, a fraction of the memory traffic. */
static int rows_fn(void *ctx, size_t begin, size_t end, int worker)
{
    rows_job *j = ctx;
    int64_t I = j->I, full = I / TILE_C * TILE_C;
    for (size_t blk = begin; blk < end; blk++) {
        int64_t o0 = (int64_t)blk * TILE_R;
        int64_t o1 = o0 + TILE_R < j->O ? o0 + TILE_R : j->O;
        float *w = j->w ? j->w + o0 * I : j->scratch + (size_t)worker * TILE_R * (size_t)I;
        if (!j->w)
            widen_bf16(j->in + 2 * o0 * I, w, (size_t)((o1 - o0) * I));
        const float *Bm = j->Bm + o0 * j->r;
        if (o1 - o0 == TILE_R)
            for (int64_t i0 = 0; i0 < full; i0 += TILE_C)
                tile(Bm, j->Am, j->r, I, j->scale, w, i0);
        for (int64_t o = 0; o < o1 - o0; o++)
            for (int64_t i = o1 - o0 == TILE_R ? full : 0; i < I; i++)
                element(Bm + o * j->r, j->Am, j->r, I, j->scale, w + o * I, i);
        /* DoRA (peft/tuners/lora/variants.py DoraLinearVariant.merge_unsafe):
         * v = W + delta in f32 (now in w), its norm over the row (dim=1 of
         * [out, in]), W' = (m / norm) * v */
        for (int64_t o = 0; j->mag && o < o1 - o0; o++) {
            float *v = w + o * I;
            double ss = 0.0;
            for (int64_t i = 0; i < I; i++)
                ss += (double)v[i] * v[i];
            float f = j->mag[o0 + o] / (float)sqrt(ss);
            for (int64_t i = 0; i < I; i++)
                v[i] = f * v[i];
        }
        if (j->w)
            continue;
        j->bad[worker] |= nonfinite(w, (size_t)((o1 - o0) * I));
        narrow_bf16(w, j->out + 2 * o0 * I, (size_t)((o1 - o0) * I));
    }
    return 0;
}

/* Applies op to the f32 tensor w, or (w NULL; LINEAR, EMBED or DORA on a
 * BF16 tensor) from the bytes `in` to `out`, setting *bad on a non-finite
 * result. */
static int apply_op(const nq_lora *l, const nq_lora_op *op, float *w, const unsigned char *in,
                    unsigned char *out, int *bad, nq_error *err)
{
    const nq_tensor *base = op->base;
    if (op->kind == NQ_LORA_REPLACE)
        return nq_tensor_read_f32(op->src, 0, base->numel, w, err);
    if (op->kind == NQ_LORA_BIAS) {
        float *b = malloc(base->numel * sizeof *b);
        if (!b)
            return nq_fail(err, "out of memory");
        int rc = nq_tensor_read_f32(op->src, 0, base->numel, b, err);
        for (uint64_t i = 0; rc == 0 && i < base->numel; i++)
            w[i] = w[i] + b[i] * op->scale;
        free(b);
        return rc;
    }
    int64_t O = base->shape[0], I = base->shape[1];
    int r = op->r;
    float *Bm = malloc((size_t)O * r * sizeof *Bm), *Am = malloc((size_t)r * I * sizeof *Am);
    float *mag = op->mag ? malloc((size_t)O * sizeof *mag) : NULL;
    int threads = l->threads > 0 ? l->threads : 1;
    int rc = 0;
    if (!Bm || !Am || (op->mag && !mag)) {
        rc = nq_fail(err, "%s: out of memory merging LoRA", base->name);
        goto out;
    }
    if (op->kind == NQ_LORA_EMBED) {
        /* delta[v, h] = sum_k B[h, k] A[k, v] (PEFT: (B @ A)^T): row v's
         * factors are A's column v, the shared factor is B transposed */
        int64_t V = O, H = I;
        float *a = malloc((size_t)r * V * sizeof *a), *b = malloc((size_t)H * r * sizeof *b);
        if (!a || !b)
            rc = nq_fail(err, "out of memory");
        else if (nq_tensor_read_f32(op->A, 0, (uint64_t)r * V, a, err) != 0 ||
                 nq_tensor_read_f32(op->B, 0, (uint64_t)H * r, b, err) != 0)
            rc = -1;
        for (int64_t v = 0; rc == 0 && v < V; v++)
            for (int k = 0; k < r; k++)
                Bm[v * r + k] = a[(int64_t)k * V + v];
        for (int k = 0; rc == 0 && k < r; k++)
            for (int64_t h = 0; h < H; h++)
                Am[(int64_t)k * H + h] = b[h * r + k];
        free(a);
        free(b);
    } else if (op->E > 0) {
        /* ParamWrapper (peft/tuners/lora/layer.py get_delta_weight):
         * A.reshape(E, r, in): expert e's rows are e*r .. e*r + r-1;
         * B.reshape(out, r, E): expert e's column k is k*E + e */
        int64_t cols = (int64_t)r * op->E;
        float *row = malloc((size_t)cols * sizeof *row);
        if (!row)
            rc = nq_fail(err, "out of memory");
        else if (nq_tensor_read_f32(op->A, (uint64_t)op->e * r * I, (uint64_t)r * I, Am, err) != 0)
            rc = -1;
        for (int64_t o = 0; rc == 0 && o < O; o++) {
            if (nq_tensor_read_f32(op->B, (uint64_t)(o * cols), (uint64_t)cols, row, err) != 0)
                rc = -1;
            for (int k = 0; rc == 0 && k < r; k++)
                Bm[o * r + k] = row[(int64_t)k * op->E + op->e];
        }
        free(row);
    } else if (nq_tensor_read_f32(op->A, 0, (uint64_t)r * I, Am, err) != 0 ||
               nq_tensor_read_f32(op->B, 0, (uint64_t)O * r, Bm, err) != 0) {
        rc = -1;
    }
    if (rc == 0 && mag && nq_tensor_read_f32(op->mag, 0, (uint64_t)O, mag, err) != 0)
        rc = -1;
    float *scratch = NULL;
    int *bads = NULL;
    if (rc == 0 && !w &&
        (!(scratch = malloc((size_t)threads * TILE_R * (size_t)I * sizeof *scratch)) ||
         !(bads = calloc((size_t)threads, sizeof *bads))))
        rc = nq_fail(err, "%s: out of memory merging LoRA", base->name);
    if (rc == 0) {
        rows_job j = {Bm, Am, mag, r, O, I, op->scale, w, in, out, scratch, bads};
        /* fixed blocks: which thread computes a row never changes its bytes */
        nq_parallel_for((size_t)((O + TILE_R - 1) / TILE_R), 4, threads, rows_fn, &j);
        for (int t = 0; !w && t < threads; t++)
            *bad |= bads[t];
    }
    free(scratch);
    free(bads);
out:
    free(Bm);
    free(Am);
    free(mag);
    return rc;
}

/* The ops of tensor t: a range of l->ops (sorted by base, then creation). */
static size_t find_ops(const nq_lora *l, const nq_tensor *t, size_t *first)
{
    size_t lo = 0, hi = l->nops;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->ops[mid].base < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t e = lo;
    while (e < l->nops && l->ops[e].base == t)
        e++;
    *first = lo;
    return e - lo;
}

/* The base tensor to f32 and the merged f32 back to the base dtype, in
 * parallel over fixed blocks of elements (bytes independent of threads). */
typedef struct convert_job {
    const unsigned char *in;    /* base bytes */
    unsigned char *out;         /* merged bytes */
    float *w;
    nq_dtype dtype;
    int bad;                    /* a non-finite merged value was found */
} convert_job;

#define CONVERT_BLOCK 65536

static int convert_range(convert_job *j, size_t lo, size_t hi, bool narrow)
{
    size_t n = hi - lo;
    if (!narrow) {
        if (j->dtype == NQ_BF16)
            widen_bf16(j->in + 2 * lo, j->w + lo, n);
        else if (j->dtype == NQ_F32)
            memcpy(j->w + lo, j->in + 4 * lo, n * 4);
        else
            for (size_t i = lo; i < hi; i++) {
                uint16_t h;
                memcpy(&h, j->in + 2 * i, 2);
                j->w[i] = nq_f16_to_f32_inline(h);
            }
        return 0;
    }
    if (nonfinite(j->w + lo, n))
        return -1;
    if (j->dtype == NQ_BF16)
        narrow_bf16(j->w + lo, j->out + 2 * lo, n);
    else if (j->dtype == NQ_F32)
        memcpy(j->out + 4 * lo, j->w + lo, n * 4);
    else
        for (size_t i = lo; i < hi; i++) {
            uint16_t h = nq_f32_to_f16_inline(j->w[i]);
            memcpy(j->out + 2 * i, &h, 2);
        }
    return 0;
}

typedef struct convert_ctx {
    convert_job *j;
    uint64_t n;
    bool narrow;
} convert_ctx;

static int convert_fn(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    convert_ctx *c = ctx;
    for (size_t b = begin; b < end; b++) {
        size_t lo = b * CONVERT_BLOCK;
        size_t hi = lo + CONVERT_BLOCK < c->n ? lo + CONVERT_BLOCK : (size_t)c->n;
        if (convert_range(c->j, lo, hi, c->narrow) != 0)
            return -1;
    }
    return 0;
}

static int produce(void *ctx, const nq_tensor *t, void *out, nq_error *err)
{
    const nq_lora *l = ctx;
    size_t first, count = find_ops(l, t, &first);
    if (count == 0)
        return nq_fail(err, "internal: %s has no LoRA merge", t->name);
    if (t->dtype != NQ_BF16 && t->dtype != NQ_F16 && t->dtype != NQ_F32)
        return nq_fail(err, "%s: merging LoRA into a %s tensor is not supported", t->name,
                       nq_dtype_name(t->dtype));
    nq_tensor raw = *t;
    raw.source = NULL;
    nq_lora_kind kind = l->ops[first].kind;
    if (count == 1 && t->dtype == NQ_BF16 &&
        (kind == NQ_LORA_LINEAR || kind == NQ_LORA_EMBED || kind == NQ_LORA_DORA)) {
        int bad = 0;
        int rc = apply_op(l, &l->ops[first], NULL, t->data, out, &bad, err);
        nq_tensor_release(&raw);
        if (rc != 0 || !bad)
            return rc;
        /* rare: redo through the f32 buffer to name the element */
    }
    float *w = malloc((t->numel ? t->numel : 1) * sizeof *w);
    if (!w)
        return nq_fail(err, "%s: out of memory merging LoRA", t->name);
    int threads = l->threads > 0 ? l->threads : 1;
    convert_job j = {.in = t->data, .out = out, .w = w, .dtype = t->dtype};
    size_t blocks = (size_t)((t->numel + CONVERT_BLOCK - 1) / CONVERT_BLOCK);
    convert_ctx widen = {&j, t->numel, false}, narrow = {&j, t->numel, true};
    nq_parallel_for(blocks, 1, threads, convert_fn, &widen);
    int rc = 0;
    for (size_t i = first; rc == 0 && i < first + count; i++)
        rc = apply_op(l, &l->ops[i], w, NULL, NULL, NULL, err);
    /* the one rounding to the base dtype */
    if (rc == 0 && nq_parallel_for(blocks, 1, threads, convert_fn, &narrow) != 0) {
        for (uint64_t i = 0; i < t->numel; i++)
            if (!isfinite(w[i])) {
                rc = nq_fail(err, "%s: merging the LoRA adapter(s) gives a non-finite value at "
                                  "element %llu", t->name, (unsigned long long)i);
                break;
            }
    }
    nq_tensor_release(&raw);
    free(w);
    return rc;
}

nq_lora *nq_lora_attach(nq_checkpoint *ck, const nq_lora_spec *specs, size_t n,
                        const char *in_config_path, int threads, nq_error *err)
{
    nq_lora *l = nq_lora_resolve(ck, specs, n, in_config_path, threads, err);
    if (!l)
        return NULL;
    l->source = (nq_tensor_source){.ctx = l, .produce = produce};
    for (size_t i = 0; i < l->nops; i++) {
        if (i > 0 && l->ops[i].base == l->ops[i - 1].base)
            continue;
        if (nq_checkpoint_set_source(ck, l->ops[i].base->name, &l->source, err) != 0) {
            nq_lora_free(l);
            return NULL;
        }
    }
    return l;
}
