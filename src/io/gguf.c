/* The GGUF reader: validates a whole image before anything is used, and
 * the ggml type table (io/gguf.h). */
#include "io/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ggml's GGML_QUANT_SIZES (gguf-py constants.py; ggml.c type_traits): block
 * elements and bytes per block.  Zero marks numbers ggml removed (4, 5,
 * 31-33, 36-38), which gguf.cpp rejects as blck_size == 0. */
static const struct {
    int64_t block;
    size_t bytes;
    const char *name;
} ggml_types[NQ_GGML_TYPE_COUNT] = {
    [0] = {1, 4, "f32"},        [1] = {1, 2, "f16"},        [2] = {32, 18, "q4_0"},
    [3] = {32, 20, "q4_1"},     [6] = {32, 22, "q5_0"},     [7] = {32, 24, "q5_1"},
    [8] = {32, 34, "q8_0"},     [9] = {32, 36, "q8_1"},     [10] = {256, 84, "q2_K"},
    [11] = {256, 110, "q3_K"},  [12] = {256, 144, "q4_K"},  [13] = {256, 176, "q5_K"},
    [14] = {256, 210, "q6_K"},  [15] = {256, 292, "q8_K"},  [16] = {256, 66, "iq2_xxs"},
    [17] = {256, 74, "iq2_xs"}, [18] = {256, 98, "iq3_xxs"}, [19] = {256, 50, "iq1_s"},
    [20] = {32, 18, "iq4_nl"},  [21] = {256, 110, "iq3_s"}, [22] = {256, 82, "iq2_s"},
    [23] = {256, 136, "iq4_xs"}, [24] = {1, 1, "i8"},       [25] = {1, 2, "i16"},
    [26] = {1, 4, "i32"},       [27] = {1, 8, "i64"},       [28] = {1, 8, "f64"},
    [29] = {256, 56, "iq1_m"},  [30] = {1, 2, "bf16"},      [34] = {256, 54, "tq1_0"},
    [35] = {256, 66, "tq2_0"},  [39] = {32, 17, "mxfp4"},   [40] = {64, 36, "nvfp4"},
    [41] = {128, 18, "q1_0"},   [42] = {64, 18, "q2_0"},
};

int nq_ggml_type_info(uint32_t type, int64_t *block, size_t *block_bytes, const char **name)
{
    if (type >= NQ_GGML_TYPE_COUNT || ggml_types[type].block == 0)
        return -1;
    if (block)
        *block = ggml_types[type].block;
    if (block_bytes)
        *block_bytes = ggml_types[type].bytes;
    if (name)
        *name = ggml_types[type].name;
    return 0;
}

static const char *const vtype_names[NQ_GGUF_VTYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};

const char *nq_gguf_vtype_name(uint32_t vtype)
{
    return vtype < NQ_GGUF_VTYPE_COUNT ? vtype_names[vtype] : "?";
}

size_t nq_gguf_vtype_size(uint32_t t)
{
    switch (t) {
    case NQ_GGUF_U8: case NQ_GGUF_I8: case NQ_GGUF_BOOL: return 1;
    case NQ_GGUF_U16: case NQ_GGUF_I16: return 2;
    case NQ_GGUF_U32: case NQ_GGUF_I32: case NQ_GGUF_F32: return 4;
    case NQ_GGUF_U64: case NQ_GGUF_I64: case NQ_GGUF_F64: return 8;
    default: return 0;
    }
}

/* ---- reader ---- */

typedef struct cursor {
    const unsigned char *p;
    uint64_t pos, size;
    const char *name;
    nq_error *err;
} cursor;

static uint64_t rd_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int need(cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos)
        return nq_fail(c->err, "%s: truncated: %s at byte %llu needs %llu bytes, %llu left",
                       c->name, what, (unsigned long long)c->pos, (unsigned long long)n,
                       (unsigned long long)(c->size - c->pos));
    return 0;
}

static int get_u32(cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what) != 0)
        return -1;
    *v = rd_u32(c->p + c->pos);
    c->pos += 4;
    return 0;
}

static int get_u64(cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what) != 0)
        return -1;
    *v = rd_u64(c->p + c->pos);
    c->pos += 8;
    return 0;
}

static int get_str(cursor *c, const unsigned char **s, uint64_t *len, const char *what)
{
    if (get_u64(c, len, what) != 0 || need(c, *len, what) != 0)
        return -1;
    *s = c->p + c->pos;
    c->pos += *len;
    return 0;
}

/* Skips one value of type t (not ARRAY). */
static int skip_value(cursor *c, uint32_t t, const char *key)
{
    if (t == NQ_GGUF_STRING) {
        const unsigned char *s;
        uint64_t len;
        return get_str(c, &s, &len, key);
    }
    size_t sz = nq_gguf_vtype_size(t);
    if (sz == 0)
        return nq_fail(c->err, "%s: key '%s' has invalid value type %u", c->name, key, t);
    if (need(c, sz, key) != 0)
        return -1;
    c->pos += sz;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Duplicates in a list of names (sorted copy); returns the duplicate or NULL. */
static const char *find_duplicate(const char **names, size_t n)
{
    if (n < 2)
        return NULL;
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

void nq_gguf_free(nq_gguf_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->nkv; i++)
        free(f->kv[i].key);
    free(f->kv);
    free(f->tensors);
    f->kv = NULL;
    f->tensors = NULL;
    f->nkv = f->ntensors = 0;
}

int nq_gguf_parse(const unsigned char *bytes, uint64_t size, const char *name, nq_gguf_file *out,
                  nq_error *err)
{
    memset(out, 0, sizeof *out);
    cursor c = {.p = bytes, .pos = 0, .size = size, .name = name, .err = err};
    const char **names = NULL;
    if (size < 4 || memcmp(bytes, "GGUF", 4) != 0)
        return nq_fail(err, "%s: not a GGUF file (no 'GGUF' magic)", name);
    c.pos = 4;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    if (get_u32(&c, &version, "version") != 0)
        return -1;
    if (version == 1)
        return nq_fail(err, "%s: GGUF version 1 is not supported (llama.cpp dropped it too)", name);
    if (version != 2 && version != 3)
        return nq_fail(err, "%s: unsupported GGUF version %u (expected 3)", name, version);
    if (get_u64(&c, &n_tensors, "tensor count") != 0 || get_u64(&c, &n_kv, "key count") != 0)
        return -1;
    /* Each key/value needs at least 8 + 1 + 4 + 1 bytes and each tensor info
     * 8 + 1 + 4 + 8 + 4 + 8: counts beyond what the file can hold are lies,
     * checked before anything is allocated from them. */
    if (n_kv > (size - c.pos) / 14)
        return nq_fail(err, "%s: key count %llu cannot fit in %llu bytes", name,
                       (unsigned long long)n_kv, (unsigned long long)size);
    if (n_tensors > (size - c.pos) / 33)
        return nq_fail(err, "%s: tensor count %llu cannot fit in %llu bytes", name,
                       (unsigned long long)n_tensors, (unsigned long long)size);
    out->version = version;
    out->kv = calloc(n_kv ? n_kv : 1, sizeof *out->kv);
    out->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *out->tensors);
    names = calloc((n_kv > n_tensors ? n_kv : n_tensors) + 1, sizeof *names);
    if (!out->kv || !out->tensors || !names) {
        nq_fail(err, "%s: out of memory", name);
        goto fail;
    }
    out->alignment = NQ_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        nq_gguf_kv *kv = &out->kv[i];
        const unsigned char *ks;
        uint64_t klen;
        if (get_str(&c, &ks, &klen, "key") != 0)
            goto fail;
        if (memchr(ks, 0, klen)) {
            nq_fail(err, "%s: key %llu contains a NUL byte", name, (unsigned long long)i);
            goto fail;
        }
        kv->key = malloc(klen + 1);
        if (!kv->key) {
            nq_fail(err, "%s: out of memory", name);
            goto fail;
        }
        memcpy(kv->key, ks, klen);
        kv->key[klen] = 0;
        out->nkv = i + 1;
        if (get_u32(&c, &kv->type, kv->key) != 0)
            goto fail;
        kv->n = 1;
        if (kv->type >= NQ_GGUF_VTYPE_COUNT) {
            nq_fail(err, "%s: key '%s' has invalid value type %u", name, kv->key, kv->type);
            goto fail;
        }
        if (kv->type == NQ_GGUF_ARRAY) {
            if (get_u32(&c, &kv->arr_type, kv->key) != 0 || get_u64(&c, &kv->n, kv->key) != 0)
                goto fail;
            if (kv->arr_type == NQ_GGUF_ARRAY || kv->arr_type >= NQ_GGUF_VTYPE_COUNT) {
                nq_fail(err, "%s: key '%s': invalid array element type %u%s", name, kv->key,
                        kv->arr_type, kv->arr_type == NQ_GGUF_ARRAY ? " (nested arrays)" : "");
                goto fail;
            }
            kv->data = bytes + c.pos;
            uint64_t start = c.pos;
            if (kv->arr_type == NQ_GGUF_STRING) {
                if (kv->n > (size - c.pos) / 8) {
                    nq_fail(err, "%s: key '%s': %llu strings cannot fit in the file", name,
                            kv->key, (unsigned long long)kv->n);
                    goto fail;
                }
                for (uint64_t j = 0; j < kv->n; j++)
                    if (skip_value(&c, NQ_GGUF_STRING, kv->key) != 0)
                        goto fail;
            } else {
                size_t es = nq_gguf_vtype_size(kv->arr_type);
                if (kv->n > (size - c.pos) / es) {
                    nq_fail(err, "%s: truncated: array '%s' of %llu %s elements runs past the end",
                            name, kv->key, (unsigned long long)kv->n,
                            nq_gguf_vtype_name(kv->arr_type));
                    goto fail;
                }
                c.pos += kv->n * es;
            }
            kv->nbytes = c.pos - start;
        } else {
            kv->data = bytes + c.pos;
            uint64_t start = c.pos;
            if (skip_value(&c, kv->type, kv->key) != 0)
                goto fail;
            kv->nbytes = c.pos - start;
        }
        if (kv->type == NQ_GGUF_BOOL || (kv->type == NQ_GGUF_ARRAY && kv->arr_type == NQ_GGUF_BOOL))
            for (uint64_t j = 0; j < kv->n; j++)
                if (kv->data[j] > 1) {
                    nq_fail(err, "%s: key '%s': bool value %u is neither 0 nor 1", name, kv->key,
                            kv->data[j]);
                    goto fail;
                }
        names[i] = kv->key;
    }
    const char *dup = find_duplicate(names, out->nkv);
    if (dup) {
        nq_fail(err, "%s: duplicate key '%s'", name, dup);
        goto fail;
    }
    const nq_gguf_kv *al = nq_gguf_find_kv(out, "general.alignment");
    if (al) {
        if (al->type != NQ_GGUF_U32) {
            nq_fail(err, "%s: general.alignment has type %s, expected u32", name,
                    nq_gguf_vtype_name(al->type));
            goto fail;
        }
        uint32_t a = rd_u32(al->data);
        if (a == 0 || (a & (a - 1)) != 0) {
            nq_fail(err, "%s: general.alignment %u is not a power of 2", name, a);
            goto fail;
        }
        out->alignment = a;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        nq_gguf_tensor *t = &out->tensors[i];
        const unsigned char *ns;
        uint64_t nlen;
        if (get_str(&c, &ns, &nlen, "tensor name") != 0)
            goto fail;
        if (nlen >= NQ_GGUF_MAX_NAME || memchr(ns, 0, nlen)) {
            nq_fail(err, "%s: tensor %llu: name %s", name, (unsigned long long)i,
                    nlen >= NQ_GGUF_MAX_NAME ? "is 64 bytes or longer" : "contains a NUL byte");
            goto fail;
        }
        memcpy(t->name, ns, nlen);
        t->name[nlen] = 0;
        out->ntensors = i + 1;
        if (get_u32(&c, &t->ndim, t->name) != 0)
            goto fail;
        if (t->ndim > NQ_GGUF_MAX_DIMS) {
            nq_fail(err, "%s: tensor '%s' has %u dimensions (at most 4)", name, t->name, t->ndim);
            goto fail;
        }
        uint64_t nel = 1;
        bool overflow = false;
        for (uint32_t d = 0; d < NQ_GGUF_MAX_DIMS; d++) {
            uint64_t e = 1;
            if (d < t->ndim && get_u64(&c, &e, t->name) != 0)
                goto fail;
            if (e > (uint64_t)INT64_MAX) {
                nq_fail(err, "%s: tensor '%s' dimension %u is negative", name, t->name, d);
                goto fail;
            }
            t->ne[d] = (int64_t)e;
            if (e > 1 && nel > (uint64_t)INT64_MAX / e)
                overflow = true;
            else
                nel *= e;
        }
        if (overflow) {
            nq_fail(err, "%s: tensor '%s': element count overflows", name, t->name);
            goto fail;
        }
        t->nelements = nel;
        if (get_u32(&c, &t->type, t->name) != 0)
            goto fail;
        int64_t blk;
        size_t bb;
        if (nq_ggml_type_info(t->type, &blk, &bb, NULL) != 0) {
            nq_fail(err, "%s: tensor '%s' has unknown ggml type %u", name, t->name, t->type);
            goto fail;
        }
        if (t->ne[0] % blk != 0) {
            nq_fail(err, "%s: tensor '%s': row of %lld elements is not a multiple of the %s block (%lld)",
                    name, t->name, (long long)t->ne[0], ggml_types[t->type].name, (long long)blk);
            goto fail;
        }
        if (nel / (uint64_t)blk > (uint64_t)INT64_MAX / bb) {
            nq_fail(err, "%s: tensor '%s': byte size overflows", name, t->name);
            goto fail;
        }
        t->nbytes = nel / (uint64_t)blk * bb;
        if (get_u64(&c, &t->offset, t->name) != 0)
            goto fail;
        names[i] = t->name;
    }
    dup = find_duplicate(names, out->ntensors);
    if (dup) {
        nq_fail(err, "%s: duplicate tensor name '%s'", name, dup);
        goto fail;
    }
    uint64_t a = out->alignment;
    uint64_t data_start = c.pos;
    if (n_tensors > 0) {
        data_start = c.pos % a ? c.pos + (a - c.pos % a) : c.pos;
        if (data_start > size) {
            nq_fail(err, "%s: truncated: data section would start at %llu, file has %llu bytes",
                    name, (unsigned long long)data_start, (unsigned long long)size);
            goto fail;
        }
    }
    out->data_offset = data_start;
    uint64_t run = 0;
    for (size_t i = 0; i < out->ntensors; i++) {
        nq_gguf_tensor *t = &out->tensors[i];
        if (t->offset != run) {
            nq_fail(err, "%s: tensor '%s' has offset %llu, expected %llu", name, t->name,
                    (unsigned long long)t->offset, (unsigned long long)run);
            goto fail;
        }
        uint64_t padded = t->nbytes % a ? t->nbytes + (a - t->nbytes % a) : t->nbytes;
        if (padded < t->nbytes || UINT64_MAX - run < padded) {
            nq_fail(err, "%s: tensor '%s': data size overflows", name, t->name);
            goto fail;
        }
        if (t->nbytes > size - data_start || run > size - data_start - t->nbytes) {
            nq_fail(err, "%s: truncated: tensor '%s' (%llu bytes at %llu) runs past the end of the file",
                    name, t->name, (unsigned long long)t->nbytes,
                    (unsigned long long)(data_start + run));
            goto fail;
        }
        t->data = bytes + data_start + run;
        run += padded;
    }
    /* gguf.cpp reads the whole padded data section, the last tensor's
     * padding included */
    if (run > size - data_start) {
        nq_fail(err, "%s: truncated: the data section needs %llu bytes, %llu are left", name,
                (unsigned long long)run, (unsigned long long)(size - data_start));
        goto fail;
    }
    out->data_size = run;
    out->image = bytes;
    out->size = size;
    free(names);
    return 0;
fail:
    free(names);
    nq_gguf_free(out);
    return -1;
}

nq_gguf_file *nq_gguf_open(const char *path, nq_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        nq_fail(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        nq_fail(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    nq_gguf_file *f = calloc(1, sizeof *f);
    void *map = NULL;
    if (st.st_size > 0) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            nq_fail(err, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            free(f);
            return NULL;
        }
    }
    close(fd);
    static const unsigned char empty[1];
    if (!f || nq_gguf_parse(map ? map : empty, (uint64_t)st.st_size, path, f, err) != 0) {
        if (!f)
            nq_fail(err, "%s: out of memory", path);
        if (map)
            munmap(map, (size_t)st.st_size);
        free(f);
        return NULL;
    }
    f->map = map;
    return f;
}

void nq_gguf_close(nq_gguf_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, (size_t)f->size);
    nq_gguf_free(f);
    free(f);
}

const nq_gguf_kv *nq_gguf_find_kv(const nq_gguf_file *f, const char *key)
{
    for (size_t i = 0; i < f->nkv; i++)
        if (strcmp(f->kv[i].key, key) == 0)
            return &f->kv[i];
    return NULL;
}

const nq_gguf_tensor *nq_gguf_find_tensor(const nq_gguf_file *f, const char *name)
{
    for (size_t i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

int nq_gguf_get_u32(const nq_gguf_file *f, const char *key, uint32_t *v)
{
    const nq_gguf_kv *kv = nq_gguf_find_kv(f, key);
    if (!kv || kv->type != NQ_GGUF_U32)
        return -1;
    *v = rd_u32(kv->data);
    return 0;
}

int nq_gguf_get_str(const nq_gguf_file *f, const char *key, const char **s, uint64_t *len)
{
    const nq_gguf_kv *kv = nq_gguf_find_kv(f, key);
    if (!kv || kv->type != NQ_GGUF_STRING)
        return -1;
    *len = rd_u64(kv->data);
    *s = (const char *)kv->data + 8;
    return 0;
}

int nq_gguf_kv_str_at(const nq_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len)
{
    if (kv->type != NQ_GGUF_ARRAY || kv->arr_type != NQ_GGUF_STRING || i >= kv->n)
        return -1;
    const unsigned char *p = kv->data;
    for (uint64_t j = 0; j < i; j++)
        p += 8 + rd_u64(p);
    *len = rd_u64(p);
    *s = (const char *)p + 8;
    return 0;
}
