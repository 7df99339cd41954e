/* Tokenizer: the pre-tokenizer: byte-level alphabet, regexes, split behaviours, and its
 * tokenizer.json section (see tok_internal.h). */
#include "tok/tok_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t nq_tok_byte_to_cp[256];

int16_t nq_tok_cp_to_byte[0x144]; /* -1: not a byte-level character */

pthread_once_t nq_tok_byte_tables_once = PTHREAD_ONCE_INIT;

void nq_tok_init_byte_tables(void)
{
    uint32_t n = 0;
    for (int i = 0; i < 0x144; i++)
        nq_tok_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        nq_tok_byte_to_cp[b] = self ? (uint32_t)b : 256 + n++;
    }
    for (int b = 0; b < 256; b++)
        nq_tok_cp_to_byte[nq_tok_byte_to_cp[b]] = (int16_t)b;
}

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
                if (!in_class && nq_tok_bb_put(out, neg ? "[^" : "[", neg ? 2 : 1))
                    return -1;
                if (nq_tok_bb_put(out, body, strlen(body)))
                    return -1;
                if (!in_class && nq_tok_bb_put(out, "]", 1))
                    return -1;
            } else if (e == 'Q') {
                /* \Q...\E quotes literally; copy through untouched. */
                size_t end = i + 2;
                while (end + 1 < n && !(pat[end] == '\\' && pat[end + 1] == 'E'))
                    end++;
                size_t stop = (end + 1 < n) ? end + 2 : n;
                if (nq_tok_bb_put(out, pat + i, stop - i))
                    return -1;
                i = stop - 1;
                continue;
            } else if (nq_tok_bb_put(out, pat + i, 2)) {
                return -1;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            if (nq_tok_bb_put(out, "[", 1))
                return -1;
            if (i + 1 < n && pat[i + 1] == '^') {
                if (nq_tok_bb_put(out, "^", 1))
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
                if (nq_tok_bb_put(out, pat + i, (size_t)(end - (pat + i))))
                    return -1;
                i = (size_t)(end - pat) - 1;
                continue;
            }
        }
        if (in_class && c == ']' && i != class_start)
            in_class = false;
        if (nq_tok_bb_put(out, &c, 1))
            return -1;
    }
    return 0;
}

int nq_tok_regex_compile(nq_regex *re, const char *pat, size_t n, bool literal, bool onig,
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

void nq_tok_regex_free(nq_regex *re)
{
    if (re->code)
        pcre2_code_free(re->code);
    re->code = NULL;
}

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
int nq_tok_regex_find_matches(const nq_regex *re, match_state *st, const char *s, size_t n,
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
            last_end += nq_tok_utf8_next((const unsigned char *)s + last_end, n - last_end, &cp);
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

static int add_step(nq_tokenizer *tok, pretok_step *s, ctx *c)
{
    pretok_step *n = realloc(tok->steps, (tok->n_steps + 1) * sizeof *n);
    if (!n) {
        nq_tok_regex_free(&s->re);
        return nq_fail(c->err, "%s: out of memory", c->name);
    }
    tok->steps = n;
    tok->steps[tok->n_steps++] = *s;
    return 0;
}

int nq_tok_load_pretok_one(nq_tokenizer *tok, json_t *p, ctx *c, const char *where, int depth)
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
            if (nq_tok_load_pretok_one(tok, e, c, sub, depth + 1))
                return -1;
        }
        return 0;
    }
    pretok_step s;
    memset(&s, 0, sizeof s);
    if (strcmp(type, "ByteLevel") == 0) {
        s.kind = STEP_BYTELEVEL;
        if (nq_tok_get_bool(p, "add_prefix_space", true, &s.add_prefix_space, c, where) ||
            nq_tok_get_bool(p, "use_regex", true, &s.use_regex, c, where))
            return -1;
        if (s.use_regex && !tok->gpt2_re.code) {
            /* byte_level.rs RE */
            static const char gpt2[] =
                "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
            if (nq_tok_regex_compile(&tok->gpt2_re, gpt2, sizeof gpt2 - 1, false, true, where, c->err))
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
        if (nq_tok_get_bool(p, "invert", false, &s.invert, c, where))
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
            if (nq_tok_regex_compile(&s.re, json_string_value(rx), json_string_length(rx), false, true,
                              what, c->err))
                return -1;
        } else if (json_is_string(str)) {
            if (json_string_length(str) == 0)
                return nq_fail(c->err, "%s: %s.pattern.String is empty", c->name, where);
            if (nq_tok_regex_compile(&s.re, json_string_value(str), json_string_length(str), true, false,
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

/* normalizer.rs NormalizedString::split: turns (offsets, is_match) into the kept pieces of
 * s[0..n) at `base` in buffer `buf`, appending non-empty ones to out. */
int nq_tok_apply_behavior(enc_state *st, mspanbuf *m, enum split_behavior beh, bool invert,
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
        if (nq_tok_sb_push(out, base + e.a, e.b - e.a))
            return nq_fail(st->err, "tokenizer: out of memory");
    }
    return 0;
}
