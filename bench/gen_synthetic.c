/* Writes a synthetic BF16 Nemotron-H checkpoint with the real shapes of a
 * config.json (random weights, fixed seed) through nemoq's shard writer.
 *
 *   nemoq-gen-synthetic CONFIG.json OUT_DIR [--layers N] [--max-shard-size BYTES]
 *
 * --layers N keeps the first N layers of the pattern (a proportional subset
 * for quick runs). Tensor names, order and dtypes follow NVIDIA's checkpoints
 * (e_score_correction_bias in F32, everything else BF16). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/floatconv.h"
#include "io/writer.h"
#include "model/config.h"

typedef struct spec {
    char name[160];
    nq_dtype dtype;
    int ndim;
    int64_t shape[3];
    float scale; /* std of the values; 0: ones (norms), <0: constant -scale */
} spec;

static spec *specs;
static size_t nspecs, capspecs;

static void add(const char *name, nq_dtype dt, float scale, int ndim, int64_t a, int64_t b, int64_t c)
{
    if (nspecs == capspecs) {
        capspecs = capspecs ? 2 * capspecs : 1024;
        specs = realloc(specs, capspecs * sizeof *specs);
    }
    spec *s = &specs[nspecs++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->dtype = dt;
    s->ndim = ndim;
    s->shape[0] = a;
    s->shape[1] = b;
    s->shape[2] = c;
    s->scale = scale;
}

static uint64_t rng_state;
static uint64_t next_u64(void)
{
    /* xorshift64*: fast, deterministic, good enough for weights */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONFIG.json OUT_DIR [--layers N] [--max-shard-size BYTES]\n", argv[0]);
        return 2;
    }
    int layers = -1;
    uint64_t shard = 0;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--layers"))
            layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-shard-size"))
            shard = strtoull(argv[i + 1], NULL, 10);
    }
    nq_model_config c;
    nq_error err = {0};
    if (nq_model_config_load(argv[1], &c, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (layers > 0 && layers < c.num_layers) {
        c.num_layers = layers;
        c.pattern[layers] = '\0';
    }
    char name[160];
    int64_t H = c.hidden_size;
    add("backbone.embeddings.weight", NQ_BF16, 0.02f, 2, c.vocab_size, H, 0);
    for (int l = 0; l < c.num_layers; l++) {
#define N(fmt) (snprintf(name, sizeof name, "backbone.layers.%d." fmt, l), name)
        add(N("norm.weight"), NQ_BF16, 0, 1, H, 0, 0);
        if (c.pattern[l] == 'M') {
            int64_t nh = c.mamba_num_heads, inter = nq_mamba_intermediate(&c), conv = nq_mamba_conv_dim(&c);
            add(N("mixer.A_log"), NQ_BF16, 0.5f, 1, nh, 0, 0);
            add(N("mixer.D"), NQ_BF16, 0, 1, nh, 0, 0);
            add(N("mixer.conv1d.bias"), NQ_BF16, 0.02f, 1, conv, 0, 0);
            add(N("mixer.conv1d.weight"), NQ_BF16, 0.2f, 3, conv, 1, c.conv_kernel);
            add(N("mixer.dt_bias"), NQ_BF16, 0.5f, 1, nh, 0, 0);
            add(N("mixer.in_proj.weight"), NQ_BF16, 0.02f, 2, nq_mamba_in_proj_dim(&c), H, 0);
            add(N("mixer.norm.weight"), NQ_BF16, 0, 1, inter, 0, 0);
            add(N("mixer.out_proj.weight"), NQ_BF16, 0.02f, 2, H, inter, 0);
        } else if (c.pattern[l] == '*') {
            int64_t q = (int64_t)c.num_attention_heads * c.head_dim, kv = (int64_t)c.num_key_value_heads * c.head_dim;
            add(N("mixer.k_proj.weight"), NQ_BF16, 0.02f, 2, kv, H, 0);
            add(N("mixer.o_proj.weight"), NQ_BF16, 0.02f, 2, H, q, 0);
            add(N("mixer.q_proj.weight"), NQ_BF16, 0.02f, 2, q, H, 0);
            add(N("mixer.v_proj.weight"), NQ_BF16, 0.02f, 2, kv, H, 0);
        } else if (c.pattern[l] == 'E') {
            for (int e = 0; e < c.n_routed_experts; e++) {
                snprintf(name, sizeof name, "backbone.layers.%d.mixer.experts.%d.down_proj.weight", l, e);
                add(name, NQ_BF16, 0.02f, 2, H, c.moe_intermediate_size, 0);
                snprintf(name, sizeof name, "backbone.layers.%d.mixer.experts.%d.up_proj.weight", l, e);
                add(name, NQ_BF16, 0.02f, 2, c.moe_intermediate_size, H, 0);
            }
            add(N("mixer.gate.e_score_correction_bias"), NQ_F32, 0.01f, 1, c.n_routed_experts, 0, 0);
            add(N("mixer.gate.weight"), NQ_BF16, 0.02f, 2, c.n_routed_experts, H, 0);
            int64_t sh = c.moe_shared_expert_intermediate_size;
            add(N("mixer.shared_experts.down_proj.weight"), NQ_BF16, 0.02f, 2, H, sh, 0);
            add(N("mixer.shared_experts.up_proj.weight"), NQ_BF16, 0.02f, 2, sh, H, 0);
        } else {
            add(N("mixer.down_proj.weight"), NQ_BF16, 0.02f, 2, H, c.intermediate_size, 0);
            add(N("mixer.up_proj.weight"), NQ_BF16, 0.02f, 2, c.intermediate_size, H, 0);
        }
#undef N
    }
    add("backbone.norm_f.weight", NQ_BF16, 0, 1, H, 0, 0);
    if (!c.tie_word_embeddings)
        add("lm_head.weight", NQ_BF16, 0.02f, 2, c.vocab_size, H, 0);

    /* the config's directory may be a real checkpoint: never replace it */
    char cfg_dir[4096];
    snprintf(cfg_dir, sizeof cfg_dir, "%s", argv[1]);
    char *slash = strrchr(cfg_dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(cfg_dir, sizeof cfg_dir, ".");
    nq_writer_options opt = {.out_dir = argv[2], .input_dir = cfg_dir[0] ? cfg_dir : "/",
                             .max_shard_bytes = shard, .force = true};
    nq_writer *w = nq_writer_create(&opt, &err);
    if (!w) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    for (size_t i = 0; i < nspecs; i++)
        if (nq_writer_declare(w, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape, &err) != 0)
            goto fail;
    if (nq_writer_begin(w, &err) != 0)
        goto fail;
    enum { CHUNK = 1 << 20 };
    static unsigned char buf[CHUNK * 4];
    uint64_t total = 0;
    for (size_t i = 0; i < nspecs; i++) {
        spec *s = &specs[i];
        uint64_t numel = 1;
        for (int d = 0; d < s->ndim; d++)
            numel *= (uint64_t)s->shape[d];
        rng_state = 0x9E3779B97F4A7C15ull ^ (i * 0xD1B54A32D192ED03ull) ^ 1;
        for (uint64_t off = 0; off < numel; off += CHUNK) {
            uint64_t n = numel - off < CHUNK ? numel - off : CHUNK;
            for (uint64_t j = 0; j < n; j++) {
                float v;
                if (s->scale == 0) {
                    v = 1.0f;
                } else {
                    /* sum of 4 uniforms: roughly gaussian, scaled to std s->scale */
                    uint64_t r = next_u64();
                    float u = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) +
                              (float)((r >> 32) & 0xffff) + (float)(r >> 48);
                    v = (u / 65536.0f - 2.0f) * 1.7320508f * s->scale;
                }
                if (s->dtype == NQ_F32)
                    memcpy(buf + 4 * j, &v, 4);
                else {
                    uint16_t h = nq_f32_to_bf16(v);
                    memcpy(buf + 2 * j, &h, 2);
                }
            }
            if (nq_writer_write(w, buf, (size_t)(n * nq_dtype_size(s->dtype)), &err) != 0)
                goto fail;
            total += n * nq_dtype_size(s->dtype);
        }
    }
    /* the config of the (possibly truncated) model */
    json_t *cj = json_load_file(argv[1], 0, NULL);
    if (!cj) {
        fprintf(stderr, "%s: cannot read\n", argv[1]);
        nq_writer_free(w);
        return 1;
    }
    json_object_del(cj, "layers_block_type");
    json_object_set_new(cj, "hybrid_override_pattern", json_string(c.pattern));
    json_object_set_new(cj, "num_hidden_layers", json_integer(c.num_layers));
    char *text = json_dumps(cj, JSON_INDENT(2));
    json_decref(cj);
    int frc = text ? nq_writer_add_file(w, "config.json", text, strlen(text), &err) : -1;
    free(text);
    if (frc != 0)
        goto fail;
    if (nq_writer_commit(w, &err) != 0)
        goto fail;
    nq_writer_free(w);
    printf("wrote %s: %zu tensors, %.2f GB, %d layers\n", argv[2], nspecs, total / 1e9, c.num_layers);
    return 0;
fail:
    fprintf(stderr, "%s\n", err.msg);
    nq_writer_free(w);
    return 1;
}
