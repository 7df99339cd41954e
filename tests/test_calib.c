/* Calibration data: sampling of windows from a text stream (positions
 * computed by hand from the documented rule), JSONL text and chat records,
 * clipping to short texts, and one-line errors naming file and line. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "tok/tokenizer.h"

#define TINY "models/tiny-nemotron-h"

static nq_tokenizer *tok;
static char *dir;

static int setup(void **state)
{
    (void)state;
    nq_error err = {0};
    tok = nq_tokenizer_load(nq_test_path(TINY "/tokenizer.json"), &err);
    dir = nq_test_tmpdir("calib");
    return tok && dir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    nq_tokenizer_free(tok);
    nq_test_rmtree(dir);
    free(dir);
    return 0;
}

static const char *write_tmp(const char *name, const char *text)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(nq_test_write_file(path, text, strlen(text)), 0);
    return path;
}

static int32_t *encode(const char *text, size_t *n)
{
    nq_error err = {0};
    int32_t *ids = NULL;
    assert_int_equal(nq_tokenizer_encode(tok, text, strlen(text), false, &ids, n, &err), 0);
    return ids;
}

/* 3 windows of 5 from a stream of n tokens start at 0, n/3, 2n/3. */
static void test_text_windows(void **state)
{
    (void)state;
    const char *text = "The quick brown fox jumps over the lazy dog. It was the best of times, "
                       "it was the worst of times, it was the age of wisdom.";
    size_t n;
    int32_t *all = encode(text, &n);
    assert_true(n > 20);
    nq_error err = {0};
    int32_t *ids;
    int S, L;
    size_t stream;
    assert_int_equal(nq_calib_tokens(write_tmp("a.txt", text), tok, 3, 5, &ids, &S, &L, &stream,
                                     &err), 0);
    assert_int_equal(S, 3);
    assert_int_equal(L, 5);
    assert_int_equal(stream, n);
    for (int s = 0; s < 3; s++)
        assert_memory_equal(ids + s * 5, all + s * (n / 3), 5 * sizeof *ids);
    free(ids);
    /* more asked than the text holds: len clipped to the stream, one sample */
    assert_int_equal(nq_calib_tokens(write_tmp("a.txt", text), tok, 256, 100000, &ids, &S, &L,
                                     &stream, &err), 0);
    assert_int_equal(S, 1);
    assert_int_equal(L, (int)n);
    assert_memory_equal(ids, all, n * sizeof *ids);
    free(ids);
    free(all);
}

/* JSONL: records concatenated with the EOS token between them; chat records
 * rendered "role: content\n" (this tokenizer has no ChatML tokens). */
static void test_jsonl_records(void **state)
{
    (void)state;
    const char *jl = "{\"text\": \"first document\"}\n\n"
                     "{\"messages\": [{\"role\": \"user\", \"content\": \"hi there\"}, "
                     "{\"role\": \"assistant\", \"content\": \"hello\"}]}\n";
    size_t n1, n2;
    int32_t *a = encode("first document", &n1);
    int32_t *b = encode("user: hi there\nassistant: hello\n", &n2);
    int32_t eos = nq_tokenizer_eos_id(tok);
    assert_true(eos >= 0);
    nq_error err = {0};
    int32_t *ids;
    int S, L;
    size_t stream;
    assert_int_equal(nq_calib_tokens(write_tmp("c.jsonl", jl), tok, 1, 1000, &ids, &S, &L,
                                     &stream, &err), 0);
    assert_int_equal(stream, n1 + 1 + n2);
    assert_memory_equal(ids, a, n1 * sizeof *ids);
    assert_int_equal(ids[n1], eos);
    assert_memory_equal(ids + n1 + 1, b, n2 * sizeof *ids);
    free(ids);
    free(a);
    free(b);
}

static void expect_error(const char *name, const char *content, const char *needle)
{
    nq_error err = {0};
    int32_t *ids = (int32_t *)1;
    int S, L;
    size_t stream;
    assert_int_equal(nq_calib_tokens(write_tmp(name, content), tok, 4, 16, &ids, &S, &L, &stream,
                                     &err), -1);
    assert_null(ids);
    if (!strstr(err.msg, needle))
        fail_msg("'%s': expected '%s' in: %s", name, needle, err.msg);
    assert_null(strchr(err.msg, '\n'));
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("b1.jsonl", "{\"text\": \"ok\"}\n{\"text\": 5}\n", "b1.jsonl:2:");
    expect_error("b2.jsonl", "{\"text\": \"ok\"}\n{broken\n", "b2.jsonl:2: not a JSON object");
    expect_error("b3.jsonl", "{\"messages\": [{\"role\": \"user\"}]}\n", "b3.jsonl:1: message 0");
    expect_error("empty.txt", "", "need at least 2");
    nq_error err = {0};
    int32_t *ids;
    int S, L;
    size_t stream;
    assert_int_equal(nq_calib_tokens("/nonexistent/x.txt", tok, 1, 1, &ids, &S, &L, &stream,
                                     &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/x.txt: cannot open"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_windows),
        cmocka_unit_test(test_jsonl_records),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
