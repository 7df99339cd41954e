/* safetensors reader.
 *
 * Format (https://huggingface.co/docs/safetensors, and the reference Rust
 * implementation's `validate`): 8-byte little-endian header length N, N bytes
 * of JSON mapping tensor names to {dtype, shape, data_offsets:[begin,end]}
 * (offsets relative to the byte after the header) plus an optional
 * "__metadata__" map of strings, then the data.  The reference loader rejects
 * a data region with holes, overlaps or trailing bytes; so do we, so that
 * nothing we accept is refused by the servers downstream. */
#include "io/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/floatconv.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors data is little-endian; nemoq reads it in place");

/* The reference implementation caps the header at 100 MB. */
#define MAX_HEADER_BYTES (100u * 1000u * 1000u)

typedef struct shard {
    char *path;
    unsigned char *map;
    uint64_t size;
    json_t *metadata; /* __metadata__ object or NULL */
} shard;

struct nq_checkpoint {
    char *dir;
    shard *shards;
    int nshards;
    nq_tensor *tensors; /* file order */
    size_t ntensors;
    size_t *by_name; /* indices sorted by name */
};

/* ---- parsing one header ---------------------------------------------- */

static int checked_mul(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a)
        return -1;
    *out = a * b;
    return 0;
}

static int parse_entry(const char *file, const char *name, json_t *entry, uint64_t data_size,
                       nq_tensor *t, nq_error *err)
{
    if (!json_is_object(entry))
        return nq_fail(err, "%s: tensor '%s': header entry is not an object", file, name);
    json_t *jd = json_object_get(entry, "dtype");
    json_t *js = json_object_get(entry, "shape");
    json_t *jo = json_object_get(entry, "data_offsets");
    if (!json_is_string(jd))
        return nq_fail(err, "%s: tensor '%s': missing or non-string dtype", file, name);
    if (nq_dtype_from_name(json_string_value(jd), &t->dtype) != 0)
        return nq_fail(err, "%s: tensor '%s': unknown dtype '%s'", file, name,
                       json_string_value(jd));
    if (!json_is_array(js))
        return nq_fail(err, "%s: tensor '%s': missing or non-array shape", file, name);
    size_t nd = json_array_size(js);
    if (nd > NQ_MAX_DIMS)
        return nq_fail(err, "%s: tensor '%s': %zu dimensions (at most %d supported)", file,
                       name, nd, NQ_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return nq_fail(err, "%s: tensor '%s': shape entry %zu is not a non-negative integer",
                           file, name, i);
        t->shape[i] = json_integer_value(d);
        if (checked_mul(numel, (uint64_t)t->shape[i], &numel) != 0)
            return nq_fail(err, "%s: tensor '%s': shape product overflows 64 bits", file, name);
    }
    t->numel = numel;
    if (checked_mul(numel, nq_dtype_size(t->dtype), &t->nbytes) != 0)
        return nq_fail(err, "%s: tensor '%s': byte size overflows 64 bits", file, name);
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return nq_fail(err, "%s: tensor '%s': data_offsets must be two integers", file, name);
    json_int_t begin = json_integer_value(json_array_get(jo, 0));
    json_int_t end = json_integer_value(json_array_get(jo, 1));
    if (begin < 0 || end < begin)
        return nq_fail(err, "%s: tensor '%s': data_offsets [%lld, %lld] are not an increasing pair",
                       file, name, (long long)begin, (long long)end);
    if ((uint64_t)end > data_size)
        return nq_fail(err,
                       "%s: tensor '%s': data_offsets end %lld is beyond the data region of %llu "
                       "bytes (truncated file?)",
                       file, name, (long long)end, (unsigned long long)data_size);
    if ((uint64_t)(end - begin) != t->nbytes)
        return nq_fail(err,
                       "%s: tensor '%s': data_offsets span %lld bytes but shape x dtype needs %llu",
                       file, name, (long long)(end - begin), (unsigned long long)t->nbytes);
    t->file_offset = (uint64_t)begin; /* relative for now; made absolute by the caller */
    return 0;
}

static int compare_offset(const void *a, const void *b)
{
    const nq_tensor *x = a, *y = b;
    if (x->file_offset != y->file_offset)
        return x->file_offset < y->file_offset ? -1 : 1;
    /* zero-sized tensors share offsets; order them by name for a stable order */
    return strcmp(x->name, y->name);
}

void nq_tensor_array_free(nq_tensor *tensors, size_t count)
{
    if (!tensors)
        return;
    for (size_t i = 0; i < count; i++)
        free((char *)tensors[i].name);
    free(tensors);
}

static int parse_image(const unsigned char *bytes, uint64_t size, const char *file,
                       nq_tensor **out_tensors, size_t *out_count, json_t **out_metadata,
                       nq_error *err)
{
    *out_tensors = NULL;
    *out_count = 0;
    if (out_metadata)
        *out_metadata = NULL;
    if (size < 8)
        return nq_fail(err, "%s: file is %llu bytes, too short for a safetensors header", file,
                       (unsigned long long)size);
    uint64_t hlen = 0;
    memcpy(&hlen, bytes, 8);
    if (hlen > size - 8)
        return nq_fail(err, "%s: header length %llu is larger than the file (%llu bytes)", file,
                       (unsigned long long)hlen, (unsigned long long)size);
    if (hlen > MAX_HEADER_BYTES)
        return nq_fail(err, "%s: header length %llu exceeds the 100 MB limit", file,
                       (unsigned long long)hlen);
    if (hlen < 2)
        return nq_fail(err, "%s: header of %llu bytes cannot hold a JSON object", file,
                       (unsigned long long)hlen);
    json_error_t jerr;
    /* REJECT_DUPLICATES: a name given twice would make lookups ambiguous.
     * jansson also rejects invalid UTF-8 and NUL bytes in names. The writer
     * pads the header with trailing spaces, which JSON allows. */
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)hlen,
                              JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return nq_fail(err, "%s: header is not valid JSON: %s (at byte %d)", file, jerr.text,
                       jerr.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return nq_fail(err, "%s: header JSON is not an object", file);
    }
    uint64_t data_start = 8 + hlen;
    uint64_t data_size = size - data_start;
    size_t cap = json_object_size(root);
    nq_tensor *ts = calloc(cap ? cap : 1, sizeof *ts);
    if (!ts) {
        json_decref(root);
        return nq_fail(err, "%s: out of memory reading the header", file);
    }
    size_t n = 0;
    const char *key;
    json_t *val;
    int rc = 0;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                rc = nq_fail(err, "%s: __metadata__ is not an object", file);
                break;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv)
            {
                if (!json_is_string(mv)) {
                    rc = nq_fail(err, "%s: __metadata__ value '%s' is not a string", file, mk);
                    break;
                }
            }
            if (rc)
                break;
            if (out_metadata)
                *out_metadata = json_incref(val);
            continue;
        }
        if (key[0] == '\0') {
            rc = nq_fail(err, "%s: a tensor has an empty name", file);
            break;
        }
        nq_tensor *t = &ts[n];
        t->name = strdup(key);
        if (!t->name) {
            rc = nq_fail(err, "%s: out of memory reading the header", file);
            break;
        }
        n++;
        if (parse_entry(file, key, val, data_size, t, err) != 0) {
            rc = -1;
            break;
        }
    }
    json_decref(root);
    if (rc == 0) {
        qsort(ts, n, sizeof *ts, compare_offset);
        uint64_t expect = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            if (ts[i].file_offset < expect)
                rc = nq_fail(err, "%s: tensors '%s' and '%s' overlap in the data region", file,
                             ts[i - 1].name, ts[i].name);
            else if (ts[i].file_offset > expect)
                rc = nq_fail(err, "%s: %llu unindexed bytes in the data region before tensor '%s'",
                             file, (unsigned long long)(ts[i].file_offset - expect), ts[i].name);
            expect = ts[i].file_offset + ts[i].nbytes;
        }
        if (rc == 0 && expect != data_size)
            rc = nq_fail(err, "%s: data region holds %llu bytes but the header indexes %llu", file,
                         (unsigned long long)data_size, (unsigned long long)expect);
    }
    if (rc != 0) {
        nq_tensor_array_free(ts, n);
        if (out_metadata && *out_metadata) {
            json_decref(*out_metadata);
            *out_metadata = NULL;
        }
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        ts[i].file_offset += data_start;
        ts[i].data = bytes + ts[i].file_offset;
    }
    *out_tensors = ts;
    *out_count = n;
    return 0;
}

int nq_safetensors_parse(const unsigned char *bytes, uint64_t size, const char *file_name,
                         nq_tensor **out_tensors, size_t *out_count, nq_error *err)
{
    return parse_image(bytes, size, file_name, out_tensors, out_count, NULL, err);
}

/* ---- opening files ----------------------------------------------------- */

static char *join_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int map_file(shard *s, nq_error *err)
{
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nq_fail(err, "%s: cannot open: %s", s->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return nq_fail(err, "%s: cannot stat: %s", s->path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return nq_fail(err, "%s: not a regular file", s->path);
    }
    s->size = (uint64_t)st.st_size;
    if (s->size == 0) {
        close(fd);
        return nq_fail(err, "%s: file is empty", s->path);
    }
    void *m = mmap(NULL, (size_t)s->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return nq_fail(err, "%s: cannot mmap: %s", s->path, strerror(e));
    /* Weights are read once, front to back, when quantizing. */
    madvise(m, (size_t)s->size, MADV_SEQUENTIAL);
    s->map = m;
    return 0;
}

static int compare_name_idx(const void *a, const void *b, void *ctx)
{
    const nq_tensor *ts = ctx;
    return strcmp(ts[*(const size_t *)a].name, ts[*(const size_t *)b].name);
}

/* qsort_r is a GNU extension; _GNU_SOURCE is set project-wide. */
static int build_name_index(nq_checkpoint *ck, nq_error *err)
{
    ck->by_name = malloc((ck->ntensors ? ck->ntensors : 1) * sizeof *ck->by_name);
    if (!ck->by_name)
        return nq_fail(err, "%s: out of memory", ck->dir);
    for (size_t i = 0; i < ck->ntensors; i++)
        ck->by_name[i] = i;
    qsort_r(ck->by_name, ck->ntensors, sizeof *ck->by_name, compare_name_idx, ck->tensors);
    for (size_t i = 1; i < ck->ntensors; i++) {
        const nq_tensor *a = &ck->tensors[ck->by_name[i - 1]];
        const nq_tensor *b = &ck->tensors[ck->by_name[i]];
        if (strcmp(a->name, b->name) == 0)
            return nq_fail(err, "%s: tensor '%s' appears in both %s and %s", ck->dir, a->name,
                           ck->shards[a->shard].path, ck->shards[b->shard].path);
    }
    return 0;
}

static int append_shard_tensors(nq_checkpoint *ck, int si, nq_error *err)
{
    shard *s = &ck->shards[si];
    nq_tensor *ts;
    size_t n;
    if (parse_image(s->map, s->size, s->path, &ts, &n, &s->metadata, err) != 0)
        return -1;
    nq_tensor *grown = realloc(ck->tensors, (ck->ntensors + n + 1) * sizeof *grown);
    if (!grown) {
        nq_tensor_array_free(ts, n);
        return nq_fail(err, "%s: out of memory", s->path);
    }
    ck->tensors = grown;
    for (size_t i = 0; i < n; i++) {
        ts[i].shard = si;
        ck->tensors[ck->ntensors++] = ts[i];
    }
    free(ts); /* names moved into ck->tensors */
    return 0;
}

static int is_plain_file_name(const char *s)
{
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int compare_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int open_index(nq_checkpoint *ck, const char *index_path, nq_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return nq_fail(err, "%s: not valid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
    int rc = 0;
    json_t *map = json_object_get(root, "weight_map");
    char **names = NULL;
    size_t nnames = 0;
    if (!json_is_object(map) || json_object_size(map) == 0) {
        rc = nq_fail(err, "%s: missing or empty \"weight_map\" object", index_path);
        goto done;
    }
    names = calloc(json_object_size(map), sizeof *names);
    if (!names) {
        rc = nq_fail(err, "%s: out of memory", index_path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val)
    {
        if (!json_is_string(val)) {
            rc = nq_fail(err, "%s: weight_map entry '%s' is not a file name", index_path, key);
            goto done;
        }
        const char *f = json_string_value(val);
        if (!is_plain_file_name(f)) {
            rc = nq_fail(err, "%s: weight_map entry '%s' names '%s', which is not a file in %s",
                         index_path, key, f, ck->dir);
            goto done;
        }
        names[nnames++] = (char *)f;
    }
    qsort(names, nnames, sizeof *names, compare_str);
    size_t nunique = 0;
    for (size_t i = 0; i < nnames; i++)
        if (i == 0 || strcmp(names[i], names[i - 1]) != 0)
            names[nunique++] = names[i];
    ck->shards = calloc(nunique, sizeof *ck->shards);
    if (!ck->shards) {
        rc = nq_fail(err, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < nunique; i++) {
        shard *s = &ck->shards[ck->nshards++];
        s->path = join_path(ck->dir, names[i]);
        if (!s->path) {
            rc = nq_fail(err, "%s: out of memory", index_path);
            goto done;
        }
        struct stat st;
        if (stat(s->path, &st) != 0) {
            rc = nq_fail(err, "%s: names shard '%s', which is missing: %s", index_path, names[i],
                         strerror(errno));
            goto done;
        }
        if (map_file(s, err) != 0 || append_shard_tensors(ck, (int)i, err) != 0) {
            rc = -1;
            goto done;
        }
    }
    if ((rc = build_name_index(ck, err)) != 0)
        goto done;
    /* Both directions: the index must describe the shards exactly. */
    json_object_foreach(map, key, val)
    {
        const nq_tensor *t = nq_checkpoint_find(ck, key);
        const char *f = json_string_value(val);
        if (!t) {
            rc = nq_fail(err, "%s: tensor '%s' is listed in shard '%s' but missing from it",
                         index_path, key, f);
            goto done;
        }
        const char *actual = strrchr(ck->shards[t->shard].path, '/') + 1;
        if (strcmp(actual, f) != 0) {
            rc = nq_fail(err, "%s: tensor '%s' is listed in shard '%s' but stored in '%s'",
                         index_path, key, f, actual);
            goto done;
        }
    }
    for (size_t i = 0; i < ck->ntensors; i++) {
        if (!json_object_get(map, ck->tensors[i].name)) {
            rc = nq_fail(err, "%s: tensor '%s' of shard %s is not listed in the index", index_path,
                         ck->tensors[i].name, ck->shards[ck->tensors[i].shard].path);
            goto done;
        }
    }
done:
    free(names);
    json_decref(root);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int open_single(nq_checkpoint *ck, const char *file_path, nq_error *err)
{
    ck->shards = calloc(1, sizeof *ck->shards);
    if (!ck->shards)
        return nq_fail(err, "%s: out of memory", file_path);
    ck->nshards = 1;
    ck->shards[0].path = strdup(file_path);
    if (!ck->shards[0].path)
        return nq_fail(err, "%s: out of memory", file_path);
    if (map_file(&ck->shards[0], err) != 0 || append_shard_tensors(ck, 0, err) != 0)
        return -1;
    return build_name_index(ck, err);
}

/* A directory without an index must hold exactly one .safetensors file;
 * guessing among several would silently drop weights. */
static char *find_model_safetensors(const char *dir)
{
    char *preferred = join_path(dir, "model.safetensors");
    struct stat st;
    if (preferred && stat(preferred, &st) == 0)
        return preferred;
    free(preferred);
    return NULL;
}

static char *scan_for_safetensors(const char *dir, nq_error *err)
{
    DIR *d = opendir(dir);
    if (!d) {
        nq_fail(err, "%s: cannot open directory: %s", dir, strerror(errno));
        return NULL;
    }
    char *found = NULL;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ends_with(e->d_name, ".safetensors"))
            continue;
        if (count++ == 0)
            found = strdup(e->d_name);
    }
    closedir(d);
    if (count == 0) {
        nq_fail(err, "%s: no model.safetensors.index.json and no .safetensors file", dir);
        return NULL;
    }
    if (count > 1) {
        free(found);
        nq_fail(err, "%s: %d .safetensors files but no model.safetensors.index.json to say which "
                     "tensors each holds", dir, count);
        return NULL;
    }
    char *path = join_path(dir, found);
    free(found);
    return path;
}

nq_checkpoint *nq_checkpoint_open(const char *path, nq_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        nq_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    nq_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck) {
        nq_fail(err, "%s: out of memory", path);
        return NULL;
    }
    int rc;
    if (S_ISDIR(st.st_mode)) {
        ck->dir = strdup(path);
        char *index = join_path(path, "model.safetensors.index.json");
        if (!ck->dir || !index) {
            free(index);
            nq_checkpoint_close(ck);
            nq_fail(err, "%s: out of memory", path);
            return NULL;
        }
        if (stat(index, &st) == 0) {
            rc = open_index(ck, index, err);
        } else {
            char *single = find_model_safetensors(path);
            if (!single)
                single = scan_for_safetensors(path, err);
            rc = single ? open_single(ck, single, err) : -1;
            free(single);
        }
        free(index);
    } else {
        const char *slash = strrchr(path, '/');
        ck->dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
        if (slash && slash == path) {
            free(ck->dir);
            ck->dir = strdup("/");
        }
        if (ends_with(path, ".json"))
            rc = open_index(ck, path, err);
        else
            rc = open_single(ck, path, err);
    }
    if (rc != 0) {
        nq_checkpoint_close(ck);
        return NULL;
    }
    return ck;
}

void nq_checkpoint_close(nq_checkpoint *ck)
{
    if (!ck)
        return;
    for (int i = 0; i < ck->nshards; i++) {
        if (ck->shards[i].map)
            munmap(ck->shards[i].map, (size_t)ck->shards[i].size);
        if (ck->shards[i].metadata)
            json_decref(ck->shards[i].metadata);
        free(ck->shards[i].path);
    }
    free(ck->shards);
    nq_tensor_array_free(ck->tensors, ck->ntensors);
    free(ck->by_name);
    free(ck->dir);
    free(ck);
}

size_t nq_checkpoint_count(const nq_checkpoint *ck) { return ck->ntensors; }

const nq_tensor *nq_checkpoint_tensor(const nq_checkpoint *ck, size_t i)
{
    return i < ck->ntensors ? &ck->tensors[i] : NULL;
}

const nq_tensor *nq_checkpoint_find(const nq_checkpoint *ck, const char *name)
{
    size_t lo = 0, hi = ck->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->tensors[ck->by_name[mid]].name, name);
        if (c == 0)
            return &ck->tensors[ck->by_name[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *nq_checkpoint_dir(const nq_checkpoint *ck) { return ck->dir; }
int nq_checkpoint_shard_count(const nq_checkpoint *ck) { return ck->nshards; }

const char *nq_checkpoint_shard_path(const nq_checkpoint *ck, int i)
{
    return i >= 0 && i < ck->nshards ? ck->shards[i].path : NULL;
}

uint64_t nq_checkpoint_shard_size(const nq_checkpoint *ck, int i)
{
    return i >= 0 && i < ck->nshards ? ck->shards[i].size : 0;
}

const char *nq_checkpoint_metadata(const nq_checkpoint *ck, const char *key)
{
    if (ck->nshards == 0 || !ck->shards[0].metadata)
        return NULL;
    return json_string_value(json_object_get(ck->shards[0].metadata, key));
}

void nq_tensor_release(const nq_tensor *t)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || t->nbytes == 0)
        return;
    uintptr_t begin = ((uintptr_t)t->data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t end = ((uintptr_t)t->data + t->nbytes) & ~((uintptr_t)page - 1);
    /* Only whole pages inside the tensor: neighbours may still be in use. */
    if (end > begin)
        madvise((void *)begin, end - begin, MADV_DONTNEED);
}

/* ---- conversion --------------------------------------------------------- */

int nq_checkpoint_set_source(nq_checkpoint *ck, const char *name, const nq_tensor_source *src,
                             nq_error *err)
{
    const nq_tensor *t = nq_checkpoint_find(ck, name);
    if (!t)
        return nq_fail(err, "%s: no tensor '%s'", ck->dir, name);
    ck->tensors[t - ck->tensors].source = src;
    return 0;
}

const unsigned char *nq_tensor_bytes(const nq_tensor *t, void **owned, nq_error *err)
{
    *owned = NULL;
    if (!t->source)
        return t->data;
    unsigned char *buf = malloc(t->nbytes ? t->nbytes : 1);
    if (!buf) {
        nq_fail(err, "tensor '%s': out of memory for %llu bytes", t->name,
                (unsigned long long)t->nbytes);
        return NULL;
    }
    if (t->source->produce(t->source->ctx, t, buf, err) != 0) {
        free(buf);
        return NULL;
    }
    *owned = buf;
    return buf;
}

int nq_tensor_read_f32(const nq_tensor *t, uint64_t first, uint64_t count, float *out,
                       nq_error *err)
{
    if (first > t->numel || count > t->numel - first)
        return nq_fail(err, "tensor '%s': read of elements [%llu, +%llu) outside its %llu", t->name,
                       (unsigned long long)first, (unsigned long long)count,
                       (unsigned long long)t->numel);
    if (t->source) {
        void *owned;
        if (!nq_tensor_bytes(t, &owned, err))
            return -1;
        nq_tensor view = *t;
        view.data = owned;
        view.source = NULL;
        int rc = nq_tensor_read_f32(&view, first, count, out, err);
        free(owned);
        return rc;
    }
    const unsigned char *p = t->data + first * nq_dtype_size(t->dtype);
    switch (t->dtype) {
    case NQ_F32:
        memcpy(out, p, count * sizeof(float));
        return 0;
    case NQ_BF16:
        for (uint64_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = nq_bf16_to_f32(h);
        }
        return 0;
    case NQ_F16:
        for (uint64_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = nq_f16_to_f32(h);
        }
        return 0;
    case NQ_F64:
        for (uint64_t i = 0; i < count; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
        }
        return 0;
    case NQ_F8_E4M3:
        for (uint64_t i = 0; i < count; i++)
            out[i] = nq_e4m3_to_f32(p[i]);
        return 0;
    case NQ_F8_E5M2:
        for (uint64_t i = 0; i < count; i++)
            out[i] = nq_e5m2_to_f32(p[i]);
        return 0;
    default:
        return nq_fail(err, "tensor '%s': dtype %s is not a float type", t->name,
                       nq_dtype_name(t->dtype));
    }
}

/* The first element of [first, first+count) whose magnitude bits reach
 * `limit` (an all-ones exponent), or count when none does.  Blocks keep the
 * common all-finite case a branch-free integer max the compiler vectorizes. */
#define FIRST_NONFINITE(NAME, T, BYTES, MASK, LIMIT)                                                    \
    static uint64_t first_nonfinite_##NAME(const unsigned char *p, uint64_t count)            \
    {                                                                                          \
        for (uint64_t b = 0; b < count; b += 4096) {                                           \
            uint64_t n = count - b < 4096 ? count - b : 4096;                                  \
            T m = 0;                                                                           \
            for (uint64_t i = 0; i < n; i++) {                                                 \
                T v;                                                                           \
                memcpy(&v, p + (b + i) * BYTES, BYTES);                                        \
                v &= (T)(MASK);                                                                \
                m = v > m ? v : m;                                                             \
            }                                                                                  \
            if (m < (T)(LIMIT))                                                                \
                continue;                                                                      \
            for (uint64_t i = 0; i < n; i++) {                                                 \
                T v;                                                                           \
                memcpy(&v, p + (b + i) * BYTES, BYTES);                                        \
                if ((T)(v & (T)(MASK)) >= (T)(LIMIT))                                          \
                    return b + i;                                                              \
            }                                                                                  \
        }                                                                                      \
        return count;                                                                          \
    }
FIRST_NONFINITE(bf16, uint16_t, 2, 0x7fffu, 0x7f80u)
FIRST_NONFINITE(f16, uint16_t, 2, 0x7fffu, 0x7c00u)
FIRST_NONFINITE(f32, uint32_t, 4, 0x7fffffffu, 0x7f800000u)
FIRST_NONFINITE(f64, uint64_t, 8, 0x7fffffffffffffffull, 0x7ff0000000000000ull)
#undef FIRST_NONFINITE

static uint64_t first_nonfinite_bytes(const unsigned char *p, uint64_t count, unsigned limit)
{
    for (uint64_t i = 0; i < count; i++)
        if ((p[i] & 0x7fu) >= limit)
            return i;
    return count;
}

static int nonfinite_error(const nq_tensor *t, uint64_t e, bool nan, nq_error *err);

int nq_tensor_check_finite(const nq_tensor *t, uint64_t first, uint64_t count, nq_error *err)
{
    if (first > t->numel || count > t->numel - first)
        return nq_fail(err, "tensor '%s': internal: range outside the tensor", t->name);
    size_t es = nq_dtype_size(t->dtype);
    const unsigned char *p = t->data + first * es;
    uint64_t k;
    switch (t->dtype) {
    case NQ_BF16:
        k = first_nonfinite_bf16(p, count);
        break;
    case NQ_F16:
        k = first_nonfinite_f16(p, count);
        break;
    case NQ_F32:
        k = first_nonfinite_f32(p, count);
        break;
    case NQ_F64:
        k = first_nonfinite_f64(p, count);
        break;
    case NQ_F8_E4M3: /* no Inf; S.1111.111 is NaN */
        k = first_nonfinite_bytes(p, count, 0x7fu);
        break;
    case NQ_F8_E5M2:
        k = first_nonfinite_bytes(p, count, 0x7cu);
        break;
    default:
        return 0;
    }
    if (k == count)
        return 0;
    float v;
    nq_error ignored = {0};
    nq_tensor view = *t; /* the bytes just tested, not a source's */
    view.source = NULL;
    nq_tensor_read_f32(&view, first + k, 1, &v, &ignored);
    return nonfinite_error(t, first + k, isnan(v), err);
}

static int nonfinite_error(const nq_tensor *t, uint64_t e, bool nan, nq_error *err)
{
    char where[64] = "";
    if (t->ndim == 2)
        snprintf(where, sizeof where, " (row %llu, column %llu)",
                 (unsigned long long)(e / (uint64_t)t->shape[1]),
                 (unsigned long long)(e % (uint64_t)t->shape[1]));
    return nq_fail(err, "tensor '%s': element %llu is %s%s", t->name, (unsigned long long)e,
                   nan ? "NaN" : "infinite", where);
}

float *nq_tensor_load_f32(const nq_tensor *t, bool reject_nonfinite, nq_error *err)
{
    float *buf = malloc((t->numel ? t->numel : 1) * sizeof *buf);
    if (!buf) {
        nq_fail(err, "tensor '%s': out of memory for %llu floats", t->name,
                (unsigned long long)t->numel);
        return NULL;
    }
    if (nq_tensor_read_f32(t, 0, t->numel, buf, err) != 0) {
        free(buf);
        return NULL;
    }
    /* after conversion: covers LoRA-merged values and F64 beyond f32 */
    for (uint64_t i = 0; reject_nonfinite && i < t->numel; i++)
        if (!isfinite(buf[i])) {
            nonfinite_error(t, i, isnan(buf[i]), err);
            free(buf);
            return NULL;
        }
    return buf;
}
