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
 * spellings whose meaning differs are rewritten (see translate_regex in pretok.c).
 *
 * This file: the encode pipeline, decode and lookups; tok_internal.h lists the others. */
#include "tok/tokenizer.h"
#include "tok/tok_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void nq_tokenizer_free(nq_tokenizer *tok)
{
    if (!tok)
        return;
    for (size_t i = 0; i < tok->n_ids; i++)
        free(tok->id_str[i]);
    free(tok->id_str);
    free(tok->id_len);
    free(tok->id_special);
    nq_tok_sm_free(&tok->vocab);
    free(tok->vocab_keys);
    nq_tok_sm_free(&tok->added_map);
    free(tok->merges.slots);
    free(tok->unk_token);
    free(tok->prefix);
    free(tok->suffix);
    for (size_t i = 0; i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    nq_tok_trie_free(&tok->trie_raw);
    nq_tok_trie_free(&tok->trie_norm);
    nq_tok_regex_free(&tok->word_re);
    for (size_t i = 0; i < tok->n_steps; i++)
        nq_tok_regex_free(&tok->steps[i].re);
    free(tok->steps);
    nq_tok_regex_free(&tok->gpt2_re);
    free(tok->pre_ids);
    free(tok->post_ids);
    free(tok);
}

int nq_tok_pb_push(piecebuf *b, size_t off, size_t len, int32_t id)
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

/* Runs the pre-tokenizer steps over one text piece and BPEs the results into out. */
static int encode_piece(enc_state *st, const char *text, size_t len, idbuf *out, bytebuf *bufs,
                        spanbuf *lists)
{
    const nq_tokenizer *tok = st->tok;
    /* Double-buffered: lists[cur] holds spans into bufs[cur]. */
    int cur = 0;
    bufs[0].n = bufs[1].n = 0;
    lists[0].n = lists[1].n = 0;
    if (nq_tok_bb_put(&bufs[0], text, len) || nq_tok_sb_push(&lists[0], 0, len))
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
                if (nq_tok_regex_find_matches(&step->re, &st->ms, src->p + sp.off, sp.len, &st->matches,
                                       st->err) ||
                    nq_tok_apply_behavior(st, &st->matches, step->behavior, step->invert, sp.off,
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
                if (nq_tok_bb_put(&st->scratch, " ", 1) || nq_tok_bb_put(&st->scratch, p, pn))
                    return nq_fail(st->err, "tokenizer: out of memory");
                q = st->scratch.p;
                qn = st->scratch.n;
            }
            size_t nsub = 1;
            if (step->use_regex) {
                if (nq_tok_regex_find_matches(&tok->gpt2_re, &st->ms, q, qn, &st->matches, st->err))
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
                if (nq_tok_bb_reserve(dst, 2 * (b - a)))
                    return nq_fail(st->err, "tokenizer: out of memory");
                for (size_t x = a; x < b; x++)
                    dst->n += nq_tok_utf8_put(dst->p + dst->n, nq_tok_byte_to_cp[(unsigned char)q[x]]);
                if (nq_tok_sb_push(&lists[nxt], off, dst->n - off))
                    return nq_fail(st->err, "tokenizer: out of memory");
            }
        }
        cur = nxt;
    }
    for (size_t i = 0; i < lists[cur].n; i++) {
        span sp = lists[cur].p[i];
        if (sp.len && nq_tok_bpe_cached(st, bufs[cur].p + sp.off, sp.len, out))
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

    if (add_special && nq_tok_ib_put(&out, tok->pre_ids, tok->n_pre)) {
        nq_fail(err, "tokenizer: out of memory");
        goto done;
    }
    /* 1. non-normalized added tokens on the raw text; 2. normalized ones on what is left
     * (there is no normalizer, so "normalized" text is the raw text). */
    if (nq_tok_split_added(&st, &tok->trie_raw, text, 0, len, &p1))
        goto done;
    for (size_t i = 0; i < p1.n; i++) {
        if (p1.p[i].id >= 0) {
            if (nq_tok_pb_push(&p2, p1.p[i].off, p1.p[i].len, p1.p[i].id)) {
                nq_fail(err, "tokenizer: out of memory");
                goto done;
            }
        } else if (nq_tok_split_added(&st, &tok->trie_norm, text, p1.p[i].off, p1.p[i].len, &p2)) {
            goto done;
        }
    }
    for (size_t i = 0; i < p2.n; i++) {
        if (p2.p[i].id >= 0) {
            if (nq_tok_ib_push(&out, p2.p[i].id)) {
                nq_fail(err, "tokenizer: out of memory");
                goto done;
            }
        } else if (encode_piece(&st, text + p2.p[i].off, p2.p[i].len, &out, bufs, lists)) {
            goto done;
        }
    }
    if (add_special && nq_tok_ib_put(&out, tok->post_ids, tok->n_post)) {
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
    nq_tok_cache_free(&st.cache);
    if (st.ms.md)
        pcre2_match_data_free(st.ms.md);
    if (st.ms.mc)
        pcre2_match_context_free(st.ms.mc);
    return rc;
}

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
            if ((!first && nq_tok_bb_put(&b, " ", 1)) || nq_tok_bb_put(&b, s, sl))
                goto oom;
            first = false;
            continue;
        }
        /* byte_level.rs decode_chain: a token made only of byte-level characters becomes
         * those bytes; any other token is copied as it is spelled. */
        size_t start = b.n;
        bool all = true;
        if (nq_tok_bb_reserve(&b, sl))
            goto oom;
        for (size_t k = 0; k < sl;) {
            uint32_t cp;
            size_t l = nq_tok_utf8_next((const unsigned char *)s + k, sl - k, &cp);
            if (cp == NQ_INVALID_CP || cp >= 0x144 || nq_tok_cp_to_byte[cp] < 0) {
                all = false;
                break;
            }
            b.p[b.n++] = (char)nq_tok_cp_to_byte[cp];
            k += l;
        }
        if (!all) {
            b.n = start;
            if (nq_tok_bb_put(&b, s, sl))
                goto oom;
        }
    }
    if (nq_tok_bb_put(&b, "", 1))
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
    int32_t id = nq_tok_sm_get(&tok->added_map, token, n);
    return id >= 0 ? id : nq_tok_sm_get(&tok->vocab, token, n);
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
