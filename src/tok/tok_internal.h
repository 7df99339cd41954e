/* Internals shared by the tokenizer's files (not for other modules):
 *   util.c       growable buffers, UTF-8, hash maps
 *   pretok.c     pre-tokenizer (byte-level alphabet, Oniguruma regexes on PCRE2, Split
 *                behaviours) and its tokenizer.json section
 *   added.c      added tokens (trie, leftmost-longest matching) and their section
 *   bpe.c        BPE model (vocabulary, merges, the merge loop, its cache) and its section
 *   load.c       tokenizer.json as a whole: ids, post-processor, decoder
 *   tokenizer.c  the encode pipeline, decode, lookups
 * See tokenizer.c for the huggingface/tokenizers files each behaviour mirrors. */
#ifndef NQ_TOK_INTERNAL_H
#define NQ_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tok/tokenizer.h"

/* Ids above this are refused: real vocabularies have up to ~2^18 entries, and a corrupt file
 * must not make us allocate gigabytes for the id table. */
#define NQ_TOK_MAX_ID (1 << 22)

/* Nesting limit for Sequence pre-tokenizers / post-processors (real files nest once). */
#define NQ_TOK_MAX_DEPTH 16

/* Backtracking budget per regex search; real split patterns use a tiny fraction of it, a
 * pathological pattern in a hostile file fails the encode instead of hanging. */
#define NQ_TOK_MATCH_LIMIT 5000000u

typedef struct {
    char *p;
    size_t n, cap;
} bytebuf;

typedef struct {
    int32_t *p;
    size_t n, cap;
} idbuf;

/* A piece of text: byte range [off, off+len) of some bytebuf. */
typedef struct {
    size_t off, len;
} span;

typedef struct {
    span *p;
    size_t n, cap;
} spanbuf;

#define NQ_INVALID_CP 0xFFFFFFFFu

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

typedef struct {
    pcre2_code *code;
    bool jit;
} nq_regex;

/* Per-encode matching state: match data sized for the largest pattern and a match context
 * carrying the backtracking limit. */
typedef struct {
    pcre2_match_data *md;
    pcre2_match_context *mc;
} match_state;

/* One (offsets, is_match) element of pattern.rs find_matches. */
typedef struct {
    size_t a, b;
    bool match;
} mspan;

typedef struct {
    mspan *p;
    size_t n, cap;
} mspanbuf;

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

typedef struct {
    const char *name; /* file name for messages */
    nq_error *err;
} ctx;

/* A piece of the pipeline: bytes in some buffer, or an added token already decided. */
typedef struct {
    size_t off, len;
    int32_t id; /* >= 0: added token, no further processing */
} piece;

typedef struct {
    piece *p;
    size_t n, cap;
} piecebuf;

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

typedef struct {
    int32_t id;
    int32_t prev, next;
    bool gone;
} symbol;

typedef struct {
    uint32_t rank;
    int32_t pos, merged;
} heap_item;

typedef struct {
    heap_item *p;
    size_t n, cap;
} heap;

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

/* Byte-level alphabet (pretok.c; byte_level.rs bytes_char): printable bytes stand for
 * themselves, the other 68 bytes map to U+0100.. in byte order. */
extern uint32_t nq_tok_byte_to_cp[256];
extern int16_t nq_tok_cp_to_byte[0x144]; /* -1: not a byte-level character */
extern pthread_once_t nq_tok_byte_tables_once;

/* util.c */
int nq_tok_bb_reserve(bytebuf *b, size_t extra);
int nq_tok_bb_put(bytebuf *b, const void *s, size_t n);
int nq_tok_ib_push(idbuf *b, int32_t v);
int nq_tok_ib_put(idbuf *b, const int32_t *v, size_t n);
int nq_tok_sb_push(spanbuf *b, size_t off, size_t len);
/* Length of the character at s (1..4), with its code point in *cp; a byte that does not start
 * a well-formed sequence (RFC 3629: no overlongs, surrogates or values past U+10FFFF) counts
 * as a 1-byte character with *cp = NQ_INVALID_CP.  PCRE2 (PCRE2_MATCH_INVALID_UTF) uses the
 * same definition, so our offsets always fall on its character boundaries. */
size_t nq_tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);
size_t nq_tok_utf8_put(char *out, uint32_t cp);
/* Unicode White_Space, which is what both Oniguruma's \s and Rust regex's \s mean (PCRE2's
 * UCP \s also takes U+180E, hence the explicit list). */
bool nq_tok_is_unicode_space(uint32_t c);
int32_t nq_tok_sm_get(const strmap *m, const char *key, size_t len);
/* Inserts or overwrites. */
int nq_tok_sm_set(strmap *m, const char *key, size_t len, int32_t val);
void nq_tok_sm_free(strmap *m);
const pm_slot *nq_tok_pm_get(const pairmap *m, int32_t a, int32_t b);
/* A later duplicate overwrites the earlier one, as HF's HashMap collect does. */
int nq_tok_pm_set(pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged);

/* pretok.c */
void nq_tok_init_byte_tables(void);
int nq_tok_regex_compile(nq_regex *re, const char *pat, size_t n, bool literal, bool onig,
                         const char *what, nq_error *err);
void nq_tok_regex_free(nq_regex *re);
/* pattern.rs: the matches of re over s with the gaps between them, covering all of s.
 * Iteration follows the onig crate's FindMatches: an empty match right where the previous
 * match ended is skipped by stepping one character. */
int nq_tok_regex_find_matches(const nq_regex *re, match_state *st, const char *s, size_t n,
                              mspanbuf *out, nq_error *err);
int nq_tok_load_pretok_one(nq_tokenizer *tok, json_t *p, ctx *c, const char *where, int depth);
/* normalizer.rs NormalizedString::split: turns (offsets, is_match) into the kept pieces of
 * s[0..n) at `base` in buffer `buf`, appending non-empty ones to out. */
int nq_tok_apply_behavior(enc_state *st, mspanbuf *m, enum split_behavior beh, bool invert,
                          size_t base, spanbuf *out);

/* added.c */
void nq_tok_trie_free(trie *t);
int nq_tok_load_added_tokens(nq_tokenizer *tok, json_t *arr, ctx *c);
/* added_vocabulary.rs find_matches + split_with_indices over s[0..n), which sits at `base` in
 * the text.  Appends pieces (text pieces and decided tokens) to out. */
int nq_tok_split_added(enc_state *st, const trie *t, const char *text, size_t base, size_t n,
                       piecebuf *out);

/* bpe.c */
int nq_tok_load_model(nq_tokenizer *tok, json_t *model, ctx *c);
void nq_tok_cache_free(bpe_cache *c);
int nq_tok_bpe_cached(enc_state *st, const char *w, size_t n, idbuf *out);

/* load.c */
int nq_tok_ensure_id(nq_tokenizer *tok, int32_t id);
/* Records the spelling of id if it has none yet. */
int nq_tok_set_id_str(nq_tokenizer *tok, int32_t id, const char *s, size_t n);
int nq_tok_get_bool(json_t *obj, const char *key, bool dflt, bool *out, ctx *c, const char *where);
/* Optional string field: *out is NULL when absent/null; otherwise malloc'd copy. */
int nq_tok_get_opt_string(json_t *obj, const char *key, char **out, size_t *len, ctx *c,
                          const char *where);
int nq_tok_get_id(json_t *v, int32_t *out);

/* tokenizer.c */
int nq_tok_pb_push(piecebuf *b, size_t off, size_t len, int32_t id);

#endif
