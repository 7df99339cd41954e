/* The report's effective-bits-vs-KL plot (nq_report_pareto_svg): every
 * point lands at the coordinates the documented mapping gives for a small
 * hand-computed case, on a linear and on a logarithmic KL axis; names are
 * escaped; nothing is drawn without points.  (tests/cli_autoq.sh parses the
 * whole SVG of a real run with an XML parser.) */
#include "testutil.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/report.h"

static char *render(const char *plot_json)
{
    json_error_t je;
    json_t *plot = json_loads(plot_json, 0, &je);
    assert_non_null(plot);
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(nq_report_pareto_svg(f, plot), 0);
    long n = ftell(f);
    rewind(f);
    char *s = calloc((size_t)n + 1, 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    json_decref(plot);
    return s;
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* Box x 70..620 (550 px), y 20..315 (295 px).  x spans [4, 8]; KL 0.005..0.02
 * is a 4x span: linear over [0, 0.02]. */
static void test_linear_axis(void **state)
{
    (void)state;
    char *s = render("{\"series\": ["
                     "{\"label\": \"auto\", \"line\": true, \"points\": ["
                     "{\"x\": 4.5, \"y\": 0.02, \"name\": \"a<b & c\"},"
                     "{\"x\": 8, \"y\": 0.005, \"name\": \"b\"}]},"
                     "{\"label\": \"uniform\", \"points\": [{\"x\": 6, \"y\": 0.01}]}]}");
    assert_non_null(strstr(s, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_int_equal(count(s, "<circle"), 3);
    assert_int_equal(count(s, "<polyline"), 1);
    /* 4.5 -> 70 + 550 * 0.5 / 4; 0.02 -> top; 0.005 -> 20 + 295 * 0.75 */
    assert_non_null(strstr(s, "points=\"138.75,20.00 620.00,241.25 \""));
    assert_non_null(strstr(s, "<circle cx=\"138.75\" cy=\"20.00\""));
    assert_non_null(strstr(s, "<circle cx=\"620.00\" cy=\"241.25\""));
    assert_non_null(strstr(s, "<circle cx=\"345.00\" cy=\"167.50\""));
    assert_non_null(strstr(s, "<title>a&lt;b &amp; c: 4.5000 bits"));
    /* whole-bit ticks 4..8 and linear KL ticks 0..0.02 */
    assert_int_equal(count(s, "text-anchor=\"middle\">"), 5 + 2); /* + both axis labels */
    assert_non_null(strstr(s, ">0.02</text>"));
    assert_null(strstr(s, "a<b"));
    free(s);
}

/* KL 1e-4..0.02 spans 200x: log axis over decades 1e-4..1e-1 (lo -4, hi -1);
 * a zero sits on the bottom edge.  x spans [4, 16]. */
static void test_log_axis(void **state)
{
    (void)state;
    char *s = render("{\"series\": [{\"label\": \"auto\", \"line\": true, \"points\": ["
                     "{\"x\": 4.5, \"y\": 0.02}, {\"x\": 8, \"y\": 1e-4}, {\"x\": 16, \"y\": 0}]}]}");
    /* 4.5 -> 70 + 550 * 0.5 / 12 = 92.92; 0.02 -> 20 + 295 * (1 - (log10 0.02 + 4) / 3) = 88.73 */
    assert_non_null(strstr(s, "<circle cx=\"92.92\" cy=\"88.73\""));
    assert_non_null(strstr(s, "<circle cx=\"253.33\" cy=\"315.00\""));
    assert_non_null(strstr(s, "<circle cx=\"620.00\" cy=\"315.00\""));
    assert_non_null(strstr(s, ">0.0001</text>"));
    assert_non_null(strstr(s, ">0.1</text>"));
    free(s);
}

static void test_nothing_to_draw(void **state)
{
    (void)state;
    char *s = render("{\"series\": [{\"label\": \"empty\", \"points\": []}]}");
    assert_string_equal(s, "");
    free(s);
    s = render("{}");
    assert_string_equal(s, "");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_axis),
        cmocka_unit_test(test_log_axis),
        cmocka_unit_test(test_nothing_to_draw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
