/* Hugging Face tokenizer.json byte-level BPE.  See tokenizer.h for what is supported.
 *
 * Every behaviour below mirrors huggingface/tokenizers (Rust, 0.23); the file it comes from is
 * named where a detail is not obvious:
 *   tokenizers/src/tokenizer/added_vocabulary.rs  added-token matching (find_matches)
 *   tokenizers/src/tokenizer/normalizer.rs        NormalizedString::split (split behaviours)
 *   tokenizers/src/tokenizer/pattern.rs           regex find_matches (empty-match rule from
 *                                                 the onig crate's FindMatches)
 *   tokenizers/src/pre_tokenizers/byte_level.rs   byte<->char table, GPT-2 regex, prefix space,
 *                                                 ByteLevel decoder
 *   tokenizers/src/models/bpe/model.rs, word.rs   word building, merge loop (priority queue)
 *   tokenizers/src/processors/template.rs         TemplateProcessing
 * The regexes in tokenizer.json are Oniguruma regexes; they run here on PCRE2 after the few
 * spellings whose meaning differs are rewritten (see translate_regex). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Ids above this are refused: real vocabularies have up to ~2^18 entries, and a corrupt file
 * must not make us allocate gigabytes for the id table. */
#define NQ_TOK_MAX_ID (1 << 22)
/* Nesting limit for Sequence pre-tokenizers / post-processors (real files nest once). */
#define NQ_TOK_MAX_DEPTH 16
/* Backtracking budget per regex search; real split patterns use a tiny fraction of it, a
 * pathological pattern in a hostile file fails the encode instead of hanging. */
#define NQ_TOK_MATCH_LIMIT 5000000u

/* ------------------------------------------------------------------------------------------ */
/* Small growable buffers                                                                      */

typedef struct {
    char *p;
    size_t n, cap;
} bytebuf;

static int bb_reserve(bytebuf *b, size_t extra)
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

static int bb_put(bytebuf *b, const void *s, size_t n)
{
    if (bb_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

typedef struct {
    int32_t *p;
    size_t n, cap;
} idbuf;

static int ib_push(idbuf *b, int32_t v)
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

static int ib_put(idbuf *b, const int32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ib_push(b, v[i]))
            return -1;
    return 0;
}

/* A piece of text: byte range [off, off+len) of some bytebuf. */
typedef struct {
    size_t off, len;
} span;

typedef struct {
    span *p;
    size_t n, cap;
} spanbuf;

static int sb_push(spanbuf *b, size_t off, size_t len)
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

/* ------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                        */

#define NQ_INVALID_CP 0xFFFFFFFFu

/* Length of the character at s (1..4), with its code point in *cp; a byte that does not start
 * a well-formed sequence (RFC 3629: no overlongs, surrogates or values past U+10FFFF) counts
 * as a 1-byte character with *cp = NQ_INVALID_CP.  PCRE2 (PCRE2_MATCH_INVALID_UTF) uses the
 * same definition, so our offsets always fall on its character boundaries. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
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

static size_t utf8_put(char *out, uint32_t cp)
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
static bool is_unicode_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* ------------------------------------------------------------------------------------------ */
/* Hash maps                                                                                    */

/* string -> int32.  Keys are borrowed: they must outlive the map. */
typedef struct {
    const char *key;
    uint32_t len, hash;
    int32_t val;
} sm_slot;

typedef struct {
    sm_slot *slots;
    size_t cap, n; /* cap is a power of two */
} strmap;

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

static int32_t sm_get(const strmap *m, const char *key, size_t len)
{
    sm_slot *s = sm_find(m, key, len, hash_bytes(key, len));
    return s ? s->val : -1;
}

/* Inserts or overwrites. */
static int sm_set(strmap *m, const char *key, size_t len, int32_t val)
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

static void sm_free(strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* (left id, right id) -> (rank, merged id). */
typedef struct {
    uint64_t key; /* UINT64_MAX: empty */
    uint32_t rank;
    int32_t merged;
} pm_slot;

typedef struct {
    pm_slot *slots;
    size_t cap, n;
} pairmap;

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

static const pm_slot *pm_get(const pairmap *m, int32_t a, int32_t b)
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
static int pm_set(pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged)
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

/* ------------------------------------------------------------------------------------------ */
/* Byte-level alphabet (byte_level.rs bytes_char): printable bytes stand for themselves, the
 * other 68 bytes map to U+0100.. in byte order, so every byte has a visible character. */

static uint32_t byte_to_cp[256];
static int16_t cp_to_byte[0x144]; /* -1: not a byte-level character */

static pthread_once_t byte_tables_once = PTHREAD_ONCE_INIT;

static void init_byte_tables(void)
{
    uint32_t n = 0;
    for (int i = 0; i < 0x144; i++)
        cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = self ? (uint32_t)b : 256 + n++;
    }
    for (int b = 0; b < 256; b++)
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
}

/* ------------------------------------------------------------------------------------------ */
/* Regexes                                                                                      */

/* Oniguruma (Ruby syntax, as the onig crate compiles HF's Split patterns) and PCRE2 with
 * UTF+UCP agree on everything these files use except: \s (PCRE2 adds U+180E), \w (Oniguruma:
 * Alphabetic, marks, numbers, connector punctuation, but only decimal and letter numbers
 * inside a bracket class; PCRE2: letters, numbers, '_'), \h
 * (Oniguruma: hex digit; PCRE2: horizontal space), and ^ $ (Oniguruma: always line anchors;
 * PCRE2_MULTILINE gives that).  The escapes are rewritten to explicit classes; \S and \W
 * inside a bracket class are left to PCRE2 (no known file uses them). */
#define ONIG_SPACE "\\t\\n\\x0b\\f\\r\\x20\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
#define ONIG_WORD "\\p{L}\\p{M}\\p{N}\\p{Pc}\\x{24b6}-\\x{24e9}\\x{1f130}-\\x{1f149}\\x{1f150}-\\x{1f169}\\x{1f170}-\\x{1f189}"
/* Inside a bracket class Oniguruma's \w leaves out the "other numbers" (No: ², ½). */
#define ONIG_WORD_IN_CLASS "\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{24b6}-\\x{24e9}\\x{1f130}-\\x{1f149}\\x{1f150}-\\x{1f169}\\x{1f170}-\\x{1f189}"
#define ONIG_HEX "0-9a-fA-F"

static int translate_regex(const char *pat, size_t n, bytebuf *out)
{
    bool in_class = false;
    size_t class_start = 0; /* index just after '[' or "[^" */
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char e = pat[i + 1];
            const char *body = NULL;
            bool neg = false;
            switch (e) {
            case 's': body = ONIG_SPACE; break;
            case 'S': body = ONIG_SPACE; neg = true; break;
            case 'w': body = in_class ? ONIG_WORD_IN_CLASS : ONIG_WORD; break;
            case 'W': body = ONIG_WORD; neg = true; break;
            case 'h': body = ONIG_HEX; break;
            case 'H': body = ONIG_HEX; neg = true; break;
            default: break;
            }
            if (body && in_class && neg) {
                body = NULL; /* leave \S \W \H inside classes as they are */
            }
            if (body) {
                if (!in_class && bb_put(out, neg ? "[^" : "[", neg ? 2 : 1))
                    return -1;
                if (bb_put(out, body, strlen(body)))
                    return -1;
                if (!in_class && bb_put(out, "]", 1))
                    return -1;
            } else if (e == 'Q') {
                /* \Q...\E quotes literally; copy through untouched. */
                size_t end = i + 2;
                while (end + 1 < n && !(pat[end] == '\\' && pat[end + 1] == 'E'))
                    end++;
                size_t stop = (end + 1 < n) ? end + 2 : n;
                if (bb_put(out, pat + i, stop - i))
                    return -1;
                i = stop - 1;
                continue;
            } else if (bb_put(out, pat + i, 2)) {
                return -1;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            if (bb_put(out, "[", 1))
                return -1;
            if (i + 1 < n && pat[i + 1] == '^') {
                if (bb_put(out, "^", 1))
                    return -1;
                i++;
            }
            class_start = i + 1;
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && pat[i + 1] == ':') {
            /* POSIX [:name:] inside a class */
            const char *end = NULL;
            for (size_t j = i + 2; j + 1 < n; j++)
                if (pat[j] == ':' && pat[j + 1] == ']') {
                    end = pat + j + 2;
                    break;
                }
            if (end) {
                if (bb_put(out, pat + i, (size_t)(end - (pat + i))))
                    return -1;
                i = (size_t)(end - pat) - 1;
                continue;
            }
        }
        if (in_class && c == ']' && i != class_start)
            in_class = false;
        if (bb_put(out, &c, 1))
            return -1;
    }
    return 0;
}

typedef struct {
    pcre2_code *code;
    bool jit;
} nq_regex;

static int regex_compile(nq_regex *re, const char *pat, size_t n, bool literal, bool onig,
                         const char *what, nq_error *err)
{
    bytebuf t = {0};
    const char *src = pat;
    size_t srclen = n;
    if (!literal && onig) {
        if (translate_regex(pat, n, &t)) {
            free(t.p);
            return nq_fail(err, "%s: out of memory", what);
        }
        src = t.p ? t.p : "";
        srclen = t.n;
    }
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    if (literal)
        opts |= PCRE2_LITERAL; /* PCRE2 refuses UCP/MULTILINE with LITERAL; they are moot */
    else
        opts |= PCRE2_UCP | PCRE2_MULTILINE;
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (cc)
        pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    int ec = 0;
    PCRE2_SIZE eo = 0;
    re->code = pcre2_compile((PCRE2_SPTR)src, srclen, opts, &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    free(t.p);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return nq_fail(err, "%s: regex does not compile at offset %zu: %s", what, (size_t)eo,
                       (const char *)msg);
    }
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

static void regex_free(nq_regex *re)
{
    if (re->code)
        pcre2_code_free(re->code);
    re->code = NULL;
}

/* Per-encode matching state: match data sized for the largest pattern and a match context
 * carrying the backtracking limit. */
typedef struct {
    pcre2_match_data *md;
    pcre2_match_context *mc;
} match_state;

/* Searches re in s[0..n) from `from`.  Returns 1 with [*ms,*me) on a match, 0 on none, -1 on
 * error (limit exceeded, out of memory). */
static int regex_search(const nq_regex *re, match_state *st, const char *s, size_t n, size_t from,
                        size_t *ms, size_t *me, nq_error *err)
{
    int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, from, 0, st->md, st->mc);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_JIT, st->md, st->mc);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return nq_fail(err, "tokenizer: pre-tokenizer regex failed on the input: %s",
                       (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
    *ms = ov[0];
    *me = ov[1];
    if (*me < *ms) /* \K can report end before start; treat the match as empty at end */
        *ms = *me;
    return 1;
}

/* One (offsets, is_match) element of pattern.rs find_matches. */
typedef struct {
    size_t a, b;
    bool match;
} mspan;

typedef struct {
    mspan *p;
    size_t n, cap;
} mspanbuf;

static int msb_push(mspanbuf *b, size_t a, size_t e, bool m)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        mspan *p = realloc(b->p, cap * sizeof *p);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    b->p[b->n].a = a;
    b->p[b->n].b = e;
    b->p[b->n].match = m;
    b->n++;
    return 0;
}

/* pattern.rs: the matches of re over s with the gaps between them, covering all of s.
 * Iteration follows the onig crate's FindMatches: an empty match right where the previous
 * match ended is skipped by stepping one character. */
static int regex_find_matches(const nq_regex *re, match_state *st, const char *s, size_t n,
                              mspanbuf *out, nq_error *err)
{
    out->n = 0;
    if (n == 0)
        return msb_push(out, 0, 0, false);
    size_t prev = 0, last_end = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    while (last_end <= n) {
        size_t a, b;
        int rc = regex_search(re, st, s, n, last_end, &a, &b, err);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
        if (a == b && have_last && last_match_end == b) {
            if (last_end >= n)
                break;
            uint32_t cp;
            last_end += utf8_next((const unsigned char *)s + last_end, n - last_end, &cp);
            continue;
        }
        last_end = b;
        last_match_end = b;
        have_last = true;
        if (prev != a && msb_push(out, prev, a, false))
            return -1;
        if (msb_push(out, a, b, true))
            return -1;
        prev = b;
    }
    if (prev != n && msb_push(out, prev, n, false))
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Tokenizer object                                                                             */

enum split_behavior { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };

enum step_kind { STEP_SPLIT, STEP_BYTELEVEL };

typedef struct {
    enum step_kind kind;
    /* Split */
    nq_regex re;
    enum split_behavior behavior;
    bool invert;
    /* ByteLevel */
    bool add_prefix_space, use_regex;
} pretok_step;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    bool single_word, lstrip, rstrip, normalized, special;
} added_token;

/* Byte trie over added-token contents, for leftmost-longest matching. */
typedef struct {
    int32_t *token; /* per node: index into added[] ending here, or -1 */
    size_t nodes, cap;
    pairmap edges; /* (node, byte) -> child node (stored in `merged`) */
    bool first_byte[256];
    size_t count;
} trie;

enum decoder_kind { DEC_JOIN, DEC_BYTELEVEL, DEC_UNSUPPORTED };

struct nq_tokenizer {
    /* id -> spelling (model vocab or added token); NULL where unused */
    char **id_str;
    uint32_t *id_len;
    bool *id_special;
    size_t n_ids;

    strmap vocab; /* model vocabulary */
    char *vocab_keys; /* storage of the vocab map's keys */
    strmap added_map; /* added-token content -> id */
    pairmap merges;

    int32_t unk_id; /* -1: no unk token */
    char *unk_token;
    bool fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix (NULL: none) */
    size_t prefix_len, suffix_len;
    int32_t byte_ids[256]; /* "<0xXX>" tokens for byte_fallback, -1 if missing */

    added_token *added;
    size_t n_added;
    trie trie_raw, trie_norm; /* non-normalized / normalized added tokens */
    nq_regex word_re; /* Rust regex \w for single_word checks */

    pretok_step *steps;
    size_t n_steps;
    nq_regex gpt2_re;

    int32_t *pre_ids, *post_ids; /* post_processor tokens before / after the text */
    size_t n_pre, n_post;

    enum decoder_kind decoder;
    char decoder_name[64];

    int32_t bos_id, eos_id;
};

static int trie_init(trie *t)
{
    memset(t, 0, sizeof *t);
    t->cap = 16;
    t->token = malloc(t->cap * sizeof *t->token);
    if (!t->token)
        return -1;
    t->token[0] = -1;
    t->nodes = 1;
    return 0;
}

static void trie_free(trie *t)
{
    free(t->token);
    free(t->edges.slots);
    memset(t, 0, sizeof *t);
}

static int trie_add(trie *t, const char *s, size_t n, int32_t idx)
{
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const pm_slot *e = pm_get(&t->edges, node, c);
        if (e) {
            node = e->merged;
            continue;
        }
        if (t->nodes == t->cap) {
            size_t cap = t->cap * 2;
            int32_t *p = realloc(t->token, cap * sizeof *p);
            if (!p)
                return -1;
            t->token = p;
            t->cap = cap;
        }
        int32_t child = (int32_t)t->nodes++;
        t->token[child] = -1;
        if (pm_set(&t->edges, node, c, 0, child))
            return -1;
        node = child;
    }
    /* Same content twice: the first one stays, like a trie built from an ordered list. */
    if (t->token[node] < 0)
        t->token[node] = idx;
    t->first_byte[(unsigned char)s[0]] = true;
    t->count++;
    return 0;
}

/* Longest token starting at s[0]; returns its index in added[] and length, or -1. */
static int32_t trie_longest(const trie *t, const char *s, size_t n, size_t *len)
{
    int32_t node = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        const pm_slot *e = pm_get(&t->edges, node, (unsigned char)s[i]);
        if (!e)
            break;
        node = e->merged;
        if (t->token[node] >= 0) {
            best = t->token[node];
            *len = i + 1;
        }
    }
    return best;
}

void nq_tokenizer_free(nq_tokenizer *tok)
{
    if (!tok)
        return;
    for (size_t i = 0; i < tok->n_ids; i++)
        free(tok->id_str[i]);
    free(tok->id_str);
    free(tok->id_len);
    free(tok->id_special);
    sm_free(&tok->vocab);
    free(tok->vocab_keys);
    sm_free(&tok->added_map);
    free(tok->merges.slots);
    free(tok->unk_token);
    free(tok->prefix);
    free(tok->suffix);
    for (size_t i = 0; i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    trie_free(&tok->trie_raw);
    trie_free(&tok->trie_norm);
    regex_free(&tok->word_re);
    for (size_t i = 0; i < tok->n_steps; i++)
        regex_free(&tok->steps[i].re);
    free(tok->steps);
    regex_free(&tok->gpt2_re);
    free(tok->pre_ids);
    free(tok->post_ids);
    free(tok);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                      */

typedef struct {
    const char *name; /* file name for messages */
    nq_error *err;
} ctx;

static int ensure_id(nq_tokenizer *tok, int32_t id)
{
    if ((size_t)id < tok->n_ids)
        return 0;
    size_t n = tok->n_ids ? tok->n_ids : 1024;
    while (n <= (size_t)id)
        n *= 2;
    char **s = realloc(tok->id_str, n * sizeof *s);
    if (!s)
        return -1;
    tok->id_str = s;
    uint32_t *l = realloc(tok->id_len, n * sizeof *l);
    if (!l)
        return -1;
    tok->id_len = l;
    bool *sp = realloc(tok->id_special, n * sizeof *sp);
    if (!sp)
        return -1;
    tok->id_special = sp;
    for (size_t i = tok->n_ids; i < n; i++) {
        tok->id_str[i] = NULL;
        tok->id_len[i] = 0;
        tok->id_special[i] = false;
    }
    tok->n_ids = n;
    return 0;
}

/* Records the spelling of id if it has none yet. */
static int set_id_str(nq_tokenizer *tok, int32_t id, const char *s, size_t n)
{
    if (ensure_id(tok, id))
        return -1;
    if (tok->id_str[id])
        return 0;
    char *c = malloc(n + 1);
    if (!c)
        return -1;
    memcpy(c, s, n);
    c[n] = '\0';
    tok->id_str[id] = c;
    tok->id_len[id] = (uint32_t)n;
    return 0;
}

static int get_bool(json_t *obj, const char *key, bool dflt, bool *out, ctx *c, const char *where)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return nq_fail(c->err, "%s: %s.%s: expected true or false", c->name, where, key);
    *out = json_is_true(v);
    return 0;
}

/* Optional string field: *out is NULL when absent/null; otherwise malloc'd copy. */
static int get_opt_string(json_t *obj, const char *key, char **out, size_t *len, ctx *c,
                          const char *where)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (len)
        *len = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return nq_fail(c->err, "%s: %s.%s: expected a string", c->name, where, key);
    size_t n = json_string_length(v);
    *out = malloc(n + 1);
    if (!*out)
        return nq_fail(c->err, "%s: out of memory", c->name);
    memcpy(*out, json_string_value(v), n);
    (*out)[n] = '\0';
    if (len)
        *len = n;
    return 0;
}

static int get_id(json_t *v, int32_t *out)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= NQ_TOK_MAX_ID)
        return -1;
    *out = (int32_t)x;
    return 0;
}

static int load_model(nq_tokenizer *tok, json_t *model, ctx *c)
{
    if (!json_is_object(model))
        return nq_fail(c->err, "%s: \"model\" missing or not an object", c->name);
    json_t *type = json_object_get(model, "type");
    /* Old files omit "type"; HF then tries each model kind, and BPE is the one with merges. */
    if (type && !(json_is_string(type) && strcmp(json_string_value(type), "BPE") == 0))
        return nq_fail(c->err, "%s: model.type %s not supported (only BPE)", c->name,
                       json_is_string(type) ? json_string_value(type) : "(not a string)");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) <= 0.0))
        return nq_fail(c->err, "%s: model.dropout is set: BPE dropout is random and not supported",
                       c->name);
    if (get_bool(model, "fuse_unk", false, &tok->fuse_unk, c, "model") ||
        get_bool(model, "byte_fallback", false, &tok->byte_fallback, c, "model") ||
        get_bool(model, "ignore_merges", false, &tok->ignore_merges, c, "model") ||
        get_opt_string(model, "unk_token", &tok->unk_token, NULL, c, "model") ||
        get_opt_string(model, "continuing_subword_prefix", &tok->prefix, &tok->prefix_len, c,
                       "model") ||
        get_opt_string(model, "end_of_word_suffix", &tok->suffix, &tok->suffix_len, c, "model"))
        return -1;

    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab))
        return nq_fail(c->err, "%s: model.vocab missing or not an object", c->name);
    /* The spellings are copied into one block the map borrows from; id_str keeps the first
     * spelling of each id (a file giving two tokens one id is malformed, HF keeps both
     * spellings mapping to it and an arbitrary one for the id). */
    const char *key;
    json_t *val;
    size_t total = 0;
    json_object_foreach(vocab, key, val) total += strlen(key) + 1;
    tok->vocab_keys = malloc(total ? total : 1);
    if (!tok->vocab_keys)
        return nq_fail(c->err, "%s: out of memory", c->name);
    size_t used = 0;
    json_object_foreach(vocab, key, val) {
        int32_t id;
        if (get_id(val, &id))
            return nq_fail(c->err, "%s: model.vocab[\"%.64s\"]: id is not an integer in [0, %d)",
                           c->name, key, NQ_TOK_MAX_ID);
        size_t n = strlen(key);
        char *k = tok->vocab_keys + used;
        memcpy(k, key, n + 1);
        used += n + 1;
        if (set_id_str(tok, id, key, n) || sm_set(&tok->vocab, k, n, id))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }

    if (tok->unk_token) {
        tok->unk_id = sm_get(&tok->vocab, tok->unk_token, strlen(tok->unk_token));
        /* HF only fails when an unknown character actually needs the unk token. */
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_ids[b] = sm_get(&tok->vocab, name, 6);
    }

    json_t *merges = json_object_get(model, "merges");
    if (!merges || json_is_null(merges))
        return 0;
    if (!json_is_array(merges))
        return nq_fail(c->err, "%s: model.merges is not an array", c->name);
    size_t i;
    json_array_foreach(merges, i, val) {
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(val)) {
            /* model.rs convert_merges_to_hashmap: exactly one space */
            const char *s = json_string_value(val);
            size_t n = json_string_length(val);
            const char *sp = memchr(s, ' ', n);
            if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
                return nq_fail(c->err, "%s: model.merges[%zu]: \"%.64s\" is not two tokens "
                               "separated by one space", c->name, i, s);
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
            lb = n - la - 1;
        } else if (json_is_array(val) && json_array_size(val) == 2 &&
                   json_is_string(json_array_get(val, 0)) &&
                   json_is_string(json_array_get(val, 1))) {
            a = json_string_value(json_array_get(val, 0));
            la = json_string_length(json_array_get(val, 0));
            b = json_string_value(json_array_get(val, 1));
            lb = json_string_length(json_array_get(val, 1));
        } else {
            return nq_fail(c->err, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]",
                           c->name, i);
        }
        int32_t ia = sm_get(&tok->vocab, a, la), ib = sm_get(&tok->vocab, b, lb);
        if (ia < 0)
            return nq_fail(c->err, "%s: model.merges[%zu]: token \"%.*s\" not in vocab", c->name,
                           i, (int)(la > 64 ? 64 : la), a);
        if (ib < 0)
            return nq_fail(c->err, "%s: model.merges[%zu]: token \"%.*s\" not in vocab", c->name,
                           i, (int)(lb > 64 ? 64 : lb), b);
        /* bpe/model.rs: the merged token is a + b without b's continuing-subword prefix
         * (the prefix length is cut whether or not b starts with it). */
        if (lb < tok->prefix_len)
            return nq_fail(c->err, "%s: model.merges[%zu]: \"%.*s\" is shorter than the "
                           "continuing_subword_prefix", c->name, i, (int)lb, b);
        size_t lm = la + lb - tok->prefix_len;
        char stackbuf[256];
        char *m = lm <= sizeof stackbuf ? stackbuf : malloc(lm);
        if (!m)
            return nq_fail(c->err, "%s: out of memory", c->name);
        memcpy(m, a, la);
        memcpy(m + la, b + tok->prefix_len, lb - tok->prefix_len);
        int32_t im = sm_get(&tok->vocab, m, lm);
        if (im < 0) {
            nq_fail(c->err, "%s: model.merges[%zu]: merged token \"%.*s\" not in vocab", c->name,
                    i, (int)(lm > 64 ? 64 : lm), m);
            if (m != stackbuf)
                free(m);
            return -1;
        }
        if (m != stackbuf)
            free(m);
        if (i > UINT32_MAX || pm_set(&tok->merges, ia, ib, (uint32_t)i, im))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }
    return 0;
}

static int load_added_tokens(nq_tokenizer *tok, json_t *arr, ctx *c)
{
    if (trie_init(&tok->trie_raw) || trie_init(&tok->trie_norm))
        return nq_fail(c->err, "%s: out of memory", c->name);
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return nq_fail(c->err, "%s: added_tokens is not an array", c->name);
    size_t n = json_array_size(arr);
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added)
        return nq_fail(c->err, "%s: out of memory", c->name);
    /* added_vocabulary.rs add_tokens, in file order: the "id" written in the file is not
     * used.  A content already added keeps its id (the later entry's flags win); one in the
     * model vocabulary takes the vocabulary id; any other gets max(vocab entries, largest
     * added id + 1). */
    int64_t next_floor = (int64_t)tok->vocab.n;
    int64_t max_added = -1;
    size_t i;
    json_t *t;
    char where[48];
    json_array_foreach(arr, i, t) {
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (!json_is_object(t))
            return nq_fail(c->err, "%s: %s is not an object", c->name, where);
        added_token a;
        memset(&a, 0, sizeof a);
        if (get_opt_string(t, "content", &a.content, &a.len, c, where))
            return -1;
        if (!a.content)
            return nq_fail(c->err, "%s: %s.content missing", c->name, where);
        if (get_bool(t, "special", false, &a.special, c, where) ||
            get_bool(t, "single_word", false, &a.single_word, c, where) ||
            get_bool(t, "lstrip", false, &a.lstrip, c, where) ||
            get_bool(t, "rstrip", false, &a.rstrip, c, where) ||
            get_bool(t, "normalized", !a.special, &a.normalized, c, where)) {
            free(a.content);
            return -1;
        }
        if (a.len == 0) { /* HF ignores empty tokens */
            free(a.content);
            continue;
        }
        int32_t prev = sm_get(&tok->added_map, a.content, a.len);
        if (prev >= 0) {
            for (size_t k = 0; k < tok->n_added; k++) {
                added_token *o = &tok->added[k];
                if (o->id == prev && o->len == a.len && memcmp(o->content, a.content, a.len) == 0) {
                    /* keep the first copy of the bytes: added_map's key points at it */
                    bool special = o->special || a.special;
                    char *kept = o->content;
                    free(a.content);
                    *o = a;
                    o->content = kept;
                    o->id = prev;
                    o->special = special;
                    break;
                }
            }
            continue;
        }
        int32_t id = sm_get(&tok->vocab, a.content, a.len);
        if (id < 0) {
            int64_t next = max_added + 1 > next_floor ? max_added + 1 : next_floor;
            if (next >= NQ_TOK_MAX_ID) {
                free(a.content);
                return nq_fail(c->err, "%s: %s: id past %d", c->name, where, NQ_TOK_MAX_ID);
            }
            id = (int32_t)next;
        }
        if (id > max_added)
            max_added = id;
        a.id = id;
        tok->added[tok->n_added++] = a;
        if (sm_set(&tok->added_map, tok->added[tok->n_added - 1].content, a.len, id))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }
    /* refresh_added_tokens: special tokens first, then the others, each in file order.  The
     * two sets are matched in two passes (see nq_tokenizer_encode). */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < tok->n_added; k++) {
            added_token *a = &tok->added[k];
            if (a->special != (pass == 0))
                continue;
            if (trie_add(a->normalized ? &tok->trie_norm : &tok->trie_raw, a->content, a->len,
                         (int32_t)k))
                return nq_fail(c->err, "%s: out of memory", c->name);
        }
    }
    /* The added content is the spelling of its id (HF id_to_token looks at added tokens
     * first).  Special flags go by content, as HF's decode checks special_tokens_set by the
     * token's string. */
    for (size_t k = 0; k < tok->n_added; k++) {
        added_token *a = &tok->added[k];
        if (ensure_id(tok, a->id))
            return nq_fail(c->err, "%s: out of memory", c->name);
        free(tok->id_str[a->id]);
        tok->id_str[a->id] = NULL;
        if (set_id_str(tok, a->id, a->content, a->len))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }
    for (size_t k = 0; k < tok->n_added; k++) {
        added_token *a = &tok->added[k];
        if (!a->special)
            continue;
        tok->id_special[a->id] = true;
        int32_t v = sm_get(&tok->vocab, a->content, a->len);
        if (v >= 0 && tok->id_len[v] == a->len && memcmp(tok->id_str[v], a->content, a->len) == 0)
            tok->id_special[v] = true;
    }
    return 0;
}

static int load_pretok_one(nq_tokenizer *tok, json_t *p, ctx *c, const char *where, int depth);

static int add_step(nq_tokenizer *tok, pretok_step *s, ctx *c)
{
    pretok_step *n = realloc(tok->steps, (tok->n_steps + 1) * sizeof *n);
    if (!n) {
        regex_free(&s->re);
        return nq_fail(c->err, "%s: out of memory", c->name);
    }
    tok->steps = n;
    tok->steps[tok->n_steps++] = *s;
    return 0;
}

static int load_pretok_one(nq_tokenizer *tok, json_t *p, ctx *c, const char *where, int depth)
{
    if (depth > NQ_TOK_MAX_DEPTH)
        return nq_fail(c->err, "%s: %s: Sequences nested too deep", c->name, where);
    if (!json_is_object(p))
        return nq_fail(c->err, "%s: %s is not an object", c->name, where);
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type)
        return nq_fail(c->err, "%s: %s.type missing", c->name, where);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list))
            return nq_fail(c->err, "%s: %s.pretokenizers is not an array", c->name, where);
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e) {
            char sub[128];
            snprintf(sub, sizeof sub, "%.60s.pretokenizers[%zu]", where, i);
            if (load_pretok_one(tok, e, c, sub, depth + 1))
                return -1;
        }
        return 0;
    }
    pretok_step s;
    memset(&s, 0, sizeof s);
    if (strcmp(type, "ByteLevel") == 0) {
        s.kind = STEP_BYTELEVEL;
        if (get_bool(p, "add_prefix_space", true, &s.add_prefix_space, c, where) ||
            get_bool(p, "use_regex", true, &s.use_regex, c, where))
            return -1;
        if (s.use_regex && !tok->gpt2_re.code) {
            /* byte_level.rs RE */
            static const char gpt2[] =
                "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
            if (regex_compile(&tok->gpt2_re, gpt2, sizeof gpt2 - 1, false, true, where, c->err))
                return -1;
        }
        return add_step(tok, &s, c);
    }
    if (strcmp(type, "Split") == 0) {
        s.kind = STEP_SPLIT;
        json_t *pat = json_object_get(p, "pattern");
        json_t *rx = json_object_get(pat, "Regex");
        json_t *str = json_object_get(pat, "String");
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        if (get_bool(p, "invert", false, &s.invert, c, where))
            return -1;
        if (!beh)
            return nq_fail(c->err, "%s: %s.behavior missing", c->name, where);
        if (strcmp(beh, "Removed") == 0)
            s.behavior = SB_REMOVED;
        else if (strcmp(beh, "Isolated") == 0)
            s.behavior = SB_ISOLATED;
        else if (strcmp(beh, "MergedWithPrevious") == 0)
            s.behavior = SB_MERGED_PREV;
        else if (strcmp(beh, "MergedWithNext") == 0)
            s.behavior = SB_MERGED_NEXT;
        else if (strcmp(beh, "Contiguous") == 0)
            s.behavior = SB_CONTIGUOUS;
        else
            return nq_fail(c->err, "%s: %s.behavior \"%.32s\" unknown", c->name, where, beh);
        char what[160];
        snprintf(what, sizeof what, "%s: %.100s.pattern", c->name, where);
        if (json_is_string(rx)) {
            if (regex_compile(&s.re, json_string_value(rx), json_string_length(rx), false, true,
                              what, c->err))
                return -1;
        } else if (json_is_string(str)) {
            if (json_string_length(str) == 0)
                return nq_fail(c->err, "%s: %s.pattern.String is empty", c->name, where);
            if (regex_compile(&s.re, json_string_value(str), json_string_length(str), true, false,
                              what, c->err))
                return -1;
        } else {
            return nq_fail(c->err, "%s: %s.pattern needs \"Regex\" or \"String\"", c->name,
                           where);
        }
        return add_step(tok, &s, c);
    }
    return nq_fail(c->err, "%s: %s.type \"%.40s\" not supported (Sequence, Split, ByteLevel)",
                   c->name, where, type);
}

static int special_ids_of(nq_tokenizer *tok, json_t *spmap, const char *name, idbuf *out, ctx *c,
                          const char *where)
{
    json_t *e = json_object_get(spmap, name);
    json_t *ids = json_object_get(e, "ids");
    if (!json_is_array(ids))
        return nq_fail(c->err, "%s: %s: special token \"%.40s\" missing from special_tokens",
                       c->name, where, name);
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        int32_t id;
        if (get_id(v, &id))
            return nq_fail(c->err, "%s: %s: special_tokens[\"%.40s\"].ids[%zu] invalid", c->name,
                           where, name, i);
        if (ib_push(out, id))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }
    (void)tok;
    return 0;
}

/* Post-processors wrap the encoding: pre ++ ids ++ post.  A Sequence applies its processors in
 * order, each wrapping the result of the previous one. */
static int load_post(nq_tokenizer *tok, json_t *p, idbuf *pre, idbuf *post, ctx *c,
                     const char *where, int depth)
{
    if (!p || json_is_null(p))
        return 0;
    if (depth > NQ_TOK_MAX_DEPTH)
        return nq_fail(c->err, "%s: %s: Sequences nested too deep", c->name, where);
    if (!json_is_object(p))
        return nq_fail(c->err, "%s: %s is not an object", c->name, where);
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type)
        return nq_fail(c->err, "%s: %s.type missing", c->name, where);
    if (strcmp(type, "ByteLevel") == 0)
        return 0; /* only trims offsets */
    idbuf mypre = {0}, mypost = {0};
    int rc = 0;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "processors");
        if (!json_is_array(list))
            return nq_fail(c->err, "%s: %s.processors is not an array", c->name, where);
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e) {
            char sub[128];
            snprintf(sub, sizeof sub, "%.60s.processors[%zu]", where, i);
            if (load_post(tok, e, pre, post, c, sub, depth + 1))
                return -1;
        }
        return 0;
    } else if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(p, "single");
        json_t *spmap = json_object_get(p, "special_tokens");
        if (!json_is_array(single))
            return nq_fail(c->err, "%s: %s.single is not an array", c->name, where);
        int seen_a = 0;
        size_t i;
        json_t *e;
        json_array_foreach(single, i, e) {
            json_t *st = json_object_get(e, "SpecialToken");
            json_t *sq = json_object_get(e, "Sequence");
            if (st) {
                const char *id = json_string_value(json_object_get(st, "id"));
                if (!id) {
                    rc = nq_fail(c->err, "%s: %s.single[%zu].SpecialToken.id missing", c->name,
                                 where, i);
                    break;
                }
                if ((rc = special_ids_of(tok, spmap, id, seen_a ? &mypost : &mypre, c, where)))
                    break;
            } else if (sq) {
                const char *id = json_string_value(json_object_get(sq, "id"));
                if (!id || strcmp(id, "A") != 0 || seen_a) {
                    rc = nq_fail(c->err, "%s: %s.single must hold sequence A exactly once",
                                 c->name, where);
                    break;
                }
                seen_a = 1;
            } else {
                rc = nq_fail(c->err, "%s: %s.single[%zu]: expected SpecialToken or Sequence",
                             c->name, where, i);
                break;
            }
        }
        if (!rc && !seen_a)
            rc = nq_fail(c->err, "%s: %s.single has no sequence A", c->name, where);
    } else if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        /* processors/bert.rs, roberta.rs: [cls] A [sep], both given as [token, id] */
        json_t *cls = json_object_get(p, "cls"), *sep = json_object_get(p, "sep");
        int32_t ic, is;
        if (!json_is_array(cls) || get_id(json_array_get(cls, 1), &ic) || !json_is_array(sep) ||
            get_id(json_array_get(sep, 1), &is))
            return nq_fail(c->err, "%s: %s: cls/sep must be [\"token\", id]", c->name, where);
        if (ib_push(&mypre, ic) || ib_push(&mypost, is))
            rc = nq_fail(c->err, "%s: out of memory", c->name);
    } else {
        return nq_fail(c->err, "%s: %s.type \"%.40s\" not supported", c->name, where, type);
    }
    if (!rc) {
        /* new pre = mine ++ old pre; new post = old post ++ mine */
        idbuf np = {0};
        if (ib_put(&np, mypre.p, mypre.n) || ib_put(&np, pre->p, pre->n) ||
            ib_put(post, mypost.p, mypost.n)) {
            free(np.p);
            rc = nq_fail(c->err, "%s: out of memory", c->name);
        } else {
            free(pre->p);
            *pre = np;
        }
    }
    free(mypre.p);
    free(mypost.p);
    return rc;
}

static nq_tokenizer *load_json(json_t *root, ctx *c)
{
    pthread_once(&byte_tables_once, init_byte_tables);
    if (!json_is_object(root)) {
        nq_fail(c->err, "%s: top level is not a JSON object", c->name);
        return NULL;
    }
    nq_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        nq_fail(c->err, "%s: out of memory", c->name);
        return NULL;
    }
    tok->unk_id = -1;
    tok->bos_id = tok->eos_id = -1;
    idbuf pre = {0}, post = {0};

    json_t *trunc = json_object_get(root, "truncation");
    json_t *pad = json_object_get(root, "padding");
    json_t *norm = json_object_get(root, "normalizer");
    json_t *dec = json_object_get(root, "decoder");
    if (trunc && !json_is_null(trunc)) {
        nq_fail(c->err, "%s: \"truncation\" is set; truncating encodes are not supported", c->name);
        goto fail;
    }
    if (pad && !json_is_null(pad)) {
        nq_fail(c->err, "%s: \"padding\" is set; padded encodes are not supported", c->name);
        goto fail;
    }
    if (norm && !json_is_null(norm)) {
        const char *nt = json_string_value(json_object_get(norm, "type"));
        json_t *list = json_object_get(norm, "normalizers");
        if (!(nt && strcmp(nt, "Sequence") == 0 && json_is_array(list) &&
              json_array_size(list) == 0)) {
            nq_fail(c->err, "%s: normalizer \"%.40s\" not supported (only none)", c->name,
                    nt ? nt : "?");
            goto fail;
        }
    }
    if (load_model(tok, json_object_get(root, "model"), c) ||
        load_added_tokens(tok, json_object_get(root, "added_tokens"), c))
        goto fail;
    json_t *pt = json_object_get(root, "pre_tokenizer");
    if (pt && !json_is_null(pt) && load_pretok_one(tok, pt, c, "pre_tokenizer", 0))
        goto fail;
    if (load_post(tok, json_object_get(root, "post_processor"), &pre, &post, c, "post_processor", 0))
        goto fail;
    tok->pre_ids = pre.p;
    tok->n_pre = pre.n;
    tok->post_ids = post.p;
    tok->n_post = post.n;
    pre.p = post.p = NULL;

    if (!dec || json_is_null(dec)) {
        tok->decoder = DEC_JOIN;
    } else {
        const char *dt = json_string_value(json_object_get(dec, "type"));
        if (dt && strcmp(dt, "ByteLevel") == 0) {
            tok->decoder = DEC_BYTELEVEL;
        } else {
            /* Encoding does not depend on the decoder: load, and fail decode calls only. */
            tok->decoder = DEC_UNSUPPORTED;
            snprintf(tok->decoder_name, sizeof tok->decoder_name, "%s", dt ? dt : "?");
        }
    }

    /* Rust regex \w (Alphabetic, marks, decimal digits, connector punctuation, joiners) for
     * added tokens' single_word test. */
    static const char word[] = "[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}"
                               "\\x{24b6}-\\x{24e9}\\x{1f130}-\\x{1f149}\\x{1f150}-\\x{1f169}"
                               "\\x{1f170}-\\x{1f189}]";
    if (regex_compile(&tok->word_re, word, sizeof word - 1, false, false, "word class", c->err))
        goto fail;

    /* vocab_size covers every id encode can emit: vocabulary, added tokens and the
     * post-processor's ids (which a file may set to anything). */
    {
        size_t top = 0;
        for (size_t i = 0; i < tok->n_pre + tok->n_post; i++) {
            int32_t id = i < tok->n_pre ? tok->pre_ids[i] : tok->post_ids[i - tok->n_pre];
            if (ensure_id(tok, id)) {
                nq_fail(c->err, "%s: out of memory", c->name);
                goto fail;
            }
            if ((size_t)id + 1 > top)
                top = (size_t)id + 1;
        }
        for (size_t i = 0; i < tok->n_ids; i++)
            if (tok->id_str[i] && i + 1 > top)
                top = i + 1;
        tok->n_ids = top; /* arrays keep their capacity; only the first n_ids are used */
    }
    tok->bos_id = tok->n_pre ? tok->pre_ids[0] : nq_tokenizer_token_id(tok, "<s>");
    tok->eos_id = tok->n_post ? tok->post_ids[tok->n_post - 1] : nq_tokenizer_token_id(tok, "</s>");
    return tok;

fail:
    free(pre.p);
    free(post.p);
    nq_tokenizer_free(tok);
    return NULL;
}

nq_tokenizer *nq_tokenizer_load_mem(const char *text, size_t len, const char *name, nq_error *err)
{
    ctx c = {name ? name : "tokenizer.json", err};
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &je);
    if (!root) {
        nq_fail(err, "%s: line %d column %d: %s", c.name, je.line, je.column, je.text);
        return NULL;
    }
    nq_tokenizer *tok = load_json(root, &c);
    json_decref(root);
    return tok;
}

nq_tokenizer *nq_tokenizer_load(const char *path, nq_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        nq_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    bytebuf b = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (bb_put(&b, chunk, got)) {
            fclose(f);
            free(b.p);
            nq_fail(err, "%s: out of memory", path);
            return NULL;
        }
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b.p);
        nq_fail(err, "%s: read error", path);
        return NULL;
    }
    nq_tokenizer *tok = nq_tokenizer_load_mem(b.p ? b.p : "", b.n, path, err);
    free(b.p);
    return tok;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding                                                                                     */

/* A piece of the pipeline: bytes in some buffer, or an added token already decided. */
typedef struct {
    size_t off, len;
    int32_t id; /* >= 0: added token, no further processing */
} piece;

typedef struct {
    piece *p;
    size_t n, cap;
} piecebuf;

static int pb_push(piecebuf *b, size_t off, size_t len, int32_t id)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        piece *p = realloc(b->p, cap * sizeof *p);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    b->p[b->n].off = off;
    b->p[b->n].len = len;
    b->p[b->n].id = id;
    b->n++;
    return 0;
}

/* Per-call BPE cache: piece bytes -> ids.  Keys live in `keys` chunks that never move. */
typedef struct keychunk {
    struct keychunk *next;
    size_t used, cap;
    char data[];
} keychunk;

typedef struct {
    strmap map;     /* key -> index into spans */
    spanbuf spans;  /* (offset, count) into ids */
    idbuf ids;
    keychunk *chunks;
} bpe_cache;

static const char *cache_key_copy(bpe_cache *c, const char *s, size_t n)
{
    if (!c->chunks || c->chunks->cap - c->chunks->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        keychunk *k = malloc(sizeof *k + cap);
        if (!k)
            return NULL;
        k->next = c->chunks;
        k->used = 0;
        k->cap = cap;
        c->chunks = k;
    }
    char *dst = c->chunks->data + c->chunks->used;
    memcpy(dst, s, n);
    c->chunks->used += n;
    return dst;
}

static void cache_free(bpe_cache *c)
{
    sm_free(&c->map);
    free(c->spans.p);
    free(c->ids.p);
    while (c->chunks) {
        keychunk *k = c->chunks->next;
        free(c->chunks);
        c->chunks = k;
    }
}

typedef struct {
    int32_t id;
    int32_t prev, next;
    bool gone;
} symbol;

typedef struct {
    uint32_t rank;
    int32_t pos, merged;
} heap_item;

/* Min-heap on (rank, pos): word.rs Merge ordering. */
static bool heap_less(heap_item a, heap_item b)
{
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

typedef struct {
    heap_item *p;
    size_t n, cap;
} heap;

static int heap_push(heap *h, heap_item it)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        heap_item *p = realloc(h->p, cap * sizeof *p);
        if (!p)
            return -1;
        h->p = p;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(it, h->p[parent]))
            break;
        h->p[i] = h->p[parent];
        i = parent;
    }
    h->p[i] = it;
    return 0;
}

static heap_item heap_pop(heap *h)
{
    heap_item top = h->p[0];
    heap_item last = h->p[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        heap_item best = last;
        if (l < h->n && heap_less(h->p[l], best)) {
            m = l;
            best = h->p[l];
        }
        if (r < h->n && heap_less(h->p[r], best))
            m = r;
        if (m == i)
            break;
        h->p[i] = h->p[m];
        i = m;
    }
    if (h->n)
        h->p[i] = last;
    return top;
}

typedef struct {
    const nq_tokenizer *tok;
    nq_error *err;
    match_state ms;
    mspanbuf matches;
    bytebuf scratch;
    struct {
        symbol *p;
        size_t n, cap;
    } syms;
    heap heap;
    bpe_cache cache;
} enc_state;

static int sym_push(enc_state *st, int32_t id)
{
    if (st->syms.n == st->syms.cap) {
        size_t cap = st->syms.cap ? st->syms.cap * 2 : 64;
        symbol *p = realloc(st->syms.p, cap * sizeof *p);
        if (!p)
            return -1;
        st->syms.p = p;
        st->syms.cap = cap;
    }
    symbol *s = &st->syms.p[st->syms.n];
    s->id = id;
    s->prev = (int32_t)st->syms.n - 1;
    s->next = -1;
    s->gone = false;
    if (st->syms.n)
        st->syms.p[st->syms.n - 1].next = (int32_t)st->syms.n;
    st->syms.n++;
    return 0;
}

/* bpe/model.rs merge_word + word.rs merge_all for one pre-token; appends ids to out. */
static int bpe_word(enc_state *st, const char *w, size_t n, idbuf *out)
{
    const nq_tokenizer *tok = st->tok;
    if (tok->ignore_merges) {
        int32_t id = sm_get(&tok->vocab, w, n);
        if (id >= 0)
            return ib_push(out, id) ? nq_fail(st->err, "tokenizer: out of memory") : 0;
    }
    st->syms.n = 0;
    int32_t unk_pending = -1; /* fused/unfused unk waiting to be pushed */
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t cl = utf8_next((const unsigned char *)w + i, n - i, &cp);
        bool first = i == 0, last = i + cl == n;
        const char *key = w + i;
        size_t klen = cl;
        if ((!first && tok->prefix) || (last && tok->suffix)) {
            st->scratch.n = 0;
            if ((!first && tok->prefix && bb_put(&st->scratch, tok->prefix, tok->prefix_len)) ||
                bb_put(&st->scratch, w + i, cl) ||
                (last && tok->suffix && bb_put(&st->scratch, tok->suffix, tok->suffix_len)))
                return nq_fail(st->err, "tokenizer: out of memory");
            key = st->scratch.p;
            klen = st->scratch.n;
        }
        int32_t id = sm_get(&tok->vocab, key, klen);
        if (id >= 0) {
            if (unk_pending >= 0 && sym_push(st, unk_pending))
                return nq_fail(st->err, "tokenizer: out of memory");
            unk_pending = -1;
            if (sym_push(st, id))
                return nq_fail(st->err, "tokenizer: out of memory");
        } else {
            bool done = false;
            if (tok->byte_fallback) {
                /* all bytes of the (affixed) character must have a <0xXX> token */
                bool all = true;
                for (size_t k = 0; k < klen; k++)
                    all = all && tok->byte_ids[(unsigned char)key[k]] >= 0;
                if (all) {
                    /* HF pushes these without flushing a pending unk first */
                    for (size_t k = 0; k < klen; k++)
                        if (sym_push(st, tok->byte_ids[(unsigned char)key[k]]))
                            return nq_fail(st->err, "tokenizer: out of memory");
                    done = true;
                }
            }
            if (!done && tok->unk_token) {
                if (tok->unk_id < 0)
                    return nq_fail(st->err, "tokenizer: unk_token \"%.40s\" is not in the vocab",
                                   tok->unk_token);
                if (unk_pending >= 0 && !tok->fuse_unk) {
                    if (sym_push(st, unk_pending))
                        return nq_fail(st->err, "tokenizer: out of memory");
                }
                unk_pending = tok->unk_id;
            }
            /* no unk token: the character is dropped, as HF does */
        }
        i += cl;
    }
    if (unk_pending >= 0 && sym_push(st, unk_pending))
        return nq_fail(st->err, "tokenizer: out of memory");

    symbol *sy = st->syms.p;
    size_t ns = st->syms.n;
    st->heap.n = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const pm_slot *m = pm_get(&tok->merges, sy[i].id, sy[i + 1].id);
        if (m && heap_push(&st->heap, (heap_item){m->rank, (int32_t)i, m->merged}))
            return nq_fail(st->err, "tokenizer: out of memory");
    }
    while (st->heap.n) {
        heap_item top = heap_pop(&st->heap);
        symbol *cur = &sy[top.pos];
        if (cur->gone || cur->next < 0)
            continue;
        symbol *right = &sy[cur->next];
        const pm_slot *m = pm_get(&tok->merges, cur->id, right->id);
        if (!m || m->merged != top.merged)
            continue; /* stale entry */
        cur->id = top.merged;
        right->gone = true;
        cur->next = right->next;
        if (cur->next >= 0)
            sy[cur->next].prev = top.pos;
        if (cur->prev >= 0) {
            const pm_slot *pm = pm_get(&tok->merges, sy[cur->prev].id, cur->id);
            if (pm && heap_push(&st->heap, (heap_item){pm->rank, cur->prev, pm->merged}))
                return nq_fail(st->err, "tokenizer: out of memory");
        }
        if (cur->next >= 0) {
            const pm_slot *nm = pm_get(&tok->merges, cur->id, sy[cur->next].id);
            if (nm && heap_push(&st->heap, (heap_item){nm->rank, top.pos, nm->merged}))
                return nq_fail(st->err, "tokenizer: out of memory");
        }
    }
    for (size_t i = 0; i < ns; i++)
        if (!sy[i].gone && ib_push(out, sy[i].id))
            return nq_fail(st->err, "tokenizer: out of memory");
    return 0;
}

static int bpe_cached(enc_state *st, const char *w, size_t n, idbuf *out)
{
    bpe_cache *c = &st->cache;
    int32_t k = sm_get(&c->map, w, n);
    if (k >= 0) {
        span s = c->spans.p[k];
        return ib_put(out, c->ids.p + s.off, s.len) ? nq_fail(st->err, "tokenizer: out of memory")
                                                     : 0;
    }
    size_t start = out->n;
    if (bpe_word(st, w, n, out))
        return -1;
    /* Very long pieces are rare and seldom repeat; caching them would only cost memory. */
    if (n > 256)
        return 0;
    const char *key = cache_key_copy(c, w, n);
    size_t off = c->ids.n;
    if (!key || ib_put(&c->ids, out->p + start, out->n - start) ||
        sb_push(&c->spans, off, out->n - start) ||
        sm_set(&c->map, key, n, (int32_t)(c->spans.n - 1)))
        return nq_fail(st->err, "tokenizer: out of memory");
    return 0;
}

/* added_vocabulary.rs find_matches + split_with_indices over s[0..n), which sits at `base` in
 * the text.  Appends pieces (text pieces and decided tokens) to out. */
static int split_added(enc_state *st, const trie *t, const char *text, size_t base, size_t n,
                       piecebuf *out)
{
    const nq_tokenizer *tok = st->tok;
    const char *s = text + base;
    if (t->count == 0 || n == 0)
        return n ? pb_push(out, base, n, -1) : 0;
    size_t start_offset = 0;
    size_t pos = 0; /* where the non-overlapping automaton search resumes */
    while (pos < n) {
        if (!t->first_byte[(unsigned char)s[pos]]) {
            pos++;
            continue;
        }
        size_t mlen = 0;
        int32_t k = trie_longest(t, s + pos, n - pos, &mlen);
        if (k < 0) {
            pos++;
            continue;
        }
        const added_token *a = &tok->added[k];
        size_t start = pos, stop = pos + mlen;
        pos = stop;
        if (a->single_word) {
            /* \w$ on what precedes, ^\w on what follows (Rust regex classes) */
            bool start_space = true, stop_space = true;
            if (start > 0) {
                size_t b = start - 1;
                while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80 && start - b < 4)
                    b--;
                uint32_t cp;
                size_t l = utf8_next((const unsigned char *)s + b, start - b, &cp);
                if (b + l != start) /* last byte is not the end of a valid character */
                    b = start - 1;
                int rc = pcre2_match(tok->word_re.code, (PCRE2_SPTR)s, start, b, PCRE2_ANCHORED,
                                     st->ms.md, NULL);
                start_space = rc < 0;
            }
            if (stop < n) {
                int rc = pcre2_match(tok->word_re.code, (PCRE2_SPTR)s, n, stop, PCRE2_ANCHORED,
                                     st->ms.md, NULL);
                stop_space = rc < 0;
            }
            if (!start_space || !stop_space)
                continue;
        }
        if (a->lstrip) {
            /* start of the whitespace run ending at start, but never before the previous
             * split's end */
            size_t b = start;
            while (b > 0) {
                size_t c = b - 1;
                while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80 && b - c < 4)
                    c--;
                uint32_t cp;
                size_t l = utf8_next((const unsigned char *)s + c, b - c, &cp);
                if (c + l != b || !is_unicode_space(cp))
                    break;
                b = c;
            }
            start = b > start_offset ? b : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                size_t l = utf8_next((const unsigned char *)s + stop, n - stop, &cp);
                if (!is_unicode_space(cp))
                    break;
                stop += l;
            }
        }
        if (start_offset < start && pb_push(out, base + start_offset, start - start_offset, -1))
            return nq_fail(st->err, "tokenizer: out of memory");
        if (pb_push(out, base + start, stop - start, a->id))
            return nq_fail(st->err, "tokenizer: out of memory");
        start_offset = stop;
    }
    if (start_offset < n && pb_push(out, base + start_offset, n - start_offset, -1))
        return nq_fail(st->err, "tokenizer: out of memory");
    return 0;
}

/* normalizer.rs NormalizedString::split: turns (offsets, is_match) into the kept pieces of
 * s[0..n) at `base` in buffer `buf`, appending non-empty ones to out. */
static int apply_behavior(enc_state *st, mspanbuf *m, enum split_behavior beh, bool invert,
                          size_t base, spanbuf *out)
{
    if (invert)
        for (size_t i = 0; i < m->n; i++)
            m->p[i].match = !m->p[i].match;
    /* Reuse m in place: w is the write index. */
    size_t w = 0;
    bool prev_match = false;
    switch (beh) {
    case SB_ISOLATED:
        for (size_t i = 0; i < m->n; i++)
            m->p[i].match = false;
        w = m->n;
        break;
    case SB_REMOVED:
        w = m->n;
        break;
    case SB_CONTIGUOUS:
        for (size_t i = 0; i < m->n; i++) {
            mspan e = m->p[i];
            if (e.match == prev_match && w > 0)
                m->p[w - 1].b = e.b;
            else
                m->p[w++] = (mspan){e.a, e.b, false};
            prev_match = e.match;
        }
        break;
    case SB_MERGED_PREV:
        for (size_t i = 0; i < m->n; i++) {
            mspan e = m->p[i];
            if (e.match && !prev_match && w > 0)
                m->p[w - 1].b = e.b;
            else
                m->p[w++] = (mspan){e.a, e.b, false};
            prev_match = e.match;
        }
        break;
    case SB_MERGED_NEXT: {
        /* built back to front, then reversed */
        size_t cnt = 0;
        for (size_t i = m->n; i-- > 0;) {
            mspan e = m->p[i];
            /* write from the end of the array backwards: slot m->n - 1 - cnt */
            if (e.match && !prev_match && cnt > 0)
                m->p[m->n - cnt].a = e.a;
            else {
                m->p[m->n - 1 - cnt] = (mspan){e.a, e.b, false};
                cnt++;
            }
            prev_match = e.match;
        }
        memmove(m->p, m->p + (m->n - cnt), cnt * sizeof *m->p);
        w = cnt;
        break;
    }
    }
    for (size_t i = 0; i < w; i++) {
        mspan e = m->p[i];
        if (e.match || e.b <= e.a)
            continue;
        if (sb_push(out, base + e.a, e.b - e.a))
            return nq_fail(st->err, "tokenizer: out of memory");
    }
    return 0;
}

/* Runs the pre-tokenizer steps over one text piece and BPEs the results into out. */
static int encode_piece(enc_state *st, const char *text, size_t len, idbuf *out, bytebuf *bufs,
                        spanbuf *lists)
{
    const nq_tokenizer *tok = st->tok;
    /* Double-buffered: lists[cur] holds spans into bufs[cur]. */
    int cur = 0;
    bufs[0].n = bufs[1].n = 0;
    lists[0].n = lists[1].n = 0;
    if (bb_put(&bufs[0], text, len) || sb_push(&lists[0], 0, len))
        return nq_fail(st->err, "tokenizer: out of memory");
    for (size_t k = 0; k < tok->n_steps; k++) {
        const pretok_step *step = &tok->steps[k];
        int nxt = 1 - cur;
        bytebuf *src = &bufs[cur];
        spanbuf *in = &lists[cur];
        lists[nxt].n = 0;
        if (step->kind == STEP_SPLIT) {
            /* pieces are sub-ranges of the same buffer: share it */
            for (size_t i = 0; i < in->n; i++) {
                span sp = in->p[i];
                if (regex_find_matches(&step->re, &st->ms, src->p + sp.off, sp.len, &st->matches,
                                       st->err) ||
                    apply_behavior(st, &st->matches, step->behavior, step->invert, sp.off,
                                   &lists[nxt]))
                    return -1;
            }
            /* swap lists only; the buffer stays bufs[cur] */
            spanbuf t = lists[cur];
            lists[cur] = lists[nxt];
            lists[nxt] = t;
            continue;
        }
        /* ByteLevel: optional prefix space, optional GPT-2 split, then bytes -> characters. */
        bytebuf *dst = &bufs[nxt];
        dst->n = 0;
        for (size_t i = 0; i < in->n; i++) {
            span sp = in->p[i];
            const char *p = src->p + sp.off;
            size_t pn = sp.len;
            /* prefix space: into scratch so the regex sees it */
            const char *q = p;
            size_t qn = pn;
            if (step->add_prefix_space && !(pn > 0 && p[0] == ' ')) {
                st->scratch.n = 0;
                if (bb_put(&st->scratch, " ", 1) || bb_put(&st->scratch, p, pn))
                    return nq_fail(st->err, "tokenizer: out of memory");
                q = st->scratch.p;
                qn = st->scratch.n;
            }
            size_t nsub = 1;
            if (step->use_regex) {
                if (regex_find_matches(&tok->gpt2_re, &st->ms, q, qn, &st->matches, st->err))
                    return -1;
                for (size_t j = 0; j < st->matches.n; j++)
                    st->matches.p[j].match = false; /* Isolated */
                nsub = st->matches.n;
            }
            for (size_t j = 0; j < nsub; j++) {
                size_t a = step->use_regex ? st->matches.p[j].a : 0;
                size_t b = step->use_regex ? st->matches.p[j].b : qn;
                if (b <= a)
                    continue;
                size_t off = dst->n;
                if (bb_reserve(dst, 2 * (b - a)))
                    return nq_fail(st->err, "tokenizer: out of memory");
                for (size_t x = a; x < b; x++)
                    dst->n += utf8_put(dst->p + dst->n, byte_to_cp[(unsigned char)q[x]]);
                if (sb_push(&lists[nxt], off, dst->n - off))
                    return nq_fail(st->err, "tokenizer: out of memory");
            }
        }
        cur = nxt;
    }
    for (size_t i = 0; i < lists[cur].n; i++) {
        span sp = lists[cur].p[i];
        if (sp.len && bpe_cached(st, bufs[cur].p + sp.off, sp.len, out))
            return -1;
    }
    return 0;
}

int nq_tokenizer_encode(const nq_tokenizer *tok, const char *text, size_t len, bool add_special,
                        int32_t **ids_out, size_t *n_out, nq_error *err)
{
    *ids_out = NULL;
    *n_out = 0;
    if (!text && len)
        return nq_fail(err, "tokenizer: NULL text");
    if (!text)
        text = "";
    enc_state st;
    memset(&st, 0, sizeof st);
    st.tok = tok;
    st.err = err;
    idbuf out = {0};
    piecebuf p1 = {0}, p2 = {0};
    bytebuf bufs[2] = {{0}, {0}};
    spanbuf lists[2] = {{0}, {0}};
    int rc = -1;

    st.ms.md = pcre2_match_data_create(32, NULL);
    st.ms.mc = pcre2_match_context_create(NULL);
    if (!st.ms.md || !st.ms.mc) {
        nq_fail(err, "tokenizer: out of memory");
        goto done;
    }
    pcre2_set_match_limit(st.ms.mc, NQ_TOK_MATCH_LIMIT);

    if (add_special && ib_put(&out, tok->pre_ids, tok->n_pre)) {
        nq_fail(err, "tokenizer: out of memory");
        goto done;
    }
    /* 1. non-normalized added tokens on the raw text; 2. normalized ones on what is left
     * (there is no normalizer, so "normalized" text is the raw text). */
    if (split_added(&st, &tok->trie_raw, text, 0, len, &p1))
        goto done;
    for (size_t i = 0; i < p1.n; i++) {
        if (p1.p[i].id >= 0) {
            if (pb_push(&p2, p1.p[i].off, p1.p[i].len, p1.p[i].id)) {
                nq_fail(err, "tokenizer: out of memory");
                goto done;
            }
        } else if (split_added(&st, &tok->trie_norm, text, p1.p[i].off, p1.p[i].len, &p2)) {
            goto done;
        }
    }
    for (size_t i = 0; i < p2.n; i++) {
        if (p2.p[i].id >= 0) {
            if (ib_push(&out, p2.p[i].id)) {
                nq_fail(err, "tokenizer: out of memory");
                goto done;
            }
        } else if (encode_piece(&st, text + p2.p[i].off, p2.p[i].len, &out, bufs, lists)) {
            goto done;
        }
    }
    if (add_special && ib_put(&out, tok->post_ids, tok->n_post)) {
        nq_fail(err, "tokenizer: out of memory");
        goto done;
    }
    if (!out.p && !(out.p = malloc(sizeof *out.p))) {
        nq_fail(err, "tokenizer: out of memory");
        goto done;
    }
    *ids_out = out.p;
    *n_out = out.n;
    out.p = NULL;
    rc = 0;
done:
    free(out.p);
    free(p1.p);
    free(p2.p);
    for (int i = 0; i < 2; i++) {
        free(bufs[i].p);
        free(lists[i].p);
    }
    free(st.matches.p);
    free(st.scratch.p);
    free(st.syms.p);
    free(st.heap.p);
    cache_free(&st.cache);
    if (st.ms.md)
        pcre2_match_data_free(st.ms.md);
    if (st.ms.mc)
        pcre2_match_context_free(st.ms.mc);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding and lookups                                                                         */

int nq_tokenizer_decode(const nq_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                        char **text, size_t *len, nq_error *err)
{
    *text = NULL;
    *len = 0;
    if (tok->decoder == DEC_UNSUPPORTED)
        return nq_fail(err, "tokenizer: decoder \"%s\" not supported (only ByteLevel)",
                       tok->decoder_name);
    bytebuf b = {0};
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= tok->n_ids || !tok->id_str[id])
            continue;
        if (skip_special && tok->id_special[id])
            continue;
        const char *s = tok->id_str[id];
        size_t sl = tok->id_len[id];
        if (tok->decoder == DEC_JOIN) {
            if ((!first && bb_put(&b, " ", 1)) || bb_put(&b, s, sl))
                goto oom;
            first = false;
            continue;
        }
        /* byte_level.rs decode_chain: a token made only of byte-level characters becomes
         * those bytes; any other token is copied as it is spelled. */
        size_t start = b.n;
        bool all = true;
        if (bb_reserve(&b, sl))
            goto oom;
        for (size_t k = 0; k < sl;) {
            uint32_t cp;
            size_t l = utf8_next((const unsigned char *)s + k, sl - k, &cp);
            if (cp == NQ_INVALID_CP || cp >= 0x144 || cp_to_byte[cp] < 0) {
                all = false;
                break;
            }
            b.p[b.n++] = (char)cp_to_byte[cp];
            k += l;
        }
        if (!all) {
            b.n = start;
            if (bb_put(&b, s, sl))
                goto oom;
        }
    }
    if (bb_put(&b, "", 1))
        goto oom;
    *text = b.p;
    *len = b.n - 1;
    return 0;
oom:
    free(b.p);
    return nq_fail(err, "tokenizer: out of memory");
}

int32_t nq_tokenizer_token_id(const nq_tokenizer *tok, const char *token)
{
    size_t n = strlen(token);
    int32_t id = sm_get(&tok->added_map, token, n);
    return id >= 0 ? id : sm_get(&tok->vocab, token, n);
}

const char *nq_tokenizer_token_str(const nq_tokenizer *tok, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= tok->n_ids || !tok->id_str[id])
        return NULL;
    if (len)
        *len = tok->id_len[id];
    return tok->id_str[id];
}

size_t nq_tokenizer_vocab_size(const nq_tokenizer *tok)
{
    return tok->n_ids;
}

bool nq_tokenizer_is_special(const nq_tokenizer *tok, int32_t id)
{
    return id >= 0 && (size_t)id < tok->n_ids && tok->id_special[id];
}

int32_t nq_tokenizer_bos_id(const nq_tokenizer *tok)
{
    return tok->bos_id;
}

int32_t nq_tokenizer_eos_id(const nq_tokenizer *tok)
{
    return tok->eos_id;
}
