#include "eval/report.h"

#include <errno.h>
#include <fcntl.h>
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
