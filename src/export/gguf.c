#include "export/gguf.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/interrupt.h"
#include "export/dequant.h"
#include "formats/encode.h"
#include "export/gguf_vocab.h"
#include "formats/floatconv.h"
#include "formats/ggml_blocks.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/config.h"

int nq_gguf_rest_type_from_name(const char *s, uint32_t *type)
{
    if (strcmp(s, "q8_0") == 0)
        *type = NQ_GGML_Q8_0;
    else if (strcmp(s, "bf16") == 0)
        *type = NQ_GGML_BF16;
    else if (strcmp(s, "f16") == 0)
        *type = NQ_GGML_F16;
    else if (strcmp(s, "f32") == 0)
        *type = NQ_GGML_F32;
    else
        return -1;
    return 0;
}

typedef enum src_kind {
    SRC_FLOAT,      /* float tensors, converted to the output type row by row */
    SRC_NEG_EXP,    /* A = -exp(A_log), F32 */
    SRC_NVFP4,      /* stored NVFP4 modules, repacked */
    SRC_ENCODE,     /* float Linears encoded to NVFP4 here */
    SRC_VALUES,     /* F32 values held in memory (scales) */
} src_kind;

typedef struct out_tensor {
    char name[NQ_GGUF_MAX_NAME];
    uint32_t type;
    int ndim;
    int64_t ne[4];
    src_kind kind;
    char **src;       /* tensor names (FLOAT/NEG_EXP) or module names (NVFP4/ENCODE) */
    int nsrc;
    float *values;    /* SRC_VALUES; for ENCODE scales, filled while the weight is written */
    int nvalues;
    bool is_weight;   /* counts as parameters */
    int perm_heads;   /* > 0: q/k rows permuted as the converter's LlamaModel.permute */
} out_tensor;

/* The converter (GraniteHybridModel has undo_permute) reorders the rows of
 * q_proj and k_proj for llama.cpp's RoPE layout even though Nemotron-H's
 * attention has no RoPE: with the same order in q and k, q.k is unchanged.
 * Output row r of a head of hs rows is source row (r % 2) * hs / 2 + r / 2
 * (reshape (heads, 2, hs/2), swap the last two axes). */
static uint64_t source_row(const out_tensor *o, uint64_t r)
{
    if (o->perm_heads <= 0)
        return r;
    uint64_t hs = (uint64_t)o->ne[1] / (uint64_t)o->perm_heads, h = r / hs, k = r % hs;
    return h * hs + (k % 2) * (hs / 2) + k / 2;
}

typedef struct exporter {
    const nq_gguf_options *opt;
    nq_checkpoint *ck;
    nq_model_config cfg;
    out_tensor *t;
    size_t nt, cap;
    bool *consumed;   /* per checkpoint tensor */
    char **a4_names;  /* NVFP4 weights whose activations stay above 4 bits */
    size_t na4;
    bool weight_only_algo; /* hf_quant_config says W4A16_NVFP4 */
    nq_gguf_summary *sum;
} exporter;

static out_tensor *new_out(exporter *x, const char *name, uint32_t type, src_kind kind,
                           nq_error *err)
{
    if (x->nt == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 128;
        out_tensor *t = realloc(x->t, cap * sizeof *t);
        if (!t) {
            nq_fail(err, "out of memory");
            return NULL;
        }
        x->t = t;
        x->cap = cap;
    }
    out_tensor *o = &x->t[x->nt++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->type = type;
    o->kind = kind;
    return o;
}

static int add_src(out_tensor *o, const char *name, nq_error *err)
{
    char **s = realloc(o->src, (size_t)(o->nsrc + 1) * sizeof *s);
    if (!s)
        return nq_fail(err, "out of memory");
    o->src = s;
    if (!(s[o->nsrc] = strdup(name)))
        return nq_fail(err, "out of memory");
    o->nsrc++;
    return 0;
}

static void consume(exporter *x, const char *name)
{
    size_t n = nq_checkpoint_count(x->ck);
    for (size_t i = 0; i < n; i++)
        if (strcmp(nq_checkpoint_tensor(x->ck, i)->name, name) == 0) {
            x->consumed[i] = true;
            return;
        }
}

static const nq_tensor *need_tensor(exporter *x, const char *name, nq_error *err)
{
    const nq_tensor *t = nq_checkpoint_find(x->ck, name);
    if (!t) {
        nq_fail(err, "%s: tensor '%s' is missing", nq_checkpoint_dir(x->ck), name);
        return NULL;
    }
    if (!nq_dtype_is_float(t->dtype)) {
        nq_fail(err, "%s: tensor '%s' is %s, expected a float type", nq_checkpoint_dir(x->ck), name,
                nq_dtype_name(t->dtype));
        return NULL;
    }
    consume(x, name);
    return t;
}

/* An F32 tensor from one float source with the given ggml extents. */
static int add_f32(exporter *x, const char *src, const char *dst, int ndim, const int64_t *ne,
                   src_kind kind, bool optional, nq_error *err)
{
    if (optional && !nq_checkpoint_find(x->ck, src))
        return 0;
    const nq_tensor *t = need_tensor(x, src, err);
    if (!t)
        return -1;
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (uint64_t)ne[d];
    if (n != t->numel)
        return nq_fail(err, "%s: '%s' has %llu elements, expected %llu", nq_checkpoint_dir(x->ck),
                       src, (unsigned long long)t->numel, (unsigned long long)n);
    out_tensor *o = new_out(x, dst, NQ_GGML_F32, kind, err);
    if (!o)
        return -1;
    o->ndim = ndim;
    memcpy(o->ne, ne, (size_t)ndim * sizeof *ne);
    return add_src(o, src, err);
}

/* The rest type for a float matrix whose rows have `ne0` elements. */
static uint32_t rest_type_for(const exporter *x, int64_t ne0)
{
    if (x->opt->rest_type == NQ_GGML_Q8_0 && ne0 % NQ_Q8_0_BLOCK != 0)
        return NQ_GGML_F16; /* gguf-py's QuantError fallback */
    return x->opt->rest_type;
}

static int add_scale_values(exporter *x, const char *wname, const char *suffix, float *vals,
                            int n, bool stacked, nq_error *err)
{
    /* _write_scale_tensor / _write_scales_tensor: omitted when trivially 1 */
    bool trivial = true;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)vals[i] - 1.0);
        if (stacked ? d > 1e-6 + 1e-5 : d >= 1e-6)
            trivial = false;
    }
    if (trivial) {
        free(vals);
        return 0;
    }
    char name[NQ_GGUF_MAX_NAME + 16];
    size_t bl = strlen(wname) - strlen(".weight");
    snprintf(name, sizeof name, "%.*s.%s", (int)bl, wname, suffix);
    if (strlen(name) >= NQ_GGUF_MAX_NAME) {
        free(vals);
        return nq_fail(err, "tensor name '%s' is too long for GGUF", name);
    }
    out_tensor *o = new_out(x, name, NQ_GGML_F32, SRC_VALUES, err);
    if (!o) {
        free(vals);
        return -1;
    }
    o->ndim = 1;
    o->ne[0] = n;
    o->values = vals;
    o->nvalues = n;
    return 0;
}

static int scalar_f32(exporter *x, const char *name, float dflt, float *v, nq_error *err)
{
    const nq_tensor *t = nq_checkpoint_find(x->ck, name);
    if (!t) {
        *v = dflt;
        return 0;
    }
    if (t->dtype != NQ_F32 || t->numel != 1)
        return nq_fail(err, "%s: '%s' must be an F32 scalar", nq_checkpoint_dir(x->ck), name);
    memcpy(v, t->data, 4);
    if (!isfinite(*v) || *v <= 0)
        return nq_fail(err, "%s: '%s' is %g (must be finite and positive)", nq_checkpoint_dir(x->ck),
                       name, (double)*v);
    consume(x, name);
    return 0;
}

/* One Linear, or a stack of n (routed experts), under GGUF name `dst`. */
static int add_linear(exporter *x, char **modules, int n, const char *dst, bool routed,
                      nq_error *err)
{
    const char *dir = nq_checkpoint_dir(x->ck);
    nq_stored_format f0 = NQ_STORED_NONE;
    int64_t rows = 0, cols = 0;
    for (int i = 0; i < n; i++) {
        nq_stored_format f = nq_stored_format_of(x->ck, modules[i]);
        char wn[320];
        snprintf(wn, sizeof wn, "%s.weight", modules[i]);
        const nq_tensor *w = nq_checkpoint_find(x->ck, wn);
        if (f == NQ_STORED_NONE)
            return nq_fail(err, "%s: tensor '%s' is missing", dir, wn);
        if (f == NQ_STORED_FP8 || f == NQ_STORED_GPTQ)
            return nq_fail(err, "%s: '%s' is stored as %s; GGUF export reads BF16/F16/F32 or NVFP4 checkpoints",
                           dir, modules[i], f == NQ_STORED_FP8 ? "FP8" : "GPTQ INT4");
        if (i > 0 && f != f0)
            return nq_fail(err, "%s: '%s' is stored differently from '%s' (one GGUF tensor holds them all)",
                           dir, modules[i], modules[0]);
        f0 = f;
        if (w->ndim != 2)
            return nq_fail(err, "%s: '%s' must be 2-D", dir, wn);
        int64_t r = w->shape[0], c = f == NQ_STORED_NVFP4 ? w->shape[1] * 2 : w->shape[1];
        if (i > 0 && (r != rows || c != cols))
            return nq_fail(err, "%s: '%s' has a different shape from '%s'", dir, wn, modules[0]);
        rows = r;
        cols = c;
    }
    bool encode = f0 == NQ_STORED_FLOAT && routed && x->opt->quantize_experts;
    bool nvfp4 = f0 == NQ_STORED_NVFP4 || encode;
    if (nvfp4 && cols % NQ_GGML_NVFP4_BLOCK != 0)
        return nq_fail(err, "%s: '%s' has %lld inputs, not a multiple of 64 (ggml's NVFP4 block)", dir,
                       modules[0], (long long)cols);
    uint32_t type = nvfp4 ? NQ_GGML_NVFP4 : rest_type_for(x, cols);
    out_tensor *o = new_out(x, dst, type, encode ? SRC_ENCODE : nvfp4 ? SRC_NVFP4 : SRC_FLOAT, err);
    if (!o)
        return -1;
    o->is_weight = true;
    o->ndim = n > 1 || routed ? 3 : 2;
    o->ne[0] = cols;
    o->ne[1] = rows;
    o->ne[2] = n;
    if (o->ndim == 2)
        o->ne[2] = 1;
    for (int i = 0; i < n; i++) {
        char wn[320];
        snprintf(wn, sizeof wn, "%s.weight", modules[i]);
        if (add_src(o, nvfp4 ? modules[i] : wn, err) != 0)
            return -1;
        consume(x, wn);
    }
    if (!nvfp4)
        return 0;
    char wname[NQ_GGUF_MAX_NAME];
    snprintf(wname, sizeof wname, "%s", dst);
    if (encode || x->weight_only_algo) {
        char **a = realloc(x->a4_names, (x->na4 + 1) * sizeof *a);
        if (!a || !(a[x->na4] = strdup(dst)))
            return nq_fail(err, "out of memory");
        x->a4_names = a;
        x->na4++;
    }
    if (encode) {
        /* the global scales are known once each expert is encoded; always
         * written (amax / 2688 is 1 only by accident) */
        float *vals = calloc((size_t)n, sizeof *vals);
        if (!vals)
            return nq_fail(err, "out of memory");
        size_t owner = x->nt - 1;
        char name[NQ_GGUF_MAX_NAME + 16];
        snprintf(name, sizeof name, "%.*s.scale", (int)(strlen(wname) - 7), wname);
        out_tensor *s = new_out(x, name, NQ_GGML_F32, SRC_VALUES, err);
        if (!s) {
            free(vals);
            return -1;
        }
        s->ndim = 1;
        s->ne[0] = n;
        s->values = vals;
        s->nvalues = n;
        x->t[owner].values = vals; /* borrowed: filled while the weight is written */
        x->t[owner].nvalues = -1;
        return 0;
    }
    float *s2 = calloc((size_t)n, sizeof *s2), *is = calloc((size_t)n, sizeof *is);
    if (!s2 || !is) {
        free(s2);
        free(is);
        return nq_fail(err, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        char nm[320];
        snprintf(nm, sizeof nm, "%s.weight_scale", modules[i]);
        consume(x, nm);
        snprintf(nm, sizeof nm, "%s.weight_scale_2", modules[i]);
        if (scalar_f32(x, nm, 1.0f, &s2[i], err) != 0)
            goto fail;
        snprintf(nm, sizeof nm, "%s.input_scale", modules[i]);
        if (scalar_f32(x, nm, 1.0f, &is[i], err) != 0)
            goto fail;
    }
    bool stacked = o->ndim == 3;
    if (add_scale_values(x, wname, "scale", s2, n, stacked, err) != 0) {
        free(is);
        return -1;
    }
    return add_scale_values(x, wname, "input_scale", is, n, stacked, err);
fail:
    free(s2);
    free(is);
    return -1;
}

static int linear1(exporter *x, const char *module, const char *dst, nq_error *err)
{
    char *m = (char *)module;
    return add_linear(x, &m, 1, dst, false, err);
}

static bool has_module(exporter *x, const char *module)
{
    return nq_stored_format_of(x->ck, module) != NQ_STORED_NONE;
}

/* One F32 tensor of layer l: backbone.layers.l.SRC -> blk.l.DST. */
typedef struct f32_map {
    const char *src, *dst;
    int ndim;
    int64_t ne[2];
    src_kind kind;
    bool optional;
} f32_map;

/* One Linear of layer l: backbone.layers.l.mixer.SRC -> blk.l.DST.weight. */
typedef struct linear_map {
    const char *src, *dst;
} linear_map;

static int add_f32_maps(exporter *x, int l, const f32_map *m, int n, nq_error *err)
{
    char s[320], d[NQ_GGUF_MAX_NAME];
    for (int i = 0; i < n; i++) {
        snprintf(s, sizeof s, "backbone.layers.%d.%s", l, m[i].src);
        snprintf(d, sizeof d, "blk.%d.%s", l, m[i].dst);
        if (add_f32(x, s, d, m[i].ndim, m[i].ne, m[i].kind, m[i].optional, err) != 0)
            return -1;
    }
    return 0;
}

static int add_linear_maps(exporter *x, int l, const linear_map *m, int n, nq_error *err)
{
    char s[320], d[NQ_GGUF_MAX_NAME];
    for (int i = 0; i < n; i++) {
        snprintf(s, sizeof s, "backbone.layers.%d.mixer.%s", l, m[i].src);
        snprintf(d, sizeof d, "blk.%d.%s.weight", l, m[i].dst);
        if (linear1(x, s, d, err) != 0)
            return -1;
    }
    return 0;
}

static int plan_layer(exporter *x, int l, nq_error *err)
{
    const nq_model_config *c = &x->cfg;
    char s[320], d[NQ_GGUF_MAX_NAME], m[320];
    const char *p = "backbone.layers";
    const f32_map norm = {"norm.weight", "attn_norm.weight", 1, {c->hidden_size}, SRC_FLOAT, false};
    if (add_f32_maps(x, l, &norm, 1, err) != 0)
        return -1;
    switch (c->pattern[l]) {
    case NQ_BLOCK_MAMBA: {
        int64_t H = c->mamba_num_heads, di = nq_mamba_intermediate(c), C = nq_mamba_conv_dim(c);
        static const linear_map proj[] = {{"in_proj", "ssm_in"}, {"out_proj", "ssm_out"}};
        const f32_map f[] = {
            {"mixer.conv1d.weight", "ssm_conv1d.weight", 2, {c->conv_kernel, C}, SRC_FLOAT, false},
            {"mixer.conv1d.bias", "ssm_conv1d.bias", 1, {C}, SRC_FLOAT, !c->use_conv_bias},
            {"mixer.A_log", "ssm_a", 2, {1, H}, SRC_NEG_EXP, false},
            {"mixer.D", "ssm_d", 2, {1, H}, SRC_FLOAT, false},
            {"mixer.dt_bias", "ssm_dt.bias", 1, {H}, SRC_FLOAT, false},
            {"mixer.norm.weight", "ssm_norm.weight", 2, {di / c->n_groups, c->n_groups}, SRC_FLOAT,
             false},
        };
        if (add_linear_maps(x, l, proj, 2, err) != 0)
            return -1;
        return add_f32_maps(x, l, f, (int)(sizeof f / sizeof f[0]), err);
    }
    case NQ_BLOCK_ATTENTION: {
        static const char *const hf[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        static const char *const gg[] = {"attn_q", "attn_k", "attn_v", "attn_output"};
        for (int i = 0; i < 4; i++) {
            snprintf(m, sizeof m, "%s.%d.mixer.%s", p, l, hf[i]);
            snprintf(d, sizeof d, "blk.%d.%s.weight", l, gg[i]);
            size_t at = x->nt;
            if (linear1(x, m, d, err) != 0)
                return -1;
            int heads = i == 0 ? c->num_attention_heads : i == 1 ? c->num_key_value_heads : 0;
            if (heads > 0) {
                if (x->t[at].ne[1] % (2 * heads) != 0)
                    return nq_fail(err, "%s: %lld rows do not split into %d heads of even size", m,
                                   (long long)x->t[at].ne[1], heads);
                x->t[at].perm_heads = heads;
            }
            if (c->attention_bias) {
                snprintf(s, sizeof s, "%s.%d.mixer.%s.bias", p, l, hf[i]);
                snprintf(d, sizeof d, "blk.%d.%s.bias", l, gg[i]);
                const nq_tensor *b = nq_checkpoint_find(x->ck, s);
                int64_t bn[1] = {b ? (int64_t)b->numel : 0};
                if (b && i < 2)
                    return nq_fail(err, "%s: q/k biases are not supported (the converter permutes them)", s);
                if (add_f32(x, s, d, 1, bn, SRC_FLOAT, true, err) != 0)
                    return -1;
            }
        }
        return 0;
    }
    case NQ_BLOCK_MLP: {
        static const linear_map mlp[] = {{"up_proj", "ffn_up"}, {"down_proj", "ffn_down"}};
        return add_linear_maps(x, l, mlp, 2, err);
    }
    case NQ_BLOCK_MOE: {
        int E = c->n_routed_experts;
        static const char *const proj[] = {"down_proj", "up_proj"};
        static const char *const gg[] = {"ffn_down_exps", "ffn_up_exps"};
        for (int k = 0; k < 2; k++) {
            char **mods = calloc((size_t)E, sizeof *mods);
            int rc = mods ? 0 : nq_fail(err, "out of memory");
            for (int e = 0; e < E && rc == 0; e++) {
                snprintf(m, sizeof m, "%s.%d.mixer.experts.%d.%s", p, l, e, proj[k]);
                if (!(mods[e] = strdup(m)))
                    rc = nq_fail(err, "out of memory");
            }
            snprintf(d, sizeof d, "blk.%d.%s.weight", l, gg[k]);
            if (rc == 0)
                rc = add_linear(x, mods, E, d, true, err);
            for (int e = 0; mods && e < E; e++)
                free(mods[e]);
            free(mods);
            if (rc != 0)
                return -1;
        }
        const f32_map router[] = {
            {"mixer.gate.e_score_correction_bias", "exp_probs_b.bias", 1, {E}, SRC_FLOAT, false},
            {"mixer.gate.weight", "ffn_gate_inp.weight", 2, {c->hidden_size, E}, SRC_FLOAT, false},
        };
        static const linear_map shared[] = {{"shared_experts.down_proj", "ffn_down_shexp"},
                                            {"shared_experts.up_proj", "ffn_up_shexp"}};
        if (add_f32_maps(x, l, router, 2, err) != 0)
            return -1;
        return c->n_shared_experts > 0 ? add_linear_maps(x, l, shared, 2, err) : 0;
    }
    }
    return nq_fail(err, "layer %d: unknown block kind '%c'", l, c->pattern[l]);
}

static int plan(exporter *x, nq_error *err)
{
    const nq_model_config *c = &x->cfg;
    if (linear1(x, "backbone.embeddings", "token_embd.weight", err) != 0)
        return -1;
    for (int l = 0; l < c->num_layers; l++) {
        if (nq_interrupt_check(err) != 0 || plan_layer(x, l, err) != 0)
            return -1;
    }
    int64_t h[1] = {c->hidden_size};
    if (add_f32(x, "backbone.norm_f.weight", "output_norm.weight", 1, h, SRC_FLOAT, false, err) != 0)
        return -1;
    if (has_module(x, "lm_head"))
        return linear1(x, "lm_head", "output.weight", err);
    if (!c->tie_word_embeddings)
        return nq_fail(err, "%s: tensor 'lm_head.weight' is missing", nq_checkpoint_dir(x->ck));
    return 0;
}

/* ---- metadata ---- */

static int add_metadata(exporter *x, nq_gguf_writer *w, nq_error *err)
{
    const nq_model_config *c = &x->cfg;
    bool moe = nq_model_config_count(c, NQ_BLOCK_MOE) > 0;
    const char *arch = moe ? "nemotron_h_moe" : "nemotron_h";
    char k[128];
    int L = c->num_layers;
    int32_t *ff = calloc((size_t)L, sizeof *ff), *kv = calloc((size_t)L, sizeof *kv);
    if (!ff || !kv) {
        free(ff);
        free(kv);
        return nq_fail(err, "out of memory");
    }
    for (int l = 0; l < L; l++) {
        /* the converter lists only E layers for the MoE arch, only - layers otherwise */
        ff[l] = moe ? (c->pattern[l] == NQ_BLOCK_MOE ? c->moe_intermediate_size : 0)
                    : (c->pattern[l] == NQ_BLOCK_MLP ? c->intermediate_size : 0);
        kv[l] = c->pattern[l] == NQ_BLOCK_ATTENTION ? c->num_key_value_heads : 0;
    }
    /* the file type follows the rest type, as the converter's --outtype,
     * except that an NVFP4 model with a float rest type is MOSTLY_NVFP4 (39;
     * conversion/base.py prepare_tensors) */
    bool any_nvfp4 = false;
    for (size_t i = 0; i < x->nt; i++)
        any_nvfp4 = any_nvfp4 || x->t[i].type == NQ_GGML_NVFP4;
    uint32_t ftype = x->opt->rest_type == NQ_GGML_Q8_0   ? 7
                     : any_nvfp4                         ? 39
                     : x->opt->rest_type == NQ_GGML_BF16 ? 32
                     : x->opt->rest_type == NQ_GGML_F16  ? 1
                                                         : 0;
    /* general.name: the converter's fallback, the directory name in words */
    const char *dir = x->opt->in_dir;
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    const char *b = dir + dl;
    while (b > dir && b[-1] != '/')
        b--;
    char name[256];
    size_t nl = 0;
    bool start = true;
    for (const char *q = b; q < dir + dl && nl + 1 < sizeof name; q++) {
        char ch = *q == '-' || *q == '_' ? ' ' : *q;
        name[nl++] = start && ch >= 'a' && ch <= 'z' ? (char)(ch - 32) : ch;
        start = ch == ' ';
    }
    name[nl] = 0;
    int rc = -1;
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", arch, suffix), k)
    if (nq_gguf_add_str(w, "general.architecture", arch, err) ||
        nq_gguf_add_str(w, "general.type", "model", err) ||
        (nl && nq_gguf_add_str(w, "general.name", name, err)) ||
        nq_gguf_add_u32(w, KEY("block_count"), (uint32_t)L, err) ||
        nq_gguf_add_u32(w, KEY("context_length"), 1u << 20, err) ||
        nq_gguf_add_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size, err) ||
        nq_gguf_add_arr_i32(w, KEY("feed_forward_length"), ff, (uint64_t)L, err) ||
        nq_gguf_add_u32(w, KEY("attention.head_count"), (uint32_t)c->num_attention_heads, err) ||
        nq_gguf_add_arr_i32(w, KEY("attention.head_count_kv"), kv, (uint64_t)L, err) ||
        nq_gguf_add_f32(w, KEY("attention.layer_norm_epsilon"), c->layer_norm_epsilon, err))
        goto done;
    if (moe && (nq_gguf_add_u32(w, KEY("expert_count"), (uint32_t)c->n_routed_experts, err) ||
                nq_gguf_add_u32(w, KEY("expert_used_count"), (uint32_t)c->num_experts_per_tok, err) ||
                nq_gguf_add_u32(w, KEY("expert_group_count"), (uint32_t)c->n_group, err) ||
                nq_gguf_add_u32(w, KEY("expert_group_used_count"), (uint32_t)c->topk_group, err)))
        goto done;
    if (nq_gguf_add_u32(w, "general.file_type", ftype, err) ||
        nq_gguf_add_u32(w, KEY("rope.dimension_count"), (uint32_t)c->head_dim, err) ||
        nq_gguf_add_u32(w, KEY("ssm.conv_kernel"), (uint32_t)c->conv_kernel, err) ||
        nq_gguf_add_u32(w, KEY("ssm.state_size"), (uint32_t)c->ssm_state_size, err) ||
        nq_gguf_add_u32(w, KEY("ssm.group_count"), (uint32_t)c->n_groups, err) ||
        nq_gguf_add_u32(w, KEY("ssm.inner_size"), (uint32_t)nq_mamba_intermediate(c), err) ||
        nq_gguf_add_u32(w, KEY("ssm.time_step_rank"), (uint32_t)c->mamba_num_heads, err) ||
        nq_gguf_add_bool(w, KEY("rope.scaling.finetuned"), false, err) ||
        nq_gguf_add_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim, err) ||
        nq_gguf_add_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim, err))
        goto done;
    if (moe &&
        (nq_gguf_add_u32(w, KEY("expert_feed_forward_length"), (uint32_t)c->moe_intermediate_size, err) ||
         nq_gguf_add_u32(w, KEY("expert_shared_feed_forward_length"),
                         (uint32_t)c->moe_shared_expert_intermediate_size, err) ||
         nq_gguf_add_u32(w, KEY("expert_shared_count"), (uint32_t)c->n_shared_experts, err) ||
         nq_gguf_add_bool(w, KEY("expert_weights_norm"), c->norm_topk_prob, err) ||
         nq_gguf_add_f32(w, KEY("expert_weights_scale"), c->routed_scaling_factor, err)))
        goto done;
    if (nq_gguf_add_u32(w, "general.quantization_version", 2, err))
        goto done;
    if (x->na4 > 0) {
        /* sorted like the converter's sorted(self._prec_a4) */
        for (size_t i = 1; i < x->na4; i++)
            for (size_t j = i; j > 0 && strcmp(x->a4_names[j - 1], x->a4_names[j]) > 0; j--) {
                char *t = x->a4_names[j];
                x->a4_names[j] = x->a4_names[j - 1];
                x->a4_names[j - 1] = t;
            }
        bool *f = calloc(x->na4, sizeof *f);
        if (!f) {
            nq_fail(err, "out of memory");
            goto done;
        }
        int r = nq_gguf_add_arr_str(w, "general.tensor_extra.name", (const char *const *)x->a4_names,
                                    NULL, x->na4, err) ||
                nq_gguf_add_arr_bool(w, "general.tensor_extra.prec_a4", f, x->na4, err);
        free(f);
        if (r)
            goto done;
    }
    int vocab = 0;
    if (nq_gguf_add_vocab(w, x->opt->in_dir, c->vocab_size, &vocab, err) != 0 ||
        nq_gguf_add_u32(w, KEY("vocab_size"), (uint32_t)vocab, err) != 0)
        goto done;
#undef KEY
    rc = 0;
done:
    free(ff);
    free(kv);
    return rc;
}

/* ---- data ---- */

static int write_float_rows(exporter *x, nq_gguf_writer *w, const out_tensor *o, float *row,
                            uint8_t *enc, nq_error *err)
{
    int64_t ne0 = o->ne[0];
    for (int s = 0; s < o->nsrc; s++) {
        const nq_tensor *t = nq_checkpoint_find(x->ck, o->src[s]);
        if (o->type == NQ_GGML_BF16 && t->dtype == NQ_BF16 && o->perm_heads == 0) {
            if (nq_gguf_writer_write(w, t->data, t->nbytes, err) != 0)
                return -1;
            nq_tensor_release(t);
            continue;
        }
        uint64_t rows = t->numel / (uint64_t)ne0;
        for (uint64_t r = 0; r < rows; r++) {
            if (nq_tensor_read_f32(t, source_row(o, r) * (uint64_t)ne0, (uint64_t)ne0, row, err) != 0)
                return -1;
            for (int64_t j = 0; j < ne0; j++)
                if (!isfinite(row[j]))
                    return nq_fail(err, "%s: tensor '%s' element %llu is %s", nq_checkpoint_dir(x->ck),
                                   t->name, (unsigned long long)(r * (uint64_t)ne0 + (uint64_t)j),
                                   isnan(row[j]) ? "NaN" : "Inf");
            size_t nb;
            switch (o->type) {
            case NQ_GGML_Q8_0:
                nq_q8_0_quantize_row(row, ne0, enc);
                nb = (size_t)(ne0 / NQ_Q8_0_BLOCK * NQ_Q8_0_BYTES);
                break;
            case NQ_GGML_BF16:
            case NQ_GGML_F16:
                for (int64_t j = 0; j < ne0; j++) {
                    uint16_t h = o->type == NQ_GGML_BF16 ? nq_f32_to_bf16(row[j]) : nq_f32_to_f16(row[j]);
                    enc[2 * j] = (uint8_t)h;
                    enc[2 * j + 1] = (uint8_t)(h >> 8);
                }
                nb = (size_t)ne0 * 2;
                break;
            default:
                if (o->kind == SRC_NEG_EXP)
                    for (int64_t j = 0; j < ne0; j++)
                        row[j] = -expf(row[j]);
                memcpy(enc, row, (size_t)ne0 * 4);
                nb = (size_t)ne0 * 4;
            }
            if (nq_gguf_writer_write(w, enc, nb, err) != 0)
                return -1;
        }
        nq_tensor_release(t);
    }
    return 0;
}

static int write_nvfp4(exporter *x, nq_gguf_writer *w, out_tensor *o, nq_error *err)
{
    int64_t cols = o->ne[0], rows = o->ne[1];
    size_t rowb = (size_t)(cols / NQ_GGML_NVFP4_BLOCK * NQ_GGML_NVFP4_BYTES);
    uint8_t *packed = NULL, *scales = NULL, *out = malloc(rowb);
    if (o->kind == SRC_ENCODE) {
        packed = malloc((size_t)(rows * cols / 2));
        scales = malloc((size_t)(rows * cols / 16));
    }
    int rc = -1;
    if (!out || (o->kind == SRC_ENCODE && (!packed || !scales))) {
        nq_fail(err, "out of memory");
        goto done;
    }
    for (int s = 0; s < o->nsrc; s++) {
        char nm[320];
        const uint8_t *pk, *sc;
        if (o->kind == SRC_ENCODE) {
            snprintf(nm, sizeof nm, "%s.weight", o->src[s]);
            const nq_tensor *t = nq_checkpoint_find(x->ck, nm);
            nq_weight_view v = {.data = t->data, .dtype = t->dtype, .rows = rows, .cols = cols};
            nq_encode_stats st;
            float gs;
            if (nq_encode_nvfp4_view(&v, x->opt->mse_scales, x->opt->threads, packed, scales, &gs,
                                     &st, err) != 0) {
                char msg[sizeof err->msg];
                snprintf(msg, sizeof msg, "%s", err->msg);
                err->msg[0] = 0;
                nq_fail(err, "%s: %s", nm, msg);
                goto done;
            }
            o->values[s] = gs;
            nq_tensor_release(t);
            pk = packed;
            sc = scales;
            x->sum->experts_quantized++;
        } else {
            snprintf(nm, sizeof nm, "%s.weight", o->src[s]);
            const nq_tensor *t = nq_checkpoint_find(x->ck, nm);
            snprintf(nm, sizeof nm, "%s.weight_scale", o->src[s]);
            const nq_tensor *ts = nq_checkpoint_find(x->ck, nm);
            if (t->dtype != NQ_U8 || !ts || ts->dtype != NQ_F8_E4M3 || ts->ndim != 2 ||
                ts->shape[0] != rows || ts->shape[1] != cols / 16) {
                nq_fail(err, "%s: '%s' is not a ModelOpt NVFP4 module (U8 weight [%lld, %lld], F8_E4M3 weight_scale [%lld, %lld])",
                        nq_checkpoint_dir(x->ck), o->src[s], (long long)rows, (long long)(cols / 2),
                        (long long)rows, (long long)(cols / 16));
                goto done;
            }
            for (uint64_t i = 0; i < ts->numel; i++) {
                uint8_t b = ts->data[i];
                if ((b & 0x7f) == 0x7f || (b & 0x80)) {
                    nq_fail(err, "%s: block scale %llu of '%s' is %s", nq_checkpoint_dir(x->ck),
                            (unsigned long long)i, o->src[s], (b & 0x7f) == 0x7f ? "NaN" : "negative");
                    goto done;
                }
            }
            pk = t->data;
            sc = ts->data;
            x->sum->nvfp4_repacked++;
        }
        for (int64_t r = 0; r < rows; r++) {
            int64_t sr = (int64_t)source_row(o, (uint64_t)r);
            nq_ggml_nvfp4_from_modelopt(pk + sr * (cols / 2), sc + sr * (cols / 16), cols, out);
            if (nq_gguf_writer_write(w, out, rowb, err) != 0)
                goto done;
        }
        if (o->kind == SRC_NVFP4) {
            snprintf(nm, sizeof nm, "%s.weight", o->src[s]);
            nq_tensor_release(nq_checkpoint_find(x->ck, nm));
        }
    }
    rc = 0;
done:
    free(packed);
    free(scales);
    free(out);
    return rc;
}

static void free_exporter(exporter *x)
{
    for (size_t i = 0; i < x->nt; i++) {
        for (int s = 0; s < x->t[i].nsrc; s++)
            free(x->t[i].src[s]);
        free(x->t[i].src);
        if (x->t[i].kind == SRC_VALUES)
            free(x->t[i].values);
    }
    free(x->t);
    for (size_t i = 0; i < x->na4; i++)
        free(x->a4_names[i]);
    free(x->a4_names);
    free(x->consumed);
    nq_checkpoint_close(x->ck);
}

/* hf_quant_config.json (or config.json's quantization_config) quant_algo. */
static void read_quant_algo(exporter *x)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/hf_quant_config.json", x->opt->in_dir);
    json_t *j = json_load_file(path, 0, NULL);
    const char *algo = j ? json_string_value(json_object_get(json_object_get(j, "quantization"), "quant_algo")) : NULL;
    if (!algo) {
        json_decref(j);
        snprintf(path, sizeof path, "%s/config.json", x->opt->in_dir);
        j = json_load_file(path, 0, NULL);
        algo = j ? json_string_value(json_object_get(json_object_get(j, "quantization_config"), "quant_algo")) : NULL;
    }
    x->weight_only_algo = algo && strcmp(algo, "W4A16_NVFP4") == 0;
    json_decref(j);
}

int nq_gguf_export(const nq_gguf_options *opt, nq_gguf_summary *sum, nq_error *err)
{
    exporter x = {.opt = opt, .sum = sum};
    memset(sum, 0, sizeof *sum);
    nq_gguf_writer *w = NULL;
    float *row = NULL;
    uint8_t *enc = NULL;
    int rc = -1;
    if (nq_model_config_load(opt->in_dir, &x.cfg, err) != 0)
        return -1;
    if (!x.cfg.is_nemotron_h)
        return nq_fail(err, "%s/config.json: model_type '%s': GGUF export supports nemotron_h", opt->in_dir,
                       x.cfg.model_type);
    if (!(x.ck = nq_checkpoint_open(opt->in_dir, err)))
        return -1;
    x.consumed = calloc(nq_checkpoint_count(x.ck) + 1, sizeof *x.consumed);
    if (!x.consumed) {
        nq_fail(err, "out of memory");
        goto done;
    }
    read_quant_algo(&x);
    if (plan(&x, err) != 0)
        goto done;
    for (size_t i = 0; i < nq_checkpoint_count(x.ck); i++) {
        const char *n = nq_checkpoint_tensor(x.ck, i)->name;
        size_t l = strlen(n);
        bool kv_scale = l > 8 && (strcmp(n + l - 8, ".k_scale") == 0 || strcmp(n + l - 8, ".v_scale") == 0);
        if (!x.consumed[i] && !kv_scale) {
            nq_fail(err, "%s: tensor '%s' has no place in a nemotron_h GGUF file", opt->in_dir, n);
            goto done;
        }
    }
    if (!(w = nq_gguf_writer_create(opt->out_path, opt->in_dir, opt->force, err)) ||
        add_metadata(&x, w, err) != 0)
        goto done;
    int64_t maxrow = 0;
    for (size_t i = 0; i < x.nt; i++) {
        const out_tensor *o = &x.t[i];
        if (nq_gguf_declare_tensor(w, o->name, o->type, o->ndim, o->ne, err) != 0)
            goto done;
        if (o->ne[0] > maxrow)
            maxrow = o->ne[0];
    }
    row = malloc((size_t)(maxrow > 0 ? maxrow : 1) * sizeof *row);
    enc = malloc((size_t)(maxrow > 0 ? maxrow : 1) * 4);
    if (!row || !enc) {
        nq_fail(err, "out of memory");
        goto done;
    }
    if (nq_gguf_writer_begin(w, err) != 0)
        goto done;
    for (size_t i = 0; i < x.nt; i++) {
        out_tensor *o = &x.t[i];
        if (nq_interrupt_check(err) != 0)
            goto done;
        if (opt->log)
            fprintf(opt->log, "\r[%zu/%zu] %-40s", i + 1, x.nt, o->name);
        int r;
        if (o->kind == SRC_NVFP4 || o->kind == SRC_ENCODE)
            r = write_nvfp4(&x, w, o, err);
        else if (o->kind == SRC_VALUES)
            r = nq_gguf_writer_write(w, o->values, (size_t)o->nvalues * 4, err);
        else
            r = write_float_rows(&x, w, o, row, enc, err);
        if (r != 0)
            goto done;
        uint64_t nel = 1;
        for (int d = 0; d < o->ndim; d++)
            nel *= (uint64_t)o->ne[d];
        int64_t blk;
        size_t bb;
        nq_ggml_type_info(o->type, &blk, &bb, NULL);
        sum->tensors++;
        sum->by_type[o->type == NQ_GGML_NVFP4 ? 0 : o->type == NQ_GGML_Q8_0 ? 1 : o->type == NQ_GGML_F32 ? 3 : 2]++;
        if (o->is_weight || o->kind != SRC_VALUES) {
            sum->params += nel;
            sum->weight_bytes += nel / (uint64_t)blk * bb;
        }
    }
    if (opt->log)
        fputc('\n', opt->log);
    if (nq_gguf_writer_commit(w, err) != 0)
        goto done;
    sum->bytes = nq_gguf_writer_bytes(w);
    rc = 0;
done:
    free(row);
    free(enc);
    nq_gguf_writer_free(w);
    free_exporter(&x);
    return rc;
}
