/* `nemoq inspect FILE.gguf --json`: a parsed GGUF file as one JSON document. */
#include "io/gguf_inspect.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Little-endian unsigned value of `size` bytes. */
static uint64_t rd_le(const unsigned char *p, size_t size)
{
    uint64_t u = 0;
    for (size_t b = size; b-- > 0;)
        u = (u << 8) | p[b];
    return u;
}

static bool valid_utf8(const char *s, size_t n)
{
    json_t *t = json_stringn(s, n); /* Jansson checks UTF-8 strictly */
    json_decref(t);
    return t != NULL;
}

/* A JSON string from GGUF bytes; bytes that are not UTF-8 (GGUF does not
 * promise it) become U+FFFD, so the document stays valid JSON. */
static json_t *string_value(const char *s, uint64_t len)
{
    json_t *j = json_stringn(s, (size_t)len);
    if (j)
        return j;
    char *buf = malloc((size_t)len * 3 + 1);
    if (!buf)
        return NULL;
    size_t n = 0;
    for (uint64_t i = 0; i < len;) {
        /* the longest valid sequence of up to 4 bytes at i, else one bad byte */
        size_t k = 4;
        while (k > 0 && (i + k > len || !valid_utf8(s + i, k)))
            k--;
        if (k > 0) {
            memcpy(buf + n, s + i, k);
            n += k;
            i += k;
        } else {
            memcpy(buf + n, "\xef\xbf\xbd", 3);
            n += 3;
            i++;
        }
    }
    j = json_stringn(buf, n);
    free(buf);
    return j;
}

static json_t *scalar_value(uint32_t t, const unsigned char *e)
{
    uint64_t u = rd_le(e, nq_gguf_vtype_size(t));
    switch (t) {
    case NQ_GGUF_BOOL: return json_boolean(u != 0);
    case NQ_GGUF_I8: return json_integer((int8_t)u);
    case NQ_GGUF_I16: return json_integer((int16_t)u);
    case NQ_GGUF_I32: return json_integer((int32_t)u);
    case NQ_GGUF_I64: return json_integer((json_int_t)(int64_t)u);
    case NQ_GGUF_F32: {
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, 4);
        return isfinite(f) ? json_real((double)f) : json_null();
    }
    case NQ_GGUF_F64: {
        double d;
        memcpy(&d, &u, 8);
        return isfinite(d) ? json_real(d) : json_null();
    }
    case NQ_GGUF_U64:
        /* JSON integers are signed 64-bit here */
        return u <= (uint64_t)INT64_MAX ? json_integer((json_int_t)u) : json_real((double)u);
    default: return json_integer((json_int_t)u); /* u8, u16, u32 */
    }
}

static json_t *kv_value(const nq_gguf_kv *kv)
{
    if (kv->type == NQ_GGUF_STRING)
        return string_value((const char *)kv->data + 8, rd_le(kv->data, 8));
    if (kv->type != NQ_GGUF_ARRAY)
        return scalar_value(kv->type, kv->data);
    json_t *arr = json_array();
    size_t es = nq_gguf_vtype_size(kv->arr_type);
    const unsigned char *p = kv->data;
    for (uint64_t i = 0; arr && i < kv->n; i++) {
        if (kv->arr_type == NQ_GGUF_STRING) {
            /* walk the validated strings in order (nq_gguf_kv_str_at is O(i)) */
            uint64_t len = rd_le(p, 8);
            json_array_append_new(arr, string_value((const char *)p + 8, len));
            p += 8 + len;
        } else {
            json_array_append_new(arr, scalar_value(kv->arr_type, p + i * es));
        }
    }
    return arr;
}

static double bits_per_weight(uint64_t bytes, uint64_t elements)
{
    return elements ? 8.0 * (double)bytes / (double)elements : 0.0;
}

json_t *nq_gguf_inspect_json(const nq_gguf_file *f, const char *path)
{
    json_t *doc = json_object();
    json_object_set_new(doc, "path", json_string(path));
    json_object_set_new(doc, "format", json_string("gguf"));
    json_object_set_new(doc, "version", json_integer(f->version));
    const char *arch = NULL;
    uint64_t al = 0;
    json_object_set_new(doc, "architecture",
                        nq_gguf_get_str(f, "general.architecture", &arch, &al) == 0
                            ? string_value(arch, al)
                            : json_null());
    json_object_set_new(doc, "alignment", json_integer((json_int_t)f->alignment));
    json_object_set_new(doc, "data_offset", json_integer((json_int_t)f->data_offset));
    json_object_set_new(doc, "file_bytes", json_integer((json_int_t)f->size));
    json_object_set_new(doc, "metadata_keys", json_integer((json_int_t)f->nkv));
    json_object_set_new(doc, "tensors", json_integer((json_int_t)f->ntensors));

    /* metadata in file order: {key: {"type", ["element_type"], "value"}} */
    json_t *meta = json_object();
    for (size_t i = 0; i < f->nkv; i++) {
        const nq_gguf_kv *kv = &f->kv[i];
        json_t *e = json_object();
        json_object_set_new(e, "type", json_string(nq_gguf_vtype_name(kv->type)));
        if (kv->type == NQ_GGUF_ARRAY) {
            json_object_set_new(e, "element_type", json_string(nq_gguf_vtype_name(kv->arr_type)));
            json_object_set_new(e, "count", json_integer((json_int_t)kv->n));
        }
        json_object_set_new(e, "value", kv_value(kv));
        json_t *key = string_value(kv->key, strlen(kv->key));
        json_object_set_new(meta, key ? json_string_value(key) : "?", e);
        json_decref(key);
    }
    json_object_set_new(doc, "metadata", meta);

    uint64_t by_count[NQ_GGML_TYPE_COUNT] = {0}, by_el[NQ_GGML_TYPE_COUNT] = {0},
             by_bytes[NQ_GGML_TYPE_COUNT] = {0}, el = 0, bytes = 0;
    json_t *list = json_array();
    for (size_t i = 0; i < f->ntensors; i++) {
        const nq_gguf_tensor *t = &f->tensors[i];
        const char *tn = "?";
        nq_ggml_type_info(t->type, NULL, NULL, &tn);
        json_t *shape = json_array();
        for (uint32_t d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->ne[d]));
        json_array_append_new(
            list, json_pack("{s:s, s:s, s:o, s:I, s:I, s:I, s:f}", "name", t->name, "type", tn,
                            "shape", shape, "elements", (json_int_t)t->nelements, "bytes",
                            (json_int_t)t->nbytes, "offset", (json_int_t)t->offset,
                            "bits_per_weight", bits_per_weight(t->nbytes, t->nelements)));
        by_count[t->type]++;
        by_el[t->type] += t->nelements;
        by_bytes[t->type] += t->nbytes;
        el += t->nelements;
        bytes += t->nbytes;
    }
    json_object_set_new(doc, "elements", json_integer((json_int_t)el));
    json_object_set_new(doc, "tensor_bytes", json_integer((json_int_t)bytes));
    json_t *types = json_object();
    for (int ty = 0; ty < NQ_GGML_TYPE_COUNT; ty++) {
        if (!by_count[ty])
            continue;
        const char *tn = "?";
        nq_ggml_type_info((uint32_t)ty, NULL, NULL, &tn);
        json_object_set_new(types, tn,
                            json_pack("{s:I, s:I, s:I, s:f}", "tensors", (json_int_t)by_count[ty],
                                      "elements", (json_int_t)by_el[ty], "bytes",
                                      (json_int_t)by_bytes[ty], "bits_per_weight",
                                      bits_per_weight(by_bytes[ty], by_el[ty])));
    }
    json_object_set_new(doc, "types", types);
    json_object_set_new(doc, "tensor_list", list);
    return doc;
}
