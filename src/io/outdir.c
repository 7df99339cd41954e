#include "io/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "io/outpath.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static char *cat3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* Test hook: NEMOQ_TEST_NO_RENAMEAT2=1 behaves as a file system without
 * renameat2's flags, so the tests reach the fallbacks. */
static int rename_flags(const char *from, const char *to, unsigned flags)
{
    const char *hook = getenv("NEMOQ_TEST_NO_RENAMEAT2");
    if (hook && *hook == '1') {
        errno = EINVAL;
        return -1;
    }
#ifdef SYS_renameat2
    /* the raw system call: glibc before 2.28 has no wrapper */
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, flags);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static bool unsupported(int e)
{
    return e == EINVAL || e == ENOSYS || e == EOPNOTSUPP;
}

/* Test hook: NEMOQ_TEST_PAUSE_BEFORE_COMMIT=STEM creates STEM.reached, then
 * waits (60 s at most) for STEM.go before the output is put in place, so a
 * test can change OUT, or kill the run, at exactly that moment. */
static void test_pause(void)
{
    const char *stem = getenv("NEMOQ_TEST_PAUSE_BEFORE_COMMIT");
    if (!stem || !*stem)
        return;
    char *reached = cat3(stem, ".reached", ""), *go = cat3(stem, ".go", "");
    if (reached && go) {
        int fd = open(reached, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0)
            close(fd);
        for (int i = 0; i < 6000 && access(go, F_OK) != 0; i++)
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    free(reached);
    free(go);
}

/* A directory entry that is the root of a mount (a bind mount included:
 * those keep the device number of what they show). */
static bool is_mount_root(int dirfd, const char *name)
{
#if defined(STATX_ATTR_MOUNT_ROOT)
    struct statx sx;
    if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &sx) == 0 &&
        (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
        return (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
#endif
    (void)dirfd;
    (void)name;
    return false;
}

/* Empties the directory `fd` (consumed); `dev` is the tree's device. */
static int empty_dir(int fd, dev_t dev, uint64_t *bytes, bool remove)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            rc = -1;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (st.st_dev != dev || is_mount_root(dirfd(d), e->d_name)) {
                rc = -1; /* another file system's data: not ours to delete */
                continue;
            }
            int c = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (c < 0 || empty_dir(c, dev, bytes, remove) != 0)
                rc = -1;
            if (remove && unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) != 0)
                rc = -1;
        } else {
            if (bytes && S_ISREG(st.st_mode))
                *bytes += (uint64_t)st.st_size;
            if (remove && unlinkat(dirfd(d), e->d_name, 0) != 0)
                rc = -1;
        }
    }
    closedir(d);
    return rc;
}

/* Removes (or, !remove, measures) the directory `name` in `dirfd`. */
static int tree_at(int dirfd, const char *name, uint64_t *bytes, bool remove)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
    }
    int rc = empty_dir(fd, st.st_dev, bytes, remove);
    if (remove && unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        rc = -1;
    return rc;
}

int nq_remove_tree(const char *path)
{
    return tree_at(AT_FDCWD, path, NULL, true);
}

/* Canonical absolute path of `path`, which may not exist yet (its parent must). */
static char *resolve_maybe_missing(const char *path)
{
    char buf[PATH_MAX];
    if (realpath(path, buf))
        return strdup(buf);
    char *copy = strdup(path);
    if (!copy)
        return NULL;
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    const char *base = slash ? slash + 1 : copy;
    const char *parent = slash ? (slash == copy ? "/" : copy) : ".";
    if (slash)
        *slash = '\0';
    char *out = NULL;
    if (*base && strcmp(base, ".") != 0 && strcmp(base, "..") != 0 && realpath(parent, buf))
        out = cat3(strcmp(buf, "/") == 0 ? "" : buf, "/", base);
    free(copy);
    return out;
}

static int dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            empty = 0;
    closedir(d);
    return empty;
}

/* Splits an absolute path in place into its directory ("/" for the root)
 * and base; returns the slash that unsplit puts back. */
static char *split(char *abs, const char **dir, const char **base)
{
    char *slash = strrchr(abs, '/');
    *slash = '\0';
    *dir = abs[0] ? abs : "/";
    *base = slash + 1;
    return slash;
}

static void unsplit(char *slash) { *slash = '/'; }

int nq_outdir_check(const char *out_dir, const char *input_dir, bool force, nq_error *err)
{
    if (!out_dir || !*out_dir)
        return nq_fail(err, "no output directory given");
    char *abs = resolve_maybe_missing(out_dir);
    if (!abs)
        return nq_fail(err, "%s: parent directory does not exist", out_dir);
    int rc = 0;
    struct stat st;
    const char *dir, *base;
    char *slash = split(abs, &dir, &base);
    if (access(dir, W_OK | X_OK) != 0)
        rc = nq_fail(err, "%s: cannot create files in its directory %s: %s", out_dir, dir,
                     strerror(errno));
    unsplit(slash);
    if (rc == 0 && lstat(abs, &st) == 0 && S_ISLNK(st.st_mode))
        rc = nq_fail(err, "%s: is a symbolic link to nothing", out_dir);
    if (rc == 0)
        rc = nq_outpath_check_dir(out_dir, input_dir, err);
    if (rc == 0 && stat(abs, &st) == 0 && !dir_is_empty(abs) && !force)
        rc = nq_fail(err, "%s: directory is not empty (use --force to replace it)", out_dir);
    free(abs);
    return rc;
}

static void random_suffix(char *x6)
{
    static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[6];
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t v = (uint64_t)ts.tv_nsec * 2654435761u ^ (uint64_t)getpid() << 20 ^
                     (uint64_t)ts.tv_sec;
        for (int i = 0; i < 6; i++, v >>= 8)
            r[i] = (unsigned char)v;
    }
    for (int i = 0; i < 6; i++)
        x6[i] = chars[r[i] % 62];
}

int nq_outdir_temp(const char *out_path, char **tmp_out, int *lock_fd, nq_error *err)
{
    *tmp_out = NULL;
    *lock_fd = -1;
    char *abs = resolve_maybe_missing(out_path);
    if (!abs)
        return nq_fail(err, "%s: cannot resolve its directory", out_path);
    const char *dir, *base;
    char *slash = split(abs, &dir, &base);
    char *t = cat3(dir[1] ? dir : "", "/.", base);
    unsplit(slash);
    free(abs);
    char *tmp = t ? cat3(t, ".nemoq-tmp-XXXXXX", "") : NULL;
    free(t);
    if (!tmp)
        return nq_fail(err, "out of memory");
    /* mkdir with 0777 rather than mkdtemp's 0700: the umask decides, as for
     * any directory the user creates */
    for (int attempt = 0; attempt < 100; attempt++) {
        random_suffix(tmp + strlen(tmp) - 6);
        if (mkdir(tmp, 0777) != 0) {
            if (errno == EEXIST)
                continue;
            break;
        }
        int fd = open(tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            break;
        /* A file system without flock: run unlocked; --clean-stale then
         * cannot lock it either and leaves it alone. */
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
            ;
        /* --clean-stale may have taken the fresh, not yet locked directory
         * for stale and removed it: then start again under a new name */
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(tmp, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino) {
            *tmp_out = tmp;
            *lock_fd = fd;
            return 0;
        }
        close(fd);
    }
    int e = errno;
    free(tmp);
    return nq_fail(err, "%s: cannot create a temporary directory beside it: %s", out_path,
                   strerror(e));
}

int nq_outdir_open(nq_outdir *o, const char *out_dir, const char *input_dir, bool force,
                   nq_error *err)
{
    memset(o, 0, sizeof *o);
    o->lock_fd = -1;
    if (nq_outdir_check(out_dir, input_dir, force, err) != 0)
        return -1;
    o->out = resolve_maybe_missing(out_dir);
    o->input_dir = input_dir ? strdup(input_dir) : NULL;
    o->force = force;
    if (!o->out || (input_dir && !o->input_dir))
        return nq_fail(err, "out of memory");
    struct stat st;
    o->out_existed = stat(o->out, &st) == 0;
    return nq_outdir_temp(o->out, &o->tmp, &o->lock_fd, err) == 0 ? 0 : -1;
}

static int appeared(const nq_outdir *o, nq_error *err)
{
    return nq_fail(err, "%s: %s during the run (by another process?); it was left untouched and "
                        "the new output discarded (use --force to replace it)", o->out,
                   o->out_existed ? "files appeared in it" : "it was created");
}

/* Puts tmp at OUT when nothing may be replaced. */
static int place_new(nq_outdir *o, nq_error *err)
{
    if (o->out_existed) {
        /* rename() replaces a directory only while it is empty: atomic */
        if (rename(o->tmp, o->out) == 0)
            return 0;
        if (errno == ENOTEMPTY || errno == EEXIST || errno == ENOTDIR)
            return appeared(o, err);
        return nq_fail(err, "%s: renaming the output into place failed: %s", o->out,
                       strerror(errno));
    }
    if (rename_flags(o->tmp, o->out, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EEXIST)
        return appeared(o, err);
    if (!unsupported(errno))
        return nq_fail(err, "%s: renaming the output into place failed: %s", o->out,
                       strerror(errno));
    /* No RENAME_NOREPLACE here: claim OUT with an exclusive mkdir; rename()
     * then replaces that placeholder only while it is still empty. */
    if (mkdir(o->out, 0700) != 0)
        return errno == EEXIST ? appeared(o, err)
                               : nq_fail(err, "%s: cannot create: %s", o->out, strerror(errno));
    if (rename(o->tmp, o->out) == 0)
        return 0;
    int e = errno;
    rmdir(o->out); /* ours, if still empty; someone else's files otherwise stay */
    if (e == ENOTEMPTY || e == EEXIST)
        return appeared(o, err);
    return nq_fail(err, "%s: renaming the output into place failed: %s", o->out, strerror(e));
}

/* Replaces an existing OUT (--force). */
static int place_replacing(nq_outdir *o, nq_error *err)
{
    struct stat st;
    if (lstat(o->out, &st) != 0) {
        if (errno == ENOENT)
            return place_new(o, err); /* removed during the run */
        return nq_fail(err, "%s: %s", o->out, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return nq_fail(err, "%s: is no longer a directory; nothing was replaced", o->out);
    if (rename_flags(o->tmp, o->out, RENAME_EXCHANGE) == 0) {
        /* the old output now has the temporary name */
        nq_remove_tree(o->tmp);
        return 0;
    }
    if (errno == ENOENT)
        return place_new(o, err);
    if (!unsupported(errno))
        return nq_fail(err, "%s: swapping in the new output failed: %s", o->out, strerror(errno));
    /* No RENAME_EXCHANGE: two renames.  A kill between them leaves the old
     * output at TMP.old, which the next run reports (nq_outdir_stale). */
    char *aside = cat3(o->tmp, ".old", "");
    if (!aside)
        return nq_fail(err, "out of memory");
    int rc = 0;
    if (rename(o->out, aside) != 0) {
        rc = nq_fail(err, "%s: moving the old output aside failed: %s", o->out, strerror(errno));
    } else if (rename(o->tmp, o->out) != 0) {
        int e = errno;
        if (rename(aside, o->out) != 0)
            rc = nq_fail(err, "%s: renaming the output into place failed: %s; the previous "
                              "output is at %s", o->out, strerror(e), aside);
        else
            rc = nq_fail(err, "%s: renaming the output into place failed: %s", o->out,
                         strerror(e));
    } else {
        nq_remove_tree(aside);
    }
    free(aside);
    return rc;
}

static void fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int nq_outdir_commit(nq_outdir *o, nq_error *err)
{
    if (!o->tmp || o->committed)
        return nq_fail(err, "internal: output directory committed twice");
    test_pause();
    /* OUT may have been replaced by another name of the input meanwhile */
    int rc = nq_outpath_check_dir(o->out, o->input_dir, err);
    if (rc == 0)
        rc = o->force ? place_replacing(o, err) : place_new(o, err);
    if (rc != 0) {
        nq_remove_tree(o->tmp);
        return -1;
    }
    o->committed = true;
    const char *dir, *base;
    char *slash = split(o->out, &dir, &base);
    fsync_dir(dir);
    unsplit(slash);
    return 0;
}

void nq_outdir_close(nq_outdir *o)
{
    if (o->tmp && !o->committed)
        nq_remove_tree(o->tmp);
    if (o->lock_fd >= 0)
        close(o->lock_fd);
    free(o->tmp);
    free(o->out);
    free(o->input_dir);
    memset(o, 0, sizeof *o);
    o->lock_fd = -1;
}

static void print_size(FILE *log, uint64_t b)
{
    if (b >= 1000000000ull)
        fprintf(log, "%.1f GB", (double)b / 1e9);
    else
        fprintf(log, "%.1f MB", (double)b / 1e6);
}

int nq_outdir_stale(const char *out_dir, bool remove, FILE *log)
{
    char *abs = out_dir ? resolve_maybe_missing(out_dir) : NULL;
    if (!abs)
        return 0; /* nq_outdir_check names the problem */
    struct stat st;
    bool out_exists = stat(abs, &st) == 0;
    const char *dir, *base;
    char *slash = split(abs, &dir, &base);
    char *prefix = cat3(".", base, ".nemoq-tmp-");
    DIR *d = prefix ? opendir(dir) : NULL;
    int found = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        /* directories (a checkpoint's, GGUF's calibration staging) and
         * files (a GGUF being written), each flock'd by its live run */
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 ||
            fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !(S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)))
            continue;
        bool is_dir = S_ISDIR(st.st_mode);
        int fd = openat(dirfd(d), e->d_name,
                        O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (is_dir ? O_DIRECTORY : 0));
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            /* held by a live run (or no flock here: cannot tell, so keep) */
            close(fd);
            continue;
        }
        size_t n = strlen(e->d_name);
        bool old = n > 4 && strcmp(e->d_name + n - 4, ".old") == 0;
        uint64_t bytes = is_dir ? 0 : (uint64_t)st.st_size;
        if (is_dir)
            tree_at(dirfd(d), e->d_name, &bytes, false);
        found++;
        if (old && is_dir && !out_exists) {
            fprintf(log, "note: %s/%s (", dir, e->d_name);
            print_size(log, bytes);
            fprintf(log, ") is the previous output, moved aside by a --force run that was "
                         "killed; rename it to %s/%s to recover it\n", dir, base);
        } else if (remove) {
            int rc = is_dir ? tree_at(dirfd(d), e->d_name, NULL, true)
                            : unlinkat(dirfd(d), e->d_name, 0);
            fprintf(log, "%s stale temporary %s %s/%s (", rc == 0 ? "removed" :
                    "could not remove all of", is_dir ? "directory" : "file", dir, e->d_name);
            print_size(log, bytes);
            fprintf(log, ")\n");
        } else {
            fprintf(log, "note: %s/%s (", dir, e->d_name);
            print_size(log, bytes);
            fprintf(log, ") was left by a nemoq run that was killed; --clean-stale removes it\n");
        }
        close(fd);
    }
    if (d)
        closedir(d);
    free(prefix);
    unsplit(slash);
    free(abs);
    return found;
}
