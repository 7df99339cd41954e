/* The --optimize techniques against an independent numpy/torch reference
 * (tests/gen/gen_optimize_reference.py, fixture in tests/fixtures/optimize):
 * NVFP4 activation fake quantization, the served-input statistics
 * Hq = sum xq xq^T gathered by the calibration hooks, the activation-scale
 * candidates' errors, GPTQ with
 * block scales chosen by the GPTQ loss and with four-over-six, ModelOpt's
 * local_hessian block scale; thread independence and the technique list. */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algo/gptq.h"
#include "algo/optimize.h"
#include "calib/calib.h"
#include "formats/nvfp4.h"

#define R 16
#define C 64
#define N 256

static void *load(const char *name, size_t want)
{
    return nq_test_load_fixture("optimize", name, want);
}

static json_t *case_json(void)
{
    json_error_t je;
    json_t *j = json_load_file(nq_test_path("tests/fixtures/optimize/case.json"), 0, &je);
    assert_non_null(j);
    return j;
}

static double num(json_t *j, const char *key)
{
    return json_number_value(json_object_get(j, key));
}

static void test_fake_quant(void **state)
{
    (void)state;
    json_t *cj = case_json();
    float *x = load("x.f32", sizeof(float) * N * C), *xq = load("xq.f32", sizeof(float) * N * C);
    nq_nvfp4_fake_quant(x, N * C, (float)num(cj, "act_gs"));
    assert_memory_equal(x, xq, sizeof(float) * N * C);
    free(x), free(xq);
    json_decref(cj);
}

static void close_rel(const double *a, const double *b, size_t n, double tol, const char *what)
{
    double scale = 0.0;
    for (size_t i = 0; i < n; i++)
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i] - b[i]) > tol * scale)
            fail_msg("%s[%zu]: %.17g, reference %.17g", what, i, a[i], b[i]);
}

static void test_served_statistics(void **state)
{
    (void)state;
    json_t *cj = case_json();
    float *x = load("x.f32", sizeof(float) * N * C);
    double *hq = load("hq.f64", sizeof(double) * C * C);
    nq_plan_module m = {.name = "m", .in_features = C, .out_features = R,
                        .format = NQ_FORMAT_NVFP4};
    nq_linear_stats item = {.module = &m, .act_gs = (float)num(cj, "act_gs")};
    item.hessian = calloc(C * C, sizeof(double));
    nq_calib_stats s = {.items = &item, .count = 1, .cap = 1, .mode = NQ_CALIB_SERVED};
    nq_forward_hooks h = nq_calib_hooks(&s);
    nq_error err = {0};
    /* two calls, as a forward pass over two sequences makes */
    nq_linear_input in = {.weight_name = "m.weight", .x = x, .rows = 100, .in_features = C,
                          .out_features = R};
    assert_int_equal(h.linear_input(h.ctx, &in, &err), 0);
    in.x = x + 100 * C;
    in.rows = N - 100;
    assert_int_equal(h.linear_input(h.ctx, &in, &err), 0);
    for (int a = 0; a < C; a++) /* dsyrk fills the upper triangle */
        for (int b = 0; b < a; b++)
            item.hessian[a * C + b] = item.hessian[b * C + a];
    close_rel(item.hessian, hq, C * C, 1e-12, "Hq");

    /* the activation-scale candidates */
    float amax = 0.0f;
    for (int i = 0; i < N * C; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    s.mode = NQ_CALIB_ACT;
    item.act_amax_ref = amax;
    in.x = x;
    in.rows = N;
    assert_int_equal(h.linear_input(h.ctx, &in, &err), 0);
    json_t *ae = json_object_get(cj, "act_err");
    double ref[NQ_ACT_CANDIDATES];
    for (int k = 0; k < NQ_ACT_CANDIDATES; k++)
        ref[k] = json_number_value(json_array_get(ae, (size_t)k));
    close_rel(item.act_err, ref, NQ_ACT_CANDIDATES, 1e-9, "act_err");
    uint64_t total = 0;
    for (int b = 0; b < NQ_ACT_HIST_BINS; b++)
        total += item.act_hist[b];
    assert_int_equal(total, (uint64_t)N * C);
    assert_true(item.act_hist[0] >= 1); /* the amax itself */
    free(item.hessian), free(x), free(hq);
    json_decref(cj);
}

/* code of element k of row r in packed NVFP4 */
static int nib(const uint8_t *packed, int r, int k)
{
    uint8_t byte = packed[r * (C / 2) + k / 2];
    return k % 2 ? byte >> 4 : byte & 15;
}

static void check_gptq(const char *wname, bool four_over_six, const char *codes_name,
                       const char *scales_name, const char *gs_key)
{
    json_t *cj = case_json();
    float *w = load(wname, sizeof(float) * R * C);
    double *hq = load("hq.f64", sizeof(double) * C * C);
    uint8_t *codes = load(codes_name, R * C), *scales = load(scales_name, R * C / 16);
    nq_gptq_nvfp4_opts o = {.search = !four_over_six, .lo = 0.5f, .hi = 1.5f,
                            .four_over_six = four_over_six,
                            .scale_max = four_over_six ? 256.0f : 448.0f};
    uint8_t packed[R * C / 2], sc[R * C / 16], packed3[R * C / 2], sc3[R * C / 16];
    float gs, gs3;
    nq_gptq_stats st;
    nq_error err = {0};
    assert_int_equal(
        nq_gptq_nvfp4_ex(w, R, C, hq, &o, 0.01, 1, packed, sc, &gs, &st, &err), 0);
    assert_true(gs == (float)num(cj, gs_key));
    int sdiff = 0, cdiff = 0;
    for (int i = 0; i < R * C / 16; i++)
        sdiff += sc[i] != scales[i];
    for (int r = 0; r < R; r++)
        for (int k = 0; k < C; k++)
            cdiff += nib(packed, r, k) != codes[r * C + k];
    /* float64 on both sides; only a near-tie decided by the last bit of a
     * BLAS sum may differ */
    if (sdiff > 1 || cdiff > 2)
        fail_msg("%s: %d of %d scales and %d of %d codes differ from the reference", codes_name,
                 sdiff, R * C / 16, cdiff, R * C);
    /* the same bytes for any thread count */
    assert_int_equal(
        nq_gptq_nvfp4_ex(w, R, C, hq, &o, 0.01, 3, packed3, sc3, &gs3, &st, &err), 0);
    assert_memory_equal(packed, packed3, sizeof packed);
    assert_memory_equal(sc, sc3, sizeof sc);
    free(w), free(hq), free(codes), free(scales);
    json_decref(cj);
}

static void test_gptq_scale_search(void **state)
{
    (void)state;
    check_gptq("w.f32", false, "codes_search.u8", "scales_search.u8", "gs_search");
}

static void test_gptq_four_over_six(void **state)
{
    (void)state;
    check_gptq("w.f32", true, "codes_46.u8", "scales_46.u8", "gs_46");
}

static void test_local_hessian_scale(void **state)
{
    (void)state;
    float *w = load("w.f32", sizeof(float) * R * C);
    double *hq = load("hq.f64", sizeof(double) * C * C);
    uint8_t *ref = load("scales_local_hessian.u8", R * C / 16);
    float amax = 0.0f;
    for (int i = 0; i < R * C; i++)
        amax = fabsf(w[i]) > amax ? fabsf(w[i]) : amax;
    float gs = nq_nvfp4_global_scale(amax);
    int diff = 0, moved = 0;
    for (int r = 0; r < R; r++)
        for (int b = 0; b < C / 16; b++) {
            double hb[256], e;
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 16; j++)
                    hb[i * 16 + j] = hq[(b * 16 + i) * C + b * 16 + j];
            uint8_t s = nq_nvfp4_block_scale_search(w + r * C + b * 16, gs, hb, 0.5f, 1.5f, 0, &e);
            diff += s != ref[r * (C / 16) + b];
            moved += s != nq_nvfp4_block_scale_max(w + r * C + b * 16, gs);
        }
    assert_int_equal(diff, 0);
    assert_true(moved > 0); /* the fixture exercises the search */
    free(w), free(hq), free(ref);
}

static void test_technique_list(void **state)
{
    (void)state;
    nq_optimize o;
    nq_error err = {0};
    assert_int_equal(nq_optimize_parse("served-hessian,act-mse", &o, &err), 0);
    assert_true(o.enabled && o.served_hessian && !o.hessian_scales && o.act_scale == NQ_ACT_SCALE_MSE);
    char buf[256];
    nq_optimize_describe(&o, buf, sizeof buf);
    assert_string_equal(buf, "served-hessian,act-mse");
    assert_int_equal(nq_optimize_parse("none", &o, &err), 0);
    assert_false(o.enabled);
    nq_optimize_describe(&o, buf, sizeof buf);
    assert_string_equal(buf, "none");
    assert_int_equal(nq_optimize_parse("served-hesian", &o, &err), -1);
    assert_non_null(strstr(err.msg, "unknown technique 'served-hesian'"));
    assert_int_equal(nq_optimize_parse("act-mse,act-percentile", &o, &err), -1);
    assert_int_equal(nq_optimize_parse("served-hessian,", &o, &err), -1);
    nq_optimize d, p;
    nq_optimize_default(&d);
    assert_int_equal(nq_optimize_parse("default", &p, &err), 0);
    assert_memory_equal(&d, &p, sizeof d);
    assert_true(d.enabled);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake_quant),
        cmocka_unit_test(test_served_statistics),
        cmocka_unit_test(test_gptq_scale_search),
        cmocka_unit_test(test_gptq_four_over_six),
        cmocka_unit_test(test_local_hessian_scale),
        cmocka_unit_test(test_technique_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
