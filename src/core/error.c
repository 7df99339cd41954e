#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int nq_fail(nq_error *err, const char *fmt, ...)
{
    if (err && err->msg[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        /* The contract is one line: fold any newline a caller's text carried. */
        for (char *p = err->msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    return -1;
}

void nq_error_clear(nq_error *err)
{
    if (err)
        err->msg[0] = '\0';
}

void nq_error_name(nq_error *err, const char *what, const char *name)
{
    if (!err || !err->msg[0] || strstr(err->msg, name))
        return;
    char inner[sizeof err->msg];
    snprintf(inner, sizeof inner, "%s", err->msg);
    snprintf(err->msg, sizeof err->msg, "%s '%.300s': %.700s", what, name, inner);
}

void nq_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
