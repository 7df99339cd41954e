/* Adapter keys -> checkpoint tensors: every key must land on a base tensor
 * with matching shapes, or the whole merge is refused before anything is
 * written.  Also the JSON descriptions (report, config.json, inspect). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "export/lora_internal.h"
#include "export/metadata.h"

static bool ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && strcmp(s + a - b, tail) == 0;
}

/* The checkpoint tensor for a name in either naming: NVIDIA's remote code
 * says backbone.*, transformers 5's native model.* (conversion_mapping.py
 * "nemotron_h": WeightRenaming("backbone.", "model.")). */
static const nq_tensor *resolve(const nq_checkpoint *ck, const char *name)
{
    const nq_tensor *t = nq_checkpoint_find(ck, name);
    if (t)
        return t;
    char alt[1100];
    if (strncmp(name, "model.", 6) == 0)
        snprintf(alt, sizeof alt, "backbone.%s", name + 6);
    else if (strncmp(name, "backbone.", 9) == 0)
        snprintf(alt, sizeof alt, "model.%s", name + 9);
    else
        return NULL;
    return nq_checkpoint_find(ck, alt);
}

static const char *shape_str(const nq_tensor *t, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
    return buf;
}

static int add_op(nq_lora *l, const nq_lora_op *op, nq_error *err)
{
    if (l->nops == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        nq_lora_op *g = realloc(l->ops, cap * sizeof *g);
        if (!g)
            return nq_fail(err, "out of memory");
        l->ops = g;
        l->cap = cap;
    }
    l->ops[l->nops] = *op;
    l->ops[l->nops].seq = l->nops;
    l->nops++;
    return 0;
}

typedef struct ctx_t {
    nq_lora *l;
    const nq_checkpoint *ck;
    int ai;                     /* adapter index */
    nq_adapter *a;
    const char *label;          /* adapter dir, for messages */
    unsigned char *used;        /* per adapter tensor */
} ctx_t;

/* The adapter tensor "base_model.model.MODULE SUFFIX", marked used. */
static const nq_tensor *take(ctx_t *c, const char *module, const char *suffix)
{
    char name[1100];
    snprintf(name, sizeof name, "base_model.model.%s%s", module, suffix);
    const nq_tensor *t = nq_checkpoint_find(c->a->tensors, name);
    if (t)
        c->used[t - nq_checkpoint_tensor(c->a->tensors, 0)] = 1;
    return t;
}

/* Rank and alpha for PEFT's module key; A's rows must agree with them. */
static int rank_scale(ctx_t *c, const char *key, int64_t rows, int experts, float *scale,
                      int *r_out, nq_error *err)
{
    int r;
    double alpha;
    if (nq_adapter_rank_alpha(c->a, key, &r, &alpha, err) != 0)
        return -1;
    if ((int64_t)r * experts != rows)
        return nq_fail(err, "%s: %s: lora_A has %lld rows but r is %d%s%s", c->label, key,
                       (long long)rows, r, experts > 1 ? " (times the expert count)" : "",
                       c->a->nrank_pattern ? " after rank_pattern" : "");
    *r_out = r;
    /* PEFT keeps the scaling as a Python float and multiplies an f32 tensor
     * by it, which uses it rounded to f32 */
    *scale = (float)(nq_adapter_scaling(c->a, r, alpha) * c->l->ad[c->ai].weight);
    return 0;
}

static double max_abs(const nq_tensor *t)
{
    double m = 0.0;
    float buf[1024];
    for (uint64_t i = 0; i < t->numel; i += 1024) {
        uint64_t n = t->numel - i < 1024 ? t->numel - i : 1024;
        nq_error ignored = {0};
        if (nq_tensor_read_f32(t, i, n, buf, &ignored) != 0)
            return INFINITY;
        for (uint64_t k = 0; k < n; k++)
            if (fabs((double)buf[k]) > m)
                m = fabs((double)buf[k]);
    }
    return m;
}

/* Nemotron-H's expert parameters in registration order (NemotronHExperts).
 * PEFT wraps the targeted parameters of one module in that order, each
 * wrapper around the previous one, so the outermost (keys without
 * ".base_layer") is the last one targeted: experts.base_layer.lora_* is
 * up_proj and experts.lora_* down_proj when both are targeted. */
static const char *const expert_params[] = {"up_proj", "down_proj"};

static int resolve_experts(ctx_t *c, const char *module, const char *key, int depth,
                           const char *const *targeted, int nt, const nq_tensor *A,
                           const nq_tensor *B, bool has_extra, nq_error *err)
{
    char name[1100], s1[64], s2[64], s3[64];
    if (depth >= nt)
        return nq_fail(err, "%s: %s: nested deeper than the %d targeted parameter(s) of %s",
                       c->label, module, nt, key);
    const char *param = targeted[nt - 1 - depth];
    snprintf(name, sizeof name, "%s.0.%s.weight", key, param);
    const nq_tensor *e0 = resolve(c->ck, name);
    if (!e0)
        return nq_fail(err, "%s: %s.%s: the checkpoint has no %s (in either naming)", c->label,
                       key, param, name);
    if (has_extra)
        return nq_fail(err, "%s: %s: DoRA or lora_bias on target_parameters is not a PEFT "
                            "layout", c->label, module);
    int E = 0;
    for (;; E++) {
        snprintf(name, sizeof name, "%s.%d.%s.weight", key, E, param);
        if (!resolve(c->ck, name))
            break;
    }
    int64_t out = e0->shape[0], in = e0->ndim == 2 ? e0->shape[1] : -1;
    if (A->shape[1] != in || B->shape[0] != out || B->shape[1] != A->shape[0] ||
        A->shape[0] % E != 0)
        return nq_fail(err, "%s: %s.%s: lora_A %s and lora_B %s do not fit %d experts of %s",
                       c->label, key, param, shape_str(A, s1, sizeof s1),
                       shape_str(B, s2, sizeof s2), E, shape_str(e0, s3, sizeof s3));
    snprintf(name, sizeof name, "%s.%s", key, param);
    int r;
    float scale;
    if (rank_scale(c, name, A->shape[0], E, &scale, &r, err) != 0)
        return -1;
    for (int e = 0; e < E; e++) {
        snprintf(name, sizeof name, "%s.%d.%s.weight", key, e, param);
        const nq_tensor *t = resolve(c->ck, name);
        if (t->ndim != 2 || t->shape[0] != out || t->shape[1] != in)
            return nq_fail(err, "%s: %s has shape %s, expert 0 %s", c->label, t->name,
                           shape_str(t, s1, sizeof s1), shape_str(e0, s2, sizeof s2));
        nq_lora_op op = {.base = t, .kind = NQ_LORA_LINEAR, .adapter = c->ai, .A = A, .B = B,
                         .r = r, .E = E, .e = e, .scale = scale};
        if (add_op(c->l, &op, err) != 0)
            return -1;
    }
    c->l->ad[c->ai].modules++;
    return 0;
}

static int resolve_linear(ctx_t *c, const char *module, const nq_tensor *A, const nq_tensor *B,
                          nq_error *err)
{
    char key[1024], name[1100], s1[64], s2[64], s3[64];
    snprintf(key, sizeof key, "%s", module);
    int depth = 0;
    while (ends_with(key, ".base_layer")) {
        key[strlen(key) - 11] = '\0';
        depth++;
    }
    const nq_tensor *bias = take(c, module, ".lora_B.bias");
    const nq_tensor *mag = take(c, module, ".lora_magnitude_vector");
    if (!mag)
        mag = take(c, module, ".lora_magnitude_vector.weight");
    snprintf(name, sizeof name, "%s.weight", key);
    const nq_tensor *base = resolve(c->ck, name);
    if (base && base->ndim != 2)
        return nq_fail(err, "%s: %s: LoRA on the %d-D weight %s %s (a convolution) is not "
                            "supported: nemoq merges LoRA on Linear and Embedding layers",
                       c->label, key, base->ndim, base->name, shape_str(base, s1, sizeof s1));
    if (A->ndim != 2 || B->ndim != 2 || !nq_dtype_is_float(A->dtype) ||
        !nq_dtype_is_float(B->dtype))
        return nq_fail(err, "%s: %s: lora_A and lora_B must be 2-D float tensors", c->label,
                       module);
    const char *targeted[2];
    int nt = 0;
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "%s.%s", key, expert_params[i]);
        if (nq_adapter_selects_parameter(c->a, name))
            targeted[nt++] = expert_params[i];
    }
    if (nt > 0 && !base)
        return resolve_experts(c, module, key, depth, targeted, nt, A, B, mag || bias, err);
    if (depth > 0 || !base)
        return nq_fail(err, "%s: %s: the checkpoint has no %s.weight (in either naming)",
                       c->label, module, key);
    int sel = nq_adapter_selects(c->a, key, err);
    if (sel < 0)
        return -1;
    if (!sel)
        return nq_fail(err, "%s: %s: LoRA weights for a module that the adapter's "
                            "target_modules/layers_to_transform do not select",
                       c->label, key);
    if (A->shape[1] != base->shape[1] || B->shape[0] != base->shape[0] ||
        B->shape[1] != A->shape[0])
        return nq_fail(err, "%s: %s: lora_A %s and lora_B %s do not fit %s %s", c->label, key,
                       shape_str(A, s1, sizeof s1), shape_str(B, s2, sizeof s2), base->name,
                       shape_str(base, s3, sizeof s3));
    int r;
    float scale;
    if (rank_scale(c, key, A->shape[0], 1, &scale, &r, err) != 0)
        return -1;
    if (c->a->use_dora && !mag)
        return nq_fail(err, "%s: %s: use_dora is set but there is no lora_magnitude_vector",
                       c->label, key);
    if (mag && (mag->numel != (uint64_t)base->shape[0] || !nq_dtype_is_float(mag->dtype)))
        return nq_fail(err, "%s: %s: lora_magnitude_vector has %llu elements, the layer %lld "
                            "outputs",
                       c->label, key, (unsigned long long)mag->numel, (long long)base->shape[0]);
    /* PEFT resets fan_in_fan_out to False on torch.nn.Linear (with a
     * warning) and merges untransposed; every Nemotron-H target is one */
    if (c->a->fan_in_fan_out)
        c->l->ad[c->ai].fan_in_fan_out_ignored = true;
    nq_lora_op op = {.base = base, .kind = mag ? NQ_LORA_DORA : NQ_LORA_LINEAR, .adapter = c->ai,
                     .A = A, .B = B, .mag = mag, .r = r, .scale = scale};
    if (add_op(c->l, &op, err) != 0)
        return -1;
    if (ends_with(key, ".mixer.out_proj")) {
        double m = max_abs(B);
        if (m <= 1e-6) {
            nq_lora_adapter_info *ai = &c->l->ad[c->ai];
            ai->untrained_out_proj++;
            if (m > ai->untrained_max_b)
                ai->untrained_max_b = m;
        }
    }
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", key);
        const nq_tensor *bb = resolve(c->ck, name);
        if (!bb)
            return nq_fail(err, "%s: %s: lora_bias on a Linear without a bias (the checkpoint "
                                "has no %s)", c->label, key, name);
        if (bias->numel != bb->numel || !nq_dtype_is_float(bias->dtype))
            return nq_fail(err, "%s: %s: lora_B.bias has %llu elements, the bias %llu", c->label,
                           key, (unsigned long long)bias->numel, (unsigned long long)bb->numel);
        nq_lora_op bop = {.base = bb, .kind = NQ_LORA_BIAS, .adapter = c->ai, .src = bias,
                          .scale = scale};
        if (add_op(c->l, &bop, err) != 0)
            return -1;
    }
    c->l->ad[c->ai].modules++;
    return 0;
}

static int resolve_embedding(ctx_t *c, const char *module, const nq_tensor *EA,
                             const nq_tensor *EB, nq_error *err)
{
    char name[1100], s1[64], s2[64], s3[64];
    snprintf(name, sizeof name, "%s.weight", module);
    const nq_tensor *base = resolve(c->ck, name);
    if (!base)
        return nq_fail(err, "%s: %s: the checkpoint has no %s (in either naming)", c->label,
                       module, name);
    int sel = nq_adapter_selects(c->a, module, err);
    if (sel <= 0)
        return sel < 0 ? -1
                       : nq_fail(err, "%s: %s: LoRA weights for a module that the adapter's "
                                      "target_modules do not select", c->label, module);
    if (take(c, module, ".lora_magnitude_vector"))
        return nq_fail(err, "%s: %s: DoRA on an embedding is not supported", c->label, module);
    /* base [V, H]; A [r, V]; B [H, r] */
    if (base->ndim != 2 || EA->ndim != 2 || EB->ndim != 2 || EA->shape[1] != base->shape[0] ||
        EB->shape[0] != base->shape[1] || EB->shape[1] != EA->shape[0] ||
        !nq_dtype_is_float(EA->dtype) || !nq_dtype_is_float(EB->dtype))
        return nq_fail(err, "%s: %s: lora_embedding_A %s and lora_embedding_B %s do not fit %s %s",
                       c->label, module, shape_str(EA, s1, sizeof s1),
                       shape_str(EB, s2, sizeof s2), base->name, shape_str(base, s3, sizeof s3));
    int r;
    float scale;
    if (rank_scale(c, module, EA->shape[0], 1, &scale, &r, err) != 0)
        return -1;
    nq_lora_op op = {.base = base, .kind = NQ_LORA_EMBED, .adapter = c->ai, .A = EA, .B = EB,
                     .r = r, .scale = scale};
    if (add_op(c->l, &op, err) != 0)
        return -1;
    c->l->ad[c->ai].modules++;
    return 0;
}

static int resolve_replace(ctx_t *c, const char *key, const nq_tensor *t, nq_error *err)
{
    char s1[64], s2[64];
    const nq_tensor *base = resolve(c->ck, key);
    if (!base)
        return nq_fail(err, "%s: %s: a modules_to_save tensor the checkpoint does not have",
                       c->label, key);
    bool same = base->ndim == t->ndim && base->numel == t->numel && nq_dtype_is_float(t->dtype);
    for (int i = 0; same && i < t->ndim; i++)
        same = base->shape[i] == t->shape[i];
    if (!same)
        return nq_fail(err, "%s: %s: shape %s but the checkpoint's %s is %s", c->label, key,
                       shape_str(t, s1, sizeof s1), base->name, shape_str(base, s2, sizeof s2));
    nq_lora_op op = {.base = base, .kind = NQ_LORA_REPLACE, .adapter = c->ai, .src = t};
    if (add_op(c->l, &op, err) != 0)
        return -1;
    c->l->ad[c->ai].replaced++;
    return 0;
}

static int resolve_adapter(ctx_t *c, nq_error *err)
{
    const nq_checkpoint *at = c->a->tensors;
    size_t n = nq_checkpoint_count(at);
    static const char prefix[] = "base_model.model.";
    const size_t pl = sizeof prefix - 1;
    char module[1024];
    for (size_t i = 0; i < n; i++) {
        const nq_tensor *t = nq_checkpoint_tensor(at, i);
        if (strncmp(t->name, prefix, pl) != 0)
            return nq_fail(err, "%s: adapter key '%s' does not start with %s (not a PEFT "
                                "state dict)", c->label, t->name, prefix);
        const char *k = t->name + pl;
        size_t kl = strlen(k);
        size_t cut = ends_with(k, ".lora_A.weight")      ? 14
                     : ends_with(k, ".lora_embedding_A") ? 17
                                                         : 0;
        if (!cut || c->used[i])
            continue;
        if (kl - cut >= sizeof module)
            return nq_fail(err, "%s: adapter key '%s' too long", c->label, t->name);
        memcpy(module, k, kl - cut);
        module[kl - cut] = '\0';
        c->used[i] = 1;
        bool emb = cut == 17;
        const nq_tensor *B = take(c, module, emb ? ".lora_embedding_B" : ".lora_B.weight");
        if (!B)
            return nq_fail(err, "%s: %s has no matching %s", c->label, t->name,
                           emb ? "lora_embedding_B" : "lora_B.weight");
        if ((emb ? resolve_embedding(c, module, t, B, err) : resolve_linear(c, module, t, B, err)) != 0)
            return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (c->used[i])
            continue;
        const nq_tensor *t = nq_checkpoint_tensor(at, i);
        const char *k = t->name + pl;
        if (strstr(k, ".lora_B") || strstr(k, ".lora_embedding_B") ||
            strstr(k, ".lora_magnitude_vector"))
            return nq_fail(err, "%s: %s has no matching lora_A", c->label, t->name);
        if (strstr(k, "lora_"))
            return nq_fail(err, "%s: %s: not a LoRA weight nemoq knows (lora_A, lora_B, "
                                "lora_embedding_A/B, lora_magnitude_vector)", c->label, t->name);
        int saves = nq_adapter_saves(c->a, k, err);
        if (saves < 0)
            return -1;
        if (!saves && !(strcmp(c->a->bias, "none") != 0 && ends_with(k, ".bias")))
            return nq_fail(err, "%s: %s is neither a LoRA weight nor in modules_to_save",
                           c->label, t->name);
        if (resolve_replace(c, k, t, err) != 0)
            return -1;
    }
    return 0;
}

/* base_model_name_or_path, when it names a local model directory, must
 * describe the same architecture as the input (a hub id, or a path from the
 * training machine, cannot be checked: the shapes decide then). */
static int check_base_model(const nq_adapter *a, const char *in_config, nq_error *err)
{
    if (!a->base_model || !in_config)
        return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", a->base_model);
    struct stat st;
    if (stat(path, &st) != 0)
        return 0;
    json_error_t je;
    json_t *theirs = json_load_file(path, 0, &je), *ours = json_load_file(in_config, 0, &je);
    int rc = 0;
    static const char *fields[] = {"model_type",          "hidden_size",        "vocab_size",
                                   "n_routed_experts",    "moe_intermediate_size",
                                   "num_attention_heads", "mamba_num_heads"};
    for (size_t i = 0; theirs && ours && rc == 0 && i < sizeof fields / sizeof fields[0]; i++) {
        json_t *x = json_object_get(theirs, fields[i]), *y = json_object_get(ours, fields[i]);
        if (x && y && !json_equal(x, y)) {
            char *xs = json_dumps(x, JSON_ENCODE_ANY), *ys = json_dumps(y, JSON_ENCODE_ANY);
            rc = nq_fail(err, "%s: base_model_name_or_path %s has %s %s but the input has %s",
                         a->dir, a->base_model, fields[i], xs ? xs : "?", ys ? ys : "?");
            free(xs);
            free(ys);
        }
    }
    json_decref(theirs);
    json_decref(ours);
    return rc;
}

static int cmp_op(const void *x, const void *y)
{
    const nq_lora_op *a = x, *b = y;
    if (a->base != b->base)
        return a->base < b->base ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

void nq_lora_free(nq_lora *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->nad; i++) {
        nq_adapter_close(l->ad[i].a);
        free(l->ad[i].name);
    }
    free(l->ad);
    free(l->ops);
    free(l);
}

static char *last_component(const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    return strndup(dir + b, n - b);
}

nq_lora *nq_lora_resolve(const nq_checkpoint *ck, const nq_lora_spec *specs, size_t n,
                         const char *in_config, int threads, nq_error *err)
{
    nq_lora *l = calloc(1, sizeof *l);
    if (!l || !(l->ad = calloc(n ? n : 1, sizeof *l->ad))) {
        free(l);
        nq_fail(err, "out of memory");
        return NULL;
    }
    l->threads = threads;
    for (size_t i = 0; i < n; i++) {
        nq_lora_adapter_info *ai = &l->ad[i];
        ai->weight = specs[i].weight;
        ai->a = nq_adapter_open(specs[i].dir, err);
        l->nad = i + 1;
        if (!ai->a || !(ai->name = last_component(specs[i].dir)) ||
            check_base_model(ai->a, in_config, err) != 0) {
            if (ai->a && !ai->name)
                nq_fail(err, "out of memory");
            nq_lora_free(l);
            return NULL;
        }
        if (!ck)
            continue;
        ctx_t c = {.l = l, .ck = ck, .ai = (int)i, .a = ai->a, .label = specs[i].dir};
        c.used = calloc(nq_checkpoint_count(ai->a->tensors) + 1, 1);
        int rc = c.used ? resolve_adapter(&c, err) : nq_fail(err, "out of memory");
        free(c.used);
        if (rc != 0) {
            nq_lora_free(l);
            return NULL;
        }
    }
    if (l->nops)
        qsort(l->ops, l->nops, sizeof *l->ops, cmp_op);
    for (size_t i = 0; i < l->nops; i++)
        l->ntensors += i == 0 || l->ops[i].base != l->ops[i - 1].base;
    return l;
}

size_t nq_lora_tensor_count(const nq_lora *l) { return l ? l->ntensors : 0; }

static json_t *adapter_json(const nq_lora *l, size_t i, bool with_notes)
{
    const nq_lora_adapter_info *ai = &l->ad[i];
    const nq_adapter *a = ai->a;
    size_t tensors = 0;
    for (size_t k = 0; k < l->nops; k++) {
        if (l->ops[k].adapter != (int)i)
            continue;
        bool first = true; /* each base once per adapter */
        for (size_t p = k; p-- > 0 && l->ops[p].base == l->ops[k].base;)
            if (l->ops[p].adapter == (int)i)
                first = false;
        tensors += first;
    }
    json_t *o = json_pack("{s:s, s:f, s:i, s:f, s:b, s:b, s:I, s:I, s:I}", "name", ai->name,
                          "weight", ai->weight, "r", a->r, "lora_alpha", a->alpha, "use_rslora",
                          a->use_rslora, "use_dora", a->use_dora, "lora_modules",
                          (json_int_t)ai->modules, "tensors", (json_int_t)tensors,
                          "replaced_tensors", (json_int_t)ai->replaced);
    if (!o)
        return NULL;
    json_object_set_new(o, "base_model_name_or_path",
                        a->base_model ? json_string(a->base_model) : json_null());
    if (!with_notes)
        return o;
    json_t *notes = json_array();
    char buf[512];
    if (ai->untrained_out_proj) {
        snprintf(buf, sizeof buf,
                 "%zu Mamba out_proj LoRA(s) have B = 0 or nearly (max |B| %.3g): untrained, as "
                 "usual for out_proj (PEFT refuses it on nemotron_h); merged anyway",
                 ai->untrained_out_proj, ai->untrained_max_b);
        json_array_append_new(notes, json_string(buf));
    }
    if (ai->fan_in_fan_out_ignored)
        json_array_append_new(notes, json_string("fan_in_fan_out=true ignored: every target is "
                                                 "an nn.Linear, where PEFT resets it to false"));
    json_object_set_new(o, "notes", notes);
    return o;
}

json_t *nq_lora_describe(const nq_lora *l, bool with_notes)
{
    json_t *arr = json_array();
    for (size_t i = 0; l && arr && i < l->nad; i++)
        json_array_append_new(arr, adapter_json(l, i, with_notes));
    return arr;
}

/* ---- nemoq inspect ADAPTER_DIR ------------------------------------------- */

static json_t *string_array(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

json_t *nq_adapter_inspect(const char *dir, const char *base_dir, nq_error *err)
{
    nq_checkpoint *ck = NULL;
    if (base_dir && !(ck = nq_checkpoint_open(base_dir, err)))
        return NULL;
    char cfg[4096];
    if (base_dir)
        snprintf(cfg, sizeof cfg, "%s/config.json", base_dir);
    nq_lora_spec spec = {.dir = dir, .weight = 1.0};
    nq_lora *l = nq_lora_resolve(ck, &spec, 1, base_dir ? cfg : NULL, 1, err);
    if (!l) {
        nq_checkpoint_close(ck);
        return NULL;
    }
    nq_adapter *a = l->ad[0].a;
    json_t *doc = json_object();
    json_object_set_new(doc, "adapter", json_string(dir));
    json_object_set_new(doc, "base_model_name_or_path",
                        a->base_model ? json_string(a->base_model) : json_null());
    json_object_set_new(doc, "r", json_integer(a->r));
    json_object_set_new(doc, "lora_alpha", json_real(a->alpha));
    json_object_set_new(doc, "scaling", json_real(nq_adapter_scaling(a, a->r, a->alpha)));
    json_object_set_new(doc, "use_rslora", json_boolean(a->use_rslora));
    json_object_set_new(doc, "use_dora", json_boolean(a->use_dora));
    json_object_set_new(doc, "lora_bias", json_boolean(a->lora_bias));
    json_object_set_new(doc, "fan_in_fan_out", json_boolean(a->fan_in_fan_out));
    json_object_set_new(doc, "target_modules", a->target_regex ? json_string(a->target_regex)
                                                               : string_array(a->targets, a->ntargets));
    json_object_set_new(doc, "target_parameters",
                        string_array(a->target_parameters, a->ntarget_parameters));
    json_object_set_new(doc, "modules_to_save",
                        string_array(a->modules_to_save, a->nmodules_to_save));
    json_t *lt = json_array(), *rp = json_object(), *ap = json_object();
    for (size_t i = 0; i < a->nlayers; i++)
        json_array_append_new(lt, json_integer(a->layers[i]));
    for (size_t i = 0; i < a->nrank_pattern; i++)
        json_object_set_new(rp, a->rank_pattern[i].key,
                            json_integer((json_int_t)a->rank_pattern[i].value));
    for (size_t i = 0; i < a->nalpha_pattern; i++)
        json_object_set_new(ap, a->alpha_pattern[i].key, json_real(a->alpha_pattern[i].value));
    json_object_set_new(doc, "layers_to_transform", lt);
    json_object_set_new(doc, "rank_pattern", rp);
    json_object_set_new(doc, "alpha_pattern", ap);

    /* the adapter's modules as PEFT names them, with rank, alpha, scaling */
    json_t *mods = json_array();
    uint64_t params = 0;
    const nq_checkpoint *at = a->tensors;
    for (size_t i = 0; i < nq_checkpoint_count(at); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(at, i);
        params += t->numel;
        const char *k = t->name;
        if (strncmp(k, "base_model.model.", 17) == 0)
            k += 17;
        bool lin = ends_with(k, ".lora_A.weight"), emb = ends_with(k, ".lora_embedding_A");
        if (!lin && !emb)
            continue;
        char module[1024], key[1024];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(k) - (lin ? 14 : 17)), k);
        snprintf(key, sizeof key, "%s", module);
        int depth = 0;
        while (ends_with(key, ".base_layer")) {
            key[strlen(key) - 11] = '\0';
            depth++;
        }
        int r;
        double alpha;
        nq_error ignored = {0};
        if (nq_adapter_rank_alpha(a, key, &r, &alpha, &ignored) != 0)
            r = a->r, alpha = a->alpha;
        const char *kind = emb ? "embedding" : depth || a->ntarget_parameters ? "parameter" : "linear";
        if (!emb && a->ntarget_parameters && !depth) {
            /* a Linear also listed in target_modules stays "linear" */
            nq_error e2 = {0};
            if (nq_adapter_selects(a, key, &e2) == 1)
                kind = "linear";
        }
        json_array_append_new(mods, json_pack("{s:s, s:s, s:[I,I], s:i, s:f, s:f}", "module",
                                              module, "kind", kind, "lora_A",
                                              (json_int_t)t->shape[0], (json_int_t)t->shape[1],
                                              "r", r, "lora_alpha", alpha, "scaling",
                                              nq_adapter_scaling(a, r, alpha)));
    }
    json_object_set_new(doc, "parameters", json_integer((json_int_t)params));
    json_object_set_new(doc, "tensors", json_integer((json_int_t)nq_checkpoint_count(at)));
    json_object_set_new(doc, "modules", mods);
    if (ck) {
        json_t *touched = json_array();
        for (size_t i = 0; i < l->nops; i++)
            if (i == 0 || l->ops[i].base != l->ops[i - 1].base)
                json_array_append_new(touched, json_string(l->ops[i].base->name));
        json_object_set_new(doc, "base", json_string(base_dir));
        json_object_set_new(doc, "base_tensors", touched);
        json_t *d = adapter_json(l, 0, true);
        json_object_set(doc, "notes", json_object_get(d, "notes"));
        json_decref(d);
    }
    nq_lora_free(l);
    nq_checkpoint_close(ck);
    return doc;
}

void nq_adapter_inspect_print(FILE *out, const json_t *doc)
{
    fprintf(out, "adapter: %s\n", json_string_value(json_object_get(doc, "adapter")));
    const json_t *bm = json_object_get(doc, "base_model_name_or_path");
    fprintf(out, "base model: %s\n", json_is_string(bm) ? json_string_value(bm) : "(not given)");
    fprintf(out, "r %lld, lora_alpha %g, scaling %g%s%s%s\n",
            (long long)json_integer_value(json_object_get(doc, "r")),
            json_real_value(json_object_get(doc, "lora_alpha")),
            json_real_value(json_object_get(doc, "scaling")),
            json_is_true(json_object_get(doc, "use_rslora")) ? " (rsLoRA)" : "",
            json_is_true(json_object_get(doc, "use_dora")) ? ", DoRA" : "",
            json_is_true(json_object_get(doc, "lora_bias")) ? ", lora_bias" : "");
    static const char *lists[] = {"target_modules", "target_parameters", "modules_to_save",
                                  "layers_to_transform", "rank_pattern", "alpha_pattern"};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        const json_t *v = json_object_get(doc, lists[i]);
        if (!v || (json_is_array(v) && json_array_size(v) == 0) ||
            (json_is_object(v) && json_object_size(v) == 0))
            continue;
        char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_PRESERVE_ORDER);
        fprintf(out, "%s: %s\n", lists[i], s ? s : "?");
        free(s);
    }
    const json_t *mods = json_object_get(doc, "modules");
    fprintf(out, "%lld tensors, %lld parameters, %zu LoRA modules:\n",
            (long long)json_integer_value(json_object_get(doc, "tensors")),
            (long long)json_integer_value(json_object_get(doc, "parameters")),
            json_array_size(mods));
    size_t i;
    json_t *m;
    json_array_foreach(mods, i, m) {
        json_t *A = json_object_get(m, "lora_A");
        fprintf(out, "  %-58s %-9s A [%lld, %lld]  r %-3lld alpha %-6g scaling %g\n",
                json_string_value(json_object_get(m, "module")),
                json_string_value(json_object_get(m, "kind")),
                (long long)json_integer_value(json_array_get(A, 0)),
                (long long)json_integer_value(json_array_get(A, 1)),
                (long long)json_integer_value(json_object_get(m, "r")),
                json_real_value(json_object_get(m, "lora_alpha")),
                json_real_value(json_object_get(m, "scaling")));
    }
    const json_t *bt = json_object_get(doc, "base_tensors");
    if (bt) {
        fprintf(out, "lands on %zu tensors of %s:\n", json_array_size(bt),
                json_string_value(json_object_get(doc, "base")));
        json_array_foreach(bt, i, m)
            fprintf(out, "  %s\n", json_string_value(m));
        json_array_foreach(json_object_get(doc, "notes"), i, m)
            fprintf(out, "note: %s\n", json_string_value(m));
    }
}

/* ---- config.json -------------------------------------------------------- */

char *nq_lora_config_record(const char *text, size_t len, const char *source_name,
                            const json_t *adapters, size_t *out_len, nq_error *err)
{
    static const char key[] = "nemoq_merged_adapters";
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        nq_fail(err, "%s: not a JSON object", source_name);
        return NULL;
    }
    json_t *prev = json_object_get(root, key);
    char *out = NULL;
    if (prev) {
        /* merged before: one list, oldest first (the file is re-serialized) */
        if (!json_is_array(prev)) {
            json_decref(root);
            nq_fail(err, "%s: %s is not a list", source_name, key);
            return NULL;
        }
        json_array_extend(prev, (json_t *)adapters);
        char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(root);
        if (!s || !(out = realloc(s, strlen(s) + 2))) {
            free(s);
            nq_fail(err, "out of memory");
            return NULL;
        }
        *out_len = strlen(out);
        out[(*out_len)++] = '\n';
        out[*out_len] = '\0';
        return out;
    }
    json_decref(root);
    /* first merge: the key goes in before the closing brace, every original
     * byte kept (the splice the quantization_config takes) */
    json_t *keys = json_pack("{s:O}", key, (json_t *)adapters);
    if (!keys) {
        nq_fail(err, "out of memory");
        return NULL;
    }
    out = nq_config_splice(text, len, source_name, keys, out_len, err);
    json_decref(keys);
    return out;
}

void nq_lora_print_summary(FILE *out, const json_t *described)
{
    size_t i, k;
    json_t *d, *note;
    json_array_foreach(described, i, d) {
        fprintf(out, "merged LoRA %s (weight %g, r %lld, alpha %g%s%s): %lld LoRA modules on "
                     "%lld tensors, %lld tensors replaced\n",
                json_string_value(json_object_get(d, "name")),
                json_real_value(json_object_get(d, "weight")),
                (long long)json_integer_value(json_object_get(d, "r")),
                json_real_value(json_object_get(d, "lora_alpha")),
                json_is_true(json_object_get(d, "use_rslora")) ? ", rsLoRA" : "",
                json_is_true(json_object_get(d, "use_dora")) ? ", DoRA" : "",
                (long long)json_integer_value(json_object_get(d, "lora_modules")),
                (long long)json_integer_value(json_object_get(d, "tensors")),
                (long long)json_integer_value(json_object_get(d, "replaced_tensors")));
        json_array_foreach(json_object_get(d, "notes"), k, note)
            fprintf(out, "note: %s: %s\n", json_string_value(json_object_get(d, "name")),
                    json_string_value(note));
    }
}
