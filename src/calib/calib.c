#include "calib/calib.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "formats/nvfp4.h"
#include "cuda/cuda.h"

/* ---- data ------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
} strbuf;

static int sb_add(strbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->buf, cap);
        if (!p)
            return -1;
        b->buf = p;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
    return 0;
}

static int sb_adds(strbuf *b, const char *s)
{
    return sb_add(b, s, strlen(s));
}

/* Appends the tokens of text to *ids. */
static int append_tokens(const nq_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                         size_t *n, size_t *cap, int32_t separator, nq_error *err)
{
    int32_t *t = NULL;
    size_t nt = 0;
    if (nq_tokenizer_encode(tok, text, len, false, &t, &nt, err) != 0)
        return -1;
    if (*n + nt + 1 > *cap) {
        size_t c = (*n + nt + 1) * 2;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p) {
            free(t);
            return nq_fail(err, "calibration: out of memory for %zu tokens", c);
        }
        *ids = p;
        *cap = c;
    }
    if (*n > 0 && separator >= 0)
        (*ids)[(*n)++] = separator;
    memcpy(*ids + *n, t, nt * sizeof *t);
    *n += nt;
    free(t);
    return 0;
}

/* One JSONL record as text; NULL with err set when it is neither form. */
static char *render_record(const char *path, size_t line_no, json_t *rec, bool chatml,
                           size_t *out_len, nq_error *err)
{
    strbuf b = {0};
    json_t *text = json_object_get(rec, "text");
    json_t *msgs = json_object_get(rec, "messages");
    if (json_is_string(text)) {
        if (sb_add(&b, json_string_value(text), json_string_length(text)) != 0)
            goto oom;
    } else if (json_is_array(msgs)) {
        size_t i;
        json_t *m;
        json_array_foreach(msgs, i, m)
        {
            json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
            if (!json_is_string(role) || !json_is_string(content)) {
                nq_fail(err, "%s:%zu: message %zu needs string \"role\" and \"content\"", path,
                        line_no, i);
                free(b.buf);
                return NULL;
            }
            if ((chatml ? sb_adds(&b, "<|im_start|>") : 0) != 0 ||
                sb_add(&b, json_string_value(role), json_string_length(role)) != 0 ||
                sb_adds(&b, chatml ? "\n" : ": ") != 0 ||
                sb_add(&b, json_string_value(content), json_string_length(content)) != 0 ||
                sb_adds(&b, chatml ? "<|im_end|>\n" : "\n") != 0)
                goto oom;
        }
    } else {
        nq_fail(err, "%s:%zu: a JSONL record needs a \"text\" string or a \"messages\" array",
                path, line_no);
        return NULL;
    }
    *out_len = b.len;
    if (!b.buf)
        b.buf = calloc(1, 1);
    return b.buf;
oom:
    free(b.buf);
    nq_fail(err, "%s:%zu: out of memory", path, line_no);
    return NULL;
}

static bool is_jsonl(const char *path, const char *text, size_t len)
{
    size_t n = strlen(path);
    if (n >= 6 && strcmp(path + n - 6, ".jsonl") == 0)
        return true;
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r'))
        i++;
    return i < len && text[i] == '{';
}

/* Offset of the first byte that is not part of valid UTF-8 (overlongs,
 * surrogates and code points past U+10FFFF included) or is a NUL, or len. */
static size_t first_bad_utf8(const unsigned char *s, size_t len, bool *nul)
{
    size_t i = 0;
    *nul = false;
    while (i < len) {
        unsigned c = s[i];
        if (c == 0) {
            *nul = true;
            return i;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (n == 0 || i + n > len)
            return i;
        unsigned lo = 0x80, hi = 0xbf;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
        else if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return i;
        i += n;
    }
    return len;
}

int nq_calib_tokens(const char *path, const nq_tokenizer *tok, int samples, int len,
                    int32_t **ids_out, int *out_samples, int *out_len, size_t *stream_tokens,
                    nq_error *err)
{
    *ids_out = NULL;
    size_t text_len;
    char *text = nq_read_file(path, &text_len, err);
    if (!text)
        return -1;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;
    int32_t eos = nq_tokenizer_eos_id(tok);
    if (is_jsonl(path, text, text_len)) {
        bool chatml = nq_tokenizer_token_id(tok, "<|im_start|>") >= 0 &&
                      nq_tokenizer_token_id(tok, "<|im_end|>") >= 0;
        size_t line_no = 0;
        char *p = text, *end = text + text_len;
        while (p < end) {
            char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
            line_no++;
            size_t k = 0;
            while (k < ll && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r'))
                k++;
            if (k < ll) {
                json_error_t je;
                json_t *rec = json_loadb(p, ll, JSON_REJECT_DUPLICATES, &je);
                if (!rec || !json_is_object(rec)) {
                    nq_fail(err, "%s:%zu: not a JSON object%s%s", path, line_no, rec ? "" : ": ",
                            rec ? "" : je.text);
                    json_decref(rec);
                    goto done;
                }
                size_t rl;
                char *r = render_record(path, line_no, rec, chatml, &rl, err);
                json_decref(rec);
                if (!r)
                    goto done;
                int a = append_tokens(tok, r, rl, &ids, &n, &cap, eos, err);
                free(r);
                if (a != 0)
                    goto done;
            }
            p += ll + 1;
        }
    } else {
        /* Calibration on a binary file or the wrong encoding still runs
         * (the tokenizer keeps raw bytes), but the scales it gives describe
         * that data, not text: say so. */
        bool nul;
        size_t bad = first_bad_utf8((const unsigned char *)text, text_len, &nul);
        if (bad < text_len)
            nq_warn("%s: byte %zu (0x%02x) %s: calibrating on it as raw bytes (is this a text "
                    "file?)",
                    path, bad, (unsigned char)text[bad],
                    nul ? "is a NUL byte, which text does not contain" : "is not valid UTF-8");
        if (append_tokens(tok, text, text_len, &ids, &n, &cap, -1, err) != 0)
            goto done;
    }
    if (n < 2) {
        nq_fail(err, "%s: calibration text holds %zu tokens; need at least 2", path, n);
        goto done;
    }
    int L = (size_t)len < n ? len : (int)n;
    int S = (int)(n / (size_t)L) < samples ? (int)(n / (size_t)L) : samples;
    int32_t *out = malloc((size_t)S * L * sizeof *out);
    if (!out) {
        nq_fail(err, "%s: out of memory for %d x %d tokens", path, S, L);
        goto done;
    }
    /* evenly spread, non-overlapping: window i starts at i * (n / S) */
    size_t stride = n / (size_t)S;
    for (int s = 0; s < S; s++)
        memcpy(out + (size_t)s * L, ids + (size_t)s * stride, (size_t)L * sizeof *out);
    *ids_out = out;
    *out_samples = S;
    *out_len = L;
    *stream_tokens = n;
    rc = 0;
done:
    free(ids);
    free(text);
    return rc;
}

/* ---- statistics ------------------------------------------------------- */

nq_linear_stats *nq_calib_find(nq_calib_stats *s, const char *module)
{
    for (size_t i = 0; i < s->count; i++)
        if (strcmp(s->items[i].module->name, module) == 0)
            return &s->items[i];
    return NULL;
}

float nq_calib_act_candidate(float amax, int k)
{
    return (float)((double)amax / (6.0 * 448.0) * exp2(-k / 4.0));
}

/* rows of x, NVFP4-quantized with gs, into xq */
static void fake_quant_rows(const float *x, size_t count, float gs, float *xq)
{
    memcpy(xq, x, count * sizeof *xq);
    nq_nvfp4_fake_quant(xq, (int64_t)count, gs);
}

static int on_act(nq_linear_stats *st, const nq_linear_input *in, const char *name, nq_error *err)
{
    size_t count = (size_t)in->rows * in->in_features;
    float *xq = malloc(count * sizeof *xq);
    if (!xq)
        return nq_fail(err, "%s: out of memory", name);
    for (int k = 0; k < NQ_ACT_CANDIDATES; k++) {
        fake_quant_rows(in->x, count, nq_calib_act_candidate(st->act_amax_ref, k), xq);
        double e = 0.0;
        for (size_t i = 0; i < count; i++) {
            double d = (double)in->x[i] - xq[i];
            e += d * d;
        }
        st->act_err[k] += e;
    }
    free(xq);
    float ref = st->act_amax_ref;
    for (size_t i = 0; i < count; i++) {
        float a = fabsf(in->x[i]);
        int bin = a > 0 ? (int)floor(-8.0 * log2((double)a / ref)) : NQ_ACT_HIST_BINS - 1;
        bin = bin < 0 ? 0 : bin >= NQ_ACT_HIST_BINS ? NQ_ACT_HIST_BINS - 1 : bin;
        st->act_hist[bin]++;
    }
    return 0;
}

static int on_served(nq_linear_stats *st, const nq_linear_input *in,
                     const char *name, nq_error *err)
{
    int d = in->in_features;
    enum { CHUNK = 64 };
    double *qd = malloc((size_t)CHUNK * d * sizeof *qd);
    float *xq = malloc((size_t)CHUNK * d * sizeof *xq);
    if (!qd || !xq) {
        free(qd), free(xq);
        return nq_fail(err, "%s: out of memory", name);
    }
    for (int r0 = 0; r0 < in->rows; r0 += CHUNK) {
        int rows = in->rows - r0 < CHUNK ? in->rows - r0 : CHUNK;
        size_t count = (size_t)rows * d;
        fake_quant_rows(in->x + (size_t)r0 * d, count, st->act_gs, xq);
        for (size_t i = 0; i < count; i++)
            qd[i] = xq[i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, rows, 1.0, qd, d, 1.0, st->hessian,
                    d);
    }
    free(qd), free(xq);
    return 0;
}

/* The plan's module of a Linear weight ("...weight") when its input is
 * calibrated: 1 (*out set), 0 not observed, -1 error. */
static int observed_module(const nq_plan *plan, const char *weight_name, int in_features,
                           const nq_plan_module **out, char name[256], nq_error *err)
{
    size_t len = strlen(weight_name);
    if (len < 8 || len - 7 >= 256)
        return 0;
    snprintf(name, 256, "%.*s", (int)(len - 7), weight_name);
    const nq_plan_module *m = nq_plan_find(plan, name);
    if (!m || m->format == NQ_FORMAT_KEEP)
        return 0;
    if (m->in_features != in_features)
        return nq_fail(err, "%s: input of %d features, the plan says %lld", name, in_features,
                       (long long)m->in_features);
    *out = m;
    return 1;
}

/* A new item for module m (sample buffer, Hessian when asked). */
static nq_linear_stats *new_item(nq_calib_stats *s, const nq_plan_module *m, int in_features,
                                 nq_error *err)
{
    if (s->count == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        nq_linear_stats *p = realloc(s->items, cap * sizeof *p);
        if (!p) {
            nq_fail(err, "%s: out of memory for statistics", m->name);
            return NULL;
        }
        s->items = p;
        s->cap = cap;
    }
    nq_linear_stats *st = &s->items[s->count++];
    memset(st, 0, sizeof *st);
    st->module = m;
    st->sample = malloc((size_t)NQ_CALIB_SAMPLE_ROWS * in_features * sizeof *st->sample);
    if (s->hessians)
        st->hessian = calloc((size_t)in_features * in_features, sizeof(double));
    if (!st->sample || (s->hessians && !st->hessian)) {
        nq_fail(err, "%s: out of memory for statistics of %d inputs", m->name, in_features);
        return NULL;
    }
    return st;
}

static int on_linear(void *ctx, const nq_linear_input *in, nq_error *err)
{
    nq_calib_stats *s = ctx;
    char name[256];
    nq_linear_stats *st = NULL;
    size_t len = strlen(in->weight_name);
    if (len >= 8 && len - 7 < 256) {
        snprintf(name, sizeof name, "%.*s", (int)(len - 7), in->weight_name);
        st = nq_calib_find(s, name);
    }
    if (s->mode == NQ_CALIB_ACT)
        return st && st->act_amax_ref > 0 ? on_act(st, in, name, err) : 0;
    if (s->mode == NQ_CALIB_SERVED)
        return st && st->hessian && st->act_gs > 0 ? on_served(st, in, name, err) : 0;
    if (!st) {
        const nq_plan_module *m = NULL;
        int w = observed_module(s->plan, in->weight_name, in->in_features, &m, name, err);
        if (w <= 0)
            return w;
        if (!(st = new_item(s, m, in->in_features, err)))
            return -1;
    }
    int d = in->in_features;
    size_t count = (size_t)in->rows * d;
    float amax = st->amax;
    for (size_t i = 0; i < count; i++) {
        float a = fabsf(in->x[i]);
        if (!(a <= amax)) {
            /* the layer's weights were checked finite when it was loaded,
             * so this is the float model's own arithmetic overflowing */
            if (!isfinite(a))
                return nq_fail(err, "%s: the float model's activation entering this Linear is %s "
                                    "(row %zu, feature %zu) during calibration; every weight and "
                                    "config value was finite, so layer %d overflows on this "
                                    "calibration text",
                               name, a != a ? "NaN" : "infinite", i / (size_t)d, i % (size_t)d,
                               in->layer);
            amax = a;
        }
    }
    st->amax = amax;
    int take = NQ_CALIB_SAMPLE_ROWS - st->sample_rows;
    if (take > in->rows)
        take = in->rows;
    if (take > 0) {
        memcpy(st->sample + (size_t)st->sample_rows * d, in->x, (size_t)take * d * sizeof(float));
        st->sample_rows += take;
    }
    if (st->hessian) {
        /* H += X^T X in double, a block of rows at a time; the fixed order
         * of rows keeps the sums the same whatever the thread count */
        enum { CHUNK = 64 };
        double *xd = malloc((size_t)CHUNK * d * sizeof *xd);
        if (!xd)
            return nq_fail(err, "%s: out of memory", name);
        for (int r0 = 0; r0 < in->rows; r0 += CHUNK) {
            int rows = in->rows - r0 < CHUNK ? in->rows - r0 : CHUNK;
            for (size_t i = 0; i < (size_t)rows * d; i++)
                xd[i] = in->x[(size_t)r0 * d + i];
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, rows, 1.0, xd, d, 1.0,
                        st->hessian, d);
        }
        free(xd);
    }
    st->rows += (uint64_t)in->rows;
    return 0;
}

static int on_kv(void *ctx, const nq_kv_output *kv, nq_error *err)
{
    nq_calib_stats *s = ctx;
    size_t count = (size_t)kv->n * kv->kv_dim;
    for (size_t i = 0; i < count; i++) {
        float a = fabsf(kv->k[i]), b = fabsf(kv->v[i]);
        if (!isfinite(a) || !isfinite(b))
            return nq_fail(err, "layer %d: the attention %s is %s during calibration (token %zu); "
                                "no FP8 KV-cache scale can be derived",
                           kv->layer, isfinite(a) ? "value" : "key",
                           (isfinite(a) ? b : a) != (isfinite(a) ? b : a) ? "NaN" : "infinite",
                           i / (size_t)kv->kv_dim);
        s->k_amax = a > s->k_amax ? a : s->k_amax;
        s->v_amax = b > s->v_amax ? b : s->v_amax;
    }
    s->has_kv = true;
    return 0;
}

nq_forward_hooks nq_calib_hooks(nq_calib_stats *s)
{
    return (nq_forward_hooks){.linear_input = on_linear, .kv_output = on_kv, .ctx = s};
}

void nq_calib_stats_reset(nq_calib_stats *s)
{
    for (size_t i = 0; i < s->count; i++) {
        free(s->items[i].hessian);
        free(s->items[i].sample);
    }
    free(s->items);
    s->items = NULL;
    s->count = s->cap = 0;
    s->k_amax = s->v_amax = 0.0f;
    s->has_kv = false;
    s->mode = NQ_CALIB_FLOAT;
}

/* ---- statistics computed on a GPU ------------------------------------- */

static int device_wanted(void *ctx, const char *weight_name, int in_features, nq_error *err)
{
    nq_calib_stats *s = ctx;
    const nq_plan_module *m = NULL;
    char name[256];
    return observed_module(s->plan, weight_name, in_features, &m, name, err);
}

int nq_calib_device_begin(nq_calib_stats *s, struct nq_cuda *g, nq_error *err)
{
    nq_cuda_stats_spec spec = {.wanted = device_wanted, .ctx = s, .hessians = s->hessians,
                               .sample_rows = NQ_CALIB_SAMPLE_ROWS};
    return nq_cuda_stats_begin(g, &spec, err);
}

int nq_calib_device_collect(nq_calib_stats *s, struct nq_cuda *g, nq_error *err)
{
    int rc = -1;
    size_t n = nq_cuda_stats_count(g);
    for (size_t i = 0; i < n; i++) {
        nq_cuda_linear_stat ds;
        if (nq_cuda_stats_item(g, i, &ds, NULL, err) != 0)
            goto done;
        const nq_plan_module *m = NULL;
        char name[256];
        int w = observed_module(s->plan, ds.weight_name, ds.in_features, &m, name, err);
        if (w < 0)
            goto done;
        if (w == 0)
            continue;
        if (ds.nonfinite) {
            nq_fail(err, "%s: the float model's activation entering this Linear is NaN or "
                         "infinite during calibration (on the GPU); every weight and config "
                         "value was finite, so layer %d overflows on this calibration text",
                    name, ds.layer);
            goto done;
        }
        nq_linear_stats *st = new_item(s, m, ds.in_features, err);
        if (!st)
            goto done;
        if (st->hessian && nq_cuda_stats_item(g, i, &ds, st->hessian, err) != 0)
            goto done;
        st->amax = ds.amax;
        st->rows = ds.rows;
        st->sample_rows = ds.sample_rows;
        memcpy(st->sample, ds.sample, (size_t)ds.sample_rows * ds.in_features * sizeof(float));
    }
    bool seen, nonfinite;
    float k, v;
    if (nq_cuda_stats_kv(g, &k, &v, &seen, &nonfinite, err) != 0)
        goto done;
    if (nonfinite) {
        nq_fail(err, "an attention key or value is NaN or infinite during calibration (on the "
                     "GPU); no FP8 KV-cache scale can be derived");
        goto done;
    }
    if (seen) {
        s->k_amax = k > s->k_amax ? k : s->k_amax;
        s->v_amax = v > s->v_amax ? v : s->v_amax;
        s->has_kv = true;
    }
    rc = 0;
done:
    nq_cuda_stats_end(g);
    return rc;
}
