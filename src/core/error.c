#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>

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
