/* libFuzzer target for src/tok/tokenizer.c.
 *
 * The first input byte picks the mode, the rest is the payload:
 *   even:  payload is a tokenizer.json; whatever loads is used to encode and decode the
 *          payload itself (exercises the loader and every component a file can switch on)
 *   odd:   payload is text for the bundled models/tiny-nemotron-h tokenizer (byte 1 & 2
 *          selects tests/fixtures/tok/nemotron_style.json instead); decoding the encoding
 *          must give the payload back byte for byte, for any bytes, and every id must be
 *          below the vocabulary size
 *
 * Build: CC=clang cmake -S . -B build-fuzz -DNEMOQ_FUZZ=ON && cmake --build build-fuzz
 * Run:   build-fuzz/fuzz_tokenizer -max_len=4096 fuzz/corpus-tok
 * The tokenizer files are found next to this source (__FILE__), or through
 * NQ_FUZZ_TOKENIZER / NQ_FUZZ_TOKENIZER2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tokenizer.h"

static nq_tokenizer *bundled[2];

static nq_tokenizer *load_beside_source(const char *env, const char *rel)
{
    char path[4096];
    const char *p = getenv(env);
    if (!p) {
        /* __FILE__ is .../fuzz/fuzz_tokenizer.c: go up one folder */
        const char *f = __FILE__;
        const char *slash = strrchr(f, '/');
        size_t n = slash ? (size_t)(slash - f) : 0;
        while (n > 0 && f[n - 1] != '/')
            n--;
        snprintf(path, sizeof path, "%.*s%s", (int)n, f, rel);
        p = path;
    }
    nq_error err = {{0}};
    nq_tokenizer *tok = nq_tokenizer_load(p, &err);
    if (!tok) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort();
    }
    return tok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    bundled[0] = load_beside_source("NQ_FUZZ_TOKENIZER", "models/tiny-nemotron-h/tokenizer.json");
    bundled[1] = load_beside_source("NQ_FUZZ_TOKENIZER2", "tests/fixtures/tok/nemotron_style.json");
    return 0;
}

static void exercise(const nq_tokenizer *tok, const char *text, size_t len, int check_roundtrip)
{
    for (int add_special = 0; add_special < 2; add_special++) {
        int32_t *ids;
        size_t n;
        nq_error err = {{0}};
        if (nq_tokenizer_encode(tok, text, len, add_special, &ids, &n, &err)) {
            if (!err.msg[0] || strchr(err.msg, '\n'))
                abort(); /* a failure must say why, on one line */
            continue;
        }
        size_t vs = nq_tokenizer_vocab_size(tok);
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || (size_t)ids[i] >= vs)
                abort();
        for (int skip = 0; skip < 2; skip++) {
            char *dec;
            size_t dl;
            if (nq_tokenizer_decode(tok, ids, n, skip, &dec, &dl, &err) == 0) {
                if (check_roundtrip && !add_special && !skip &&
                    (dl != len || memcmp(dec, text, len) != 0)) {
                    fprintf(stderr, "round trip failed for %zu bytes\n", len);
                    abort();
                }
                free(dec);
            }
        }
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *payload = (const char *)data + 1;
    size_t plen = size - 1;
    if ((data[0] & 1) == 0) {
        nq_error err = {{0}};
        nq_tokenizer *tok = nq_tokenizer_load_mem(payload, plen, "fuzz.json", &err);
        if (!tok) {
            if (!err.msg[0] || strchr(err.msg, '\n'))
                abort();
            return 0;
        }
        exercise(tok, payload, plen, 0);
        static const char probe[] = "Hello  world\r\n\t<s>don't 12345 \xC3\xA9\xF0\x9F\x99\x82 \xFF";
        exercise(tok, probe, sizeof probe - 1, 0);
        nq_tokenizer_free(tok);
        return 0;
    }
    exercise(bundled[(data[0] >> 1) & 1], payload, plen, 1);
    return 0;
}
