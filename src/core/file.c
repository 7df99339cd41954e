#include "core/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

char *nq_read_file(const char *path, size_t *len, nq_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        nq_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        nq_fail(err, "%s: not a regular file", path);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        nq_fail(err, "%s: out of memory for %zu bytes", path, n);
        return NULL;
    }
    size_t got = fread(buf, 1, n, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != n) {
        free(buf);
        nq_fail(err, "%s: read error (%zu of %zu bytes)", path, got, n);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}
