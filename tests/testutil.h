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
/* How many of the rows x cols INT4 codes packed GPTQ-style in qweight
 * (column k of row r in word (k / 8) * rows + r, nibble k % 8) differ from
 * codes[r * cols + k]. */
int nq_test_int4_codes_differing(const int32_t *qweight, const uint8_t *codes, int rows, int cols);

#endif
