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

#endif
