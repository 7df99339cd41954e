/* Writes a random PEFT LoRA adapter for every Linear of a checkpoint
 * (q/k/v/o_proj, Mamba in_proj/out_proj, routed and shared experts'
 * up_proj/down_proj, NVIDIA naming), for bench/lora_bench.sh.
 *
 *   nemoq-gen-lora CHECKPOINT_DIR OUT_DIR [--rank R] [--alpha A]
 *
 * A [r, in] and B [out, r] in BF16 (what a bf16 training run saves), random
 * with a fixed seed; adapter_config.json lists the targets as PEFT writes
 * them. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/floatconv.h"
#include "io/safetensors.h"
#include "io/writer.h"

static const char *targets[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                "in_proj", "out_proj", "up_proj", "down_proj"};

static bool is_target(const nq_tensor *t, char *module, size_t n)
{
    size_t l = strlen(t->name);
    if (t->ndim != 2 || l < 8 || strcmp(t->name + l - 7, ".weight") != 0 || l - 7 >= n)
        return false;
    memcpy(module, t->name, l - 7);
    module[l - 7] = '\0';
    const char *last = strrchr(module, '.');
    last = last ? last + 1 : module;
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++)
        if (strcmp(last, targets[i]) == 0)
            return true;
    return false;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float gauss(void)
{
    /* sum of 4 uniforms: cheap, roughly normal, deterministic */
    float s = 0.0f;
    for (int k = 0; k < 4; k++) {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        s += (float)((rng * 2685821657736338717ull) >> 40) / (float)(1 << 24) - 0.5f;
    }
    return s * 1.732f;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CHECKPOINT_DIR OUT_DIR [--rank R] [--alpha A]\n", argv[0]);
        return 2;
    }
    int r = 16;
    double alpha = 32;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rank"))
            r = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--alpha"))
            alpha = atof(argv[i + 1]);
    }
    nq_error err = {0};
    nq_checkpoint *ck = nq_checkpoint_open(argv[1], &err);
    if (!ck) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    nq_writer_options wo = {.out_dir = argv[2], .force = true};
    nq_writer *w = nq_writer_create(&wo, &err);
    char module[512], name[600];
    size_t pairs = 0;
    for (size_t i = 0; w && i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        if (!is_target(t, module, sizeof module))
            continue;
        int64_t a[2] = {r, t->shape[1]}, b[2] = {t->shape[0], r};
        snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", module);
        if (nq_writer_declare(w, name, NQ_BF16, 2, a, &err) != 0)
            goto fail;
        snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", module);
        if (nq_writer_declare(w, name, NQ_BF16, 2, b, &err) != 0)
            goto fail;
        pairs++;
    }
    if (!w || nq_writer_begin(w, &err) != 0)
        goto fail;
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        if (!is_target(t, module, sizeof module))
            continue;
        int64_t n[2] = {(int64_t)r * t->shape[1], t->shape[0] * (int64_t)r};
        float sd[2] = {1.0f / sqrtf((float)t->shape[1]), 0.002f};
        for (int k = 0; k < 2; k++) {
            uint16_t *buf = malloc((size_t)n[k] * 2);
            for (int64_t j = 0; j < n[k]; j++)
                buf[j] = nq_f32_to_bf16(gauss() * sd[k]);
            int rc = nq_writer_write(w, buf, (size_t)n[k] * 2, &err);
            free(buf);
            if (rc != 0)
                goto fail;
        }
    }
    json_t *tm = json_array();
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++)
        json_array_append_new(tm, json_string(targets[i]));
    json_t *cfg = json_pack("{s:s, s:s, s:i, s:f, s:o, s:b, s:b, s:s}", "peft_type", "LORA",
                            "base_model_name_or_path", "synthetic", "r", r, "lora_alpha", alpha,
                            "target_modules", tm, "use_rslora", 0, "use_dora", 0, "bias", "none");
    char *text = json_dumps(cfg, JSON_INDENT(2));
    json_decref(cfg);
    if (nq_writer_add_file(w, "adapter_config.json", text, strlen(text), &err) != 0 ||
        nq_writer_commit(w, &err) != 0) {
        free(text);
        goto fail;
    }
    free(text);
    nq_writer_free(w);
    nq_checkpoint_close(ck);
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/model.safetensors", argv[2]);
    snprintf(to, sizeof to, "%s/adapter_model.safetensors", argv[2]);
    if (rename(from, to) != 0) {
        perror(to);
        return 1;
    }
    printf("wrote %s: %zu LoRA pairs of rank %d\n", argv[2], pairs, r);
    return 0;
fail:
    fprintf(stderr, "%s\n", err.msg);
    nq_writer_free(w);
    nq_checkpoint_close(ck);
    return 1;
}
