/* Number formats against NVIDIA ModelOpt itself and against hand-computed
 * values.
 *
 * tests/fixtures/formats/{nvfp4,fp8}_modelopt{,_cuda}.bin hold, for a set of
 * BF16 weights (gaussian, heavy-tailed, exact E2M1/E4M3 ties, zero and
 * negative-zero blocks, tiny and huge magnitudes, subnormal global scales),
 * exactly what ModelOpt 0.47's exporter registered after max calibration
 * (tests/gen/gen_modelopt_fixtures.py; provenance in
 * tests/fixtures/formats/PROVENANCE.md).  nemoq must produce the same bytes
 * from the same BF16 weights. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/rounding.h"
#include "formats/encode.h"
#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"

/* ---- the fixture container (tests/gen/fxio.py) ------------------------ */

typedef struct {
    char name[96];
    uint32_t code, ndim;
    uint64_t dims[4];
    uint64_t nbytes;
    const unsigned char *data;
} record;

static int read_records(const unsigned char *b, size_t len, record *out, int max)
{
    size_t o = 0;
    int n = 0;
    while (o < len && n < max) {
        record *r = &out[n++];
        uint32_t nl;
        memcpy(&nl, b + o, 4);
        o += 4;
        assert_true(nl < sizeof r->name);
        memcpy(r->name, b + o, nl);
        r->name[nl] = '\0';
        o += nl;
        memcpy(&r->code, b + o, 4);
        memcpy(&r->ndim, b + o + 4, 4);
        o += 8;
        assert_true(r->ndim <= 4);
        memcpy(r->dims, b + o, 8 * r->ndim);
        o += 8 * r->ndim;
        memcpy(&r->nbytes, b + o, 8);
        o += 8;
        r->data = b + o;
        o += r->nbytes;
        assert_true(o <= len);
    }
    return n;
}

static const record *find(const record *r, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(r[i].name, name) == 0)
            return &r[i];
    return NULL;
}

static float *bf16_to_f32(const record *w)
{
    uint64_t n = w->nbytes / 2;
    float *x = malloc(n * sizeof *x);
    for (uint64_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, w->data + 2 * i, 2);
        x[i] = nq_bf16_to_f32(v);
    }
    return x;
}

static void check_nvfp4_fixture(const char *file, const char *skip)
{
    size_t len;
    unsigned char *b = nq_test_read_file(nq_test_path(file), &len);
    assert_non_null(b);
    record rec[128];
    int n = read_records(b, len, rec, 128);
    int cases = 0;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(rec[i].name);
        if (nl < 7 || strcmp(rec[i].name + nl - 7, ".w_bf16") != 0)
            continue;
        char base[96], key[128];
        snprintf(base, sizeof base, "%.*s", (int)(nl - 7), rec[i].name);
        if (skip && strcmp(base, skip) == 0)
            continue;
        int64_t rows = (int64_t)rec[i].dims[0], cols = (int64_t)rec[i].dims[1];
        float *w = bf16_to_f32(&rec[i]);
        uint8_t *packed = malloc((size_t)(rows * cols / 2));
        uint8_t *scales = malloc((size_t)(rows * cols / 16));
        float gs;
        nq_encode_stats st;
        nq_error err = {0};
        assert_int_equal(nq_encode_nvfp4(w, rows, cols, false, 2, packed, scales, &gs, &st, &err),
                         0);
        snprintf(key, sizeof key, "%s.weight", base);
        const record *want = find(rec, n, key);
        assert_non_null(want);
        if (memcmp(packed, want->data, want->nbytes) != 0)
            fail_msg("%s %s: packed codes differ from ModelOpt", file, base);
        snprintf(key, sizeof key, "%s.weight_scale", base);
        want = find(rec, n, key);
        if (memcmp(scales, want->data, want->nbytes) != 0)
            fail_msg("%s %s: E4M3 block scales differ from ModelOpt", file, base);
        snprintf(key, sizeof key, "%s.weight_scale_2", base);
        want = find(rec, n, key);
        float ws2;
        memcpy(&ws2, want->data, 4);
        if (memcmp(&gs, &ws2, 4) != 0)
            fail_msg("%s %s: weight_scale_2 %a, ModelOpt %a", file, base, (double)gs,
                     (double)ws2);
        /* input_scale = act_amax / (6 * 448), as calibration writes it */
        float amax, is;
        snprintf(key, sizeof key, "%s.act_amax", base);
        memcpy(&amax, find(rec, n, key)->data, 4);
        snprintf(key, sizeof key, "%s.input_scale", base);
        memcpy(&is, find(rec, n, key)->data, 4);
        assert_true(nq_scale_div(amax, 6.0f * 448.0f) == is);
        free(w), free(packed), free(scales);
        cases++;
    }
    assert_true(cases >= 7);
    free(b);
}

/* Bit-identical to ModelOpt's NVFP4 export, on the CPU and on CUDA. */
static void test_nvfp4_matches_modelopt(void **state)
{
    (void)state;
    check_nvfp4_fixture("tests/fixtures/formats/nvfp4_modelopt.bin", NULL);
    /* "gscale" is built so that CUDA's amax * f32(1/2688) differs from the
     * division amax / 2688 the CPU (and nemoq) computes; every other case
     * is byte-identical to the CUDA export too */
    check_nvfp4_fixture("tests/fixtures/formats/nvfp4_modelopt_cuda.bin", "gscale");
}

/* FP8 per tensor against one ModelOpt fixture; returns how many cases
 * differ (weight bytes, weight_scale or input_scale; a refused case where
 * ModelOpt wrote a real tensor counts too).  *refused counts the cases the
 * encoder refuses where ModelOpt wrote NaN codes (0x7f, 0xff) everywhere. */
static int fp8_fixture_mismatches(const char *file, int *cases, int *refused)
{
    size_t len;
    unsigned char *b = nq_test_read_file(nq_test_path(file), &len);
    assert_non_null(b);
    record rec[128];
    int n = read_records(b, len, rec, 128), bad = 0;
    *cases = *refused = 0;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(rec[i].name);
        if (nl < 7 || strcmp(rec[i].name + nl - 7, ".w_bf16") != 0)
            continue;
        char base[96], key[128];
        snprintf(base, sizeof base, "%.*s", (int)(nl - 7), rec[i].name);
        int64_t rows = (int64_t)rec[i].dims[0], cols = (int64_t)rec[i].dims[1];
        float *w = bf16_to_f32(&rec[i]);
        uint8_t *q = malloc((size_t)(rows * cols));
        float s;
        nq_encode_stats st;
        nq_error err = {0};
        int rc = nq_encode_fp8(w, rows, cols, 1, q, &s, &st, &err);
        snprintf(key, sizeof key, "%s.weight", base);
        const record *want = find(rec, n, key);
        (*cases)++;
        if (rc != 0) {
            bool all_nan = true;
            for (uint64_t k = 0; k < want->nbytes; k++)
                all_nan = all_nan && (want->data[k] & 0x7f) == 0x7f;
            if (all_nan)
                (*refused)++;
            else
                bad++;
            free(w), free(q);
            continue;
        }
        float ws, is, amax;
        snprintf(key, sizeof key, "%s.weight_scale", base);
        memcpy(&ws, find(rec, n, key)->data, 4);
        snprintf(key, sizeof key, "%s.input_scale", base);
        memcpy(&is, find(rec, n, key)->data, 4);
        snprintf(key, sizeof key, "%s.act_amax", base);
        memcpy(&amax, find(rec, n, key)->data, 4);
        if (memcmp(q, want->data, want->nbytes) != 0 || memcmp(&s, &ws, 4) != 0 ||
            nq_scale_div(amax, 448.0f) != is)
            bad++;
        free(w), free(q);
    }
    free(b);
    return bad;
}

/* FP8 per tensor, bit-identical to ModelOpt's CPU export by default.  On
 * CUDA torch rounds the f32 scale to BF16 before dividing the BF16 weight
 * by it and computes amax / 448 as amax * f32(1/448): the default differs
 * there (a few elements of some cases), --rounding modelopt-cuda does
 * not. */
static void test_fp8_matches_modelopt(void **state)
{
    (void)state;
    int cases, refused;
    assert_int_equal(
        fp8_fixture_mismatches("tests/fixtures/formats/fp8_modelopt.bin", &cases, &refused), 0);
    assert_int_equal(refused, 0);
    assert_true(cases >= 8);
    assert_true(
        fp8_fixture_mismatches("tests/fixtures/formats/fp8_modelopt_cuda.bin", &cases, &refused) >
        0);
}

/* --rounding modelopt-cuda: every case of ModelOpt's CUDA exports, NVFP4
 * (the "gscale" global scale included) and FP8, byte for byte. */
static void test_modelopt_cuda_rounding(void **state)
{
    (void)state;
    nq_set_rounding(NQ_ROUNDING_MODELOPT_CUDA);
    check_nvfp4_fixture("tests/fixtures/formats/nvfp4_modelopt_cuda.bin", NULL);
    int cases, refused, cpu_cases, cpu_refused;
    int bad = fp8_fixture_mismatches("tests/fixtures/formats/fp8_modelopt_cuda.bin", &cases,
                                     &refused);
    /* the CPU export is not what this mode reproduces */
    int cpu_bad = fp8_fixture_mismatches("tests/fixtures/formats/fp8_modelopt.bin", &cpu_cases,
                                         &cpu_refused);
    nq_set_rounding(NQ_ROUNDING_EXACT);
    assert_int_equal(bad, 0);
    assert_true(cases >= 8);
    /* "denorm" (amax 2e-38): the BF16 scale is 0 and ModelOpt's CUDA export
     * is all NaN; nemoq refuses it in this mode */
    assert_int_equal(refused, 1);
    assert_true(cpu_bad > 0);
    /* 0.765625 / 2688 rounds differently from 0.765625 * f32(1 / 2688) */
    float exact = nq_nvfp4_global_scale(0.765625f);
    nq_set_rounding(NQ_ROUNDING_MODELOPT_CUDA);
    float cuda = nq_nvfp4_global_scale(0.765625f);
    nq_set_rounding(NQ_ROUNDING_EXACT);
    assert_true(exact == 0.765625f / 2688.0f);
    assert_true(cuda == 0.765625f * (1.0f / 2688.0f));
    assert_true(exact != cuda);
}

/* E2M1 (ModelOpt _cast_fp4): nearest of 0 .5 1 1.5 2 3 4 6, ties to the
 * even code (0.25 -> 0, 0.75 -> 1.0 code 2, 1.25 -> 1.0, 1.75 -> 2.0 code 4,
 * 2.5 -> 2.0, 3.5 -> 4.0 code 6, 5 -> 4.0), saturating at 6; -0 encodes as
 * +0 (torch.sign(-0.) is 0). */
static void test_e2m1_by_hand(void **state)
{
    (void)state;
    const struct {
        float x;
        uint8_t code;
    } kat[] = {
        {0.0f, 0},  {-0.0f, 0}, {0.25f, 0}, {0.26f, 1}, {0.5f, 1},  {0.75f, 2},  {1.0f, 2},
        {1.25f, 2}, {1.3f, 3},  {1.5f, 3},  {1.75f, 4}, {2.5f, 4},  {2.51f, 5},  {3.0f, 5},
        {3.5f, 6},  {5.0f, 6},  {5.01f, 7}, {6.0f, 7},  {100.f, 7}, {-0.75f, 10}, {-6.5f, 15},
        {-2.0f, 12},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++)
        if (nq_e2m1_encode(kat[i].x) != kat[i].code)
            fail_msg("e2m1(%g) = %d, expected %d", (double)kat[i].x, nq_e2m1_encode(kat[i].x),
                     kat[i].code);
    assert_true(nq_e2m1_value(15) == -6.0f && nq_e2m1_value(9) == -0.5f);
}

/* E4M3 (torch.float8_e4m3fn): 448 = 0x7e (1.75 * 2^8), 1.0 = 0x38 (bias 7),
 * -2 = 0xc0, 2^-9 = 0x01 (smallest subnormal), 2^-6 = 0x08 (smallest
 * normal), beyond 448 saturates to 0x7e, ties to even: 1.0625 (between
 * 1.0 and 1.125) -> 1.0, 1.1875 (between 1.125 and 1.25) -> 1.25; 2^-10
 * (half the smallest subnormal) -> 0. */
static void test_e4m3_by_hand(void **state)
{
    (void)state;
    assert_int_equal(nq_f32_to_e4m3(448.0f), 0x7e);
    assert_int_equal(nq_f32_to_e4m3(1.0f), 0x38);
    assert_int_equal(nq_f32_to_e4m3(-2.0f), 0xc0);
    assert_int_equal(nq_f32_to_e4m3(0.001953125f), 0x01);
    assert_int_equal(nq_f32_to_e4m3(0.015625f), 0x08);
    assert_int_equal(nq_f32_to_e4m3(500.0f), 0x7e);
    assert_int_equal(nq_f32_to_e4m3(-1e30f), 0xfe);
    assert_int_equal(nq_f32_to_e4m3(1.0625f), 0x38);
    assert_int_equal(nq_f32_to_e4m3(1.1875f), 0x3a);
    assert_int_equal(nq_f32_to_e4m3(0.0009765625f), 0x00);
    assert_true(nq_e4m3_to_f32(0x7e) == 448.0f && nq_e4m3_to_f32(0x01) == 0.001953125f);
}

/* NVFP4 blocks by hand: an all-zero block gets scale 1.0 (0x38) and zero
 * codes; a block whose scale would fall below 2^-9 is clamped to 2^-9
 * (0x01); the even element sits in the low nibble. */
static void test_nvfp4_blocks_by_hand(void **state)
{
    (void)state;
    float zero[16] = {0};
    float gs = 1.0f / 6.0f; /* block scale = block amax */
    assert_int_equal(nq_nvfp4_block_scale_max(zero, gs), 0x38);
    uint8_t p[8];
    nq_nvfp4_encode_block(zero, 0x38, gs, p);
    for (int i = 0; i < 8; i++)
        assert_int_equal(p[i], 0);
    float tiny[16] = {1e-6f};
    assert_int_equal(nq_nvfp4_block_scale_max(tiny, gs), 0x01);
    /* amax 6 -> block scale 6.0 (0x4c) -> unit 1: element 0 = 1 (code 2), element 1 = -3
     * (code 13) -> byte 0xd2 */
    float x[16] = {1.0f, -3.0f, 6.0f};
    uint8_t s = nq_nvfp4_block_scale_max(x, gs);
    assert_int_equal(s, 0x4c);
    nq_nvfp4_encode_block(x, s, gs, p);
    assert_int_equal(p[0], 0xd2);
    assert_int_equal(p[1], 0x07);
}

/* INT4 (GPTQ, symmetric): scale = f16(amax / 7); q = rint(w / scale) + 8
 * clamped to 0..15; stored zero 8 - 1 = 7 in every nibble (0x77777777);
 * qweight row r packs input rows 8r..8r+7, row 8r + j in bits 4j..4j+3. */
static void test_int4_by_hand(void **state)
{
    (void)state;
    float g[8] = {0.7f, -0.7f, 0.05f, 0.15f, -0.25f, 0.35f, 0, 0};
    uint16_t s = nq_int4_group_scale_max(g, 8);
    assert_true(nq_f16_to_f32(s) == nq_f16_to_f32(nq_f32_to_f16(0.1f)));
    uint8_t q[8];
    nq_int4_encode_group(g, 8, s, q);
    /* the scale is f16(0.1) = 0.0999756, so 0.7 -> 7.0017 -> 7 -> 15; -7 -> 1;
     * 0.05 -> 0.5012 -> 1 -> 9; 0.15 -> 1.5004 -> 2 -> 10; -0.25 -> -2.5006 -> -3
     * -> 5; 0.35 -> 3.5009 -> 4 -> 12; 0 -> 8 */
    const uint8_t want[8] = {15, 1, 9, 10, 5, 12, 8, 8};
    assert_memory_equal(q, want, 8);
    /* one output row, 8 inputs, group 8 -> qweight [1, 1] ... needs out % 8:
     * use 8 identical rows */
    uint8_t codes[64];
    for (int r = 0; r < 8; r++)
        memcpy(codes + 8 * r, want, 8);
    int32_t qw[8], qz[1], gi[8];
    nq_int4_pack_gptq(codes, 8, 8, 8, qw, qz, gi);
    assert_int_equal((uint32_t)qw[0], 0x88c5a91fu);
    assert_int_equal((uint32_t)qz[0], 0x77777777u);
    assert_int_equal(gi[7], 0);
}

/* FP8 KV-cache scales: amax / 448 unclamped (ModelOpt >= 0.43
 * postprocess_state_dict; it wrote max(amax / 448, 1) before), 1.0 for a zero
 * amax since vLLM rejects a zero scale. Values by hand. */
static void test_kv_cache_scale_by_hand(void **state)
{
    (void)state;
    assert_true(nq_fp8_kv_cache_scale(448.0f) == 1.0f);
    assert_true(nq_fp8_kv_cache_scale(896.0f) == 2.0f);
    assert_true(nq_fp8_kv_cache_scale(112.0f) == 0.25f);  /* below 1: kept */
    assert_true(nq_fp8_kv_cache_scale(3.5f) == 0.0078125f); /* 3.5 / 448 = 2^-7 */
    assert_true(nq_fp8_kv_cache_scale(0.0f) == 1.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nvfp4_matches_modelopt), cmocka_unit_test(test_fp8_matches_modelopt),
        cmocka_unit_test(test_modelopt_cuda_rounding),
        cmocka_unit_test(test_kv_cache_scale_by_hand),
        cmocka_unit_test(test_e2m1_by_hand),           cmocka_unit_test(test_e4m3_by_hand),
        cmocka_unit_test(test_nvfp4_blocks_by_hand),   cmocka_unit_test(test_int4_by_hand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
