/* The safetensors reader on the bundled checkpoint and on in-memory images
 * crafted to break each validation rule. The malformed files on disk are
 * exercised through the CLI in cli_malformed.sh. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/floatconv.h"
#include "io/safetensors.h"

static void test_bundled_model(void **state)
{
    (void)state;
    nq_error err = {0};
    nq_checkpoint *ck = nq_checkpoint_open(nq_test_path("models/tiny-nemotron-h"), &err);
    assert_non_null(ck);
    /* 244 header entries: 243 tensors plus __metadata__ */
    assert_int_equal(nq_checkpoint_count(ck), 243);
    uint64_t params = 0, prev_end = 0;
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        params += t->numel;
        /* file order: offsets strictly follow each other */
        if (i > 0)
            assert_int_equal(t->file_offset, prev_end);
        prev_end = t->file_offset + t->nbytes;
        assert_ptr_equal(nq_checkpoint_find(ck, t->name), t);
    }
    /* 13,454,840 parameters + 80 e_score_correction_bias buffer elements */
    assert_int_equal(params, 13454920);
    assert_int_equal(prev_end, nq_checkpoint_shard_size(ck, 0));
    const nq_tensor *emb = nq_checkpoint_find(ck, "backbone.embeddings.weight");
    assert_non_null(emb);
    assert_int_equal(emb->dtype, NQ_BF16);
    assert_int_equal(emb->shape[0], 4096);
    assert_int_equal(emb->shape[1], 256);
    assert_null(nq_checkpoint_find(ck, "backbone.embeddings"));
    /* chunked conversion agrees with element-wise decoding of the raw bytes */
    float chunk[7];
    assert_int_equal(nq_tensor_read_f32(emb, 1000, 7, chunk, &err), 0);
    for (int i = 0; i < 7; i++) {
        uint16_t h;
        memcpy(&h, emb->data + 2 * (1000 + i), 2);
        assert_true(chunk[i] == nq_bf16_to_f32(h));
    }
    assert_int_equal(nq_tensor_read_f32(emb, emb->numel - 3, 4, chunk, &err), -1);
    assert_non_null(strstr(err.msg, "backbone.embeddings.weight"));
    assert_string_equal(nq_checkpoint_metadata(ck, "format"), "pt");
    nq_checkpoint_close(ck);
}

/* Builds a safetensors image from a header string and `data_len` data bytes. */
static unsigned char *image(const char *header, size_t data_len, size_t *size)
{
    size_t h = strlen(header);
    *size = 8 + h + data_len;
    unsigned char *b = calloc(1, *size);
    uint64_t hl = h;
    memcpy(b, &hl, 8);
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < data_len; i++)
        b[8 + h + i] = (unsigned char)i;
    return b;
}

static void expect_error(const char *header, size_t data_len, const char *needle)
{
    size_t size;
    unsigned char *b = image(header, data_len, &size);
    nq_tensor *ts = NULL;
    size_t n = 0;
    nq_error err = {0};
    int rc = nq_safetensors_parse(b, size, "x.safetensors", &ts, &n, &err);
    if (rc == 0 || !strstr(err.msg, needle) || !strstr(err.msg, "x.safetensors"))
        fail_msg("header %s: expected error containing '%s', got rc=%d '%s'", header, needle, rc,
                 err.msg);
    free(b);
}

static void test_rejects_each_lie(void **state)
{
    (void)state;
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                 "beyond the data region");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                 "shape x dtype needs 12");
    expect_error("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                 "unknown dtype 'F33'");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}",
                 8, "overflows 64 bits");
    expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                 "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
                 6, "overlap");
    expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                 8, "not valid JSON");
    expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8,
                 "unindexed bytes");
    expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 8,
                 "data region holds 8 bytes but the header indexes 4");
    expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[-4],\"data_offsets\":[0,4]}}", 4,
                 "shape entry 0");
    expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,0]}}", 4,
                 "not an increasing pair");
    expect_error("{\"\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                 "not valid JSON");
    expect_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1,
                 "not valid JSON");
    expect_error("[]", 0, "not an object");
    expect_error("{\"__metadata__\":{\"format\":3}}", 0, "__metadata__ value 'format'");

    /* header length beyond the file */
    size_t size;
    unsigned char *b = image("{}", 0, &size);
    uint64_t lie = 1000;
    memcpy(b, &lie, 8);
    nq_tensor *ts;
    size_t n;
    nq_error err = {0};
    assert_int_equal(nq_safetensors_parse(b, size, "x.safetensors", &ts, &n, &err), -1);
    assert_non_null(strstr(err.msg, "header length 1000 is larger than the file"));
    memset(&err, 0, sizeof err);
    assert_int_equal(nq_safetensors_parse(b, 5, "x.safetensors", &ts, &n, &err), -1);
    assert_non_null(strstr(err.msg, "too short"));
    free(b);
}

static void test_accepts_edge_cases(void **state)
{
    (void)state;
    /* zero-sized tensors, scalars, trailing header spaces, empty checkpoint */
    size_t size;
    unsigned char *b = image("{\"__metadata__\":{\"format\":\"pt\"},"
                             "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                             "\"z\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[4,4]}}   ",
                             4, &size);
    nq_tensor *ts;
    size_t n;
    nq_error err = {0};
    assert_int_equal(nq_safetensors_parse(b, size, "x.safetensors", &ts, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ts[0].ndim, 0);
    assert_int_equal(ts[0].numel, 1);
    assert_int_equal(ts[1].numel, 0);
    nq_tensor_array_free(ts, n);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bundled_model),
        cmocka_unit_test(test_rejects_each_lie),
        cmocka_unit_test(test_accepts_edge_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
