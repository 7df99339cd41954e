/* The shard writer: byte-exact round trip through 3 shards, atomic output,
 * refusal to clobber, and clean failure when the disk refuses a write. */
#include "testutil.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "io/writer.h"

static nq_checkpoint *open_bundled(void)
{
    nq_error err = {0};
    nq_checkpoint *ck = nq_checkpoint_open(nq_test_path("models/tiny-nemotron-h"), &err);
    if (!ck)
        fail_msg("%s", err.msg);
    return ck;
}

/* Copies every tensor of ck through a writer; returns nq_writer_commit's result. */
static int copy_checkpoint(const nq_checkpoint *ck, const char *out, uint64_t max_shard,
                           bool force, nq_error *err)
{
    nq_writer_options opt = {.out_dir = out, .input_dir = nq_checkpoint_dir(ck),
                             .max_shard_bytes = max_shard, .force = force};
    nq_writer *w = nq_writer_create(&opt, err);
    if (!w)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < nq_checkpoint_count(ck) && rc == 0; i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        rc = nq_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err);
    }
    if (rc == 0)
        rc = nq_writer_begin(w, err);
    for (size_t i = 0; i < nq_checkpoint_count(ck) && rc == 0; i++) {
        const nq_tensor *t = nq_checkpoint_tensor(ck, i);
        /* odd chunk sizes exercise tensor and shard boundaries mid-chunk */
        for (uint64_t off = 0; off < t->nbytes && rc == 0; off += 7777) {
            uint64_t n = t->nbytes - off < 7777 ? t->nbytes - off : 7777;
            rc = nq_writer_write(w, t->data + off, (size_t)n, err);
        }
    }
    if (rc == 0)
        rc = nq_writer_add_file(w, "note.txt", "hi\n", 3, err);
    if (rc == 0)
        rc = nq_writer_commit(w, err);
    nq_writer_free(w);
    return rc;
}

static int count_entries(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, needle) != NULL;
    closedir(d);
    return n;
}

static void test_round_trip_three_shards(void **state)
{
    (void)state;
    nq_checkpoint *ck = open_bundled();
    char *tmp = nq_test_tmpdir("writer");
    char out[4300];
    snprintf(out, sizeof out, "%s/out", tmp);
    nq_error err = {0};
    /* 26.9 MB of tensors: 10 MB shards give exactly 3 */
    assert_int_equal(copy_checkpoint(ck, out, 10 * 1000 * 1000, false, &err), 0);
    assert_int_equal(count_entries(out, ".safetensors"), 4); /* 3 shards + index */
    assert_int_equal(count_entries(out, "-of-00003.safetensors"), 3);
    nq_checkpoint *back = nq_checkpoint_open(out, &err);
    if (!back)
        fail_msg("%s", err.msg);
    assert_int_equal(nq_checkpoint_shard_count(back), 3);
    assert_int_equal(nq_checkpoint_count(back), nq_checkpoint_count(ck));
    for (size_t i = 0; i < nq_checkpoint_count(ck); i++) {
        const nq_tensor *a = nq_checkpoint_tensor(ck, i);
        const nq_tensor *b = nq_checkpoint_find(back, a->name);
        assert_non_null(b);
        assert_int_equal(a->dtype, b->dtype);
        assert_int_equal(a->ndim, b->ndim);
        assert_memory_equal(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    /* each shard's data region starts 8-byte aligned */
    int shards_seen = 0;
    for (size_t i = 0; i < nq_checkpoint_count(back); i++) {
        const nq_tensor *t = nq_checkpoint_tensor(back, i);
        if (i == 0 || t->shard != nq_checkpoint_tensor(back, i - 1)->shard) {
            assert_int_equal(t->file_offset % 8, 0);
            shards_seen++;
        }
    }
    assert_int_equal(shards_seen, 3);
    assert_string_equal(nq_checkpoint_metadata(back, "format"), "pt");
    nq_checkpoint_close(back);
    /* no temporary directory left behind */
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);

    /* refuses to write into a non-empty directory without force, replaces with it */
    memset(&err, 0, sizeof err);
    assert_int_equal(copy_checkpoint(ck, out, 0, false, &err), -1);
    assert_non_null(strstr(err.msg, "not empty (use --force"));
    memset(&err, 0, sizeof err);
    assert_int_equal(copy_checkpoint(ck, out, 0, true, &err), 0);
    assert_int_equal(count_entries(out, ".safetensors"), 1); /* one shard: model.safetensors */
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);
    nq_checkpoint_close(ck);
    nq_test_rmtree(tmp);
    free(tmp);
}

static void test_refuses_input_directory(void **state)
{
    (void)state;
    nq_error err = {0};
    nq_writer_options opt = {.out_dir = nq_test_path("models/tiny-nemotron-h"),
                             .input_dir = nq_test_path("models/tiny-nemotron-h"), .force = true};
    assert_null(nq_writer_create(&opt, &err));
    assert_non_null(strstr(err.msg, "input directory"));
    memset(&err, 0, sizeof err);
    opt.out_dir = nq_test_path("models/tiny-nemotron-h/sub");
    assert_null(nq_writer_create(&opt, &err));
    assert_non_null(strstr(err.msg, "be inside the input"));
    memset(&err, 0, sizeof err);
    opt.out_dir = nq_test_path("models");
    assert_null(nq_writer_create(&opt, &err));
    assert_non_null(strstr(err.msg, "contain the input"));
}

static void test_write_error_leaves_nothing(void **state)
{
    (void)state;
    nq_checkpoint *ck = open_bundled();
    char *tmp = nq_test_tmpdir("writer-full");
    char out[4300];
    snprintf(out, sizeof out, "%s/out", tmp);
    /* A file-size limit makes write() fail with EFBIG the way a full disk
     * fails with ENOSPC: the same error path, without needing a full disk. */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4 << 20;
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    nq_error err = {0};
    int rc = copy_checkpoint(ck, out, 0, false, &err);
    setrlimit(RLIMIT_FSIZE, &old);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err.msg, "writing model.safetensors failed: File too large"));
    struct stat st;
    assert_int_not_equal(stat(out, &st), 0);
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);
    nq_checkpoint_close(ck);
    nq_test_rmtree(tmp);
    free(tmp);
}

static void test_missing_bytes_is_not_committed(void **state)
{
    (void)state;
    char *tmp = nq_test_tmpdir("writer-short");
    char out[4300];
    snprintf(out, sizeof out, "%s/out", tmp);
    nq_error err = {0};
    nq_writer_options opt = {.out_dir = out};
    nq_writer *w = nq_writer_create(&opt, &err);
    assert_non_null(w);
    int64_t shape[1] = {16};
    assert_int_equal(nq_writer_declare(w, "t", NQ_F32, 1, shape, &err), 0);
    assert_int_equal(nq_writer_begin(w, &err), 0);
    float x[8] = {0};
    assert_int_equal(nq_writer_write(w, x, sizeof x, &err), 0);
    assert_int_equal(nq_writer_commit(w, &err), -1);
    assert_non_null(strstr(err.msg, "tensor 't' is missing 32 of its 64 bytes"));
    nq_writer_free(w);
    struct stat st;
    assert_int_not_equal(stat(out, &st), 0);
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);
    nq_test_rmtree(tmp);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_three_shards),
        cmocka_unit_test(test_refuses_input_directory),
        cmocka_unit_test(test_write_error_leaves_nothing),
        cmocka_unit_test(test_missing_bytes_is_not_committed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
