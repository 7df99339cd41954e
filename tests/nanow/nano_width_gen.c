/* Build with -ffp-contract=off (CMakeLists.txt does): u * span + lo must be
 * two roundings, as in numpy, never one FMA. */
#include "nano_width_gen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "formats/floatconv.h"

/* std of a sum of four uniform 16-bit integers */
static double std16(void) { return sqrt(4.0 * (65536.0 * 65536.0 - 1.0) / 12.0); }

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001B3ull;
    }
    return h;
}

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    nq_nanow_spec *v;
    size_t n, cap;
    int failed;
} spec_list;

static void add(spec_list *l, const char *name, nq_dtype dt, char kind, double a, double b,
                int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 512;
        nq_nanow_spec *p = realloc(l->v, cap * sizeof *p);
        if (!p) {
            l->failed = 1;
            return;
        }
        l->v = p;
        l->cap = cap;
    }
    nq_nanow_spec *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->dtype = dt;
    s->kind = kind;
    s->a = a;
    s->b = b;
    s->ndim = ndim;
    int64_t d[3] = {d0, d1, d2};
    s->numel = 1;
    for (int i = 0; i < ndim; i++) {
        s->shape[i] = d[i];
        s->numel *= (uint64_t)d[i];
    }
}

/* Mirrors tensor_specs() in tests/gen/nano_width_weights.py line for line. */
nq_nanow_spec *nq_nanow_specs(const nq_model_config *c, size_t *count, nq_error *err)
{
    spec_list l = {0};
    int64_t H = c->hidden_size, V = c->vocab_size;
    int64_t nh = c->mamba_num_heads, inter = nq_mamba_intermediate(c);
    int64_t conv = nq_mamba_conv_dim(c), proj = nq_mamba_in_proj_dim(c);
    int64_t qd = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    int64_t E = c->n_routed_experts, mi = c->moe_intermediate_size;
    int64_t si = c->moe_shared_expert_intermediate_size;
#define LIN(fan_in, gain) ((gain) / sqrt((double)(fan_in)))
    char name[160];
    add(&l, "backbone.embeddings.weight", NQ_BF16, 'n', 1.0, 0.0, 2, V, H, 0);
    for (int i = 0; i < c->num_layers; i++) {
#define N(suffix) (snprintf(name, sizeof name, "backbone.layers.%d.%s", i, suffix), name)
        add(&l, N("norm.weight"), NQ_BF16, 'n', 0.2, 1.0, 1, H, 0, 0);
        switch (c->pattern[i]) {
        case 'M':
            add(&l, N("mixer.A_log"), NQ_BF16, 'u', -0.6931471805599453, 2.4849066497880004, 1, nh,
                0, 0);
            add(&l, N("mixer.D"), NQ_BF16, 'n', 1.0, 0.0, 1, nh, 0, 0);
            add(&l, N("mixer.conv1d.bias"), NQ_BF16, 'n', 0.2, 0.0, 1, conv, 0, 0);
            add(&l, N("mixer.conv1d.weight"), NQ_BF16, 'n', 0.5, 0.0, 3, conv, 1, c->conv_kernel);
            add(&l, N("mixer.dt_bias"), NQ_BF16, 'u', -7.0, 1.5, 1, nh, 0, 0);
            add(&l, N("mixer.in_proj.weight"), NQ_BF16, 'n', LIN(H, 1.0), 0.0, 2, proj, H, 0);
            add(&l, N("mixer.norm.weight"), NQ_BF16, 'n', 0.2, 1.0, 1, inter, 0, 0);
            add(&l, N("mixer.out_proj.weight"), NQ_BF16, 'n', LIN(inter, 0.5), 0.0, 2, H, inter, 0);
            break;
        case '*':
            add(&l, N("mixer.k_proj.weight"), NQ_BF16, 'n', LIN(H, 1.0), 0.0, 2, kvd, H, 0);
            add(&l, N("mixer.o_proj.weight"), NQ_BF16, 'n', LIN(qd, 0.5), 0.0, 2, H, qd, 0);
            add(&l, N("mixer.q_proj.weight"), NQ_BF16, 'n', LIN(H, 1.0), 0.0, 2, qd, H, 0);
            add(&l, N("mixer.v_proj.weight"), NQ_BF16, 'n', LIN(H, 1.0), 0.0, 2, kvd, H, 0);
            break;
        case 'E':
            for (int64_t e = 0; e < E; e++) {
                snprintf(name, sizeof name, "backbone.layers.%d.mixer.experts.%lld.down_proj.weight",
                         i, (long long)e);
                add(&l, name, NQ_BF16, 'n', LIN(mi, 0.5), 0.0, 2, H, mi, 0);
                snprintf(name, sizeof name, "backbone.layers.%d.mixer.experts.%lld.up_proj.weight",
                         i, (long long)e);
                add(&l, name, NQ_BF16, 'n', LIN(H, 1.0), 0.0, 2, mi, H, 0);
            }
            add(&l, N("mixer.gate.e_score_correction_bias"), NQ_F32, 'n', 0.1, 0.0, 1, E, 0, 0);
            add(&l, N("mixer.gate.weight"), NQ_BF16, 'n', LIN(H, 1.0), 0.0, 2, E, H, 0);
            add(&l, N("mixer.shared_experts.down_proj.weight"), NQ_BF16, 'n', LIN(si, 0.5), 0.0, 2,
                H, si, 0);
            add(&l, N("mixer.shared_experts.up_proj.weight"), NQ_BF16, 'n', LIN(H, 1.0), 0.0, 2, si,
                H, 0);
            break;
        default:
            free(l.v);
            nq_fail(err, "nano-width generator: block kind '%c' (layer %d) is not generated",
                    c->pattern[i], i);
            return NULL;
        }
#undef N
    }
    add(&l, "backbone.norm_f.weight", NQ_BF16, 'n', 0.2, 1.0, 1, H, 0, 0);
    add(&l, "lm_head.weight", NQ_BF16, 'n', LIN(H, 2.0), 0.0, 2, V, H, 0);
#undef LIN
    if (l.failed) {
        free(l.v);
        nq_fail(err, "nano-width generator: out of memory");
        return NULL;
    }
    *count = l.n;
    return l.v;
}

/* Per-CPU copies for speed; not under the libFuzzer build (clang 14 does
 * not emit the dispatcher symbol there, see NQ_NO_MULTIVERSION in
 * formats/encode_internal.h).  The bits are the same either way: the file is
 * compiled without FMA contraction. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(NQ_NO_MULTIVERSION)
#define NQ_NANOW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NQ_NANOW_CLONES
#endif

/* Vectorizes well with AVX-512 (64-bit multiplies); only integer operations
 * and separate float roundings, so every clone gives the same bits. */
NQ_NANOW_CLONES
void nq_nanow_bits(const nq_nanow_spec *s, uint64_t seed, uint64_t begin, uint64_t count,
                   uint16_t *bits)
{
    uint64_t key = fnv1a64(s->name) ^ seed;
    if (s->kind == 'n') {
        float coef = (float)(s->a / std16()), mean = (float)s->b;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t z = mix64(key + (begin + i + 1) * 0x9E3779B97F4A7C15ull);
            int64_t sum = (int64_t)((z & 0xFFFF) + ((z >> 16) & 0xFFFF) + ((z >> 32) & 0xFFFF) +
                                    (z >> 48)) - 131070;
            float v = (float)sum * coef;
            if (mean != 0.0f)
                v = v + mean;
            bits[i] = nq_f32_to_bf16_inline(v);
        }
    } else {
        float lo = (float)s->a, span = (float)s->b - lo;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t z = mix64(key + (begin + i + 1) * 0x9E3779B97F4A7C15ull);
            float u = (float)(z >> 40) * 0x1p-24f;
            float v = u * span;
            v = v + lo;
            bits[i] = nq_f32_to_bf16_inline(v);
        }
    }
}

NQ_NANOW_CLONES
uint64_t nq_nanow_checksum(uint64_t acc, const uint16_t *bits, uint64_t begin, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++)
        acc += (uint64_t)bits[i] * (2 * (begin + i) + 1);
    return acc;
}

/* ---- provider ---------------------------------------------------------- */

#define GEN_CHUNK (1u << 16)

NQ_NANOW_CLONES
static void widen(const uint16_t *bits, uint64_t n, float *out)
{
    for (uint64_t i = 0; i < n; i++)
        out[i] = nq_bits_to_f32((uint32_t)bits[i] << 16);
}

typedef struct {
    const nq_nanow_spec *s;
    uint64_t seed;
    float *out;
    uint64_t *sums; /* per chunk */
} gen_job;

static int gen_chunks(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    gen_job *j = ctx;
    uint16_t buf[4096];
    for (size_t c = begin; c < end; c++) {
        uint64_t lo = (uint64_t)c * GEN_CHUNK;
        uint64_t hi = lo + GEN_CHUNK < j->s->numel ? lo + GEN_CHUNK : j->s->numel;
        uint64_t sum = 0;
        for (uint64_t o = lo; o < hi; o += 4096) {
            uint64_t n = hi - o < 4096 ? hi - o : 4096;
            nq_nanow_bits(j->s, j->seed, o, n, buf);
            sum = nq_nanow_checksum(sum, buf, o, n);
            widen(buf, n, j->out + o);
        }
        j->sums[c] = sum;
    }
    return 0;
}

int nq_nanow_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    nq_nanow_source *src = ctx;
    const nq_nanow_spec *s = NULL;
    for (size_t i = 0; i < src->count && !s; i++)
        if (strcmp(src->specs[i].name, req->name) == 0)
            s = &src->specs[i];
    if (!s)
        return 1;
    int same = s->ndim == req->ndim && s->numel == req->numel;
    for (int i = 0; same && i < s->ndim; i++)
        same = s->shape[i] == req->shape[i];
    if (!same)
        return nq_fail(err, "%s: the generator's shape differs from the one requested", req->name);
    size_t chunks = (size_t)((s->numel + GEN_CHUNK - 1) / GEN_CHUNK);
    uint64_t *sums = malloc(chunks * sizeof *sums);
    if (!sums)
        return nq_fail(err, "%s: out of memory", req->name);
    gen_job job = {.s = s, .seed = src->seed, .out = out, .sums = sums};
    nq_parallel_for(chunks, 1, src->threads, gen_chunks, &job);
    uint64_t total = 0;
    for (size_t c = 0; c < chunks; c++)
        total += sums[c];
    free(sums);
    src->generated += s->numel;
    if (src->on_tensor && src->on_tensor(src->ctx, s, total, err) != 0)
        return -1;
    return 0;
}
