#include "io/writer.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/outdir.h"
#include "io/safetensors.h"

typedef struct declared {
    char *name;
    nq_dtype dtype;
    int ndim;
    int64_t shape[NQ_MAX_DIMS];
    uint64_t nbytes;
    int shard;
    uint64_t offset; /* within the shard's data region */
} declared;

struct nq_writer {
    nq_outdir od;
    const char *out_dir;    /* final path (od's) */
    const char *tmp_dir;    /* where everything is written (od's) */
    uint64_t max_shard_bytes;
    bool begun, committed;
    declared *tensors;
    size_t ntensors, cap;
    int nshards;
    /* streaming position */
    size_t cur_tensor;
    uint64_t cur_written; /* bytes of cur_tensor already written */
    int cur_shard;
    int fd;
    uint64_t shard_pos;   /* bytes written to the open shard file */
    uint64_t writeback;   /* of which writeback has been started */
};

/* Bytes between early writeback requests (see start_writeback). */
#define WRITEBACK_STEP (64u << 20)

/* Asks the kernel to start writing the shard's dirty pages now, without
 * waiting: the data must reach the disk before the commit's fsync anyway, and
 * starting early overlaps that disk time with quantizing the next tensors
 * (the fsync of a 30 GB output otherwise takes tens of seconds at the end)
 * and keeps dirty memory bounded.  A hint only: failure is ignored, and the
 * commit's fsync is what guarantees durability. */
static void start_writeback(nq_writer *w, bool all)
{
#ifdef SYNC_FILE_RANGE_WRITE
    uint64_t pending = w->shard_pos - w->writeback;
    if (pending == 0 || (!all && pending < WRITEBACK_STEP))
        return;
    (void)sync_file_range(w->fd, (off_t)w->writeback, (off_t)pending, SYNC_FILE_RANGE_WRITE);
    w->writeback = w->shard_pos;
#else
    (void)w;
    (void)all;
#endif
}

static char *str_printf(const char *fmt, const char *a, const char *b)
{
    size_t n = strlen(fmt) + strlen(a) + strlen(b) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, fmt, a, b);
    return s;
}

int nq_writer_check(const nq_writer_options *opt, nq_error *err)
{
    return nq_outdir_check(opt->out_dir, opt->input_dir, opt->force, err);
}

nq_writer *nq_writer_create(const nq_writer_options *opt, nq_error *err)
{
    nq_writer *w = calloc(1, sizeof *w);
    if (!w) {
        nq_fail(err, "out of memory");
        return NULL;
    }
    w->fd = -1;
    w->max_shard_bytes = opt->max_shard_bytes ? opt->max_shard_bytes : NQ_DEFAULT_MAX_SHARD_BYTES;
    if (nq_outdir_open(&w->od, opt->out_dir, opt->input_dir, opt->force, err) != 0) {
        nq_writer_free(w);
        return NULL;
    }
    w->out_dir = w->od.out;
    w->tmp_dir = w->od.tmp;
    return w;
}

int nq_writer_declare(nq_writer *w, const char *name, nq_dtype dtype, int ndim,
                      const int64_t *shape, nq_error *err)
{
    if (w->begun)
        return nq_fail(err, "internal: tensor '%s' declared after writing began", name);
    if (ndim < 0 || ndim > NQ_MAX_DIMS)
        return nq_fail(err, "tensor '%s': %d dimensions", name, ndim);
    if (w->ntensors == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 256;
        declared *grown = realloc(w->tensors, cap * sizeof *grown);
        if (!grown)
            return nq_fail(err, "out of memory");
        w->tensors = grown;
        w->cap = cap;
    }
    declared *d = &w->tensors[w->ntensors];
    memset(d, 0, sizeof *d);
    d->name = strdup(name);
    if (!d->name)
        return nq_fail(err, "out of memory");
    d->dtype = dtype;
    d->ndim = ndim;
    uint64_t n = nq_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            free(d->name);
            return nq_fail(err, "tensor '%s': negative dimension", name);
        }
        d->shape[i] = shape[i];
        n *= (uint64_t)shape[i];
    }
    d->nbytes = n;
    w->ntensors++;
    return 0;
}

static int shard_name(const nq_writer *w, int shard, char *buf, size_t len)
{
    if (w->nshards == 1)
        return snprintf(buf, len, "model.safetensors");
    return snprintf(buf, len, "model-%05d-of-%05d.safetensors", shard + 1, w->nshards);
}

static int write_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fail_io(nq_writer *w, nq_error *err, const char *what, const char *file)
{
    int e = errno;
    nq_fail(err, "%s: %s %s failed: %s", w->out_dir, what, file, strerror(e));
    return -1;
}

/* Opens shard `s` and writes its header: __metadata__ first, then tensors in
 * declaration order, padded with spaces so the data starts 8-byte aligned. */
static int open_shard(nq_writer *w, int s, nq_error *err)
{
    char name[64], *path;
    shard_name(w, s, name, sizeof name);
    json_t *hdr = json_object();
    json_t *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(hdr, "__metadata__", meta);
    for (size_t i = 0; i < w->ntensors; i++) {
        declared *d = &w->tensors[i];
        if (d->shard != s)
            continue;
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(nq_dtype_name(d->dtype)));
        json_t *shape = json_array();
        for (int k = 0; k < d->ndim; k++)
            json_array_append_new(shape, json_integer(d->shape[k]));
        json_object_set_new(e, "shape", shape);
        json_t *off = json_array();
        json_array_append_new(off, json_integer((json_int_t)d->offset));
        json_array_append_new(off, json_integer((json_int_t)(d->offset + d->nbytes)));
        json_object_set_new(e, "data_offsets", off);
        json_object_set_new(hdr, d->name, e);
    }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!text)
        return nq_fail(err, "out of memory building the header of %s", name);
    size_t tl = strlen(text);
    size_t padded = (tl + 7) & ~(size_t)7;
    char *buf = malloc(8 + padded);
    if (!buf) {
        free(text);
        return nq_fail(err, "out of memory");
    }
    uint64_t hl = padded;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, text, tl);
    memset(buf + 8 + tl, ' ', padded - tl);
    free(text);
    path = str_printf("%s/%s", w->tmp_dir, name);
    int rc = 0;
    if (!path) {
        rc = nq_fail(err, "out of memory");
    } else {
        w->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (w->fd < 0 || write_all(w->fd, buf, 8 + padded) != 0)
            rc = fail_io(w, err, "writing", name);
        w->shard_pos = 8 + padded;
        w->writeback = 0;
    }
    free(path);
    free(buf);
    w->cur_shard = s;
    return rc;
}

static int close_shard(nq_writer *w, nq_error *err)
{
    if (w->fd < 0)
        return 0;
    char name[64];
    shard_name(w, w->cur_shard, name, sizeof name);
    int rc = 0;
    start_writeback(w, true);
    if (fsync(w->fd) != 0)
        rc = fail_io(w, err, "flushing", name);
    if (close(w->fd) != 0 && rc == 0)
        rc = fail_io(w, err, "closing", name);
    w->fd = -1;
    return rc;
}

int nq_writer_begin(nq_writer *w, nq_error *err)
{
    if (w->begun)
        return nq_fail(err, "internal: nq_writer_begin called twice");
    /* Greedy in declaration order: a new shard starts when the next tensor
     * would overflow a non-empty one; a tensor larger than the limit gets a
     * shard of its own. */
    int shard = 0;
    uint64_t used = 0;
    for (size_t i = 0; i < w->ntensors; i++) {
        declared *d = &w->tensors[i];
        if (used > 0 && used + d->nbytes > w->max_shard_bytes) {
            shard++;
            used = 0;
        }
        d->shard = shard;
        d->offset = used;
        used += d->nbytes;
    }
    w->nshards = shard + 1;
    w->begun = true;
    w->cur_tensor = 0;
    w->cur_written = 0;
    return open_shard(w, 0, err);
}

/* Skips over zero-byte tensors and switches shards when one is full. */
static int advance(nq_writer *w, nq_error *err)
{
    while (w->cur_tensor < w->ntensors &&
           w->cur_written == w->tensors[w->cur_tensor].nbytes) {
        w->cur_tensor++;
        w->cur_written = 0;
        if (w->cur_tensor < w->ntensors && w->tensors[w->cur_tensor].shard != w->cur_shard) {
            if (close_shard(w, err) != 0 || open_shard(w, w->tensors[w->cur_tensor].shard, err) != 0)
                return -1;
        }
    }
    return 0;
}

int nq_writer_write(nq_writer *w, const void *data, size_t nbytes, nq_error *err)
{
    if (!w->begun)
        return nq_fail(err, "internal: nq_writer_write before nq_writer_begin");
    const unsigned char *p = data;
    while (nbytes > 0) {
        if (advance(w, err) != 0)
            return -1;
        if (w->cur_tensor >= w->ntensors)
            return nq_fail(err, "internal: %zu bytes written beyond the declared tensors", nbytes);
        declared *d = &w->tensors[w->cur_tensor];
        uint64_t room = d->nbytes - w->cur_written;
        size_t n = nbytes < room ? nbytes : (size_t)room;
        if (write_all(w->fd, p, n) != 0) {
            char name[64];
            shard_name(w, w->cur_shard, name, sizeof name);
            return fail_io(w, err, "writing", name);
        }
        w->cur_written += n;
        w->shard_pos += n;
        start_writeback(w, false);
        p += n;
        nbytes -= n;
    }
    return 0;
}

int nq_writer_add_file(nq_writer *w, const char *name, const void *data, size_t len,
                       nq_error *err)
{
    char *path = str_printf("%s/%s", w->tmp_dir, name);
    if (!path)
        return nq_fail(err, "out of memory");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    free(path);
    int rc = 0;
    if (fd < 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0)
        rc = fail_io(w, err, "writing", name);
    if (fd >= 0 && close(fd) != 0 && rc == 0)
        rc = fail_io(w, err, "closing", name);
    return rc;
}

int nq_writer_copy_file(nq_writer *w, const char *src_path, const char *name, nq_error *err)
{
    FILE *f = fopen(src_path, "rb");
    if (!f)
        return nq_fail(err, "%s: cannot open: %s", src_path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            char *g = realloc(buf, cap);
            if (!g) {
                free(buf);
                fclose(f);
                return nq_fail(err, "%s: out of memory", src_path);
            }
            buf = g;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        if (got == 0)
            break;
        len += got;
    }
    int bad = ferror(f);
    fclose(f);
    int rc = bad ? nq_fail(err, "%s: read error", src_path) : nq_writer_add_file(w, name, buf, len, err);
    free(buf);
    return rc;
}

static int write_index(nq_writer *w, nq_error *err)
{
    json_t *root = json_object();
    json_t *meta = json_object();
    uint64_t total = 0;
    for (size_t i = 0; i < w->ntensors; i++)
        total += w->tensors[i].nbytes;
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(root, "metadata", meta);
    json_t *map = json_object();
    for (size_t i = 0; i < w->ntensors; i++) {
        char name[64];
        shard_name(w, w->tensors[i].shard, name, sizeof name);
        json_object_set_new(map, w->tensors[i].name, json_string(name));
    }
    json_object_set_new(root, "weight_map", map);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text)
        return nq_fail(err, "out of memory building the index");
    size_t tl = strlen(text);
    text[tl] = '\n'; /* replace NUL: we pass the length explicitly */
    int rc = nq_writer_add_file(w, "model.safetensors.index.json", text, tl + 1, err);
    free(text);
    return rc;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int nq_writer_commit(nq_writer *w, nq_error *err)
{
    if (!w->begun && nq_writer_begin(w, err) != 0)
        goto fail;
    if (advance(w, err) != 0)
        goto fail;
    if (w->cur_tensor < w->ntensors) {
        nq_fail(err, "internal: tensor '%s' is missing %llu of its %llu bytes",
                w->tensors[w->cur_tensor].name,
                (unsigned long long)(w->tensors[w->cur_tensor].nbytes - w->cur_written),
                (unsigned long long)w->tensors[w->cur_tensor].nbytes);
        goto fail;
    }
    if (close_shard(w, err) != 0)
        goto fail;
    if (w->nshards > 1 && write_index(w, err) != 0)
        goto fail;
    if (fsync_dir(w->tmp_dir) != 0) {
        fail_io(w, err, "flushing", "the temporary directory");
        goto fail;
    }
    if (nq_outdir_commit(&w->od, err) != 0)
        goto fail;
    w->committed = true;
    return 0;
fail:
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    nq_remove_tree(w->tmp_dir);
    return -1;
}

void nq_writer_free(nq_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    nq_outdir_close(&w->od);
    for (size_t i = 0; i < w->ntensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

int nq_writer_shard_count(const nq_writer *w) { return w->nshards; }

size_t nq_writer_tensor_count(const nq_writer *w) { return w->ntensors; }

uint64_t nq_writer_total_bytes(const nq_writer *w)
{
    uint64_t total = 0;
    for (size_t i = 0; i < w->ntensors; i++)
        total += w->tensors[i].nbytes;
    return total;
}
