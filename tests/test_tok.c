/* Tokenizer tests.  Every expected id list comes from Hugging Face `tokenizers` 0.23.2 (the
 * Rust library behind transformers), stored by tests/gen/gen_tok_fixtures.py under
 * tests/fixtures/tok/ and by the project's reference run in tests/fixtures/tiny_ref.json. */
#include "testutil.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tok/tokenizer.h"

static json_t *load_fixture(const char *rel)
{
    json_error_t je;
    json_t *j = json_load_file(nq_test_path(rel), JSON_ALLOW_NUL, &je);
    if (!j)
        fail_msg("%s: %s (line %d)", rel, je.text, je.line);
    return j;
}

static nq_tokenizer *load_tiny(void)
{
    nq_error err = {{0}};
    nq_tokenizer *tok = nq_tokenizer_load(nq_test_path("models/tiny-nemotron-h/tokenizer.json"), &err);
    if (!tok)
        fail_msg("load: %s", err.msg);
    return tok;
}

/* Rust String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.  HF's ByteLevel
 * decoder ends with it; our decode returns the raw bytes, so compare through this. */
static char *utf8_lossy(const char *s, size_t n, size_t *out_len)
{
    char *o = malloc(3 * n + 1);
    size_t w = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t need = 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            o[w++] = (char)c;
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        }
        size_t k = 1;
        bool ok = need > 0;
        for (; ok && k <= need; k++) {
            if (i + k >= n) {
                ok = false;
                break;
            }
            unsigned b = u[i + k];
            unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
            if (b < l || b > h) {
                ok = false;
                break;
            }
        }
        if (ok) {
            memcpy(o + w, s + i, need + 1);
            w += need + 1;
            i += need + 1;
        } else {
            memcpy(o + w, "\xEF\xBF\xBD", 3);
            w += 3;
            i += k > 1 ? k : 1; /* the valid prefix (maximal subpart), at least one byte */
        }
    }
    o[w] = 0;
    *out_len = w;
    return o;
}

static void ids_of(json_t *arr, int32_t **ids, size_t *n)
{
    *n = json_array_size(arr);
    *ids = malloc((*n + 1) * sizeof **ids);
    for (size_t i = 0; i < *n; i++)
        (*ids)[i] = (int32_t)json_integer_value(json_array_get(arr, i));
}

static bool same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb, size_t *where)
{
    size_t m = na < nb ? na : nb;
    for (size_t i = 0; i < m; i++)
        if (a[i] != b[i]) {
            *where = i;
            return false;
        }
    *where = m;
    return na == nb;
}

static void print_ids(const char *label, const int32_t *a, size_t n)
{
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 80; i++)
        fprintf(stderr, " %d", a[i]);
    fprintf(stderr, n > 80 ? " ...\n" : "\n");
}

/* Checks one fixture case object {text, ids, ids_special?, decoded?, decoded_skip?}.
 * Returns the number of mismatches (and prints them). */
static int check_case(const nq_tokenizer *tok, json_t *cs, const char *label)
{
    json_t *jt = json_object_get(cs, "text");
    const char *text = json_string_value(jt);
    size_t tlen = json_string_length(jt);
    int bad = 0;
    for (int sp = 0; sp < 2; sp++) {
        json_t *want_j = json_object_get(cs, sp ? "ids_special" : "ids");
        if (!want_j)
            continue;
        int32_t *want, *got;
        size_t nw, ng, at;
        ids_of(want_j, &want, &nw);
        nq_error err = {{0}};
        if (nq_tokenizer_encode(tok, text, tlen, sp, &got, &ng, &err)) {
            fprintf(stderr, "%s: encode failed: %s\n", label, err.msg);
            free(want);
            return bad + 1;
        }
        if (!same_ids(got, ng, want, nw, &at)) {
            fprintf(stderr, "%s: add_special=%d: ids differ at %zu for text \"%.80s\"\n", label, sp,
                    at, text);
            print_ids("want", want, nw);
            print_ids("got ", got, ng);
            bad++;
        }
        /* decode: ids without skipping, ids_special with skip_special; the fixture stores
         * HF's output where it differs from the text (null or absent otherwise) */
        const char *dkey = sp ? "decoded_skip" : "decoded";
        json_t *dj = json_object_get(cs, dkey);
        if (sp == 0 || json_object_get(cs, dkey)) {
            const char *exp = json_is_string(dj) ? json_string_value(dj) : text;
            size_t elen = json_is_string(dj) ? json_string_length(dj) : tlen;
            char *dec;
            size_t dl;
            if (nq_tokenizer_decode(tok, want, nw, sp, &dec, &dl, &err)) {
                fprintf(stderr, "%s: decode failed: %s\n", label, err.msg);
                bad++;
            } else {
                size_t ll;
                char *lossy = utf8_lossy(dec, dl, &ll);
                if (ll != elen || memcmp(lossy, exp, ll) != 0) {
                    fprintf(stderr, "%s: decode(skip=%d) of \"%.60s\" gave \"%.80s\", want "
                            "\"%.80s\"\n", label, sp, text, lossy, exp);
                    bad++;
                }
                free(lossy);
                free(dec);
            }
        }
        free(want);
        free(got);
    }
    return bad;
}

/* ------------------------------------------------------------------------------------------ */

static void test_tiny_reference_cases(void **state)
{
    (void)state;
    nq_tokenizer *tok = load_tiny();
    json_t *ref = load_fixture("tests/fixtures/tiny_ref.json");
    json_t *cases = json_object_get(ref, "tokenize");
    assert_true(json_array_size(cases) >= 6);
    int bad = 0;
    size_t i;
    json_t *cs;
    json_array_foreach(cases, i, cs) {
        char label[64];
        snprintf(label, sizeof label, "tiny_ref.tokenize[%zu]", i);
        bad += check_case(tok, cs, label);
        /* the bundled file has no post_processor: add_special changes nothing */
        int32_t *a, *b;
        size_t na, nb, at;
        nq_error err = {{0}};
        const char *t = json_string_value(json_object_get(cs, "text"));
        assert_int_equal(nq_tokenizer_encode(tok, t, strlen(t), true, &a, &na, &err), 0);
        assert_int_equal(nq_tokenizer_encode(tok, t, strlen(t), false, &b, &nb, &err), 0);
        assert_true(same_ids(a, na, b, nb, &at));
        free(a);
        free(b);
    }
    assert_int_equal(bad, 0);
    json_decref(ref);
    nq_tokenizer_free(tok);
}

static void test_tiny_hard_cases(void **state)
{
    (void)state;
    nq_tokenizer *tok = load_tiny();
    json_t *ref = load_fixture("tests/fixtures/tok/tiny_hard.json");
    json_t *cases = json_object_get(ref, "cases");
    assert_true(json_array_size(cases) > 80);
    int bad = 0;
    size_t i;
    json_t *cs;
    json_array_foreach(cases, i, cs) {
        char label[64];
        snprintf(label, sizeof label, "tiny_hard[%zu]", i);
        bad += check_case(tok, cs, label);
    }
    assert_int_equal(bad, 0);
    json_decref(ref);
    nq_tokenizer_free(tok);
}

static uint64_t fnv1a64_ids(const int32_t *ids, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xFF;
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

static void test_tiny_whole_calib(void **state)
{
    (void)state;
    nq_tokenizer *tok = load_tiny();
    json_t *ref = load_fixture("tests/fixtures/tok/calib_ref.json");
    size_t len;
    unsigned char *text = nq_test_read_file(nq_test_path("tests/fixtures/calib.txt"), &len);
    assert_non_null(text);
    assert_true(len > 700000);
    int32_t *ids;
    size_t n;
    nq_error err = {{0}};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(nq_tokenizer_encode(tok, (const char *)text, len, false, &ids, &n, &err), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    fprintf(stderr, "calib.txt: %zu bytes -> %zu tokens in %.3f s\n", len, n, secs);

    json_t *first = json_object_get(ref, "first"), *last = json_object_get(ref, "last");
    for (size_t i = 0; i < json_array_size(first) && i < n; i++)
        assert_int_equal(ids[i], json_integer_value(json_array_get(first, i)));
    size_t nl = json_array_size(last);
    for (size_t i = 0; i < nl && i < n; i++)
        assert_int_equal(ids[n - nl + i], json_integer_value(json_array_get(last, i)));
    assert_int_equal(n, (size_t)json_integer_value(json_object_get(ref, "count")));
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64_ids(ids, n));
    assert_string_equal(hex, json_string_value(json_object_get(ref, "fnv1a64")));

    /* decoding the whole file gives the file back byte for byte */
    char *dec;
    size_t dl;
    assert_int_equal(nq_tokenizer_decode(tok, ids, n, false, &dec, &dl, &err), 0);
    assert_int_equal(dl, len);
    assert_memory_equal(dec, text, len);
    /* well under a second or two even under ASan (a plain build is ~10x faster) */
    assert_true(secs < 10.0);
    free(dec);
    free(ids);
    free(text);
    json_decref(ref);
    nq_tokenizer_free(tok);
}

/* Applies a variants_ref.json patch to the base tokenizer JSON (see gen_tok_fixtures.py
 * apply_variant) and loads the result from memory. */
static nq_tokenizer *load_variant(json_t *base, json_t *patch)
{
    json_t *d = json_deep_copy(base);
    const char *k;
    json_t *v;
    json_object_foreach(patch, k, v) {
        if (strcmp(k, "model") == 0) {
            json_object_update(json_object_get(d, "model"), v);
        } else if (strcmp(k, "merges_as_strings") == 0) {
            json_t *merges = json_object_get(json_object_get(d, "model"), "merges");
            json_t *out = json_array();
            size_t i;
            json_t *m;
            json_array_foreach(merges, i, m) {
                const char *a = json_string_value(json_array_get(m, 0));
                const char *b = json_string_value(json_array_get(m, 1));
                char *s = malloc(strlen(a) + strlen(b) + 2);
                sprintf(s, "%s %s", a, b);
                json_array_append_new(out, json_string(s));
                free(s);
            }
            json_object_set_new(json_object_get(d, "model"), "merges", out);
        } else {
            json_object_set(d, k, v);
        }
    }
    char *s = json_dumps(d, JSON_COMPACT);
    nq_error err = {{0}};
    nq_tokenizer *tok = nq_tokenizer_load_mem(s, strlen(s), "variant", &err);
    if (!tok)
        fprintf(stderr, "variant load failed: %s\n", err.msg);
    free(s);
    json_decref(d);
    return tok;
}

static void test_nemotron_style_and_variants(void **state)
{
    (void)state;
    json_t *base = load_fixture("tests/fixtures/tok/nemotron_style.json");
    json_t *ref = load_fixture("tests/fixtures/tok/variants_ref.json");
    json_t *vars = json_object_get(ref, "variants");
    assert_true(json_array_size(vars) > 70);
    int bad = 0;
    size_t i;
    json_t *var;
    json_array_foreach(vars, i, var) {
        const char *name = json_string_value(json_object_get(var, "name"));
        nq_tokenizer *tok = load_variant(base, json_object_get(var, "patch"));
        if (!tok) {
            fprintf(stderr, "variant %s does not load\n", name);
            bad++;
            continue;
        }
        size_t j;
        json_t *cs;
        json_array_foreach(json_object_get(var, "cases"), j, cs) {
            char label[128];
            snprintf(label, sizeof label, "%s[%zu]", name, j);
            bad += check_case(tok, cs, label);
        }
        nq_tokenizer_free(tok);
    }
    assert_int_equal(bad, 0);

    /* The Nemotron-style file itself, loaded from disk: BOS from its TemplateProcessing. */
    nq_error err = {{0}};
    nq_tokenizer *tok = nq_tokenizer_load(nq_test_path("tests/fixtures/tok/nemotron_style.json"), &err);
    assert_non_null(tok);
    assert_int_equal(nq_tokenizer_bos_id(tok), 1);
    assert_int_equal(nq_tokenizer_eos_id(tok), 2); /* no suffix in the template: "</s>" */
    assert_int_equal(nq_tokenizer_token_id(tok, "<|im_end|>"), 11);
    assert_true(nq_tokenizer_is_special(tok, 11));
    int32_t *ids;
    size_t n;
    assert_int_equal(nq_tokenizer_encode(tok, "Hi", 2, true, &ids, &n, &err), 0);
    assert_true(n >= 2);
    assert_int_equal(ids[0], 1);
    free(ids);
    nq_tokenizer_free(tok);
    json_decref(ref);
    json_decref(base);
}

static void test_handmade_bpe_options(void **state)
{
    (void)state;
    json_t *ref = load_fixture("tests/fixtures/tok/handmade_ref.json");
    json_t *toks = json_object_get(ref, "tokenizers");
    assert_true(json_array_size(toks) >= 8);
    int bad = 0;
    size_t i;
    json_t *t;
    json_array_foreach(toks, i, t) {
        char *s = json_dumps(json_object_get(t, "tokenizer"), JSON_COMPACT);
        nq_error err = {{0}};
        nq_tokenizer *tok = nq_tokenizer_load_mem(s, strlen(s), "handmade", &err);
        free(s);
        if (!tok) {
            fprintf(stderr, "handmade[%zu]: %s\n", i, err.msg);
            bad++;
            continue;
        }
        size_t j;
        json_t *cs;
        json_array_foreach(json_object_get(t, "cases"), j, cs) {
            /* decode is checked once below: these files have no decoder (HF then joins the
             * tokens with spaces) */
            json_t *ids = json_object_get(cs, "ids");
            int32_t *want, *got;
            size_t nw, ng, at;
            ids_of(ids, &want, &nw);
            const char *text = json_string_value(json_object_get(cs, "text"));
            if (nq_tokenizer_encode(tok, text, strlen(text), false, &got, &ng, &err) ||
                !same_ids(got, ng, want, nw, &at)) {
                fprintf(stderr, "handmade[%zu] case %zu \"%s\": %s\n", i, j, text, err.msg);
                print_ids("want", want, nw);
                if (got)
                    print_ids("got ", got, ng);
                bad++;
            }
            free(want);
            free(got);
        }
        int32_t *dids;
        size_t nd;
        ids_of(json_object_get(t, "decode_ids"), &dids, &nd);
        char *dec;
        size_t dl;
        assert_int_equal(nq_tokenizer_decode(tok, dids, nd, false, &dec, &dl, &err), 0);
        assert_string_equal(dec, json_string_value(json_object_get(t, "decoded")));
        free(dec);
        free(dids);
        nq_tokenizer_free(tok);
    }
    assert_int_equal(bad, 0);
    json_decref(ref);
}

/* Invalid UTF-8: HF cannot take it, so the rule is ours (tokenizer.h): invalid bytes are never
 * matched by the split regex, so they form pieces of their own, and byte-level BPE encodes
 * them like any byte; decoding gives the exact bytes back. */
static void encode_ok(const nq_tokenizer *tok, const char *s, size_t n, int32_t **ids, size_t *ni)
{
    nq_error err = {{0}};
    if (nq_tokenizer_encode(tok, s, n, false, ids, ni, &err))
        fail_msg("encode: %s", err.msg);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    nq_tokenizer *tok = load_tiny();
    nq_error err = {{0}};
    /* the byte-level character for 0xFF is U+00FF, for 0x80 it is U+0122 ("Ģ") */
    int32_t id_ff = nq_tokenizer_token_id(tok, "\xC3\xBF");
    int32_t id_80 = nq_tokenizer_token_id(tok, "\xC4\xA2");
    assert_true(id_ff >= 0 && id_80 >= 0);

    int32_t *a, *b, *c;
    size_t na, nb, nc;
    encode_ok(tok, "abc", 3, &a, &na);
    encode_ok(tok, "def", 3, &b, &nb);
    encode_ok(tok, "abc\xFF" "def", 7, &c, &nc);
    assert_int_equal(nc, na + 1 + nb);
    assert_memory_equal(c, a, na * sizeof *a);
    assert_int_equal(c[na], id_ff);
    assert_memory_equal(c + na + 1, b, nb * sizeof *b);
    free(a);
    free(b);
    free(c);

    /* a lone continuation byte after a space: " " stays its own piece, then the byte */
    encode_ok(tok, "x \x80", 3, &c, &nc);
    assert_true(nc >= 2);
    assert_int_equal(c[nc - 1], id_80);
    free(c);

    /* Round trip of hostile byte strings: truncated sequences, overlongs, surrogates, values
     * past U+10FFFF, NULs, and pseudo-random bytes. */
    const char *fixed[] = {"\xE2\x82", "\xF0\x9F\x99", "\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80",
                           "\xF4\x90\x80\x80", "\xF8\x88\x80\x80\x80", "caf\xE9 cr\xE8me",
                           "\xFE\xFF\xFF\xFE", "a\xC3", "\xC3 a", "  \xFF  \xFF\xFF  x"};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        size_t n = strlen(fixed[i]);
        encode_ok(tok, fixed[i], n, &c, &nc);
        char *dec;
        size_t dl;
        assert_int_equal(nq_tokenizer_decode(tok, c, nc, false, &dec, &dl, &err), 0);
        assert_int_equal(dl, n);
        assert_memory_equal(dec, fixed[i], n);
        free(dec);
        free(c);
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    char buf[512];
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(round * 7 % 500) + 1;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* bias towards bytes that build UTF-8 sequences and spaces */
            unsigned v = (unsigned)(x >> 32);
            buf[i] = (char)((v & 3) == 0 ? ' ' : (v & 3) == 1 ? 0x80 + (v >> 8) % 64
                                                               : (v >> 8) & 0xFF);
        }
        encode_ok(tok, buf, n, &c, &nc);
        char *dec;
        size_t dl;
        assert_int_equal(nq_tokenizer_decode(tok, c, nc, false, &dec, &dl, &err), 0);
        assert_int_equal(dl, n);
        assert_memory_equal(dec, buf, n);
        free(dec);
        free(c);
    }
    nq_tokenizer_free(tok);
}

static void test_api_and_decode_details(void **state)
{
    (void)state;
    nq_tokenizer *tok = load_tiny();
    nq_error err = {{0}};
    assert_int_equal(nq_tokenizer_vocab_size(tok), 4096);
    assert_int_equal(nq_tokenizer_token_id(tok, "<unk>"), 0);
    assert_int_equal(nq_tokenizer_token_id(tok, "<s>"), 1);
    assert_int_equal(nq_tokenizer_token_id(tok, "</s>"), 2);
    assert_int_equal(nq_tokenizer_token_id(tok, "<pad>"), 3);
    assert_int_equal(nq_tokenizer_token_id(tok, "no such token"), -1);
    /* generation_config.json of the bundled model: bos 1, eos 2 */
    assert_int_equal(nq_tokenizer_bos_id(tok), 1);
    assert_int_equal(nq_tokenizer_eos_id(tok), 2);
    assert_true(nq_tokenizer_is_special(tok, 1));
    assert_false(nq_tokenizer_is_special(tok, 4));
    assert_false(nq_tokenizer_is_special(tok, -1));
    assert_false(nq_tokenizer_is_special(tok, 1 << 30));
    size_t len;
    const char *s = nq_tokenizer_token_str(tok, 1, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "<s>", 3);
    assert_null(nq_tokenizer_token_str(tok, 4096, &len));
    assert_null(nq_tokenizer_token_str(tok, -5, &len));

    /* HF: decode([1,2,3,0,4]) == "!" with skip_special, "<s></s><pad><unk>!" without;
     * ids naming no token are skipped. */
    int32_t ids[] = {1, 2, 3, 0, 4, 99999, -1};
    char *dec;
    size_t dl;
    assert_int_equal(nq_tokenizer_decode(tok, ids, 7, true, &dec, &dl, &err), 0);
    assert_string_equal(dec, "!");
    free(dec);
    assert_int_equal(nq_tokenizer_decode(tok, ids, 7, false, &dec, &dl, &err), 0);
    assert_string_equal(dec, "<s></s><pad><unk>!");
    free(dec);
    assert_int_equal(nq_tokenizer_decode(tok, NULL, 0, false, &dec, &dl, &err), 0);
    assert_int_equal(dl, 0);
    assert_string_equal(dec, "");
    free(dec);

    /* empty text: no tokens, but a freeable array */
    int32_t *e;
    size_t ne;
    assert_int_equal(nq_tokenizer_encode(tok, "", 0, true, &e, &ne, &err), 0);
    assert_non_null(e);
    assert_int_equal(ne, 0);
    free(e);
    assert_int_equal(nq_tokenizer_encode(tok, NULL, 0, true, &e, &ne, &err), 0);
    free(e);
    /* length, not NUL, ends the text */
    assert_int_equal(nq_tokenizer_encode(tok, "ab\0cd", 5, false, &e, &ne, &err), 0);
    assert_int_equal(nq_tokenizer_decode(tok, e, ne, false, &dec, &dl, &err), 0);
    assert_int_equal(dl, 5);
    assert_memory_equal(dec, "ab\0cd", 5);
    free(dec);
    free(e);
    nq_tokenizer_free(tok);
}

static void expect_load_error(const char *json, const char *needle)
{
    nq_error err = {{0}};
    nq_tokenizer *tok = nq_tokenizer_load_mem(json, strlen(json), "t.json", &err);
    if (tok) {
        nq_tokenizer_free(tok);
        fail_msg("loaded although it should not: %s", json);
    }
    if (!strstr(err.msg, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err.msg, needle);
    assert_non_null(strstr(err.msg, "t.json"));
    assert_null(strchr(err.msg, '\n'));
}

#define MODEL_OK "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static void test_load_errors(void **state)
{
    (void)state;
    nq_error err = {{0}};
    assert_null(nq_tokenizer_load("/nonexistent/tokenizer.json", &err));
    assert_non_null(strstr(err.msg, "/nonexistent/tokenizer.json"));

    expect_load_error("{", "t.json");
    expect_load_error("[]", "not a JSON object");
    expect_load_error("{}", "model");
    expect_load_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "WordPiece");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}",
                      "merges[0]");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
                      "merged token");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b c\"]}}",
                      "merges[0]");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-3}}}", "vocab");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":99999999999}}}", "vocab");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{}}}", "dropout");
    expect_load_error("{\"normalizer\":{\"type\":\"NFC\"}," MODEL_OK "}", "NFC");
    expect_load_error("{\"truncation\":{\"max_length\":5}," MODEL_OK "}", "truncation");
    expect_load_error("{\"pre_tokenizer\":{\"type\":\"Whitespace\"}," MODEL_OK "}", "Whitespace");
    expect_load_error("{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                      "\"behavior\":\"Isolated\",\"invert\":false}," MODEL_OK "}",
                      "regex does not compile");
    expect_load_error("{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                      "\"behavior\":\"Sideways\",\"invert\":false}," MODEL_OK "}", "Sideways");
    expect_load_error("{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
                      "[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}}],\"special_tokens\":{}},"
                      MODEL_OK "}", "<s>");
    expect_load_error("{\"added_tokens\":[{\"id\":0}]," MODEL_OK "}", "added_tokens[0]");
    {
        /* 17 nested Sequences: refused before the recursion gets deep */
        char deep[1024] = "{\"pre_tokenizer\":";
        for (int i = 0; i < 18; i++)
            strcat(deep, "{\"type\":\"Sequence\",\"pretokenizers\":[");
        for (int i = 0; i < 18; i++)
            strcat(deep, "]}");
        strcat(deep, "," MODEL_OK "}");
        expect_load_error(deep, "nested too deep");
    }

    /* Template ids past the vocabulary still count in vocab_size (every emitted id is below
     * it); decode skips them as ids without a token. */
    const char *tp = "{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
                     "[{\"SpecialToken\":{\"id\":\"X\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
                     "\"type_id\":0}}],\"special_tokens\":{\"X\":{\"id\":\"X\",\"ids\":[7,9],"
                     "\"tokens\":[\"X\",\"Y\"]}}}," MODEL_OK "}";
    nq_tokenizer *tt = nq_tokenizer_load_mem(tp, strlen(tp), "t.json", &err);
    assert_non_null(tt);
    assert_int_equal(nq_tokenizer_vocab_size(tt), 10);
    assert_int_equal(nq_tokenizer_bos_id(tt), 7);
    int32_t *ti;
    size_t tn;
    assert_int_equal(nq_tokenizer_encode(tt, "ab", 2, true, &ti, &tn, &err), 0);
    assert_int_equal(tn, 3);
    assert_int_equal(ti[0], 7);
    assert_int_equal(ti[1], 9);
    assert_int_equal(ti[2], 2);
    free(ti);
    nq_tokenizer_free(tt);

    /* The same content listed three times is one added token (the first id; later
     * flags win): the map of contents must not keep a pointer to a freed copy (found by
     * a sanitizer run on an earlier version). */
    const char *dup = "{\"added_tokens\":[{\"id\":5,\"content\":\"<x>\",\"special\":true},"
                      "{\"id\":6,\"content\":\"<x>\"},{\"id\":7,\"content\":\"<x>\"}]," MODEL_OK "}";
    nq_tokenizer *td = nq_tokenizer_load_mem(dup, strlen(dup), "t.json", &err);
    assert_non_null(td);
    int32_t *di;
    size_t dn;
    assert_int_equal(nq_tokenizer_encode(td, "a<x>b", 5, false, &di, &dn, &err), 0);
    assert_int_equal(dn, 3);
    assert_int_equal(di[0], 0);
    assert_int_equal(di[1], 3);
    assert_int_equal(di[2], 1);
    free(di);
    nq_tokenizer_free(td);

    /* A decoder we do not implement: encode works, decode reports it. */
    const char *j = "{\"decoder\":{\"type\":\"WordPiece\"}," MODEL_OK "}";
    nq_tokenizer *tok = nq_tokenizer_load_mem(j, strlen(j), "t.json", &err);
    assert_non_null(tok);
    int32_t *ids;
    size_t n;
    assert_int_equal(nq_tokenizer_encode(tok, "abab", 4, true, &ids, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 2);
    char *dec;
    size_t dl;
    nq_error_clear(&err);
    assert_int_equal(nq_tokenizer_decode(tok, ids, n, false, &dec, &dl, &err), -1);
    assert_non_null(strstr(err.msg, "WordPiece"));
    assert_null(dec);
    free(ids);
    nq_tokenizer_free(tok);
}

typedef struct {
    const nq_tokenizer *tok;
    const char *text;
    size_t len;
    uint64_t hash;
    size_t n;
} thread_job;

static void *encode_job(void *arg)
{
    thread_job *j = arg;
    int32_t *ids;
    nq_error err = {{0}};
    if (nq_tokenizer_encode(j->tok, j->text, j->len, false, &ids, &j->n, &err) == 0) {
        j->hash = fnv1a64_ids(ids, j->n);
        free(ids);
    }
    return NULL;
}

/* A loaded tokenizer is shared read-only: concurrent encodes agree with a serial one. */
static void test_concurrent_encode(void **state)
{
    (void)state;
    nq_tokenizer *tok = load_tiny();
    size_t len;
    unsigned char *text = nq_test_read_file(nq_test_path("tests/fixtures/calib.txt"), &len);
    assert_non_null(text);
    len = len > 120000 ? 120000 : len;
    thread_job serial = {tok, (const char *)text, len, 0, 0};
    encode_job(&serial);
    thread_job jobs[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        jobs[i] = serial;
        jobs[i].hash = 0;
        assert_int_equal(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].n, serial.n);
        assert_true(jobs[i].hash == serial.hash);
    }
    free(text);
    nq_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_reference_cases),
        cmocka_unit_test(test_tiny_hard_cases),
        cmocka_unit_test(test_tiny_whole_calib),
        cmocka_unit_test(test_nemotron_style_and_variants),
        cmocka_unit_test(test_handmade_bpe_options),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_api_and_decode_details),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_concurrent_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
