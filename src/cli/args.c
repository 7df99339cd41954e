#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "export/lora.h"

bool nq_arg_value(int argc, char **argv, int *i, const char *name, const char **value, bool *bad)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return false;
    if (a[n] == '=') {
        *value = a + n + 1;
        return true;
    }
    if (a[n] != '\0')
        return false;
    if (*i + 1 >= argc) {
        nq_cli_error("%s needs a value", name);
        *bad = true;
        return true;
    }
    *value = argv[++*i];
    return true;
}

int nq_parse_size(const char *s, uint64_t *out)
{
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v <= 0)
        return -1;
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1},         {"B", 1},     {"KB", 1e3},          {"MB", 1e6},
                 {"GB", 1e9},     {"TB", 1e12}, {"KiB", 1024.0},      {"MiB", 1048576.0},
                 {"GiB", 1073741824.0}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) == 0) {
            double bytes = v * units[i].mult;
            if (bytes < 1 || bytes > 1e18)
                return -1;
            *out = (uint64_t)bytes;
            return 0;
        }
    }
    return -1;
}

int nq_parse_int(const char *s, int lo, int hi, int *out)
{
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

bool nq_arg_choice(int argc, char **argv, int *i, const char *name, const char *const *choices,
                   size_t n, int *index, bool *bad)
{
    const char *v = NULL;
    if (!nq_arg_value(argc, argv, i, name, &v, bad))
        return false;
    if (*bad)
        return true;
    for (size_t k = 0; k < n; k++)
        if (strcmp(v, choices[k]) == 0) {
            *index = (int)k;
            return true;
        }
    char list[256];
    size_t used = 0;
    list[0] = '\0';
    for (size_t k = 0; k < n && used < sizeof list; k++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s",
                                 k == 0 ? "" : k + 1 == n ? " or " : ", ", choices[k]);
    nq_cli_error("%s '%s': expected %s", name, v, list);
    *bad = true;
    return true;
}

bool nq_arg_int(int argc, char **argv, int *i, const char *name, int lo, int hi,
                const char *expected, int *out, bool *bad)
{
    const char *v = NULL;
    if (!nq_arg_value(argc, argv, i, name, &v, bad))
        return false;
    if (!*bad && nq_parse_int(v, lo, hi, out) != 0) {
        nq_cli_error("%s '%s': expected %s", name, v, expected);
        *bad = true;
    }
    return true;
}

bool nq_arg_number(int argc, char **argv, int *i, const char *name, double lo, double hi,
                   bool hi_inclusive, const char *expected, double *out, bool *bad)
{
    const char *v = NULL;
    if (!nq_arg_value(argc, argv, i, name, &v, bad))
        return false;
    if (*bad)
        return true;
    char *end = NULL;
    double x = strtod(v, &end);
    /* written so that NaN fails every comparison and is refused */
    if (*end || !(x > lo && (hi_inclusive ? x <= hi : x < hi))) {
        nq_cli_error("%s '%s': expected %s", name, v, expected);
        *bad = true;
        return true;
    }
    *out = x;
    return true;
}

bool nq_arg_threads(int argc, char **argv, int *i, int *out, bool *bad)
{
    return nq_arg_int(argc, argv, i, "--threads", 1, 1024, "a number from 1 to 1024", out, bad);
}

bool nq_arg_shard_size(int argc, char **argv, int *i, uint64_t *out, bool *bad)
{
    const char *v = NULL;
    if (!nq_arg_value(argc, argv, i, "--max-shard-size", &v, bad))
        return false;
    if (!*bad && nq_parse_size(v, out) != 0) {
        nq_cli_error("--max-shard-size '%s': expected a size such as 5GB or 500MB", v);
        *bad = true;
    }
    return true;
}

bool nq_arg_gptq_damp(int argc, char **argv, int *i, double *out, bool *bad)
{
    return nq_arg_number(argc, argv, i, "--gptq-damp", 0, 1, false, "a number in (0, 1)", out, bad);
}

bool nq_arg_in_out(const char *word, const char *unknown, const char *cmd, const char **in,
                   const char **out)
{
    if (word[0] == '-') {
        nq_cli_error("%s '%s'", unknown, word);
        return false;
    }
    if (!*in) {
        *in = word;
    } else if (!*out) {
        *out = word;
    } else {
        nq_cli_error("%s: unexpected argument '%s'", cmd, word);
        return false;
    }
    return true;
}

int nq_cli_add_lora(const char *arg, nq_lora_spec **specs, size_t *n)
{
    nq_lora_spec *g = realloc(*specs, (*n + 1) * sizeof *g);
    nq_error e = {0};
    if (!g) {
        nq_cli_error("out of memory reading --lora %s", arg);
        return -1;
    }
    *specs = g;
    if (nq_lora_spec_parse(arg, &g[*n], &e) != 0) {
        nq_cli_error("%s", e.msg);
        return -1;
    }
    (*n)++;
    return 0;
}
