#include "export/gguf_vocab.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"

/* Pre-tokenizer names and the original tokenizer.json regex that
 * llama.cpp's src/llama-vocab.cpp quotes for each (llama-cpp-python 0.3.36's
 * vendored llama.cpp).  Where several names share one regex (qwen2,
 * stablelm2, grok-2) the first listed is used.  Names are the ones
 * convert_hf_to_gguf.py's get_vocab_base_pre writes. */
static const struct {
    const char *name;
    const char *regex;
} pre_table[] = {
    {"llama-bpe",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"qwen2",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"qwen35",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"tekken",
     "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"gpt-4o",
     "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"jais-2",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}"},
    {"seed-coder",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\r\n]+|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
    {"bailingmoe",
     "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"},
    {"exaone-moe",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"},
    /* ByteLevel(use_regex=true): GPT-2's own pattern */
    {"gpt-2", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
};

const char *nq_gguf_pre_tokenizer_for_regex(const char *regex)
{
    for (size_t i = 0; i < sizeof pre_table / sizeof pre_table[0]; i++)
        if (strcmp(pre_table[i].regex, regex) == 0)
            return pre_table[i].name;
    return NULL;
}

static const char *gpt2_regex(void) { return pre_table[sizeof pre_table / sizeof pre_table[0] - 1].regex; }

/* The split regex of a tokenizer.json pre_tokenizer: one Split (Isolated,
 * not inverted) followed by ByteLevel(use_regex=false), or a lone ByteLevel
 * with its regex. */
static int split_regex(json_t *pre, const char *path, const char **regex, nq_error *err)
{
    const char *type = json_string_value(json_object_get(pre, "type"));
    if (type && strcmp(type, "ByteLevel") == 0) {
        json_t *ur = json_object_get(pre, "use_regex");
        if (ur && !json_is_true(ur))
            return nq_fail(err, "%s: ByteLevel pre-tokenizer without a regex has no llama.cpp equivalent", path);
        *regex = gpt2_regex();
        return 0;
    }
    json_t *list = type && strcmp(type, "Sequence") == 0 ? json_object_get(pre, "pretokenizers") : NULL;
    if (!json_is_array(list) || json_array_size(list) != 2)
        return nq_fail(err, "%s: pre_tokenizer %s is not Split + ByteLevel; llama.cpp's BPE needs one of its known split regexes",
                       path, type ? type : "(none)");
    json_t *split = json_array_get(list, 0), *bl = json_array_get(list, 1);
    const char *st = json_string_value(json_object_get(split, "type"));
    const char *bt = json_string_value(json_object_get(bl, "type"));
    const char *r = json_string_value(json_object_get(json_object_get(split, "pattern"), "Regex"));
    const char *behavior = json_string_value(json_object_get(split, "behavior"));
    if (!st || strcmp(st, "Split") != 0 || !bt || strcmp(bt, "ByteLevel") != 0 || !r ||
        json_is_true(json_object_get(split, "invert")) ||
        (behavior && strcmp(behavior, "Isolated") != 0) ||
        json_is_true(json_object_get(bl, "use_regex")))
        return nq_fail(err, "%s: pre_tokenizer is not Split(Regex, Isolated) + ByteLevel(use_regex=false)", path);
    *regex = r;
    return 0;
}

/* does_token_look_special in conversion/base.py */
static bool looks_special(const char *t)
{
    size_t n = strlen(t);
    if (strcmp(t, "<pad>") == 0 || strcmp(t, "<mask>") == 0 || strcmp(t, "<2mass>") == 0 ||
        strcmp(t, "[@BOS@]") == 0)
        return true;
    if (n >= 4 && strncmp(t, "<|", 2) == 0 && strcmp(t + n - 2, "|>") == 0)
        return true;
    /* "<｜" ... "｜>" (fullwidth bar, 3 UTF-8 bytes) */
    if (n >= 8 && strncmp(t, "<\xef\xbd\x9c", 4) == 0 && strcmp(t + n - 4, "\xef\xbd\x9c>") == 0)
        return true;
    if (n >= 8 && strncmp(t, "<unused", 7) == 0 && t[n - 1] == '>')
        return true;
    return false;
}

static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    for (const char *p = s; (p = strstr(p, from)); p += fl)
        n++;
    char *out = malloc(strlen(s) + n * (tl > fl ? tl - fl : 0) + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p = s;;) {
        const char *q = strstr(p, from);
        if (!q) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, (size_t)(q - p));
        o += q - p;
        memcpy(o, to, tl);
        o += tl;
        p = q + fl;
    }
    return out;
}

static json_t *load_json_opt(const char *dir, const char *name, nq_error *err, bool *bad)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (stat(path, &st) != 0)
        return NULL;
    json_error_t je;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!j) {
        nq_fail(err, "%s: invalid JSON at line %d: %s", path, je.line, je.text);
        *bad = true;
    }
    return j;
}

/* tokenizer_config.json's "X_token": a string or {"content": string}. */
static const char *tc_token(json_t *tc, const char *typ)
{
    char key[32];
    snprintf(key, sizeof key, "%s_token", typ);
    json_t *e = json_object_get(tc, key);
    if (json_is_string(e))
        return json_string_value(e);
    if (json_is_object(e))
        return json_string_value(json_object_get(e, "content"));
    return NULL;
}

int nq_gguf_add_vocab(nq_gguf_writer *w, const char *dir, int config_vocab, int *vocab_size,
                      nq_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bool bad = false;
    int rc = -1;
    json_t *tok = load_json_opt(dir, "tokenizer.json", err, &bad);
    json_t *tc = bad ? NULL : load_json_opt(dir, "tokenizer_config.json", err, &bad);
    json_t *cfg = bad ? NULL : load_json_opt(dir, "config.json", err, &bad);
    char **tokens = NULL;
    int32_t *types = NULL;
    char **merges = NULL;
    size_t nmerges = 0;
    int n = 0;
    if (bad)
        goto done;
    if (!tok) {
        nq_fail(err, "%s: missing (llama.cpp needs the vocabulary inside the GGUF file)", path);
        goto done;
    }
    json_t *model = json_object_get(tok, "model");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    json_t *vocab = json_object_get(model, "vocab");
    if (!mtype || strcmp(mtype, "BPE") != 0 || !json_is_object(vocab)) {
        nq_fail(err, "%s: model type %s: only byte-level BPE tokenizers (GGUF 'gpt2') are supported",
                path, mtype ? mtype : "(none)");
        goto done;
    }
    if (json_object_get(tok, "normalizer") && !json_is_null(json_object_get(tok, "normalizer"))) {
        nq_fail(err, "%s: a normalizer is not supported for a 'gpt2' GGUF vocabulary", path);
        goto done;
    }
    const char *regex = NULL;
    if (split_regex(json_object_get(tok, "pre_tokenizer"), path, &regex, err) != 0)
        goto done;
    const char *pre = nq_gguf_pre_tokenizer_for_regex(regex);
    if (!pre) {
        nq_fail(err, "%s: the pre-tokenizer regex matches none that llama.cpp knows (refusing to guess a tokenizer.ggml.pre): %.200s",
                path, regex);
        goto done;
    }
    /* vocab size: config's, padded to a multiple of 8 (NemotronHModel.set_vocab) */
    json_t *added = json_object_get(tok, "added_tokens");
    int max_id = -1;
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || id > 100000000) {
            nq_fail(err, "%s: token '%.60s' has an invalid id", path, k);
            goto done;
        }
        if (id > max_id)
            max_id = (int)id;
    }
    size_t ai;
    json_t *at;
    json_array_foreach(added, ai, at) {
        json_int_t id = json_integer_value(json_object_get(at, "id"));
        if (!json_is_string(json_object_get(at, "content")) || id < 0 || id > 100000000) {
            nq_fail(err, "%s: added token %zu is malformed", path, ai);
            goto done;
        }
        if (id > max_id)
            max_id = (int)id;
    }
    n = config_vocab > 0 ? config_vocab : max_id + 1;
    n = (n + 7) / 8 * 8;
    if (max_id >= n) {
        nq_fail(err, "%s: token id %d is outside config.json's vocab_size %d", path, max_id, config_vocab);
        goto done;
    }
    tokens = calloc((size_t)n, sizeof *tokens);
    types = calloc((size_t)n, sizeof *types);
    if (!tokens || !types) {
        nq_fail(err, "%s: out of memory", path);
        goto done;
    }
    json_object_foreach(vocab, k, v) {
        int id = (int)json_integer_value(v);
        free(tokens[id]);
        tokens[id] = strdup(k);
        types[id] = 1; /* NORMAL */
    }
    json_array_foreach(added, ai, at) {
        int id = (int)json_integer_value(json_object_get(at, "id"));
        const char *content = json_string_value(json_object_get(at, "content"));
        free(tokens[id]);
        if (json_is_true(json_object_get(at, "special")) || looks_special(content)) {
            tokens[id] = strdup(content);
            types[id] = 3; /* CONTROL */
        } else {
            tokens[id] = replace_all(content, "\xe2\x96\x81", " ");
            types[id] = 4; /* USER_DEFINED */
        }
    }
    for (int i = 0; i < n; i++) {
        if (!tokens[i] && types[i] == 0) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", i);
            tokens[i] = strdup(pad);
            types[i] = 5; /* UNUSED */
        }
        if (!tokens[i]) {
            nq_fail(err, "%s: out of memory", path);
            goto done;
        }
    }
    /* merges: "a b" strings, or [a, b] pairs joined with a space after
     * spaces inside the parts are written as U+0120 (gguf-py SpecialVocab) */
    json_t *jm = json_object_get(model, "merges");
    nmerges = json_array_size(jm);
    merges = calloc(nmerges ? nmerges : 1, sizeof *merges);
    if (!merges) {
        nq_fail(err, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < nmerges; i++) {
        json_t *m = json_array_get(jm, i);
        if (json_is_string(m)) {
            merges[i] = strdup(json_string_value(m));
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            char *a = replace_all(json_string_value(json_array_get(m, 0)), " ", "\xc4\xa0");
            char *b = replace_all(json_string_value(json_array_get(m, 1)), " ", "\xc4\xa0");
            if (a && b && (merges[i] = malloc(strlen(a) + strlen(b) + 2)))
                sprintf(merges[i], "%s %s", a, b);
            free(a);
            free(b);
        } else {
            nq_fail(err, "%s: merge %zu is neither \"a b\" nor [a, b]", path, i);
            goto done;
        }
        if (!merges[i]) {
            nq_fail(err, "%s: out of memory", path);
            goto done;
        }
    }
    if (nq_gguf_add_str(w, "tokenizer.ggml.model", "gpt2", err) != 0 ||
        nq_gguf_add_str(w, "tokenizer.ggml.pre", pre, err) != 0 ||
        nq_gguf_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, NULL,
                            (uint64_t)n, err) != 0 ||
        nq_gguf_add_arr_i32(w, "tokenizer.ggml.token_type", types, (uint64_t)n, err) != 0 ||
        (nmerges && nq_gguf_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges,
                                        NULL, nmerges, err) != 0))
        goto done;

    /* special ids and add_*_token (SpecialVocab) */
    static const char *const typs[] = {"bos", "eos", "unk", "sep", "pad", "mask"};
    static const char *const keys[] = {"bos_token_id", "eos_token_id", "unknown_token_id",
                                       "seperator_token_id", "padding_token_id", "mask_token_id"};
    int ids[6] = {-1, -1, -1, -1, -1, -1};
    int add[3] = {-1, -1, -1}; /* bos, eos, sep */
    json_t *post = json_object_get(tok, "post_processor");
    if (json_is_object(post)) {
        json_t *procs = json_object_get(post, "processors");
        size_t np = json_is_array(procs) ? json_array_size(procs) : 1;
        for (size_t i = 0; i < np; i++) {
            json_t *p = json_is_array(procs) ? json_array_get(procs, i) : post;
            const char *pt = json_string_value(json_object_get(p, "type"));
            if (!pt)
                continue;
            if (strcmp(pt, "ByteLevel") == 0) {
                if (add[0] < 0)
                    add[0] = 0;
                if (add[1] < 0)
                    add[1] = 0;
            } else if (strcmp(pt, "RobertaProcessing") == 0) {
                add[0] = add[1] = add[2] = 1;
            } else if (strcmp(pt, "TemplateProcessing") == 0) {
                json_t *single = json_object_get(p, "single");
                size_t ns = json_array_size(single);
                if (ns > 1) {
                    const char *first = json_string_value(json_object_get(
                        json_object_get(json_array_get(single, 0), "SpecialToken"), "id"));
                    const char *last = json_string_value(json_object_get(
                        json_object_get(json_array_get(single, ns - 1), "SpecialToken"), "id"));
                    const char *tb = tc ? tc_token(tc, "bos") : NULL;
                    const char *tcls = tc ? tc_token(tc, "cls") : NULL;
                    const char *te = tc ? tc_token(tc, "eos") : NULL;
                    if (first)
                        add[0] = !tc || (tb && strcmp(first, tb) == 0) ||
                                 (tcls && strcmp(first, tcls) == 0) || (!tb && !tcls);
                    if (last)
                        add[1] = !tc || !te || strcmp(last, te) == 0;
                }
            }
        }
    }
    if (tc) {
        for (int t = 0; t < 6; t++) {
            char key[32];
            snprintf(key, sizeof key, "add_%s_token", typs[t]);
            json_t *a = json_object_get(tc, key);
            int slot = t == 0 ? 0 : t == 1 ? 1 : t == 3 ? 2 : -1;
            if (slot >= 0 && json_is_boolean(a) && add[slot] < 0)
                add[slot] = json_is_true(a);
            const char *content = tc_token(tc, typs[t]);
            if (!content)
                continue;
            json_array_foreach(added, ai, at) {
                if (strcmp(json_string_value(json_object_get(at, "content")), content) == 0) {
                    ids[t] = (int)json_integer_value(json_object_get(at, "id"));
                    break;
                }
            }
        }
    }
    for (int t = 0; t < 6; t++) {
        char key[32];
        snprintf(key, sizeof key, "%s_token_id", typs[t]);
        json_t *c = json_object_get(cfg, key);
        if (ids[t] < 0 && json_is_integer(c) && json_integer_value(c) >= 0 &&
            json_integer_value(c) < n)
            ids[t] = (int)json_integer_value(c);
    }
    for (int t = 0; t < 6; t++) {
        char key[64];
        snprintf(key, sizeof key, "tokenizer.ggml.%s", keys[t]);
        if (ids[t] >= 0 && nq_gguf_add_u32(w, key, (uint32_t)ids[t], err) != 0)
            goto done;
    }
    static const char *const addk[] = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                                       "tokenizer.ggml.add_sep_token"};
    for (int t = 0; t < 3; t++)
        if (add[t] >= 0 && nq_gguf_add_bool(w, addk[t], add[t] == 1, err) != 0)
            goto done;
    /* chat template: tokenizer_config.json, else chat_template.jinja */
    const char *tmpl = tc ? json_string_value(json_object_get(tc, "chat_template")) : NULL;
    char *jinja = NULL;
    if (!tmpl) {
        char jp[4096];
        struct stat st;
        snprintf(jp, sizeof jp, "%s/chat_template.jinja", dir);
        if (stat(jp, &st) == 0) {
            size_t len;
            jinja = nq_read_file(jp, &len, err);
            if (!jinja)
                goto done;
            tmpl = jinja;
        }
    }
    if (tmpl && nq_gguf_add_str(w, "tokenizer.chat_template", tmpl, err) != 0) {
        free(jinja);
        goto done;
    }
    free(jinja);
    *vocab_size = n;
    rc = 0;
done:
    if (tokens)
        for (int i = 0; i < n; i++)
            free(tokens[i]);
    free(tokens);
    free(types);
    if (merges)
        for (size_t i = 0; i < nmerges; i++)
            free(merges[i]);
    free(merges);
    json_decref(tok);
    json_decref(tc);
    json_decref(cfg);
    return rc;
}
