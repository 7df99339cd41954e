/* Whole-tensor NVFP4 / FP8 / INT4 encoding and decoding (see encode.h).
 *
 * The arithmetic follows ModelOpt's NVFP4QTensor and FP8 export as quoted in
 * docs/export-spec.md sections 2.1-2.2 (NVIDIA/Model-Optimizer
 * modelopt/torch/quantization/qtensor/nvfp4_tensor.py): every scale is
 * computed in f32 in the same order as the torch expressions, so the bytes
 * match ModelOpt's for the same BF16 weights with max calibration. */
#include "export/encode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/nvfp4.h"
#include "formats/int4.h"

/* Rows per work item: fixed, so chunk boundaries (and the order in which
 * statistics are summed) never depend on the thread count. */
#define ROWS_PER_CHUNK 16

typedef struct chunk_stats {
    double sq_err, sq_err_max, sq_ref;
} chunk_stats;

static void reduce_stats(const chunk_stats *cs, size_t nchunks, nq_encode_stats *st)
{
    nq_encode_stats s = {0};
    for (size_t c = 0; c < nchunks; c++) {
        s.sq_err += cs[c].sq_err;
        s.sq_err_max_scale += cs[c].sq_err_max;
        s.sq_ref += cs[c].sq_ref;
    }
    if (st)
        *st = s;
}

static float tensor_amax(const float *w, uint64_t n)
{
    float m = 0;
    for (uint64_t i = 0; i < n; i++) {
        float a = fabsf(w[i]);
        if (a > m)
            m = a;
    }
    return m;
}

static int check_finite(const float *w, uint64_t n, nq_error *err)
{
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return nq_fail(err, "element %llu is %s", (unsigned long long)i,
                           isnan(w[i]) ? "NaN" : "infinite");
    return 0;
}

/* ---- NVFP4 ---------------------------------------------------------------- */

typedef struct nvfp4_job {
    const float *w;
    int64_t cols;
    bool mse;
    float global_scale;
    uint8_t *packed, *scales;
    chunk_stats *stats;
} nvfp4_job;

static int nvfp4_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    nvfp4_job *j = ctx;
    chunk_stats *cs = &j->stats[begin / ROWS_PER_CHUNK];
    int64_t blocks = j->cols / NQ_NVFP4_BLOCK;
    for (size_t r = begin; r < end; r++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float *x = j->w + (int64_t)r * j->cols + b * NQ_NVFP4_BLOCK;
            uint8_t *codes_out = j->packed + ((int64_t)r * j->cols + b * NQ_NVFP4_BLOCK) / 2;
            uint8_t max_scale = nq_nvfp4_block_scale_max(x, j->global_scale);
            uint8_t scale = max_scale;
            double err_max;
            if (j->mse) {
                double err;
                err_max = nq_nvfp4_block_sq_error(x, max_scale, j->global_scale);
                scale = nq_nvfp4_block_scale_mse(x, j->global_scale, &err);
                nq_nvfp4_encode_block(x, scale, j->global_scale, codes_out);
                cs->sq_err += err;
            } else {
                /* one pass: the codes and their error */
                float denom = nq_e4m3_to_f32(scale) * j->global_scale;
                err_max = 0.0;
                for (int k = 0; k < NQ_NVFP4_BLOCK; k += 2) {
                    uint8_t lo = nq_e2m1_encode(x[k] / denom);
                    uint8_t hi = nq_e2m1_encode(x[k + 1] / denom);
                    codes_out[k / 2] = (uint8_t)(lo | (hi << 4));
                    double d0 = (double)x[k] - nq_e2m1_value(lo) * denom;
                    double d1 = (double)x[k + 1] - nq_e2m1_value(hi) * denom;
                    err_max += d0 * d0 + d1 * d1;
                }
                cs->sq_err += err_max;
            }
            j->scales[(int64_t)r * blocks + b] = scale;
            cs->sq_err_max += err_max;
            for (int k = 0; k < NQ_NVFP4_BLOCK; k++)
                cs->sq_ref += (double)x[k] * x[k];
        }
    }
    return 0;
}

int nq_encode_nvfp4(const float *w, int64_t rows, int64_t cols, bool mse, int threads,
                    uint8_t *packed, uint8_t *block_scales, float *global_scale,
                    nq_encode_stats *st, nq_error *err)
{
    if (cols % NQ_NVFP4_BLOCK != 0)
        return nq_fail(err, "in_features %lld is not a multiple of 16", (long long)cols);
    if (check_finite(w, (uint64_t)(rows * cols), err) != 0)
        return -1;
    float gs = nq_nvfp4_global_scale(tensor_amax(w, (uint64_t)(rows * cols)));
    size_t nchunks = ((size_t)rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    if (!cs)
        return nq_fail(err, "out of memory");
    nvfp4_job job = {w, cols, mse, gs, packed, block_scales, cs};
    nq_parallel_for((size_t)rows, ROWS_PER_CHUNK, threads, nvfp4_rows, &job);
    reduce_stats(cs, nchunks, st);
    free(cs);
    *global_scale = gs;
    return 0;
}

/* ---- FP8 ------------------------------------------------------------------ */

typedef struct fp8_job {
    const float *w;
    int64_t cols;
    float scale;
    uint8_t *out;
    chunk_stats *stats;
} fp8_job;

static int fp8_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    fp8_job *j = ctx;
    chunk_stats *cs = &j->stats[begin / ROWS_PER_CHUNK];
    for (size_t r = begin; r < end; r++) {
        const float *x = j->w + (int64_t)r * j->cols;
        uint8_t *q = j->out + (int64_t)r * j->cols;
        for (int64_t c = 0; c < j->cols; c++) {
            q[c] = nq_fp8_quantize_value(x[c], j->scale);
            double d = (double)x[c] - (double)nq_e4m3_to_f32(q[c]) * j->scale;
            cs->sq_err += d * d;
            cs->sq_ref += (double)x[c] * x[c];
        }
    }
    cs->sq_err_max = cs->sq_err;
    return 0;
}

int nq_encode_fp8(const float *w, int64_t rows, int64_t cols, int threads, uint8_t *out,
                  float *scale, nq_encode_stats *st, nq_error *err)
{
    if (check_finite(w, (uint64_t)(rows * cols), err) != 0)
        return -1;
    float s = nq_fp8_tensor_scale(tensor_amax(w, (uint64_t)(rows * cols)));
    size_t nchunks = ((size_t)rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    if (!cs)
        return nq_fail(err, "out of memory");
    fp8_job job = {w, cols, s, out, cs};
    nq_parallel_for((size_t)rows, ROWS_PER_CHUNK, threads, fp8_rows, &job);
    reduce_stats(cs, nchunks, st);
    free(cs);
    *scale = s;
    return 0;
}

/* ---- INT4 (GPTQ layout) --------------------------------------------------- */

typedef struct int4_job {
    const float *w;
    int64_t rows, cols;
    int group;
    bool mse;
    uint8_t *q;        /* [rows(out), cols(in)] codes 0..15, packed afterwards */
    uint16_t *scales;  /* [cols/group, rows] f16 */
    chunk_stats *stats;
} int4_job;

static int int4_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    int4_job *j = ctx;
    chunk_stats *cs = &j->stats[begin / ROWS_PER_CHUNK];
    int64_t groups = j->cols / j->group;
    for (size_t r = begin; r < end; r++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *x = j->w + (int64_t)r * j->cols + g * j->group;
            uint16_t max_scale = nq_int4_group_scale_max(x, j->group);
            double err_max = nq_int4_group_sq_error(x, j->group, max_scale);
            double e = err_max;
            uint16_t s = j->mse ? nq_int4_group_scale_mse(x, j->group, &e) : max_scale;
            nq_int4_encode_group(x, j->group, s, j->q + (int64_t)r * j->cols + g * j->group);
            j->scales[g * j->rows + (int64_t)r] = s;
            cs->sq_err += e;
            cs->sq_err_max += err_max;
            for (int k = 0; k < j->group; k++)
                cs->sq_ref += (double)x[k] * x[k];
        }
    }
    return 0;
}

int nq_encode_int4(const float *w, int64_t rows, int64_t cols, int group, bool mse, int threads,
                   int32_t *qweight, int32_t *qzeros, uint16_t *scales, int32_t *g_idx,
                   nq_encode_stats *st, nq_error *err)
{
    if (group <= 0 || cols % group != 0 || cols % 8 != 0 || rows % 8 != 0)
        return nq_fail(err, "shape [%lld, %lld] does not fit int4 group %d", (long long)rows,
                       (long long)cols, group);
    if (check_finite(w, (uint64_t)(rows * cols), err) != 0)
        return -1;
    uint8_t *q = malloc((size_t)(rows * cols));
    size_t nchunks = ((size_t)rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    chunk_stats *cs = calloc(nchunks ? nchunks : 1, sizeof *cs);
    if (!q || !cs) {
        free(q);
        free(cs);
        return nq_fail(err, "out of memory");
    }
    int4_job job = {w, rows, cols, group, mse, q, scales, cs};
    nq_parallel_for((size_t)rows, ROWS_PER_CHUNK, threads, int4_rows, &job);
    reduce_stats(cs, nchunks, st);
    nq_int4_pack_gptq(q, rows, cols, group, qweight, qzeros, g_idx);
    free(q);
    free(cs);
    return 0;
}

/* ---- reading back ---------------------------------------------------------- */

static const nq_tensor *companion(const nq_checkpoint *ck, const char *module, const char *suffix)
{
    char name[600];
    snprintf(name, sizeof name, "%s.%s", module, suffix);
    return nq_checkpoint_find(ck, name);
}

nq_stored_format nq_stored_format_of(const nq_checkpoint *ck, const char *module)
{
    if (companion(ck, module, "qweight"))
        return NQ_STORED_GPTQ;
    const nq_tensor *w = companion(ck, module, "weight");
    if (!w)
        return NQ_STORED_NONE;
    if (companion(ck, module, "weight_scale_2"))
        return NQ_STORED_NVFP4;
    if (w->dtype == NQ_F8_E4M3)
        return NQ_STORED_FP8;
    return nq_dtype_is_float(w->dtype) ? NQ_STORED_FLOAT : NQ_STORED_NONE;
}

static int expect(const nq_tensor *t, const char *module, const char *suffix, nq_dtype dt,
                  int ndim, int64_t a, int64_t b, nq_error *err)
{
    if (!t)
        return nq_fail(err, "%s: missing %s", module, suffix);
    bool ok = t->dtype == dt && (ndim == 0 ? t->numel == 1 && t->ndim <= 1 : t->ndim == ndim);
    if (ok && ndim >= 1 && t->shape[0] != a)
        ok = false;
    if (ok && ndim == 2 && t->shape[1] != b)
        ok = false;
    if (!ok)
        return nq_fail(err, "%s.%s: expected %s %s[%lld%s%.0lld], found %s with %d dims", module,
                       suffix, nq_dtype_name(dt), ndim == 0 ? "scalar " : "", (long long)a,
                       ndim == 2 ? ", " : "", ndim == 2 ? (long long)b : 0LL,
                       nq_dtype_name(t->dtype), t->ndim);
    return 0;
}

static int positive_scalar(const nq_tensor *t, const char *module, float *v, nq_error *err)
{
    memcpy(v, t->data, sizeof *v);
    if (!(isfinite(*v) && *v > 0))
        return nq_fail(err, "%s.%s: scale %g is not finite and positive", module,
                       strrchr(t->name, '.') + 1, *v);
    return 0;
}

float *nq_decode_module(const nq_checkpoint *ck, const char *module, int gptq_group,
                        int64_t *rows, int64_t *cols, nq_error *err)
{
    nq_stored_format f = nq_stored_format_of(ck, module);
    float *out = NULL;
    if (f == NQ_STORED_NVFP4) {
        const nq_tensor *w = companion(ck, module, "weight");
        const nq_tensor *s = companion(ck, module, "weight_scale");
        const nq_tensor *s2 = companion(ck, module, "weight_scale_2");
        if (w->ndim != 2 || w->dtype != NQ_U8) {
            nq_fail(err, "%s.weight: NVFP4 weight must be U8 [out, in/2]", module);
            return NULL;
        }
        int64_t o = w->shape[0], i = w->shape[1] * 2;
        float gs;
        if (i % 16 != 0 || expect(s, module, "weight_scale", NQ_F8_E4M3, 2, o, i / 16, err) ||
            expect(s2, module, "weight_scale_2", NQ_F32, 0, 0, 0, err) ||
            positive_scalar(s2, module, &gs, err))
            return NULL;
        for (uint64_t k = 0; k < s->numel; k++) {
            float v = nq_e4m3_to_f32(s->data[k]);
            if (!(isfinite(v) && v > 0)) {
                nq_fail(err, "%s.weight_scale: block scale %llu is %g", module,
                        (unsigned long long)k, v);
                return NULL;
            }
        }
        out = malloc((size_t)(o * i) * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        for (int64_t r = 0; r < o; r++)
            nq_nvfp4_decode_row(w->data + r * i / 2, s->data + r * i / 16, gs, i, out + r * i);
        *rows = o;
        *cols = i;
    } else if (f == NQ_STORED_FP8) {
        const nq_tensor *w = companion(ck, module, "weight");
        const nq_tensor *s = companion(ck, module, "weight_scale");
        float scale;
        if (w->ndim != 2) {
            nq_fail(err, "%s.weight: FP8 weight must be 2-D", module);
            return NULL;
        }
        if (expect(s, module, "weight_scale", NQ_F32, 0, 0, 0, err) ||
            positive_scalar(s, module, &scale, err))
            return NULL;
        out = malloc(w->numel * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        for (uint64_t k = 0; k < w->numel; k++)
            out[k] = nq_e4m3_to_f32(w->data[k]) * scale;
        *rows = w->shape[0];
        *cols = w->shape[1];
    } else if (f == NQ_STORED_GPTQ) {
        const nq_tensor *qw = companion(ck, module, "qweight");
        const nq_tensor *qz = companion(ck, module, "qzeros");
        const nq_tensor *sc = companion(ck, module, "scales");
        const nq_tensor *gi = companion(ck, module, "g_idx");
        if (qw->ndim != 2 || qw->dtype != NQ_I32 || !sc || sc->ndim != 2) {
            nq_fail(err, "%s: GPTQ qweight must be I32 [in/8, out] with 2-D scales", module);
            return NULL;
        }
        int64_t i = qw->shape[0] * 8, o = qw->shape[1];
        int64_t ngroups = sc->shape[0];
        if (ngroups <= 0 || i % ngroups != 0) {
            nq_fail(err, "%s.scales: %lld groups do not divide in_features %lld", module,
                    (long long)ngroups, (long long)i);
            return NULL;
        }
        int g = (int)(i / ngroups);
        (void)gptq_group; /* per-module `dynamic` overrides may differ from it */
        if (expect(sc, module, "scales", NQ_F16, 2, ngroups, o, err) ||
            expect(qz, module, "qzeros", NQ_I32, 2, ngroups, o / 8, err) ||
            expect(gi, module, "g_idx", NQ_I32, 1, i, 0, err))
            return NULL;
        out = malloc((size_t)(o * i) * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        if (nq_int4_unpack_gptq(qw->data, qz->data, sc->data, gi->data, o, i, g, out, err) != 0) {
            free(out);
            return NULL;
        }
        *rows = o;
        *cols = i;
    } else {
        nq_fail(err, "%s: not stored in a quantized format", module);
    }
    return out;
}
