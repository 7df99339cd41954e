/* Draws the README's AutoQuantize plot (bench/autoq_table.sh): reads a plot
 * description {"x_label", "y_label", "series": [{"label", "line",
 * "points": [{"x", "y", "name"}]}]} from a JSON file and writes the SVG that
 * the HTML report draws for it (eval/report.h) to stdout.
 *   nemoq-pareto-svg PLOT.json > plot.svg */
#include <jansson.h>
#include <stdio.h>

#include "eval/report.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: nemoq-pareto-svg PLOT.json > plot.svg\n");
        return 2;
    }
    json_error_t je;
    json_t *plot = json_load_file(argv[1], 0, &je);
    if (!plot) {
        fprintf(stderr, "%s: %s (line %d)\n", argv[1], je.text, je.line);
        return 1;
    }
    int rc = nq_report_pareto_svg(stdout, plot) != 0 || fflush(stdout) != 0;
    json_decref(plot);
    if (rc)
        fprintf(stderr, "nemoq-pareto-svg: write failed\n");
    return rc;
}
