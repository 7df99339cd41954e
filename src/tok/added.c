/* Tokenizer: added tokens: the trie, leftmost-longest matching, and their tokenizer.json
 * section (see tok_internal.h). */
#include "tok/tok_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void nq_tok_trie_free(trie *t)
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
        const pm_slot *e = nq_tok_pm_get(&t->edges, node, c);
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
        if (nq_tok_pm_set(&t->edges, node, c, 0, child))
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
        const pm_slot *e = nq_tok_pm_get(&t->edges, node, (unsigned char)s[i]);
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

int nq_tok_load_added_tokens(nq_tokenizer *tok, json_t *arr, ctx *c)
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
        if (nq_tok_get_opt_string(t, "content", &a.content, &a.len, c, where))
            return -1;
        if (!a.content)
            return nq_fail(c->err, "%s: %s.content missing", c->name, where);
        if (nq_tok_get_bool(t, "special", false, &a.special, c, where) ||
            nq_tok_get_bool(t, "single_word", false, &a.single_word, c, where) ||
            nq_tok_get_bool(t, "lstrip", false, &a.lstrip, c, where) ||
            nq_tok_get_bool(t, "rstrip", false, &a.rstrip, c, where) ||
            nq_tok_get_bool(t, "normalized", !a.special, &a.normalized, c, where)) {
            free(a.content);
            return -1;
        }
        if (a.len == 0) { /* HF ignores empty tokens */
            free(a.content);
            continue;
        }
        int32_t prev = nq_tok_sm_get(&tok->added_map, a.content, a.len);
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
        int32_t id = nq_tok_sm_get(&tok->vocab, a.content, a.len);
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
        if (nq_tok_sm_set(&tok->added_map, tok->added[tok->n_added - 1].content, a.len, id))
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
        if (nq_tok_ensure_id(tok, a->id))
            return nq_fail(c->err, "%s: out of memory", c->name);
        free(tok->id_str[a->id]);
        tok->id_str[a->id] = NULL;
        if (nq_tok_set_id_str(tok, a->id, a->content, a->len))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }
    for (size_t k = 0; k < tok->n_added; k++) {
        added_token *a = &tok->added[k];
        if (!a->special)
            continue;
        tok->id_special[a->id] = true;
        int32_t v = nq_tok_sm_get(&tok->vocab, a->content, a->len);
        if (v >= 0 && tok->id_len[v] == a->len && memcmp(tok->id_str[v], a->content, a->len) == 0)
            tok->id_special[v] = true;
    }
    return 0;
}

/* added_vocabulary.rs find_matches + split_with_indices over s[0..n), which sits at `base` in
 * the text.  Appends pieces (text pieces and decided tokens) to out. */
int nq_tok_split_added(enc_state *st, const trie *t, const char *text, size_t base, size_t n,
                       piecebuf *out)
{
    const nq_tokenizer *tok = st->tok;
    const char *s = text + base;
    if (t->count == 0 || n == 0)
        return n ? nq_tok_pb_push(out, base, n, -1) : 0;
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
                size_t l = nq_tok_utf8_next((const unsigned char *)s + b, start - b, &cp);
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
                size_t l = nq_tok_utf8_next((const unsigned char *)s + c, b - c, &cp);
                if (c + l != b || !nq_tok_is_unicode_space(cp))
                    break;
                b = c;
            }
            start = b > start_offset ? b : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                size_t l = nq_tok_utf8_next((const unsigned char *)s + stop, n - stop, &cp);
                if (!nq_tok_is_unicode_space(cp))
                    break;
                stop += l;
            }
        }
        if (start_offset < start && nq_tok_pb_push(out, base + start_offset, start - start_offset, -1))
            return nq_fail(st->err, "tokenizer: out of memory");
        if (nq_tok_pb_push(out, base + start, stop - start, a->id))
            return nq_fail(st->err, "tokenizer: out of memory");
        start_offset = stop;
    }
    if (start_offset < n && nq_tok_pb_push(out, base + start_offset, n - start_offset, -1))
        return nq_fail(st->err, "tokenizer: out of memory");
    return 0;
}
