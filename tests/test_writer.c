/* The shard writer: byte-exact round trip through 3 shards, atomic output,
 * refusal to clobber, and clean failure when the disk refuses a write; the
 * commit never replaces what appeared at OUT during the run, --force swaps,
 * aliases of the input are refused, stale temporaries, the umask. */
#include "testutil.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "io/outdir.h"
#include "io/writer.h"

#include <fcntl.h>
#include <unistd.h>

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

/* A one-tensor output written up to (not including) the commit. */
static nq_writer *small_writer(const char *out, const char *input, bool force, nq_error *err)
{
    nq_writer_options opt = {.out_dir = out, .input_dir = input, .force = force};
    nq_writer *w = nq_writer_create(&opt, err);
    if (!w)
        fail_msg("%s", err->msg);
    int64_t shape[1] = {4};
    float x[4] = {1, 2, 3, 4};
    assert_int_equal(nq_writer_declare(w, "t", NQ_F32, 1, shape, err), 0);
    assert_int_equal(nq_writer_begin(w, err), 0);
    assert_int_equal(nq_writer_write(w, x, sizeof x, err), 0);
    assert_int_equal(nq_writer_add_file(w, "new.txt", "new\n", 4, err), 0);
    return w;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(nq_test_write_file(path, text, strlen(text)), 0);
}

static bool has_file(const char *dir, const char *name)
{
    char path[4400];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

/* Issue 10, case 2: a directory created at OUT while the run writes (no
 * --force) must survive the commit, which fails and says so; with and
 * without renameat2's RENAME_NOREPLACE. */
static void test_out_created_during_run_is_kept(void **state)
{
    (void)state;
    for (int fallback = 0; fallback < 2; fallback++) {
        setenv("NEMOQ_TEST_NO_RENAMEAT2", fallback ? "1" : "0", 1);
        char *tmp = nq_test_tmpdir("writer-appear");
        char out[4300];
        snprintf(out, sizeof out, "%s/out", tmp);
        nq_error err = {0};
        nq_writer *w = small_writer(out, NULL, false, &err);
        assert_int_equal(mkdir(out, 0755), 0);
        write_text(out, "precious.txt", "precious\n");
        assert_int_equal(nq_writer_commit(w, &err), -1);
        assert_non_null(strstr(err.msg, "it was created during the run"));
        nq_writer_free(w);
        assert_true(has_file(out, "precious.txt"));
        assert_false(has_file(out, "model.safetensors"));
        assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);

        /* an empty OUT at start-up may be filled, but not once files appear in it */
        nq_test_rmtree(out);
        assert_int_equal(mkdir(out, 0755), 0);
        memset(&err, 0, sizeof err);
        w = small_writer(out, NULL, false, &err);
        write_text(out, "precious.txt", "precious\n");
        assert_int_equal(nq_writer_commit(w, &err), -1);
        assert_non_null(strstr(err.msg, "files appeared in it during the run"));
        nq_writer_free(w);
        assert_true(has_file(out, "precious.txt"));
        assert_false(has_file(out, "model.safetensors"));
        assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);

        /* and it is filled when nothing appeared */
        assert_int_equal(unlink(strcat(out, "/precious.txt")), 0);
        out[strlen(out) - strlen("/precious.txt")] = '\0';
        w = small_writer(out, NULL, false, &err);
        assert_int_equal(nq_writer_commit(w, &err), 0);
        nq_writer_free(w);
        assert_true(has_file(out, "model.safetensors"));
        nq_test_rmtree(tmp);
        free(tmp);
    }
    unsetenv("NEMOQ_TEST_NO_RENAMEAT2");
}

/* Issue 10, case 4: --force swaps the old output for the new one (and
 * removes the old), with RENAME_EXCHANGE and with the two-rename fallback. */
static void test_force_swaps(void **state)
{
    (void)state;
    for (int fallback = 0; fallback < 2; fallback++) {
        setenv("NEMOQ_TEST_NO_RENAMEAT2", fallback ? "1" : "0", 1);
        char *tmp = nq_test_tmpdir("writer-force");
        char out[4300];
        snprintf(out, sizeof out, "%s/out", tmp);
        assert_int_equal(mkdir(out, 0755), 0);
        write_text(out, "old.txt", "old\n");
        nq_error err = {0};
        nq_writer *w = small_writer(out, NULL, true, &err);
        assert_int_equal(nq_writer_commit(w, &err), 0);
        nq_writer_free(w);
        assert_true(has_file(out, "new.txt"));
        assert_false(has_file(out, "old.txt"));
        assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);
        nq_test_rmtree(tmp);
        free(tmp);
    }
    unsetenv("NEMOQ_TEST_NO_RENAMEAT2");
}

/* Issue 10, cases 1 and 3: another name of the input (here a symlink; the
 * CLI test adds bind mounts) is refused by device and inode. */
static void test_refuses_alias_of_input(void **state)
{
    (void)state;
    char *tmp = nq_test_tmpdir("writer-alias");
    char in[4300], alias[4300], out[4400];
    snprintf(in, sizeof in, "%s/in", tmp);
    snprintf(alias, sizeof alias, "%s/alias", tmp);
    assert_int_equal(mkdir(in, 0755), 0);
    write_text(in, "config.json", "{}\n");
    assert_int_equal(symlink("in", alias), 0);
    nq_error err = {0};
    nq_writer_options opt = {.out_dir = alias, .input_dir = in, .force = true};
    assert_null(nq_writer_create(&opt, &err));
    assert_non_null(strstr(err.msg, "is the input directory"));
    snprintf(out, sizeof out, "%s/sub", alias);
    opt.out_dir = out;
    memset(&err, 0, sizeof err);
    assert_null(nq_writer_create(&opt, &err));
    assert_non_null(strstr(err.msg, "inside the input directory"));
    opt.out_dir = tmp; /* contains the input, named through the alias */
    opt.input_dir = alias;
    memset(&err, 0, sizeof err);
    assert_null(nq_writer_create(&opt, &err));
    assert_non_null(strstr(err.msg, "contain the input directory"));
    assert_true(has_file(in, "config.json"));
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);
    nq_test_rmtree(tmp);
    free(tmp);
}

/* Issue 10, case 4: temporaries of killed runs are found and removed; a
 * live run's (flock held) never. */
static void test_stale_temporaries(void **state)
{
    (void)state;
    char *tmp = nq_test_tmpdir("writer-stale");
    char out[4300], stale[4400];
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(stale, sizeof stale, "%s/.out.nemoq-tmp-Zz9Zz9", tmp);
    assert_int_equal(mkdir(stale, 0755), 0);
    write_text(stale, "model.safetensors", "partial");
    nq_error err = {0};
    nq_writer *live = small_writer(out, NULL, false, &err);
    char *log = NULL;
    size_t loglen = 0;
    FILE *f = open_memstream(&log, &loglen);
    assert_int_equal(nq_outdir_stale(out, false, f), 1);
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 2);
    assert_int_equal(nq_outdir_stale(out, true, f), 1);
    fclose(f);
    assert_non_null(strstr(log, ".out.nemoq-tmp-Zz9Zz9 (0.0 MB) was left by a nemoq run"));
    assert_non_null(strstr(log, "removed stale temporary directory"));
    free(log);
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 1); /* the live one */
    assert_int_equal(nq_writer_commit(live, &err), 0);
    nq_writer_free(live);
    assert_int_equal(count_entries(tmp, "nemoq-tmp"), 0);
    nq_test_rmtree(tmp);
    free(tmp);
}

/* Issue 10, case 12: the output directory and its files follow the umask. */
static void test_output_honours_umask(void **state)
{
    (void)state;
    char *tmp = nq_test_tmpdir("writer-umask");
    char out[4300], file[4400];
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(file, sizeof file, "%s/model.safetensors", out);
    mode_t old = umask(027);
    nq_error err = {0};
    nq_writer *w = small_writer(out, NULL, false, &err);
    assert_int_equal(nq_writer_commit(w, &err), 0);
    nq_writer_free(w);
    umask(old);
    struct stat st;
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0750);
    assert_int_equal(stat(file, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
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
        cmocka_unit_test(test_out_created_during_run_is_kept),
        cmocka_unit_test(test_force_swaps),
        cmocka_unit_test(test_refuses_alias_of_input),
        cmocka_unit_test(test_stale_temporaries),
        cmocka_unit_test(test_output_honours_umask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
