/* The served SSM-state cache: Philox-4x32 against Random123's published
 * known-answer vectors (tests/kat_vectors of DEShawResearch/random123, the
 * philox4x32 7- and 10-round lines), f32 -> f16 stochastic rounding bit for
 * bit against an independent numpy implementation
 * (tests/gen/gen_f16_sr_reference.py -> tests/fixtures/formats/f16_sr.bin),
 * hand-computed rounding cases, unbiasedness, and the state rounding's
 * stream and thread-count independence. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval/ssm_cache.h"
#include "formats/f16_stochastic.h"
#include "formats/floatconv.h"
#include "formats/philox.h"

static void test_philox_kat(void **state)
{
    (void)state;
    static const struct {
        int rounds;
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {7, {0, 0, 0, 0}, {0, 0}, {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}},
        {7, {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
         {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}},
        {7, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
         {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}},
        {10, {0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {10, {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {10, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        uint32_t out[4];
        nq_philox4x32(kat[i].ctr, kat[i].key, kat[i].rounds, out);
        for (int j = 0; j < 4; j++)
            if (out[j] != kat[i].out[j])
                fail_msg("vector %zu word %d: %08x, expected %08x", i, j, out[j], kat[i].out[j]);
    }
    /* the (seed, offset) form: key = seed halves, counter = offset halves, 0, 0 */
    uint32_t a[4], b[4];
    nq_philox_randint4x(0x299f31d0a4093822ull, 0x85a308d3243f6a88ull, 10, a);
    uint32_t ctr[4] = {0x243f6a88, 0x85a308d3, 0, 0}, key[2] = {0xa4093822, 0x299f31d0};
    nq_philox4x32(ctr, key, 10, b);
    assert_memory_equal(a, b, sizeof a);
}

/* ---- the fixture container (tests/gen/fxio.py) ------------------------ */

typedef struct {
    char name[32];
    uint64_t nbytes;
    const unsigned char *data;
} record;

static const record *find(const unsigned char *b, size_t len, const char *name, record *r)
{
    size_t o = 0;
    while (o + 4 <= len) {
        uint32_t nl, code, nd;
        memcpy(&nl, b + o, 4);
        o += 4;
        assert_true(nl < sizeof r->name);
        memcpy(r->name, b + o, nl);
        r->name[nl] = '\0';
        o += nl;
        memcpy(&code, b + o, 4);
        memcpy(&nd, b + o + 4, 4);
        o += 8 + 8 * (size_t)nd;
        memcpy(&r->nbytes, b + o, 8);
        o += 8;
        r->data = b + o;
        o += r->nbytes;
        assert_true(o <= len);
        if (strcmp(r->name, name) == 0)
            return r;
    }
    fail_msg("fixture record %s missing", name);
    return NULL;
}

static void test_sr_matches_reference(void **state)
{
    (void)state;
    size_t len;
    unsigned char *b = nq_test_read_file(nq_test_path("tests/fixtures/formats/f16_sr.bin"), &len);
    assert_non_null(b);
    record rx, rr, rh;
    find(b, len, "x", &rx);
    find(b, len, "r", &rr);
    find(b, len, "h", &rh);
    size_t n = rx.nbytes / 4;
    assert_int_equal(rr.nbytes, n * 4);
    assert_int_equal(rh.nbytes, n * 2);
    assert_true(n > 10000);
    for (size_t i = 0; i < n; i++) {
        float x;
        uint32_t r;
        uint16_t h;
        memcpy(&x, rx.data + 4 * i, 4);
        memcpy(&r, rr.data + 4 * i, 4);
        memcpy(&h, rh.data + 2 * i, 2);
        uint16_t got = nq_f32_to_f16_sr(x, r);
        if (got != h)
            fail_msg("x %a (bits %08x) r %08x: %04x, reference %04x", (double)x, nq_f32_bits(x), r,
                     got, h);
    }

    /* a whole state through nq_ssm_cache_round: the Philox stream layout */
    record rs, rsd, rrd, rsh;
    find(b, len, "state", &rs);
    find(b, len, "seed", &rsd);
    find(b, len, "rounds", &rrd);
    find(b, len, "state_h", &rsh);
    size_t m = rs.nbytes / 4;
    uint32_t seed[2], rounds;
    memcpy(seed, rsd.data, 8);
    memcpy(&rounds, rrd.data, 4);
    float *s = malloc(m * sizeof *s);
    memcpy(s, rs.data, m * 4);
    nq_ssm_cache_round(NQ_SSM_CACHE_FP16_SR, s, m, (uint64_t)seed[1] << 32 | seed[0], (int)rounds,
                       3);
    for (size_t i = 0; i < m; i++) {
        uint16_t h;
        memcpy(&h, rsh.data + 2 * i, 2);
        if (nq_f32_to_f16_inline(s[i]) != h || s[i] != nq_f16_to_f32(h))
            fail_msg("state element %zu: %a, reference f16 %04x", i, (double)s[i], h);
    }
    free(s);
    free(b);
}

/* Cases computed by hand from the rule (13 noise bits added below the f16
 * mantissa, then truncated; f16 subnormals flushed). */
static void test_sr_hand_cases(void **state)
{
    (void)state;
    /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: its dropped bits are
     * 0x1000, so noise >= 0x1000 rounds up */
    float x = 1.0f + 0x1p-11f;
    assert_int_equal(nq_f32_to_f16_sr(x, 0x0fff), 0x3c00);
    assert_int_equal(nq_f32_to_f16_sr(x, 0x1000), 0x3c01);
    /* bits above 12 are ignored */
    assert_int_equal(nq_f32_to_f16_sr(x, 0xffffe000u | 0x0fff), 0x3c00);
    /* a value on the f16 grid never moves */
    assert_int_equal(nq_f32_to_f16_sr(1.5f, 0x1fff), 0x3e00);
    assert_int_equal(nq_f32_to_f16_sr(-1.5f, 0x1fff), 0xbe00);
    /* f16 subnormals flush to signed zero, even where RNE keeps them */
    assert_int_equal(nq_f32_to_f16_sr(0x1p-15f, 0x1fff), 0x0000);
    assert_int_equal(nq_f32_to_f16_sr(-0x1p-15f, 0), 0x8000);
    assert_int_equal(nq_f32_to_f16_inline(0x1p-15f), 0x0200);
    /* ... but noise can lift the largest subnormal-range f32 into 2^-14 */
    float below = nq_bits_to_f32(0x387fffffu); /* just below 2^-14 */
    assert_int_equal(nq_f32_to_f16_sr(below, 0), 0x0000);
    assert_int_equal(nq_f32_to_f16_sr(below, 1), 0x0400);
    /* 65504 is the largest f16; anything reaching 2^16 after the noise is inf */
    assert_int_equal(nq_f32_to_f16_sr(65504.0f, 0x1fff), 0x7bff);
    assert_int_equal(nq_f32_to_f16_sr(65535.0f, 0), 0x7bff);
    assert_int_equal(nq_f32_to_f16_sr(65535.0f, 0x1fff), 0x7c00);
    assert_int_equal(nq_f32_to_f16_sr(-70000.0f, 0), 0xfc00);
    /* inf stays inf without noise and becomes NaN with it, as in the kernel */
    assert_int_equal(nq_f32_to_f16_sr(INFINITY, 0), 0x7c00);
    assert_int_equal(nq_f32_to_f16_sr(INFINITY, 1), 0x7e00);
    assert_int_equal(nq_f32_to_f16_sr(NAN, 0) & 0x7fff, 0x7e00);
}

/* E[sr(x)] = x: for values spread over binades, the mean of the rounded
 * values over every 13-bit noise word equals x up to the truncation of x
 * below 2^-13 ulp (exact for x with at most 13 dropped bits: all f32); and
 * over Philox words the mean error is within a few standard errors of 0
 * while round-to-nearest has a fixed bias. */
static void test_sr_unbiased(void **state)
{
    (void)state;
    const float xs[] = {1.0f + 0x1p-11f + 0x1p-20f, 0.1f, -0.3333333f, 1234.567f, 0x1.8p-14f,
                        -2.71828f, 0.0123456f};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        double sum = 0.0;
        for (uint32_t r = 0; r < 8192; r++)
            sum += nq_f16_to_f32(nq_f32_to_f16_sr(xs[i], r));
        /* exact: the expectation over all 2^13 words is x itself */
        if (sum / 8192.0 != (double)xs[i])
            fail_msg("x %a: mean over all noise words %a", (double)xs[i], sum / 8192.0);
    }
    /* with the Philox stream: 1 + 2^-12 rounds to 1 or 1 + 2^-10 with
     * p(up) = 1/4; RNE always gives 1 (bias -2^-12) */
    float x = 1.0f + 0x1p-12f;
    enum { N = 1 << 16 };
    float *s = malloc(N * sizeof *s);
    for (int i = 0; i < N; i++)
        s[i] = x;
    nq_ssm_cache_round(NQ_SSM_CACHE_FP16_SR, s, N, 12345, 5, 2);
    double mean = 0.0;
    int up = 0;
    for (int i = 0; i < N; i++) {
        mean += s[i];
        up += s[i] != 1.0f;
        assert_true(s[i] == 1.0f || s[i] == 1.0f + 0x1p-10f);
    }
    mean /= N;
    /* binomial: sd of the up fraction = sqrt(3/16 / N) = 0.0017 */
    double frac = (double)up / N;
    if (fabs(frac - 0.25) > 0.01 || fabs(mean - x) > 0x1p-10 * 0.01)
        fail_msg("up fraction %.4f (expected 0.25), mean %.9f vs %.9f", frac, mean, (double)x);
    assert_true(nq_f16_to_f32(nq_f32_to_f16(x)) == 1.0f);
    free(s);
}

/* FP16 mode is the plain cast; FP16_SR is deterministic for a seed, changes
 * with it, and gives the same bytes for any thread count. */
static void test_state_rounding_modes(void **state)
{
    (void)state;
    enum { N = 200003 }; /* large enough to run threaded, not a multiple of 4 */
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b), *c = malloc(N * sizeof *c);
    uint32_t z = 1;
    for (int i = 0; i < N; i++) {
        z = z * 1664525u + 1013904223u;
        a[i] = ((float)(z >> 8) / 16777216.0f - 0.5f) * 8.0f;
    }
    memcpy(b, a, N * sizeof *a);
    memcpy(c, a, N * sizeof *a);
    nq_ssm_cache_round(NQ_SSM_CACHE_FP32, b, N, 7, 5, 4);
    assert_memory_equal(a, b, N * sizeof *a);
    nq_ssm_cache_round(NQ_SSM_CACHE_FP16, b, N, 7, 5, 4);
    for (int i = 0; i < N; i++)
        assert_true(b[i] == nq_f16_to_f32(nq_f32_to_f16(a[i])));
    memcpy(b, a, N * sizeof *a);
    nq_ssm_cache_round(NQ_SSM_CACHE_FP16_SR, b, N, 7, 5, 1);
    nq_ssm_cache_round(NQ_SSM_CACHE_FP16_SR, c, N, 7, 5, 4);
    assert_memory_equal(b, c, N * sizeof *b);
    memcpy(c, a, N * sizeof *a);
    nq_ssm_cache_round(NQ_SSM_CACHE_FP16_SR, c, N, 8, 5, 3);
    int differ = 0;
    for (int i = 0; i < N; i++)
        differ += b[i] != c[i];
    assert_true(differ > N / 10);
    /* step seeds: distinct per step and layer, 32-bit, fixed by the user seed */
    assert_true(nq_ssm_step_seed(0, 0, 1, 0) != nq_ssm_step_seed(0, 0, 2, 0));
    assert_true(nq_ssm_step_seed(0, 0, 1, 0) != nq_ssm_step_seed(0, 0, 1, 1));
    assert_true(nq_ssm_step_seed(0, 0, 1, 0) != nq_ssm_step_seed(1, 0, 1, 0));
    assert_true(nq_ssm_step_seed(5, 3, 1, 2) == nq_ssm_step_seed(5, 3, 1, 2));
    assert_true(nq_ssm_step_seed(~0ull, 9, 9, 9) < (1ull << 32));
    nq_ssm_cache mode;
    assert_int_equal(nq_ssm_cache_parse("fp16-sr", &mode), 0);
    assert_int_equal(mode, NQ_SSM_CACHE_FP16_SR);
    assert_string_equal(nq_ssm_cache_name(mode), "fp16-sr");
    assert_int_equal(nq_ssm_cache_parse("bf16", &mode), -1);
    free(a);
    free(b);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_kat),
        cmocka_unit_test(test_sr_matches_reference),
        cmocka_unit_test(test_sr_hand_cases),
        cmocka_unit_test(test_sr_unbiased),
        cmocka_unit_test(test_state_rounding_modes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
