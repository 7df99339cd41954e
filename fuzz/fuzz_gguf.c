/* libFuzzer target: the GGUF parser (io/gguf.c).  The 2024 GGUF parser
 * overflows in llama.cpp (CVE-2024-21802 and friends: string lengths, array
 * counts and tensor extents taken on trust) are the model for what it must
 * survive.  Every accepted image is walked completely: each value, each
 * string of each array, each tensor's bytes; the views must stay inside the
 * image and the invariants the reader promises must hold.  Then the accepted
 * file is rewritten through the writer and parsed again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/gguf.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nq_gguf_file f;
    nq_error err = {0};
    if (nq_gguf_parse(data, size, "fuzz.gguf", &f, &err) != 0) {
        check(err.msg[0] != '\0');
        return 0;
    }
    volatile unsigned sink = 0;
    for (size_t i = 0; i < f.nkv; i++) {
        const nq_gguf_kv *kv = &f.kv[i];
        check(kv->data >= data && kv->data + kv->nbytes <= data + size);
        for (uint64_t j = 0; j < kv->nbytes; j++)
            sink += kv->data[j];
        if (kv->type == NQ_GGUF_ARRAY && kv->arr_type == NQ_GGUF_STRING)
            for (uint64_t j = 0; j < kv->n && j < 4096; j++) {
                const char *s;
                uint64_t len;
                check(nq_gguf_kv_str_at(kv, j, &s, &len) == 0);
                check((const uint8_t *)s >= data && (const uint8_t *)s + len <= data + size);
            }
    }
    uint64_t run = 0;
    for (size_t i = 0; i < f.ntensors; i++) {
        const nq_gguf_tensor *t = &f.tensors[i];
        int64_t blk;
        size_t bb;
        check(nq_ggml_type_info(t->type, &blk, &bb, NULL) == 0);
        check(t->ndim <= NQ_GGUF_MAX_DIMS && t->ne[0] % blk == 0);
        check(t->offset == run && t->data == data + f.data_offset + t->offset);
        check(t->data + t->nbytes <= data + size);
        if (t->nbytes)
            sink += t->data[0] + t->data[t->nbytes - 1];
        run += (t->nbytes + f.alignment - 1) / f.alignment * f.alignment;
    }
    /* Rewrite the tensors (not the metadata: values the writer has no
     * setter for are legal) and parse the result. */
    if (f.alignment == NQ_GGUF_DEFAULT_ALIGNMENT && f.ntensors <= 64 && run <= (1u << 20)) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/fuzz_gguf_%d.gguf", (int)getpid());
        nq_gguf_writer *w = nq_gguf_writer_create(path, NULL, true, &err);
        int ok = w != NULL;
        for (size_t i = 0; ok && i < f.ntensors; i++)
            ok = nq_gguf_declare_tensor(w, f.tensors[i].name, f.tensors[i].type,
                                        f.tensors[i].ndim ? (int)f.tensors[i].ndim : 1, f.tensors[i].ne,
                                        &err) == 0;
        ok = ok && nq_gguf_add_u32(w, "fuzz.count", (uint32_t)f.ntensors, &err) == 0;
        ok = ok && nq_gguf_writer_begin(w, &err) == 0;
        for (size_t i = 0; ok && i < f.ntensors; i++)
            ok = nq_gguf_writer_write(w, f.tensors[i].data, f.tensors[i].nbytes, &err) == 0;
        ok = ok && nq_gguf_writer_commit(w, &err) == 0;
        nq_gguf_writer_free(w);
        if (ok) {
            nq_gguf_file *g = nq_gguf_open(path, &err);
            check(g != NULL && g->ntensors == f.ntensors);
            for (size_t i = 0; i < f.ntensors; i++)
                check(memcmp(g->tensors[i].data, f.tensors[i].data, f.tensors[i].nbytes) == 0);
            nq_gguf_close(g);
        }
        unlink(path);
    }
    (void)sink;
    nq_gguf_free(&f);
    return 0;
}
