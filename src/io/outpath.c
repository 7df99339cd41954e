#include "io/outpath.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct file_id {
    dev_t dev;
    ino_t ino;
} file_id;

static bool is_id(const struct stat *st, file_id id)
{
    return st->st_dev == id.dev && st->st_ino == id.ino;
}

/* Whether the directory `fd` (consumed) or one of its ancestors is `target`:
 * 1 yes, 0 no, -1 the walk failed (errno set).  ".." of the root is the
 * root itself, which ends the walk. */
static int chain_has(int fd, file_id target)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        goto fail;
    for (int depth = 0; depth < 4096; depth++) {
        if (is_id(&st, target)) {
            close(fd);
            return 1;
        }
        int up = openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (up < 0)
            goto fail;
        close(fd);
        fd = up;
        struct stat ust;
        if (fstat(fd, &ust) != 0)
            goto fail;
        if (ust.st_dev == st.st_dev && ust.st_ino == st.st_ino) {
            close(fd);
            return 0;
        }
        st = ust;
    }
    errno = ELOOP;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

/* The directory part of `path` ("." for a bare name, "/" for "/x"). */
static char *parent_of(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return NULL;
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    char *slash = strrchr(p, '/');
    if (!slash) {
        free(p);
        return strdup(".");
    }
    if (slash == p)
        slash[1] = '\0';
    else
        *slash = '\0';
    return p;
}

/* Opens (O_PATH) `path` if it is an existing directory, else its nearest
 * existing ancestor; -1 with errno when none can be opened. */
static int open_nearest(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return -1;
    for (;;) {
        int fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0 || (errno != ENOENT && errno != ENOTDIR) || strcmp(p, ".") == 0 ||
            strcmp(p, "/") == 0) {
            int e = errno;
            free(p);
            errno = e;
            return fd;
        }
        char *up = parent_of(p);
        free(p);
        if (!up)
            return -1;
        p = up;
    }
}

/* The input's identity; false when there is no input directory to protect
 * (none given, or it does not exist: the reader reports that). */
static bool input_id(const char *input_dir, file_id *id)
{
    struct stat st;
    if (!input_dir || stat(input_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return false;
    *id = (file_id){st.st_dev, st.st_ino};
    return true;
}

int nq_outpath_check_dir(const char *out_dir, const char *input_dir, nq_error *err)
{
    struct stat ost;
    bool out_exists = stat(out_dir, &ost) == 0;
    if (out_exists && !S_ISDIR(ost.st_mode))
        return nq_fail(err, "%s: exists and is not a directory", out_dir);
    file_id in;
    if (!input_id(input_dir, &in))
        return 0;
    if (out_exists && is_id(&ost, in))
        return nq_fail(err, "%s: is the input directory %s (same device and inode); choose "
                            "another output", out_dir, input_dir);
    int fd = open_nearest(out_dir);
    int r = fd < 0 ? -1 : chain_has(fd, in);
    if (r < 0)
        return nq_fail(err, "%s: cannot check that it lies outside the input directory: %s",
                       out_dir, strerror(errno));
    if (r == 1)
        return nq_fail(err, "%s: output would be inside the input directory %s; choose another "
                            "output", out_dir, input_dir);
    if (!out_exists)
        return 0;
    /* --force replaces OUT: the input must not be anywhere below it */
    fd = open(input_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    r = fd < 0 ? -1 : chain_has(fd, (file_id){ost.st_dev, ost.st_ino});
    if (r < 0)
        return nq_fail(err, "%s: cannot check that it lies outside the output directory: %s",
                       input_dir, strerror(errno));
    if (r == 1)
        return nq_fail(err, "%s: output would contain the input directory %s; choose another "
                            "output", out_dir, input_dir);
    return 0;
}

/* Refuses `path` when the directory `dir_fd` (consumed) lies inside `protect`. */
static int check_outside(int dir_fd, const char *path, const char *protect, const char *role,
                         const char *what, nq_error *err)
{
    file_id id;
    if (!input_id(protect, &id)) {
        close(dir_fd);
        return 0;
    }
    int r = chain_has(dir_fd, id);
    if (r < 0)
        return nq_fail(err, "%s %s: cannot check that it lies outside the %s directory: %s", what,
                       path, role, strerror(errno));
    if (r == 1)
        return nq_fail(err, "%s %s: would be written inside the %s directory %s; choose another "
                            "path", what, path, role, protect);
    return 0;
}

int nq_outpath_check_file(const char *path, const char *input_dir, const char *output_dir,
                          const char *what, nq_error *err)
{
    struct stat st;
    if (!*path)
        return nq_fail(err, "%s: empty path", what);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return nq_fail(err, "%s %s: is a directory", what, path);
    char *dir = parent_of(path);
    if (!dir)
        return nq_fail(err, "out of memory");
    int rc = 0;
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        rc = nq_fail(err, "%s %s: its directory %s cannot be used: %s", what, path, dir,
                     strerror(errno));
    } else if (access(dir, W_OK | X_OK) != 0) {
        rc = nq_fail(err, "%s %s: its directory %s is not writable: %s", what, path, dir,
                     strerror(errno));
        close(fd);
    } else {
        int fd2 = dup(fd);
        rc = check_outside(fd, path, input_dir, "input", what, err);
        if (fd2 < 0)
            rc = rc ? rc : nq_fail(err, "%s %s: %s", what, path, strerror(errno));
        else if (rc == 0)
            rc = check_outside(fd2, path, output_dir, "output", what, err);
        else
            close(fd2);
    }
    free(dir);
    return rc;
}

int nq_inpath_check_file(const char *path, const char *what, nq_error *err)
{
    /* O_NONBLOCK: a FIFO must not hang the check */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return nq_fail(err, "%s %s: cannot open: %s", what, path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        rc = nq_fail(err, "%s %s: not a regular file", what, path);
    close(fd);
    return rc;
}
