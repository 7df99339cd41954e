/* Tokenizer: tokenizer.json loading: ids, the post-processor, decoder, and the whole file (see
 * tok_internal.h). */
#include "tok/tok_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nq_tok_ensure_id(nq_tokenizer *tok, int32_t id)
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
int nq_tok_set_id_str(nq_tokenizer *tok, int32_t id, const char *s, size_t n)
{
    if (nq_tok_ensure_id(tok, id))
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

int nq_tok_get_bool(json_t *obj, const char *key, bool dflt, bool *out, ctx *c, const char *where)
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
int nq_tok_get_opt_string(json_t *obj, const char *key, char **out, size_t *len, ctx *c,
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

int nq_tok_get_id(json_t *v, int32_t *out)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= NQ_TOK_MAX_ID)
        return -1;
    *out = (int32_t)x;
    return 0;
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
        if (nq_tok_get_id(v, &id))
            return nq_fail(c->err, "%s: %s: special_tokens[\"%.40s\"].ids[%zu] invalid", c->name,
                           where, name, i);
        if (nq_tok_ib_push(out, id))
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
        if (!json_is_array(cls) || nq_tok_get_id(json_array_get(cls, 1), &ic) || !json_is_array(sep) ||
            nq_tok_get_id(json_array_get(sep, 1), &is))
            return nq_fail(c->err, "%s: %s: cls/sep must be [\"token\", id]", c->name, where);
        if (nq_tok_ib_push(&mypre, ic) || nq_tok_ib_push(&mypost, is))
            rc = nq_fail(c->err, "%s: out of memory", c->name);
    } else {
        return nq_fail(c->err, "%s: %s.type \"%.40s\" not supported", c->name, where, type);
    }
    if (!rc) {
        /* new pre = mine ++ old pre; new post = old post ++ mine */
        idbuf np = {0};
        if (nq_tok_ib_put(&np, mypre.p, mypre.n) || nq_tok_ib_put(&np, pre->p, pre->n) ||
            nq_tok_ib_put(post, mypost.p, mypost.n)) {
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
    pthread_once(&nq_tok_byte_tables_once, nq_tok_init_byte_tables);
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
    if (nq_tok_load_model(tok, json_object_get(root, "model"), c) ||
        nq_tok_load_added_tokens(tok, json_object_get(root, "added_tokens"), c))
        goto fail;
    json_t *pt = json_object_get(root, "pre_tokenizer");
    if (pt && !json_is_null(pt) && nq_tok_load_pretok_one(tok, pt, c, "pre_tokenizer", 0))
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
    if (nq_tok_regex_compile(&tok->word_re, word, sizeof word - 1, false, false, "word class", c->err))
        goto fail;

    /* vocab_size covers every id encode can emit: vocabulary, added tokens and the
     * post-processor's ids (which a file may set to anything). */
    {
        size_t top = 0;
        for (size_t i = 0; i < tok->n_pre + tok->n_post; i++) {
            int32_t id = i < tok->n_pre ? tok->pre_ids[i] : tok->post_ids[i - tok->n_pre];
            if (nq_tok_ensure_id(tok, id)) {
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
        if (nq_tok_bb_put(&b, chunk, got)) {
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
