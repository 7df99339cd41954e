#include "core/interrupt.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t requested;

static void on_signal(int sig)
{
    (void)sig;
    requested = 1;
}

void nq_interrupt_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND; /* the second signal takes the default action */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN);
}

void nq_interrupt_uninstall(void)
{
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

void nq_interrupt_request(void)
{
    requested = 1;
}

void nq_interrupt_clear(void)
{
    requested = 0;
}

int nq_interrupt_check(nq_error *err)
{
    if (!requested)
        return 0;
    return nq_fail(err, "interrupted: nothing was written to the output (partial files removed)");
}
