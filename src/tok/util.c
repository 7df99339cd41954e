/* Tokenizer: growable buffers, UTF-8, hash maps (see tok_internal.h). */
#include "tok/tok_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nq_tok_bb_reserve(bytebuf *b, size_t extra)
{
    if (b->n + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int nq_tok_bb_put(bytebuf *b, const void *s, size_t n)
{
    if (nq_tok_bb_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

int nq_tok_ib_push(idbuf *b, int32_t v)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *p = realloc(b->p, cap * sizeof *p);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    b->p[b->n++] = v;
    return 0;
}

int nq_tok_ib_put(idbuf *b, const int32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (nq_tok_ib_push(b, v[i]))
            return -1;
    return 0;
}

int nq_tok_sb_push(spanbuf *b, size_t off, size_t len)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        span *p = realloc(b->p, cap * sizeof *p);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    b->p[b->n].off = off;
    b->p[b->n].len = len;
    b->n++;
    return 0;
}

static uint32_t hash_bytes(const void *data, size_t n)
{
    const unsigned char *s = data;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 16777619u;
    }
    return h;
}

/* Length of the character at s (1..4), with its code point in *cp; a byte that does not start
 * a well-formed sequence (RFC 3629: no overlongs, surrogates or values past U+10FFFF) counts
 * as a 1-byte character with *cp = NQ_INVALID_CP.  PCRE2 (PCRE2_MATCH_INVALID_UTF) uses the
 * same definition, so our offsets always fall on its character boundaries. */
size_t nq_tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        v = c & 0x1F;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        v = c & 0x0F;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        v = c & 0x07;
        min = 0x10000;
    } else {
        *cp = NQ_INVALID_CP;
        return 1;
    }
    if (len > n) {
        *cp = NQ_INVALID_CP;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = NQ_INVALID_CP;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = NQ_INVALID_CP;
        return 1;
    }
    *cp = v;
    return len;
}

size_t nq_tok_utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode White_Space, which is what both Oniguruma's \s and Rust regex's \s mean (PCRE2's
 * UCP \s also takes U+180E, hence the explicit list). */
bool nq_tok_is_unicode_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int sm_grow(strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    sm_slot *s = calloc(cap, sizeof *s);
    if (!s)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        sm_slot *o = &m->slots[i];
        if (!o->key)
            continue;
        size_t j = o->hash & (cap - 1);
        while (s[j].key)
            j = (j + 1) & (cap - 1);
        s[j] = *o;
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
    return 0;
}

static sm_slot *sm_find(const strmap *m, const char *key, size_t len, uint32_t h)
{
    if (!m->cap)
        return NULL;
    size_t j = h & (m->cap - 1);
    for (;;) {
        sm_slot *s = &m->slots[j];
        if (!s->key)
            return NULL;
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)
            return s;
        j = (j + 1) & (m->cap - 1);
    }
}

int32_t nq_tok_sm_get(const strmap *m, const char *key, size_t len)
{
    sm_slot *s = sm_find(m, key, len, hash_bytes(key, len));
    return s ? s->val : -1;
}

/* Inserts or overwrites. */
int nq_tok_sm_set(strmap *m, const char *key, size_t len, int32_t val)
{
    uint32_t h = hash_bytes(key, len);
    sm_slot *s = sm_find(m, key, len, h);
    if (s) {
        s->val = val;
        return 0;
    }
    if ((m->n + 1) * 4 > m->cap * 3 && sm_grow(m))
        return -1;
    size_t j = h & (m->cap - 1);
    while (m->slots[j].key)
        j = (j + 1) & (m->cap - 1);
    m->slots[j].key = key ? key : "";
    m->slots[j].len = (uint32_t)len;
    m->slots[j].hash = h;
    m->slots[j].val = val;
    m->n++;
    return 0;
}

void nq_tok_sm_free(strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static uint32_t hash_u64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return (uint32_t)k;
}

static int pm_grow(pairmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    pm_slot *s = malloc(cap * sizeof *s);
    if (!s)
        return -1;
    for (size_t i = 0; i < cap; i++)
        s[i].key = UINT64_MAX;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key == UINT64_MAX)
            continue;
        size_t j = hash_u64(m->slots[i].key) & (cap - 1);
        while (s[j].key != UINT64_MAX)
            j = (j + 1) & (cap - 1);
        s[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
    return 0;
}

const pm_slot *nq_tok_pm_get(const pairmap *m, int32_t a, int32_t b)
{
    if (!m->cap)
        return NULL;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t j = hash_u64(k) & (m->cap - 1);
    for (;;) {
        const pm_slot *s = &m->slots[j];
        if (s->key == UINT64_MAX)
            return NULL;
        if (s->key == k)
            return s;
        j = (j + 1) & (m->cap - 1);
    }
}

/* A later duplicate overwrites the earlier one, as HF's HashMap collect does. */
int nq_tok_pm_set(pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    if ((m->n + 1) * 4 > m->cap * 3 && pm_grow(m))
        return -1;
    size_t j = hash_u64(k) & (m->cap - 1);
    while (m->slots[j].key != UINT64_MAX && m->slots[j].key != k)
        j = (j + 1) & (m->cap - 1);
    if (m->slots[j].key == UINT64_MAX)
        m->n++;
    m->slots[j].key = k;
    m->slots[j].rank = rank;
    m->slots[j].merged = merged;
    return 0;
}
