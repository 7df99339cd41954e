/* Writes the Nano-width reference model of tests/test_nano_width.c as a BF16
 * checkpoint directory, so the CLI (eval, quantize --calib) and other
 * backends can run it:
 *
 *   nemoq-gen-nano-width OUT_DIR [--config CONFIG.json] [--max-shard-size BYTES]
 *
 * CONFIG defaults to tests/fixtures/nano_width/config.json (Nemotron 3 Nano's
 * widths and routing, pattern "M*E", vocabulary 512; 1.36 G parameters,
 * 2.7 GB).  The weights are those of tests/gen/nano_width_weights.py and
 * tests/nanow/nano_width_gen.c (seed NQ_NANOW_SEED), bit for bit, so
 * transformers' outputs in tests/fixtures/nano_width/ are its reference.
 * The directory has no tokenizer: feed token ids, or pass --tokenizer. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/writer.h"
#include "model/config.h"
#include "nanow/nano_width_gen.h"

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s OUT_DIR [--config CONFIG.json] [--max-shard-size BYTES]\n",
                argv[0]);
        return 2;
    }
    const char *config = NEMOQ_SOURCE_DIR "/tests/fixtures/nano_width/config.json";
    uint64_t shard = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--max-shard-size") && i + 1 < argc)
            shard = strtoull(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "%s: unknown argument '%s'\n", argv[0], argv[i]);
            return 2;
        }
    }
    nq_model_config c;
    nq_error err = {0};
    size_t n = 0;
    nq_nanow_spec *specs = NULL;
    nq_writer *w = NULL;
    uint16_t *bits = NULL;
    if (nq_model_config_load(config, &c, &err) != 0 || !(specs = nq_nanow_specs(&c, &n, &err)))
        goto fail;
    nq_writer_options opt = {.out_dir = argv[1], .max_shard_bytes = shard};
    if (!(w = nq_writer_create(&opt, &err)))
        goto fail;
    for (size_t i = 0; i < n; i++)
        if (nq_writer_declare(w, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape,
                              &err) != 0)
            goto fail;
    if (nq_writer_begin(w, &err) != 0)
        goto fail;
    enum { CHUNK = 1 << 20 };
    bits = malloc(CHUNK * sizeof *bits);
    float *f32 = malloc(CHUNK * sizeof *f32);
    if (!bits || !f32) {
        free(f32);
        nq_fail(&err, "out of memory");
        goto fail;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < n && err.msg[0] == 0; i++) {
        for (uint64_t off = 0; off < specs[i].numel; off += CHUNK) {
            uint64_t k = specs[i].numel - off < CHUNK ? specs[i].numel - off : CHUNK;
            nq_nanow_bits(&specs[i], NQ_NANOW_SEED, off, k, bits);
            int rc;
            if (specs[i].dtype == NQ_F32) {
                for (uint64_t j = 0; j < k; j++) {
                    uint32_t u = (uint32_t)bits[j] << 16;
                    memcpy(&f32[j], &u, 4);
                }
                rc = nq_writer_write(w, f32, k * 4, &err);
            } else {
                rc = nq_writer_write(w, bits, k * 2, &err);
            }
            if (rc != 0)
                break;
            total += k;
        }
    }
    free(f32);
    if (err.msg[0])
        goto fail;
    size_t len = 0;
    char *text = NULL;
    FILE *fc = fopen(config, "rb");
    if (fc) {
        fseek(fc, 0, SEEK_END);
        long sz = ftell(fc);
        fseek(fc, 0, SEEK_SET);
        text = sz > 0 ? malloc((size_t)sz) : NULL;
        len = text ? fread(text, 1, (size_t)sz, fc) : 0;
        fclose(fc);
    }
    if (!text || len == 0) {
        free(text);
        nq_fail(&err, "%s: cannot read", config);
        goto fail;
    }
    int frc = nq_writer_add_file(w, "config.json", text, len, &err);
    free(text);
    if (frc != 0 || nq_writer_commit(w, &err) != 0)
        goto fail;
    nq_writer_free(w);
    printf("wrote %s: %zu tensors, %.3f G parameters, pattern %s\n", argv[1], n, total / 1e9,
           c.pattern);
    free(bits);
    free(specs);
    return 0;
fail:
    fprintf(stderr, "%s\n", err.msg);
    nq_writer_free(w);
    free(bits);
    free(specs);
    return 1;
}
