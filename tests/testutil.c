#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *nq_test_path(const char *relative)
{
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", NQ_SOURCE_DIR, relative);
    return b;
}

char *nq_test_tmpdir(const char *tag)
{
    char base[4096];
    snprintf(base, sizeof base, "%s/tmp", NQ_BINARY_DIR);
    mkdir(base, 0755);
    char *path = malloc(4200);
    snprintf(path, 4200, "%s/%s-XXXXXX", base, tag);
    if (!mkdtemp(path)) {
        free(path);
        return NULL;
    }
    return path;
}

void nq_test_rmtree(const char *path)
{
    if (!path || !*path)
        return;
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

unsigned char *nq_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

int nq_test_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

void *nq_test_load_fixture(const char *dir, const char *name, size_t want)
{
    char rel[512];
    snprintf(rel, sizeof rel, "tests/fixtures/%s/%s", dir, name);
    size_t len = 0;
    void *p = nq_test_read_file(nq_test_path(rel), &len);
    if (!p)
        fail_msg("%s: missing or unreadable", rel);
    assert_int_equal(len, want);
    return p;
}

void nq_test_gptq_case_load(nq_test_gptq_case *c, const char *dir, int rows, int cols, int group)
{
    size_t r = (size_t)rows, k = (size_t)cols;
    *c = (nq_test_gptq_case){.rows = rows, .cols = cols, .group = group};
    c->w = nq_test_load_fixture(dir, "w.f32", sizeof(float) * r * k);
    c->h = nq_test_load_fixture(dir, "h.f64", sizeof(double) * k * k);
    c->codes = nq_test_load_fixture(dir, "codes.u8", r * k);
    c->scales = nq_test_load_fixture(dir, "scales.f16", sizeof(uint16_t) * (k / (size_t)group) * r);
}

void nq_test_gptq_case_free(nq_test_gptq_case *c)
{
    free(c->w);
    free(c->h);
    free(c->codes);
    free(c->scales);
}

void nq_test_gptq_codes_match(const int32_t *qweight, const nq_test_gptq_case *c)
{
    int diff = 0;
    for (int r = 0; r < c->rows; r++)
        for (int k = 0; k < c->cols; k++) {
            int code = (int)(((uint32_t)qweight[(k / 8) * c->rows + r] >> (4 * (k % 8))) & 15);
            diff += code != c->codes[r * c->cols + k];
        }
    /* float64 on both sides; only a rounding tie decided differently by the
     * last bit of a BLAS sum may flip a code */
    if (diff > 2)
        fail_msg("%d of %d codes differ from the reference", diff, c->rows * c->cols);
}
