/* GGUF reader/writer, ggml blocks and the GGUF export, against files and
 * values produced by llama.cpp's own Python code (tests/gen/gen_gguf_fixtures.py:
 * gguf-py's GGUFWriter and quants.py, convert_hf_to_gguf.py). */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export/gguf_vocab.h"
#include "formats/ggml_blocks.h"
#include "io/gguf.h"

static nq_gguf_file *open_fixture(void)
{
    nq_error err = {0};
    nq_gguf_file *f = nq_gguf_open(nq_test_path("tests/fixtures/gguf/gguf_py.gguf"), &err);
    if (!f)
        fail_msg("%s", err.msg);
    return f;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void test_reads_gguf_py_file(void **state)
{
    (void)state;
    nq_gguf_file *f = open_fixture();
    assert_int_equal(f->version, 3);
    assert_int_equal(f->nkv, 17);
    assert_int_equal(f->ntensors, 7);
    const char *s;
    uint64_t len;
    assert_int_equal(nq_gguf_get_str(f, "general.architecture", &s, &len), 0);
    assert_int_equal(len, 14);
    assert_memory_equal(s, "nemotron_h_moe", 14);
    const nq_gguf_kv *kv = nq_gguf_find_kv(f, "t.u8");
    assert_int_equal(kv->type, NQ_GGUF_U8);
    assert_int_equal(kv->data[0], 200);
    assert_int_equal((int8_t)nq_gguf_find_kv(f, "t.i8")->data[0], -100);
    assert_int_equal(le(nq_gguf_find_kv(f, "t.u16")->data, 2), 60000);
    assert_int_equal((int16_t)le(nq_gguf_find_kv(f, "t.i16")->data, 2), -30000);
    uint32_t u;
    assert_int_equal(nq_gguf_get_u32(f, "t.u32", &u), 0);
    assert_true(u == 4000000000u);
    assert_int_equal((int32_t)le(nq_gguf_find_kv(f, "t.i32")->data, 4), -2000000000);
    uint32_t fb = (uint32_t)le(nq_gguf_find_kv(f, "t.f32")->data, 4);
    float fv;
    memcpy(&fv, &fb, 4);
    assert_true(fv == 0.1f);
    assert_true(le(nq_gguf_find_kv(f, "t.u64")->data, 8) == 18000000000000000000ull);
    assert_true((int64_t)le(nq_gguf_find_kv(f, "t.i64")->data, 8) == -9000000000000000000ll);
    uint64_t db = le(nq_gguf_find_kv(f, "t.f64")->data, 8);
    double dv;
    memcpy(&dv, &db, 8);
    assert_true(dv == 2.5e-300);
    assert_int_equal(nq_gguf_find_kv(f, "t.bool")->data[0], 1);
    assert_int_equal(nq_gguf_get_str(f, "t.str", &s, &len), 0);
    assert_int_equal(len, strlen("h\xc3\xa9llo \"gguf\"\n"));
    assert_memory_equal(s, "h\xc3\xa9llo \"gguf\"\n", len);
    assert_null(nq_gguf_find_kv(f, "t.empty")); /* gguf-py skips empty strings */
    kv = nq_gguf_find_kv(f, "t.arr_i32");
    assert_int_equal(kv->arr_type, NQ_GGUF_I32);
    assert_int_equal(kv->n, 3);
    assert_int_equal((int32_t)le(kv->data + 4, 4), -2);
    kv = nq_gguf_find_kv(f, "t.arr_str");
    assert_int_equal(kv->n, 4);
    assert_int_equal(nq_gguf_kv_str_at(kv, 2, &s, &len), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "\xc4\xa0" "b c", 5);
    assert_int_equal(nq_gguf_kv_str_at(kv, 1, &s, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(nq_gguf_kv_str_at(kv, 4, &s, &len), -1);
    kv = nq_gguf_find_kv(f, "t.arr_bool");
    assert_int_equal(kv->arr_type, NQ_GGUF_BOOL);
    assert_memory_equal(kv->data, "\x01\x00\x01", 3);

    const nq_gguf_tensor *t = nq_gguf_find_tensor(f, "f32");
    assert_non_null(t);
    assert_int_equal(t->type, NQ_GGML_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->ne[0], 4); /* numpy (3, 4) is ggml ne = [4, 3] */
    assert_int_equal(t->ne[1], 3);
    for (int i = 0; i < 12; i++) {
        float v;
        memcpy(&v, t->data + 4 * i, 4);
        assert_true(v == (float)i / 7);
    }
    t = nq_gguf_find_tensor(f, "q8_0");
    assert_int_equal(t->type, NQ_GGML_Q8_0);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->nbytes, 2 * 2 * 34);
    t = nq_gguf_find_tensor(f, "nvfp4.weight");
    assert_int_equal(t->type, NQ_GGML_NVFP4);
    assert_int_equal(t->ne[0], 128);
    assert_int_equal(t->ne[1], 3);
    t = nq_gguf_find_tensor(f, "blk.0.a.b");
    assert_int_equal(t->ndim, 4);
    assert_int_equal(t->ne[0], 3);
    assert_int_equal(t->ne[3], 2);
    for (size_t i = 0; i < f->ntensors; i++)
        assert_int_equal(f->tensors[i].offset % 32, 0);
    nq_gguf_close(f);
}

/* The writer, fed the same keys and tensors as gguf-py's GGUFWriter was,
 * produces the same file byte for byte. */
static void test_writer_reproduces_gguf_py(void **state)
{
    (void)state;
    nq_gguf_file *f = open_fixture();
    char *dir = nq_test_tmpdir("gguf");
    char out[4300];
    snprintf(out, sizeof out, "%s/w.gguf", dir);
    nq_error err = {0};
    nq_gguf_writer *w = nq_gguf_writer_create(out, NULL, false, &err);
    assert_non_null(w);
    for (size_t i = 0; i < f->nkv; i++) {
        const nq_gguf_kv *kv = &f->kv[i];
        assert_int_equal(nq_gguf_add_raw(w, kv->key, kv->type, kv->arr_type, kv->n, kv->data,
                                         kv->nbytes, &err), 0);
    }
    assert_int_equal(nq_gguf_add_u32(w, "t.u8", 1, &err), -1); /* duplicate key */
    assert_non_null(strstr(err.msg, "duplicate"));
    memset(&err, 0, sizeof err);
    for (size_t i = 0; i < f->ntensors; i++)
        assert_int_equal(nq_gguf_declare_tensor(w, f->tensors[i].name, f->tensors[i].type,
                                                (int)f->tensors[i].ndim, f->tensors[i].ne, &err), 0);
    assert_int_equal(nq_gguf_writer_begin(w, &err), 0);
    for (size_t i = 0; i < f->ntensors; i++) {
        /* in uneven pieces, to exercise the padding between tensors */
        const nq_gguf_tensor *t = &f->tensors[i];
        size_t half = (size_t)t->nbytes / 3;
        assert_int_equal(nq_gguf_writer_write(w, t->data, half, &err), 0);
        assert_int_equal(nq_gguf_writer_write(w, t->data + half, (size_t)t->nbytes - half, &err), 0);
    }
    assert_int_equal(nq_gguf_writer_commit(w, &err), 0);
    nq_gguf_writer_free(w);
    size_t n;
    unsigned char *mine = nq_test_read_file(out, &n);
    assert_non_null(mine);
    assert_int_equal(n, f->size);
    assert_memory_equal(mine, f->image, n);
    free(mine);
    nq_gguf_close(f);
    nq_test_rmtree(dir);
    free(dir);
}

/* Nothing at OUT unless commit succeeds; an existing OUT needs force. */
static void test_writer_is_atomic(void **state)
{
    (void)state;
    char *dir = nq_test_tmpdir("gguf");
    char out[4300];
    snprintf(out, sizeof out, "%s/a.gguf", dir);
    nq_error err = {0};
    nq_gguf_writer *w = nq_gguf_writer_create(out, NULL, false, &err);
    int64_t ne[2] = {32, 2};
    assert_int_equal(nq_gguf_declare_tensor(w, "x", NQ_GGML_F32, 2, ne, &err), 0);
    int64_t bad[1] = {33};
    assert_int_equal(nq_gguf_declare_tensor(w, "y", NQ_GGML_Q8_0, 1, bad, &err), -1);
    assert_non_null(strstr(err.msg, "multiple"));
    memset(&err, 0, sizeof err);
    assert_int_equal(nq_gguf_writer_begin(w, &err), 0);
    float v[40] = {0};
    assert_int_equal(nq_gguf_writer_write(w, v, sizeof v, &err), 0);
    assert_int_equal(nq_gguf_writer_commit(w, &err), -1); /* 160 of 256 bytes */
    assert_non_null(strstr(err.msg, "incomplete"));
    nq_gguf_writer_free(w);
    struct stat st;
    assert_int_not_equal(stat(out, &st), 0);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", dir);
    assert_int_equal(system(cmd), 0); /* no temporary file left behind */
    /* a complete one, then a refusal to overwrite it */
    memset(&err, 0, sizeof err);
    w = nq_gguf_writer_create(out, NULL, false, &err);
    assert_int_equal(nq_gguf_add_str(w, "general.architecture", "x", &err), 0);
    assert_int_equal(nq_gguf_writer_commit(w, &err), 0);
    nq_gguf_writer_free(w);
    assert_int_equal(stat(out, &st), 0);
    assert_null(nq_gguf_writer_create(out, NULL, false, &err));
    assert_non_null(strstr(err.msg, "already exists"));
    nq_test_rmtree(dir);
    free(dir);
}

static unsigned char *fixture_copy(size_t *n)
{
    return nq_test_read_file(nq_test_path("tests/fixtures/gguf/gguf_py.gguf"), n);
}

static void expect_reject(const unsigned char *b, size_t n, const char *what)
{
    nq_gguf_file f;
    nq_error err = {0};
    int rc = nq_gguf_parse(b, n, "m.gguf", &f, &err);
    if (rc == 0)
        fail_msg("accepted a malformed file (%s)", what);
    if (!strstr(err.msg, what))
        fail_msg("expected '%s' in: %s", what, err.msg);
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Every truncation fails cleanly, and each rule of gguf.cpp is enforced. */
static void test_rejects_malformed(void **state)
{
    (void)state;
    size_t n;
    unsigned char *b = fixture_copy(&n);
    nq_gguf_file f;
    nq_error err = {0};
    for (size_t cut = 0; cut < n; cut++) {
        memset(&err, 0, sizeof err);
        /* a copy of exactly `cut` bytes so ASan sees any read past the end */
        unsigned char *c = malloc(cut ? cut : 1);
        memcpy(c, b, cut);
        if (nq_gguf_parse(c, cut, "t.gguf", &f, &err) == 0)
            fail_msg("accepted the file cut at %zu of %zu bytes", cut, n);
        assert_true(err.msg[0] != 0);
        free(c);
    }
    unsigned char *c = malloc(n);
#define FRESH() memcpy(c, b, n)
    FRESH();
    c[0] = 'X';
    expect_reject(c, n, "magic");
    FRESH();
    c[4] = 1;
    expect_reject(c, n, "version 1");
    FRESH();
    put64(c + 8, 1ull << 60); /* tensor count */
    expect_reject(c, n, "tensor count");
    FRESH();
    put64(c + 16, (1ull << 62) + 5); /* key count */
    expect_reject(c, n, "key count");
    FRESH();
    put64(c + 24, 1ull << 63); /* first key's length */
    expect_reject(c, n, "truncated");
    /* the first key is general.architecture (string): make its type ARRAY of ARRAY */
    FRESH();
    size_t type_at = 24 + 8 + strlen("general.architecture");
    c[type_at] = NQ_GGUF_ARRAY;
    c[type_at + 4] = NQ_GGUF_ARRAY;
    expect_reject(c, n, "nested");
    FRESH();
    c[type_at] = 13;
    expect_reject(c, n, "invalid value type");
    FRESH();
    memcpy(c + 24 + 8, "t.u8\0\0\0\0", 4); /* rename key 0 to "t.u8...": still unique */
    c[24] = 4;
    /* lengths changed: the rest no longer parses, which must also fail cleanly */
    assert_int_equal(nq_gguf_parse(c, n, "m", &f, &err), -1);
    free(c);
    free(b);
}

/* Malformations that need a consistent file around them: built with the writer. */
static void test_rejects_bad_structure(void **state)
{
    (void)state;
    char *dir = nq_test_tmpdir("gguf");
    char out[4300];
    snprintf(out, sizeof out, "%s/s.gguf", dir);
    nq_error err = {0};
    nq_gguf_writer *w = nq_gguf_writer_create(out, NULL, false, &err);
    assert_int_equal(nq_gguf_add_u32(w, "general.alignment", 32, &err), 0);
    assert_int_equal(nq_gguf_add_str(w, "k", "v", &err), 0);
    int64_t ne[2] = {32, 1};
    assert_int_equal(nq_gguf_declare_tensor(w, "aaaa", NQ_GGML_Q8_0, 2, ne, &err), 0);
    assert_int_equal(nq_gguf_declare_tensor(w, "bbbb", NQ_GGML_F32, 1, ne, &err), 0);
    assert_int_equal(nq_gguf_writer_begin(w, &err), 0);
    unsigned char z[256] = {0};
    assert_int_equal(nq_gguf_writer_write(w, z, 34 + 128, &err), 0);
    assert_int_equal(nq_gguf_writer_commit(w, &err), 0);
    nq_gguf_writer_free(w);
    size_t n;
    unsigned char *b = nq_test_read_file(out, &n), *c = malloc(n);
    nq_gguf_file f;
    assert_int_equal(nq_gguf_parse(b, n, "s", &f, &err), 0);
    nq_gguf_free(&f);
    /* locate fields */
    size_t al = 24 + 8 + strlen("general.alignment") + 4;              /* alignment value */
    size_t k2 = al + 4;                                               /* second key */
    size_t ti = k2 + 8 + 1 + 4 + 8 + 1;                               /* first tensor info */
    size_t t1_type = ti + 8 + 4 + 4 + 8 + 8;
    size_t t2 = t1_type + 4 + 8;
    size_t t2_off = t2 + 8 + 4 + 4 + 8 + 4;
    FRESH();
    c[al] = 48;
    expect_reject(c, n, "power of 2");
    FRESH();
    c[k2 + 8] = 'g'; /* "k" stays "k"... make it a duplicate of nothing; instead rename tensor 2 */
    memcpy(c + t2 + 8, "aaaa", 4);
    expect_reject(c, n, "duplicate tensor name");
    FRESH();
    c[t1_type] = 5;
    expect_reject(c, n, "unknown ggml type");
    FRESH();
    c[t1_type] = NQ_GGML_F32; /* 128 bytes instead of 34: the next offset no longer matches */
    expect_reject(c, n, "offset");
    FRESH();
    c[t2_off] = 32;
    expect_reject(c, n, "expected");
    FRESH();
    c[ti + 8 + 4] = 5; /* n_dims */
    expect_reject(c, n, "dimensions");
    FRESH();
    put64(c + ti + 8 + 4 + 4, 33); /* ne0 = 33 for a Q8_0 tensor */
    expect_reject(c, n, "block");
    FRESH();
    put64(c + ti + 8 + 4 + 4 + 8, 1ull << 62); /* ne1 huge: byte size or data past the end */
    expect_reject(c, n, "overflows");
    FRESH();
    put64(c + ti + 8 + 4 + 4, 1ull << 63); /* negative extent */
    expect_reject(c, n, "negative");
    free(b);
    free(c);
    nq_test_rmtree(dir);
    free(dir);
}
#undef FRESH

static void test_q8_0_matches_gguf_py(void **state)
{
    (void)state;
    size_t n;
    unsigned char *b = nq_test_read_file(nq_test_path("tests/fixtures/gguf/q8_0.bin"), &n);
    assert_non_null(b);
    uint32_t nb = (uint32_t)le(b, 4);
    assert_int_equal(n, 4 + (size_t)nb * (32 * 4 + 34));
    float *x = malloc((size_t)nb * 32 * 4);
    memcpy(x, b + 4, (size_t)nb * 32 * 4);
    const unsigned char *want = b + 4 + (size_t)nb * 32 * 4;
    uint8_t *got = malloc((size_t)nb * 34);
    nq_q8_0_quantize_row(x, (int64_t)nb * 32, got);
    for (uint32_t i = 0; i < nb; i++)
        if (memcmp(got + 34 * i, want + 34 * i, 34) != 0)
            fail_msg("Q8_0 block %u differs from gguf-py's", i);
    /* and the decode is d * q */
    float *y = malloc((size_t)nb * 32 * 4);
    nq_q8_0_dequantize_row(got, (int64_t)nb * 32, y);
    assert_true(y[0] == 0.0f && fabsf(y[32] + 1.0f) < 1e-3f);
    free(y);
    free(got);
    free(x);
    free(b);
}

static void test_nvfp4_matches_converter(void **state)
{
    (void)state;
    size_t n;
    unsigned char *b = nq_test_read_file(nq_test_path("tests/fixtures/gguf/nvfp4.bin"), &n);
    assert_non_null(b);
    int64_t rows = (int64_t)le(b, 4), cols = (int64_t)le(b + 4, 4);
    const unsigned char *packed = b + 8, *scales = packed + rows * cols / 2,
                        *want = scales + rows * cols / 16, *deq = want + rows * cols / 64 * 36;
    assert_int_equal(n, (size_t)(8 + rows * cols / 2 + rows * cols / 16 + rows * cols / 64 * 36 + rows * cols * 4));
    size_t rb = (size_t)(cols / 64 * 36);
    uint8_t *got = malloc(rb);
    float *y = malloc((size_t)cols * 4);
    for (int64_t r = 0; r < rows; r++) {
        nq_ggml_nvfp4_from_modelopt(packed + r * cols / 2, scales + r * cols / 16, cols, got);
        if (memcmp(got, want + r * (int64_t)rb, rb) != 0)
            fail_msg("row %lld: repack differs from convert_hf_to_gguf.py's _nvfp4_pack", (long long)r);
        nq_ggml_nvfp4_dequantize_row(got, cols, y);
        for (int64_t j = 0; j < cols; j++) {
            float w;
            memcpy(&w, deq + 4 * (r * cols + j), 4);
            if (w != y[j])
                fail_msg("row %lld elem %lld: %g, gguf-py %g", (long long)r, (long long)j, (double)y[j], (double)w);
        }
    }
    free(y);
    free(got);
    free(b);
}

static void test_pre_tokenizer_lookup(void **state)
{
    (void)state;
    assert_string_equal(nq_gguf_pre_tokenizer_for_regex(
                            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
                        "llama-bpe");
    assert_string_equal(nq_gguf_pre_tokenizer_for_regex(
                            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
                        "qwen2");
    assert_null(nq_gguf_pre_tokenizer_for_regex("\\s+|\\w+"));
}

/* FNV-1a 64, the digest gen_gguf_fixtures.py stored */
static void fnv_hex(const unsigned char *p, uint64_t n, char out[17])
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* nemoq's GGUF of the bundled model against llama.cpp's conversion: every
 * tensor (type, shape, bytes) and every key except general.name and
 * general.size_label (the converter derives them from the directory name
 * and parameter count). */
static void compare_to_llamacpp(const char *path, const char *tag)
{
    json_error_t je;
    json_t *ref = json_load_file(nq_test_path("tests/fixtures/gguf/tiny_llamacpp.json"), 0, &je);
    assert_non_null(ref);
    json_t *r = json_object_get(ref, tag);
    assert_non_null(r);
    nq_error err = {0};
    nq_gguf_file *f = nq_gguf_open(path, &err);
    if (!f)
        fail_msg("%s", err.msg);
    json_t *meta = json_object_get(r, "metadata"), *tens = json_object_get(r, "tensors");
    size_t nmeta = 0;
    for (size_t i = 0; i < f->nkv; i++) {
        const nq_gguf_kv *kv = &f->kv[i];
        if (strcmp(kv->key, "general.name") == 0 || strcmp(kv->key, "general.size_label") == 0)
            continue;
        json_t *e = json_object_get(meta, kv->key);
        if (!e)
            fail_msg("%s: key %s is not in llama.cpp's file", tag, kv->key);
        char h[17];
        fnv_hex(kv->data, kv->nbytes, h);
        if ((int)json_integer_value(json_array_get(e, 0)) != (int)kv->type ||
            strcmp(json_string_value(json_array_get(e, 2)), h) != 0)
            fail_msg("%s: key %s differs from llama.cpp's", tag, kv->key);
        nmeta++;
    }
    assert_int_equal(nmeta, json_object_size(meta));
    assert_int_equal(f->ntensors, json_object_size(tens));
    for (size_t i = 0; i < f->ntensors; i++) {
        const nq_gguf_tensor *t = &f->tensors[i];
        json_t *e = json_object_get(tens, t->name);
        if (!e)
            fail_msg("%s: tensor %s is not in llama.cpp's file", tag, t->name);
        char h[17];
        fnv_hex(t->data, t->nbytes, h);
        json_t *shape = json_array_get(e, 1);
        bool same = (int)json_integer_value(json_array_get(e, 0)) == (int)t->type &&
                    json_array_size(shape) == t->ndim;
        for (uint32_t d = 0; same && d < t->ndim; d++)
            same = json_integer_value(json_array_get(shape, d)) == t->ne[d];
        if (!same)
            fail_msg("%s: tensor %s: type or shape differs from llama.cpp's", tag, t->name);
        if (strcmp(json_string_value(json_array_get(e, 2)), h) != 0)
            fail_msg("%s: tensor %s: bytes differ from llama.cpp's", tag, t->name);
    }
    nq_gguf_close(f);
    json_decref(ref);
}

static void test_export_matches_llamacpp(void **state)
{
    (void)state;
    const char *bin = getenv("NEMOQ_BIN");
    if (!bin)
        fail_msg("NEMOQ_BIN is not set");
    char *dir = nq_test_tmpdir("gguf");
    const char *model = nq_test_path("models/tiny-nemotron-h");
    char cmd[16600], out[4300];
    static const struct {
        const char *tag, *args;
    } runs[] = {
        {"bf16_to_q8_0", "convert '%s' '%s' --gguf-rest q8_0"},
        {"bf16_to_bf16", "convert '%s' '%s' --gguf-rest bf16"},
        /* experts quantized here = llama.cpp's conversion of nemoq's
         * weights-only expert-NVFP4 safetensors */
        {"nvfp4_experts_to_q8_0", "quantize '%s' '%s' --format gguf --recipe gguf-nvfp4 --threads 2"},
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        snprintf(out, sizeof out, "%s/%s.gguf", dir, runs[i].tag);
        char a[8192];
        snprintf(a, sizeof a, runs[i].args, model, out);
        snprintf(cmd, sizeof cmd, "'%s' %s > /dev/null", bin, a);
        assert_int_equal(system(cmd), 0);
        compare_to_llamacpp(out, runs[i].tag);
    }
    nq_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_gguf_py_file),
        cmocka_unit_test(test_writer_reproduces_gguf_py),
        cmocka_unit_test(test_writer_is_atomic),
        cmocka_unit_test(test_rejects_malformed),
        cmocka_unit_test(test_rejects_bad_structure),
        cmocka_unit_test(test_q8_0_matches_gguf_py),
        cmocka_unit_test(test_nvfp4_matches_converter),
        cmocka_unit_test(test_pre_tokenizer_lookup),
        cmocka_unit_test(test_export_matches_llamacpp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
