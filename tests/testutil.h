/* Helpers shared by the cmocka test programs. */
#ifndef NQ_TESTUTIL_H
#define NQ_TESTUTIL_H

#include <setjmp.h> /* cmocka needs these three before its header */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Absolute path of a file in the source tree (static buffer, rotating). */
const char *nq_test_path(const char *relative);
/* A fresh empty directory under the build tree's tmp/; caller removes it with nq_test_rmtree. */
char *nq_test_tmpdir(const char *tag);
void nq_test_rmtree(const char *path);
/* Reads a whole file; returns malloc'd bytes (NUL appended) and sets *len. NULL if unreadable. */
unsigned char *nq_test_read_file(const char *path, size_t *len);
int nq_test_write_file(const char *path, const void *data, size_t len);
/* tests/fixtures/DIR/NAME, which must be exactly `want` bytes (malloc'd);
 * fails the test otherwise. */
void *nq_test_load_fixture(const char *dir, const char *name, size_t want);

/* A GPTQ reference case in tests/fixtures/DIR (tests/gen/gen_gptq*_reference.py):
 * the weight w.f32 [rows, cols], the Hessian h.f64 [cols, cols], and the
 * reference's INT4 codes.u8 [rows, cols] and f16 group scales.f16
 * [cols / group, rows].  Loading fails the test when a file is missing or
 * of another size. */
typedef struct nq_test_gptq_case {
    int rows, cols, group;
    float *w;
    double *h;
    uint8_t *codes;
    uint16_t *scales;
} nq_test_gptq_case;
void nq_test_gptq_case_load(nq_test_gptq_case *c, const char *dir, int rows, int cols, int group);
void nq_test_gptq_case_free(nq_test_gptq_case *c);
/* Fails the test when more than 2 of the INT4 codes packed GPTQ-style in
 * qweight (column k of row r in word (k / 8) * rows + r, nibble k % 8)
 * differ from the reference's. */
void nq_test_gptq_codes_match(const int32_t *qweight, const nq_test_gptq_case *c);

#endif
