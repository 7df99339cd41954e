#include "core/blas.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Declared here because the reference cblas.h lacks them; OpenBLAS exports
 * them.  The dynamic-arch entry points exist only in DYNAMIC_ARCH builds,
 * hence weak: absent, the kernel choice is left as it is. */
void openblas_set_num_threads(int num_threads);
char *openblas_get_corename(void) __attribute__((weak));
void gotoblas_dynamic_init(void) __attribute__((weak));
void gotoblas_dynamic_quit(void) __attribute__((weak));

static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char *better_core(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512cd"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#endif
    return NULL;
}

static void init(void)
{
    openblas_set_num_threads(1);
    if (getenv("OPENBLAS_CORETYPE") || !openblas_get_corename || !gotoblas_dynamic_init ||
        !gotoblas_dynamic_quit)
        return;
    const char *core = openblas_get_corename();
    /* "Prescott" is what dynamic_arch falls back to for a CPU it does not
     * know; a core it did recognise is never overridden. */
    if (!core || strcmp(core, "Prescott") != 0)
        return;
    const char *want = better_core();
    if (!want)
        return;
    /* gotoblas_dynamic_init reads OPENBLAS_CORETYPE; set it only for the
     * call, so that child processes see the environment they were given. */
    setenv("OPENBLAS_CORETYPE", want, 1);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");
    openblas_set_num_threads(1);
}

void nq_blas_init(void)
{
    pthread_once(&once, init);
}

const char *nq_blas_core(void)
{
    nq_blas_init();
    const char *c = openblas_get_corename ? openblas_get_corename() : NULL;
    return c ? c : "unknown";
}
