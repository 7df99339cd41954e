/* The GGUF writer: metadata and tensor infos collected in memory, tensor
 * bytes streamed in declaration order into a locked hidden temporary file,
 * committed atomically (io/gguf.h). */
#include "io/gguf.h"
#include "io/outpath.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct wtensor {
    char name[NQ_GGUF_MAX_NAME];
    uint32_t type, ndim;
    int64_t ne[NQ_GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
} wtensor;

struct nq_gguf_writer {
    char *out_path, *tmp_path;
    int fd;
    bool committed, begun, force;
    /* metadata, serialized as it is added */
    unsigned char *kv;
    size_t kv_len, kv_cap;
    uint64_t nkv;
    char **keys;
    wtensor *t;
    size_t nt, cap_t;
    /* streaming state */
    size_t cur;            /* tensor being written */
    uint64_t cur_done;     /* its bytes so far */
    uint64_t written;      /* file bytes so far */
    unsigned char *buf;
    size_t buf_len;
};

#define WBUF (1u << 20)

static int kv_reserve(nq_gguf_writer *w, size_t more)
{
    if (w->kv_len + more <= w->kv_cap)
        return 0;
    size_t cap = w->kv_cap ? w->kv_cap : 4096;
    while (cap < w->kv_len + more)
        cap *= 2;
    unsigned char *p = realloc(w->kv, cap);
    if (!p)
        return -1;
    w->kv = p;
    w->kv_cap = cap;
    return 0;
}

static void put_bytes(nq_gguf_writer *w, const void *p, size_t n)
{
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
}

static void put_u32(nq_gguf_writer *w, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put_bytes(w, b, 4);
}

static void put_u64(nq_gguf_writer *w, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    put_bytes(w, b, 8);
}

/* Starts a key/value: checks the key is new, reserves room, writes key + type. */
static int kv_begin(nq_gguf_writer *w, const char *key, uint32_t type, size_t value_bytes,
                    nq_error *err)
{
    if (w->begun)
        return nq_fail(err, "%s: metadata '%s' added after the header was written", w->out_path, key);
    for (uint64_t i = 0; i < w->nkv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return nq_fail(err, "%s: duplicate GGUF key '%s'", w->out_path, key);
    size_t klen = strlen(key);
    char **keys = realloc(w->keys, (w->nkv + 1) * sizeof *keys);
    if (!keys)
        return nq_fail(err, "%s: out of memory", w->out_path);
    w->keys = keys;
    if (kv_reserve(w, 8 + klen + 4 + value_bytes) != 0 || !(w->keys[w->nkv] = strdup(key)))
        return nq_fail(err, "%s: out of memory", w->out_path);
    w->nkv++;
    put_u64(w, klen);
    put_bytes(w, key, klen);
    put_u32(w, type);
    return 0;
}

int nq_gguf_add_raw(nq_gguf_writer *w, const char *key, uint32_t type, uint32_t arr_type,
                    uint64_t n, const void *value, size_t nbytes, nq_error *err)
{
    if (type >= NQ_GGUF_VTYPE_COUNT || (type == NQ_GGUF_ARRAY && (arr_type >= NQ_GGUF_VTYPE_COUNT ||
                                                                   arr_type == NQ_GGUF_ARRAY)))
        return nq_fail(err, "%s: key '%s': invalid value type", w->out_path, key);
    if (kv_begin(w, key, type, 12 + nbytes, err) != 0)
        return -1;
    if (type == NQ_GGUF_ARRAY) {
        put_u32(w, arr_type);
        put_u64(w, n);
    }
    put_bytes(w, value, nbytes);
    return 0;
}

int nq_gguf_add_u32(nq_gguf_writer *w, const char *key, uint32_t v, nq_error *err)
{
    if (kv_begin(w, key, NQ_GGUF_U32, 4, err) != 0)
        return -1;
    put_u32(w, v);
    return 0;
}

int nq_gguf_add_i32(nq_gguf_writer *w, const char *key, int32_t v, nq_error *err)
{
    if (kv_begin(w, key, NQ_GGUF_I32, 4, err) != 0)
        return -1;
    put_u32(w, (uint32_t)v);
    return 0;
}

int nq_gguf_add_f32(nq_gguf_writer *w, const char *key, float v, nq_error *err)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    if (kv_begin(w, key, NQ_GGUF_F32, 4, err) != 0)
        return -1;
    put_u32(w, u);
    return 0;
}

int nq_gguf_add_bool(nq_gguf_writer *w, const char *key, bool v, nq_error *err)
{
    if (kv_begin(w, key, NQ_GGUF_BOOL, 1, err) != 0)
        return -1;
    unsigned char b = v ? 1 : 0;
    put_bytes(w, &b, 1);
    return 0;
}

int nq_gguf_add_str(nq_gguf_writer *w, const char *key, const char *s, nq_error *err)
{
    size_t n = strlen(s);
    if (kv_begin(w, key, NQ_GGUF_STRING, 8 + n, err) != 0)
        return -1;
    put_u64(w, n);
    put_bytes(w, s, n);
    return 0;
}

int nq_gguf_add_arr_i32(nq_gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                        nq_error *err)
{
    if (kv_begin(w, key, NQ_GGUF_ARRAY, 12 + 4 * n, err) != 0)
        return -1;
    put_u32(w, NQ_GGUF_I32);
    put_u64(w, n);
    for (uint64_t i = 0; i < n; i++)
        put_u32(w, (uint32_t)v[i]);
    return 0;
}

int nq_gguf_add_arr_bool(nq_gguf_writer *w, const char *key, const bool *v, uint64_t n,
                         nq_error *err)
{
    if (kv_begin(w, key, NQ_GGUF_ARRAY, 12 + n, err) != 0)
        return -1;
    put_u32(w, NQ_GGUF_BOOL);
    put_u64(w, n);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char b = v[i] ? 1 : 0;
        put_bytes(w, &b, 1);
    }
    return 0;
}

int nq_gguf_add_arr_str(nq_gguf_writer *w, const char *key, const char *const *s,
                        const size_t *lens, uint64_t n, nq_error *err)
{
    size_t total = 12;
    for (uint64_t i = 0; i < n; i++)
        total += 8 + (lens ? lens[i] : strlen(s[i]));
    if (kv_begin(w, key, NQ_GGUF_ARRAY, total, err) != 0)
        return -1;
    put_u32(w, NQ_GGUF_STRING);
    put_u64(w, n);
    for (uint64_t i = 0; i < n; i++) {
        size_t l = lens ? lens[i] : strlen(s[i]);
        put_u64(w, l);
        put_bytes(w, s[i], l);
    }
    return 0;
}

static char *resolve_dir_of(const char *path, const char **base)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    *base = slash ? slash + 1 : path;
    return dir;
}

nq_gguf_writer *nq_gguf_writer_create(const char *out_path, const char *input, bool force,
                                      nq_error *err)
{
    struct stat st;
    if (!out_path || !*out_path || out_path[strlen(out_path) - 1] == '/') {
        nq_fail(err, "%s: expected an output file name", out_path ? out_path : "(null)");
        return NULL;
    }
    if (stat(out_path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            nq_fail(err, "%s: is a directory (a GGUF output is one file)", out_path);
            return NULL;
        }
        if (!force) {
            nq_fail(err, "%s: already exists (use --force to replace it)", out_path);
            return NULL;
        }
    }
    /* by device and inode, as every output (io/outpath.h): not inside the
     * input through any alias, its directory exists and is writable */
    if (nq_outpath_check_file(out_path, input, NULL, "OUT", err) != 0)
        return NULL;
    nq_gguf_writer *w = calloc(1, sizeof *w);
    if (w)
        w->fd = -1;
    const char *base;
    char *dir = resolve_dir_of(out_path, &base);
    if (!w || !dir || !(w->out_path = strdup(out_path)) ||
        !(w->tmp_path = malloc(strlen(dir) + strlen(base) + 32)) || !(w->buf = malloc(WBUF))) {
        nq_fail(err, "%s: out of memory", out_path);
        free(dir);
        nq_gguf_writer_free(w);
        return NULL;
    }
    w->force = force;
    /* The lock is held for the run's life: how a later run tells a live
     * temporary from one a killed run left (nq_outdir_stale).  A concurrent
     * --clean-stale may remove the file between its creation and the lock:
     * then start again under a new name. */
    for (int attempt = 0; attempt < 100; attempt++) {
        sprintf(w->tmp_path, "%s/.%s.nemoq-tmp-XXXXXX", dir, base);
        w->fd = mkostemp(w->tmp_path, O_CLOEXEC);
        if (w->fd < 0)
            break;
        while (flock(w->fd, LOCK_EX) != 0 && errno == EINTR)
            ;
        struct stat a, b;
        if (fstat(w->fd, &a) == 0 && stat(w->tmp_path, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino) {
            free(dir);
            return w;
        }
        close(w->fd);
        w->fd = -1;
    }
    nq_fail(err, "%s: cannot create a temporary file beside it: %s", out_path, strerror(errno));
    free(dir);
    free(w->tmp_path);
    w->tmp_path = NULL;
    nq_gguf_writer_free(w);
    return NULL;
}

int nq_gguf_declare_tensor(nq_gguf_writer *w, const char *name, uint32_t type, int ndim,
                           const int64_t *ne, nq_error *err)
{
    int64_t blk;
    size_t bb;
    if (w->begun)
        return nq_fail(err, "%s: tensor '%s' declared after the header was written", w->out_path, name);
    if (strlen(name) >= NQ_GGUF_MAX_NAME)
        return nq_fail(err, "%s: tensor name '%s' is 64 bytes or longer", w->out_path, name);
    if (ndim < 1 || ndim > NQ_GGUF_MAX_DIMS)
        return nq_fail(err, "%s: tensor '%s': %d dimensions", w->out_path, name, ndim);
    const char *tname = "?";
    if (nq_ggml_type_info(type, &blk, &bb, &tname) != 0)
        return nq_fail(err, "%s: tensor '%s': unknown ggml type %u", w->out_path, name, type);
    for (size_t i = 0; i < w->nt; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return nq_fail(err, "%s: duplicate tensor '%s'", w->out_path, name);
    uint64_t nel = 1;
    for (int d = 0; d < ndim; d++) {
        if (ne[d] < 0 || (ne[d] > 0 && nel > (uint64_t)INT64_MAX / (uint64_t)ne[d]))
            return nq_fail(err, "%s: tensor '%s': bad extents", w->out_path, name);
        nel *= (uint64_t)ne[d];
    }
    if (ne[0] % blk != 0)
        return nq_fail(err, "%s: tensor '%s': row of %lld is not a multiple of the %s block (%lld)",
                       w->out_path, name, (long long)ne[0], tname, (long long)blk);
    if (w->nt == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return nq_fail(err, "%s: out of memory", w->out_path);
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->nt];
    memset(t, 0, sizeof *t);
    strcpy(t->name, name);
    t->type = type;
    t->ndim = (uint32_t)ndim;
    for (int d = 0; d < NQ_GGUF_MAX_DIMS; d++)
        t->ne[d] = d < ndim ? ne[d] : 1;
    t->nbytes = nel / (uint64_t)blk * bb;
    uint64_t off = 0;
    if (w->nt > 0) {
        const wtensor *p = &w->t[w->nt - 1];
        off = p->offset + (p->nbytes + NQ_GGUF_DEFAULT_ALIGNMENT - 1) / NQ_GGUF_DEFAULT_ALIGNMENT *
                              NQ_GGUF_DEFAULT_ALIGNMENT;
    }
    t->offset = off;
    w->nt++;
    return 0;
}

static int flush_buf(nq_gguf_writer *w, nq_error *err)
{
    size_t off = 0;
    while (off < w->buf_len) {
        ssize_t r = write(w->fd, w->buf + off, w->buf_len - off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return nq_fail(err, "%s: write failed: %s", w->out_path, strerror(errno));
        }
        off += (size_t)r;
    }
    w->buf_len = 0;
    return 0;
}

static int emit(nq_gguf_writer *w, const void *data, size_t n, nq_error *err)
{
    const unsigned char *p = data;
    while (n > 0) {
        size_t take = WBUF - w->buf_len < n ? WBUF - w->buf_len : n;
        memcpy(w->buf + w->buf_len, p, take);
        w->buf_len += take;
        p += take;
        n -= take;
        w->written += take;
        if (w->buf_len == WBUF && flush_buf(w, err) != 0)
            return -1;
    }
    return 0;
}

static int pad_to_alignment(nq_gguf_writer *w, nq_error *err)
{
    static const unsigned char zeros[NQ_GGUF_DEFAULT_ALIGNMENT];
    size_t rem = (size_t)(w->written % NQ_GGUF_DEFAULT_ALIGNMENT);
    return rem ? emit(w, zeros, NQ_GGUF_DEFAULT_ALIGNMENT - rem, err) : 0;
}

int nq_gguf_writer_begin(nq_gguf_writer *w, nq_error *err)
{
    unsigned char hdr[24];
    memcpy(hdr, "GGUF", 4);
    uint32_t v = 3;
    uint64_t nt = w->nt, nkv = w->nkv;
    for (int i = 0; i < 4; i++)
        hdr[4 + i] = (unsigned char)(v >> (8 * i));
    for (int i = 0; i < 8; i++) {
        hdr[8 + i] = (unsigned char)(nt >> (8 * i));
        hdr[16 + i] = (unsigned char)(nkv >> (8 * i));
    }
    w->begun = true;
    if (emit(w, hdr, sizeof hdr, err) != 0 || emit(w, w->kv, w->kv_len, err) != 0)
        return -1;
    /* tensor infos, reusing the metadata buffer */
    w->kv_len = 0;
    for (size_t i = 0; i < w->nt; i++) {
        const wtensor *t = &w->t[i];
        size_t nl = strlen(t->name);
        if (kv_reserve(w, 8 + nl + 4 + 8 * t->ndim + 4 + 8) != 0)
            return nq_fail(err, "%s: out of memory", w->out_path);
        put_u64(w, nl);
        put_bytes(w, t->name, nl);
        put_u32(w, t->ndim);
        for (uint32_t d = 0; d < t->ndim; d++)
            put_u64(w, (uint64_t)t->ne[d]);
        put_u32(w, t->type);
        put_u64(w, t->offset);
    }
    if (emit(w, w->kv, w->kv_len, err) != 0)
        return -1;
    w->kv_len = 0;
    if (w->nt > 0 && pad_to_alignment(w, err) != 0)
        return -1;
    w->cur = 0;
    w->cur_done = 0;
    return 0;
}

int nq_gguf_writer_write(nq_gguf_writer *w, const void *data, size_t n, nq_error *err)
{
    const unsigned char *p = data;
    if (!w->begun)
        return nq_fail(err, "%s: tensor data before the header", w->out_path);
    while (n > 0) {
        if (w->cur >= w->nt)
            return nq_fail(err, "%s: more tensor bytes than declared", w->out_path);
        const wtensor *t = &w->t[w->cur];
        uint64_t left = t->nbytes - w->cur_done;
        size_t take = left < n ? (size_t)left : n;
        if (emit(w, p, take, err) != 0)
            return -1;
        p += take;
        n -= take;
        w->cur_done += take;
        if (w->cur_done == t->nbytes) {
            if (pad_to_alignment(w, err) != 0)
                return -1;
            w->cur++;
            w->cur_done = 0;
        }
    }
    /* zero-byte tensors complete without data */
    while (w->cur < w->nt && w->t[w->cur].nbytes == 0)
        w->cur++;
    return 0;
}

int nq_gguf_writer_commit(nq_gguf_writer *w, nq_error *err)
{
    if (!w->begun && nq_gguf_writer_begin(w, err) != 0)
        return -1;
    while (w->cur < w->nt && w->t[w->cur].nbytes == 0)
        w->cur++;
    if (w->cur != w->nt)
        return nq_fail(err, "%s: tensor '%s' is incomplete (%llu of %llu bytes)", w->out_path,
                       w->t[w->cur].name, (unsigned long long)w->cur_done,
                       (unsigned long long)w->t[w->cur].nbytes);
    if (flush_buf(w, err) != 0)
        return -1;
    if (fsync(w->fd) != 0)
        return nq_fail(err, "%s: fsync failed: %s", w->out_path, strerror(errno));
    /* mkostemp makes 0600 files: 0666 minus the umask, as for every output */
    mode_t um = umask(0);
    umask(um);
    (void)fchmod(w->fd, 0666 & ~um);
    if (close(w->fd) != 0) {
        w->fd = -1;
        return nq_fail(err, "%s: close failed: %s", w->out_path, strerror(errno));
    }
    w->fd = -1;
    /* Without force, link() puts the file at OUT only if nothing is there
     * (something created during the run is left untouched); with force,
     * rename() replaces the old file in one step. */
    if (!w->force) {
        int rc = link(w->tmp_path, w->out_path);
        struct stat st;
        if (rc != 0 && errno == EEXIST)
            return nq_fail(err, "%s: it was created during the run; it was left untouched and the new output discarded (use --force to replace it)",
                           w->out_path);
        if (rc != 0) {
            /* a file system without hard links: check, then rename */
            if (stat(w->out_path, &st) == 0)
                return nq_fail(err, "%s: it was created during the run; it was left untouched and the new output discarded (use --force to replace it)",
                               w->out_path);
            if (rename(w->tmp_path, w->out_path) != 0)
                return nq_fail(err, "%s: cannot place the output: %s", w->out_path, strerror(errno));
        } else {
            unlink(w->tmp_path);
        }
    } else if (rename(w->tmp_path, w->out_path) != 0) {
        return nq_fail(err, "%s: rename from %s failed: %s", w->out_path, w->tmp_path, strerror(errno));
    }
    w->committed = true;
    const char *base;
    char *dir = resolve_dir_of(w->out_path, &base);
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    return 0;
}

uint64_t nq_gguf_writer_bytes(const nq_gguf_writer *w) { return w->written; }

void nq_gguf_writer_free(nq_gguf_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0 && w->tmp_path)
        close(w->fd);
    if (!w->committed && w->tmp_path)
        unlink(w->tmp_path);
    for (uint64_t i = 0; i < w->nkv; i++)
        free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->t);
    free(w->buf);
    free(w->out_path);
    free(w->tmp_path);
    free(w);
}
