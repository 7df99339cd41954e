/* Tokenizer: the BPE model: vocabulary and merges from tokenizer.json, the merge loop and its
 * cache (see tok_internal.h). */
#include "tok/tok_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nq_tok_load_model(nq_tokenizer *tok, json_t *model, ctx *c)
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
    if (nq_tok_get_bool(model, "fuse_unk", false, &tok->fuse_unk, c, "model") ||
        nq_tok_get_bool(model, "byte_fallback", false, &tok->byte_fallback, c, "model") ||
        nq_tok_get_bool(model, "ignore_merges", false, &tok->ignore_merges, c, "model") ||
        nq_tok_get_opt_string(model, "unk_token", &tok->unk_token, NULL, c, "model") ||
        nq_tok_get_opt_string(model, "continuing_subword_prefix", &tok->prefix, &tok->prefix_len, c,
                       "model") ||
        nq_tok_get_opt_string(model, "end_of_word_suffix", &tok->suffix, &tok->suffix_len, c, "model"))
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
        if (nq_tok_get_id(val, &id))
            return nq_fail(c->err, "%s: model.vocab[\"%.64s\"]: id is not an integer in [0, %d)",
                           c->name, key, NQ_TOK_MAX_ID);
        size_t n = strlen(key);
        char *k = tok->vocab_keys + used;
        memcpy(k, key, n + 1);
        used += n + 1;
        if (nq_tok_set_id_str(tok, id, key, n) || nq_tok_sm_set(&tok->vocab, k, n, id))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }

    if (tok->unk_token) {
        tok->unk_id = nq_tok_sm_get(&tok->vocab, tok->unk_token, strlen(tok->unk_token));
        /* HF only fails when an unknown character actually needs the unk token. */
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_ids[b] = nq_tok_sm_get(&tok->vocab, name, 6);
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
        int32_t ia = nq_tok_sm_get(&tok->vocab, a, la), ib = nq_tok_sm_get(&tok->vocab, b, lb);
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
        int32_t im = nq_tok_sm_get(&tok->vocab, m, lm);
        if (im < 0) {
            nq_fail(c->err, "%s: model.merges[%zu]: merged token \"%.*s\" not in vocab", c->name,
                    i, (int)(lm > 64 ? 64 : lm), m);
            if (m != stackbuf)
                free(m);
            return -1;
        }
        if (m != stackbuf)
            free(m);
        if (i > UINT32_MAX || nq_tok_pm_set(&tok->merges, ia, ib, (uint32_t)i, im))
            return nq_fail(c->err, "%s: out of memory", c->name);
    }
    return 0;
}

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

void nq_tok_cache_free(bpe_cache *c)
{
    nq_tok_sm_free(&c->map);
    free(c->spans.p);
    free(c->ids.p);
    while (c->chunks) {
        keychunk *k = c->chunks->next;
        free(c->chunks);
        c->chunks = k;
    }
}

/* Min-heap on (rank, pos): word.rs Merge ordering. */
static bool heap_less(heap_item a, heap_item b)
{
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

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
        int32_t id = nq_tok_sm_get(&tok->vocab, w, n);
        if (id >= 0)
            return nq_tok_ib_push(out, id) ? nq_fail(st->err, "tokenizer: out of memory") : 0;
    }
    st->syms.n = 0;
    int32_t unk_pending = -1; /* fused/unfused unk waiting to be pushed */
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t cl = nq_tok_utf8_next((const unsigned char *)w + i, n - i, &cp);
        bool first = i == 0, last = i + cl == n;
        const char *key = w + i;
        size_t klen = cl;
        if ((!first && tok->prefix) || (last && tok->suffix)) {
            st->scratch.n = 0;
            if ((!first && tok->prefix && nq_tok_bb_put(&st->scratch, tok->prefix, tok->prefix_len)) ||
                nq_tok_bb_put(&st->scratch, w + i, cl) ||
                (last && tok->suffix && nq_tok_bb_put(&st->scratch, tok->suffix, tok->suffix_len)))
                return nq_fail(st->err, "tokenizer: out of memory");
            key = st->scratch.p;
            klen = st->scratch.n;
        }
        int32_t id = nq_tok_sm_get(&tok->vocab, key, klen);
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
        const pm_slot *m = nq_tok_pm_get(&tok->merges, sy[i].id, sy[i + 1].id);
        if (m && heap_push(&st->heap, (heap_item){m->rank, (int32_t)i, m->merged}))
            return nq_fail(st->err, "tokenizer: out of memory");
    }
    while (st->heap.n) {
        heap_item top = heap_pop(&st->heap);
        symbol *cur = &sy[top.pos];
        if (cur->gone || cur->next < 0)
            continue;
        symbol *right = &sy[cur->next];
        const pm_slot *m = nq_tok_pm_get(&tok->merges, cur->id, right->id);
        if (!m || m->merged != top.merged)
            continue; /* stale entry */
        cur->id = top.merged;
        right->gone = true;
        cur->next = right->next;
        if (cur->next >= 0)
            sy[cur->next].prev = top.pos;
        if (cur->prev >= 0) {
            const pm_slot *pm = nq_tok_pm_get(&tok->merges, sy[cur->prev].id, cur->id);
            if (pm && heap_push(&st->heap, (heap_item){pm->rank, cur->prev, pm->merged}))
                return nq_fail(st->err, "tokenizer: out of memory");
        }
        if (cur->next >= 0) {
            const pm_slot *nm = nq_tok_pm_get(&tok->merges, cur->id, sy[cur->next].id);
            if (nm && heap_push(&st->heap, (heap_item){nm->rank, top.pos, nm->merged}))
                return nq_fail(st->err, "tokenizer: out of memory");
        }
    }
    for (size_t i = 0; i < ns; i++)
        if (!sy[i].gone && nq_tok_ib_push(out, sy[i].id))
            return nq_fail(st->err, "tokenizer: out of memory");
    return 0;
}

int nq_tok_bpe_cached(enc_state *st, const char *w, size_t n, idbuf *out)
{
    bpe_cache *c = &st->cache;
    int32_t k = nq_tok_sm_get(&c->map, w, n);
    if (k >= 0) {
        span s = c->spans.p[k];
        return nq_tok_ib_put(out, c->ids.p + s.off, s.len) ? nq_fail(st->err, "tokenizer: out of memory")
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
    if (!key || nq_tok_ib_put(&c->ids, out->p + start, out->n - start) ||
        nq_tok_sb_push(&c->spans, off, out->n - start) ||
        nq_tok_sm_set(&c->map, key, n, (int32_t)(c->spans.n - 1)))
        return nq_fail(st->err, "tokenizer: out of memory");
    return 0;
}
