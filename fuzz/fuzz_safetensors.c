/* libFuzzer target: the safetensors header parser and the shard index.
 *
 * The first input byte picks the mode:
 *   even: the rest is a whole safetensors file image (header + data), parsed
 *         in memory; every accepted tensor's bytes are then read, so a view
 *         that points outside the image is caught by ASan;
 *   odd:  the rest is a model.safetensors.index.json written into a scratch
 *         directory beside two valid shards, then opened as a checkpoint. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"

static char scratch[256];

static void write_file(const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", scratch, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(data, 1, len, f);
    fclose(f);
}

static void make_scratch(void)
{
    /* mkdtemp, not a guessable name: never write through someone else's link */
    snprintf(scratch, sizeof scratch, "/tmp/nemoq-fuzz-index-XXXXXX");
    if (!mkdtemp(scratch))
        abort();
    const char h1[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    const char h2[] = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
    unsigned char buf[256];
    uint64_t n = sizeof h1 - 1;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, h1, n);
    memset(buf + 8 + n, 0, 8);
    write_file("model-00001-of-00002.safetensors", buf, 8 + n + 8);
    n = sizeof h2 - 1;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, h2, n);
    memset(buf + 8 + n, 0, 4);
    write_file("model-00002-of-00002.safetensors", buf, 8 + n + 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    nq_error err = {0};
    if ((data[0] & 1) == 0) {
        /* a private copy sized exactly, so any overread hits ASan's redzone */
        unsigned char *img = malloc(size - 1 ? size - 1 : 1);
        memcpy(img, data + 1, size - 1);
        nq_tensor *ts;
        size_t n;
        if (nq_safetensors_parse(img, size - 1, "fuzz.safetensors", &ts, &n, &err) == 0) {
            unsigned sum = 0;
            for (size_t i = 0; i < n; i++)
                for (uint64_t b = 0; b < ts[i].nbytes; b++)
                    sum += ts[i].data[b];
            if (sum == 0xdeadbeef) /* keeps the reads alive */
                fputc(0, stderr);
            nq_tensor_array_free(ts, n);
        } else if (err.msg[0] == '\0') {
            abort(); /* every failure must explain itself */
        }
        free(img);
        return 0;
    }
    if (!scratch[0])
        make_scratch();
    write_file("model.safetensors.index.json", data + 1, size - 1);
    nq_checkpoint *ck = nq_checkpoint_open(scratch, &err);
    if (ck) {
        float f[2];
        for (size_t i = 0; i < nq_checkpoint_count(ck); i++)
            nq_tensor_read_f32(nq_checkpoint_tensor(ck, i), 0, 2, f, &err);
        nq_checkpoint_close(ck);
    } else if (err.msg[0] == '\0') {
        abort();
    }
    return 0;
}
