#include "eval/report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/outpath.h"

static void html_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

static void html_value(FILE *f, json_t *v)
{
    if (json_is_string(v))
        html_text(f, json_string_value(v));
    else if (json_is_integer(v))
        fprintf(f, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        fprintf(f, "%.6g", json_real_value(v));
    else if (json_is_true(v) || json_is_false(v))
        fputs(json_is_true(v) ? "yes" : "no", f);
    else if (v) {
        char *t = json_dumps(v, JSON_COMPACT);
        if (t)
            html_text(f, t);
        free(t);
    }
}

static void html_kv_table(FILE *f, const char *title, json_t *obj)
{
    if (!json_is_object(obj))
        return;
    fprintf(f, "<h2>%s</h2>\n<table class=kv>\n", title);
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        fputs("<tr><th>", f);
        html_text(f, k);
        fputs("</th><td>", f);
        html_value(f, v);
        fputs("</td></tr>\n", f);
    }
    fputs("</table>\n", f);
}

/* KL by position as an inline SVG line chart: kp = {"bucket": B,
 * "prefill": P, "series": [{"label", "kl": [per bucket]}]}; bucket i covers
 * positions [i*B, (i+1)*B), drawn at its middle. */
static void html_kl_plot(FILE *f, json_t *kp)
{
    json_t *series = json_object_get(kp, "series");
    int bucket = (int)json_integer_value(json_object_get(kp, "bucket"));
    if (!json_is_array(series) || json_array_size(series) == 0 || bucket < 1)
        return;
    static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"};
    const double W = 640, H = 320, L = 70, R = 20, T = 20, B = 45;
    size_t nb = 0, i, j;
    double ymax = 0.0, ymin = 0.0;
    json_t *s, *v;
    json_array_foreach(series, i, s)
    {
        json_t *kl = json_object_get(s, "kl");
        nb = json_array_size(kl) > nb ? json_array_size(kl) : nb;
        json_array_foreach(kl, j, v)
        {
            double y = json_real_value(v);
            ymax = y > ymax ? y : ymax;
            if (y > 0.0 && (ymin == 0.0 || y < ymin))
                ymin = y;
        }
    }
    if (nb == 0)
        return;
    if (ymax <= 0.0)
        ymax = 1e-12;
    /* KL of a rounded state spans decades: a log axis (whole decades, zeros
     * on the bottom edge) when the positive values span more than 100x */
    bool logy = ymin > 0.0 && ymax / ymin > 100.0;
    double lo = logy ? floor(log10(ymin)) : 0.0, hi = logy ? ceil(log10(ymax)) : ymax;
    if (logy && hi <= lo)
        hi = lo + 1;
    double xmax = (double)nb * bucket;
    fprintf(f, "<h2>KL(base || model) by token position</h2>\n<p>Mean KL per prediction in "
               "buckets of %d positions; prefill %d token(s), then one token per step%s.</p>\n",
            bucket, (int)json_integer_value(json_object_get(kp, "prefill")),
            logy ? "; logarithmic KL axis, zeros on the bottom edge" : "");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-size=\"11\">\n<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
               "fill=\"none\" stroke=\"#888\"/>\n",
            W, H, L, T, W - L - R, H - T - B);
    int yt = logy ? (int)(hi - lo) : 4;
    for (int t = 0; t <= yt; t++) {
        double y = T + (H - T - B) * (1.0 - (double)t / yt);
        fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", L - 4,
                y + 4, logy ? pow(10.0, lo + t) : ymax * t / 4.0);
    }
    for (int t = 0; t <= 4; t++) {
        double x = L + (W - L - R) * t / 4.0;
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n", x,
                H - B + 15, xmax * t / 4.0);
    }
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">token position</text>\n",
            L + (W - L - R) / 2, H - 8);
    fprintf(f, "<text x=\"14\" y=\"%.0f\" transform=\"rotate(-90 14 %.0f)\" "
               "text-anchor=\"middle\">KL (nats)</text>\n",
            T + (H - T - B) / 2, T + (H - T - B) / 2);
    json_array_foreach(series, i, s)
    {
        const char *color = colors[i % 5];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color);
        json_array_foreach(json_object_get(s, "kl"), j, v)
        {
            double x = L + (W - L - R) * ((j + 0.5) * bucket) / xmax;
            double kv = json_real_value(v);
            double frac = !logy ? kv / ymax
                          : kv > 0.0 ? (log10(kv) - lo) / (hi - lo) : 0.0;
            double y = T + (H - T - B) * (1.0 - (frac < 0.0 ? 0.0 : frac));
            fprintf(f, "%.1f,%.1f ", x, y);
        }
        fputs("\"/>\n", f);
        fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"12\" height=\"3\" fill=\"%s\"/>"
                   "<text x=\"%.0f\" y=\"%.0f\">",
                L + 10, T + 12 + 14.0 * i, color, L + 26, T + 16 + 14.0 * i);
        html_value(f, json_object_get(s, "label"));
        fputs("</text>\n", f);
    }
    fputs("</svg>\n", f);
}

/* ---- effective bits vs KL (the AutoQuantize Pareto plot) -------------- */

static double num(json_t *v)
{
    return json_is_number(v) ? json_number_value(v) : NAN;
}

int nq_report_pareto_svg(FILE *f, json_t *plot)
{
    static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"};
    const double W = 640, H = 360, L = 70, R = 20, T = 20, B = 45;
    json_t *series = json_object_get(plot, "series");
    if (!json_is_array(series))
        return 0;
    double xmin = INFINITY, xmax = -INFINITY, ymax = 0.0, ymin = 0.0;
    size_t npoints = 0, i, j;
    json_t *s, *p;
    json_array_foreach(series, i, s)
    {
        json_array_foreach(json_object_get(s, "points"), j, p)
        {
            double x = num(json_object_get(p, "x")), y = num(json_object_get(p, "y"));
            if (!isfinite(x) || !isfinite(y))
                continue;
            npoints++;
            xmin = x < xmin ? x : xmin;
            xmax = x > xmax ? x : xmax;
            ymax = y > ymax ? y : ymax;
            if (y > 0.0 && (ymin == 0.0 || y < ymin))
                ymin = y;
        }
    }
    if (npoints == 0)
        return 0;
    double x0 = floor(xmin), x1 = ceil(xmax);
    if (x1 <= x0)
        x1 = x0 + 1.0;
    if (ymax <= 0.0)
        ymax = 1e-12;
    bool logy = ymin > 0.0 && ymax / ymin > 100.0;
    double lo = logy ? floor(log10(ymin)) : 0.0, hi = logy ? ceil(log10(ymax)) : ymax;
    if (logy && hi <= lo)
        hi = lo + 1;
    double pw = W - L - R, ph = H - T - B;
#define PX(x) (L + pw * ((x) - x0) / (x1 - x0))
#define PY(y)                                                                                   \
    (T + ph * (1.0 - fmax(0.0, !logy ? (y) / ymax                                               \
                                     : (y) > 0.0 ? (log10(y) - lo) / (hi - lo) : 0.0)))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-size=\"11\" font-family=\"sans-serif\">\n<rect x=\"%.0f\" y=\"%.0f\" "
               "width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#888\"/>\n",
            W, H, L, T, pw, ph);
    int yt = logy ? (int)(hi - lo) : 4;
    for (int t = 0; t <= yt; t++) {
        double y = T + ph * (1.0 - (double)t / yt);
        fprintf(f, "<text x=\"%.0f\" y=\"%.2f\" text-anchor=\"end\">%.3g</text>\n", L - 4, y + 4,
                logy ? pow(10.0, lo + t) : ymax * t / 4.0);
    }
    int xt = (int)(x1 - x0);
    for (int t = 0; t <= xt; t++)
        fprintf(f, "<text x=\"%.2f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n",
                L + pw * t / xt, H - B + 15, x0 + t);
    fputs("<text x=\"", f);
    fprintf(f, "%.0f\" y=\"%.0f\" text-anchor=\"middle\">", L + pw / 2, H - 8);
    html_text(f, json_is_string(json_object_get(plot, "x_label"))
                     ? json_string_value(json_object_get(plot, "x_label"))
                     : "effective bits per parameter");
    fprintf(f, "</text>\n<text x=\"14\" y=\"%.0f\" transform=\"rotate(-90 14 %.0f)\" "
               "text-anchor=\"middle\">",
            T + ph / 2, T + ph / 2);
    html_text(f, json_is_string(json_object_get(plot, "y_label"))
                     ? json_string_value(json_object_get(plot, "y_label"))
                     : "KL (nats/token)");
    fputs("</text>\n", f);
    json_array_foreach(series, i, s)
    {
        const char *color = colors[i % 5];
        json_t *pts = json_object_get(s, "points");
        if (json_is_true(json_object_get(s, "line")) && json_array_size(pts) > 1) {
            /* points are given in order of bits */
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"",
                    color);
            json_array_foreach(pts, j, p)
            {
                double x = num(json_object_get(p, "x")), y = num(json_object_get(p, "y"));
                if (isfinite(x) && isfinite(y))
                    fprintf(f, "%.2f,%.2f ", PX(x), PY(y));
            }
            fputs("\"/>\n", f);
        }
        json_array_foreach(pts, j, p)
        {
            double x = num(json_object_get(p, "x")), y = num(json_object_get(p, "y"));
            if (!isfinite(x) || !isfinite(y))
                continue;
            fprintf(f, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"3.5\" fill=\"%s\"><title>", PX(x),
                    PY(y), color);
            if (json_is_string(json_object_get(p, "name"))) {
                html_text(f, json_string_value(json_object_get(p, "name")));
                fputs(": ", f);
            }
            fprintf(f, "%.4f bits, KL %.6g</title></circle>\n", x, y);
        }
        fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"12\" height=\"3\" fill=\"%s\"/>"
                   "<text x=\"%.0f\" y=\"%.0f\">",
                W - R - 300, T + 12 + 14.0 * i, color, W - R - 284, T + 16 + 14.0 * i);
        html_value(f, json_object_get(s, "label"));
        fputs("</text>\n", f);
    }
#undef PX
#undef PY
    fputs("</svg>\n", f);
    return ferror(f) ? -1 : 0;
}

/* The AutoQuantize section: the plot and, below it, the same points as a
 * table; a run evaluated with --eval adds its own held-out KL. */
static void html_pareto(FILE *f, json_t *doc)
{
    json_t *aq = json_object_get(doc, "auto_quantize");
    json_t *plot = json_deep_copy(json_object_get(aq, "pareto"));
    if (!json_is_object(plot))
        goto done;
    json_t *ev = json_object_get(doc, "eval");
    json_t *series = json_object_get(plot, "series");
    if (json_is_number(json_object_get(ev, "kl")) && json_is_array(series))
        json_array_append_new(
            series, json_pack("{s:s, s:b, s:[{s:O, s:O, s:s}]}", "label",
                              "this checkpoint: held-out KL (--eval)", "line", 0, "points", "x",
                              json_object_get(aq, "effective_bits"), "y",
                              json_object_get(ev, "kl"), "name", "this checkpoint"));
    fputs("<h2>AutoQuantize: effective bits vs KL</h2>\n<p>", f);
    html_value(f, json_object_get(plot, "caption"));
    fputs("</p>\n", f);
    nq_report_pareto_svg(f, plot);
    fputs("<table>\n<tr><th>series</th><th>point</th><th>bits/param (searchable)</th>"
          "<th>KL</th></tr>\n",
          f);
    size_t i, j;
    json_t *s, *p;
    json_array_foreach(series, i, s)
        json_array_foreach(json_object_get(s, "points"), j, p)
        {
            fputs("<tr><td>", f);
            html_value(f, json_object_get(s, "label"));
            fputs("</td><td>", f);
            html_value(f, json_object_get(p, "name"));
            fprintf(f, "</td><td class=n>%.4f</td><td class=n>%.6g</td></tr>\n",
                    num(json_object_get(p, "x")), num(json_object_get(p, "y")));
        }
    fputs("</table>\n", f);
done:
    json_decref(plot);
}

static int write_html(FILE *f, json_t *doc)
{
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>nemoq quantization "
          "report</title>\n<style>body{font:14px sans-serif;margin:2em}table{border-collapse:"
          "collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:"
          "left}th{background:#f0f0f0}td.n{text-align:right;font-family:monospace}"
          ".bar{background:#d9534f;height:8px}</style></head><body>\n<h1>nemoq quantization "
          "report</h1>\n",
          f);
    html_kv_table(f, "Summary", json_object_get(doc, "summary"));
    html_kv_table(f, "Evaluation", json_object_get(doc, "eval"));
    html_kl_plot(f, json_object_get(doc, "kl_by_position"));
    html_pareto(f, doc);
    json_t *mods = json_object_get(doc, "modules");
    double worst = 0.0;
    size_t i;
    json_t *m;
    json_array_foreach(mods, i, m)
    {
        double e = json_real_value(json_object_get(m, "output_rel_err"));
        worst = e > worst ? e : worst;
    }
    fprintf(f, "<h2>Modules (%zu quantized)</h2>\n<table>\n<tr><th>module</th><th>format</th>"
               "<th>algorithm</th><th>weight rel. err</th><th>output rel. err (calib)</th>"
               "<th></th><th>activation amax</th><th>calib rows</th><th>why</th></tr>\n",
            json_array_size(mods));
    json_array_foreach(mods, i, m)
    {
        double e = json_real_value(json_object_get(m, "output_rel_err"));
        fputs("<tr><td>", f);
        html_value(f, json_object_get(m, "module"));
        fputs("</td><td>", f);
        html_value(f, json_object_get(m, "format"));
        fputs("</td><td>", f);
        html_value(f, json_object_get(m, "algorithm"));
        fputs("</td><td class=n>", f);
        html_value(f, json_object_get(m, "weight_rel_err"));
        fputs("</td><td class=n>", f);
        html_value(f, json_object_get(m, "output_rel_err"));
        fprintf(f, "</td><td><div class=bar style=\"width:%dpx\"></div></td><td class=n>",
                worst > 0 ? (int)(100.0 * e / worst) : 0);
        html_value(f, json_object_get(m, "activation_amax"));
        fputs("</td><td class=n>", f);
        html_value(f, json_object_get(m, "calibration_rows"));
        fputs("</td><td>", f);
        html_value(f, json_object_get(m, "why"));
        if (json_object_get(m, "note")) {
            fputs(" <b>", f);
            html_value(f, json_object_get(m, "note"));
            fputs("</b>", f);
        }
        fputs("</td></tr>\n", f);
    }
    fputs("</table>\n</body></html>\n", f);
    return ferror(f) ? -1 : 0;
}

/* Written beside `path` under a name no other run uses (O_EXCL, never
 * through a symlink, mode 0666 minus the umask), then renamed over it: the
 * rename replaces the name `path`, never the file a link points to. */
static int write_atomically(const char *path, json_t *doc, bool html, nq_error *err)
{
    char tmp[4300];
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 1000; attempt++) {
        snprintf(tmp, sizeof tmp, "%s.nemoq-tmp-%ld-%d", path, (long)getpid(), attempt);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        return nq_fail(err, "%s: cannot create: %s", tmp, strerror(e));
    }
    int rc = html ? write_html(f, doc)
                  : json_dumpf(doc, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (rc == 0 && !html)
        fputc('\n', f);
    if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0)
        rc = -1;
    int saved = errno;
    if (fclose(f) != 0)
        rc = -1;
    if (rc != 0) {
        unlink(tmp);
        return nq_fail(err, "%s: write failed: %s", path, strerror(saved ? saved : EIO));
    }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return nq_fail(err, "%s: cannot rename into place: %s", path, strerror(saved));
    }
    return 0;
}

/* PATH.json and PATH.html ("PATH.json" given: the same two). */
static int report_paths(const char *path, char *jpath, char *hpath, size_t len, nq_error *err)
{
    char base[4096];
    size_t n = strlen(path);
    if (n >= sizeof base - 8)
        return nq_fail(err, "%s: path too long", path);
    snprintf(base, sizeof base, "%s", path);
    if (n > 5 && strcmp(base + n - 5, ".json") == 0)
        base[n - 5] = '\0';
    snprintf(jpath, len, "%s.json", base);
    snprintf(hpath, len, "%s.html", base);
    return 0;
}

int nq_report_check(const char *path, const char *input_dir, const char *output_dir,
                    nq_error *err)
{
    char jpath[4200], hpath[4200];
    if (report_paths(path, jpath, hpath, sizeof jpath, err) != 0 ||
        nq_outpath_check_file(jpath, input_dir, output_dir, "--report", err) != 0 ||
        nq_outpath_check_file(hpath, input_dir, output_dir, "--report", err) != 0)
        return -1;
    return 0;
}

int nq_report_write(const char *path, json_t *doc, nq_error *err)
{
    char jpath[4200], hpath[4200];
    if (report_paths(path, jpath, hpath, sizeof jpath, err) != 0 ||
        write_atomically(jpath, doc, false, err) != 0 ||
        write_atomically(hpath, doc, true, err) != 0)
        return -1;
    return 0;
}
