#include "core/parallel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    size_t n, chunk;
    nq_range_fn fn;
    void *ctx;
    atomic_size_t next_chunk;
    atomic_int failed;
} loop_state;

typedef struct {
    loop_state *loop;
    int worker;
} worker_arg;

static void run_chunks(loop_state *s, int worker)
{
    size_t nchunks = (s->n + s->chunk - 1) / s->chunk;
    for (;;) {
        if (atomic_load(&s->failed))
            return;
        size_t c = atomic_fetch_add(&s->next_chunk, 1);
        if (c >= nchunks)
            return;
        size_t begin = c * s->chunk;
        size_t end = begin + s->chunk < s->n ? begin + s->chunk : s->n;
        if (s->fn(s->ctx, begin, end, worker) != 0)
            atomic_store(&s->failed, 1);
    }
}

/* Set while a thread runs items of a loop: a loop started from inside an
 * item runs inline on that thread (the outer loop already occupies the
 * threads), so nesting never multiplies threads.  The partition stays the
 * same either way, so results do not change. */
static _Thread_local int in_loop;

static void *worker_main(void *p)
{
    worker_arg *a = p;
    in_loop = 1;
    run_chunks(a->loop, a->worker);
    return NULL;
}

int nq_parallel_for(size_t n, size_t chunk, int threads, nq_range_fn fn, void *ctx)
{
    if (n == 0)
        return 0;
    if (chunk == 0)
        chunk = 1;
    size_t nchunks = (n + chunk - 1) / chunk;
    if (threads > (int)nchunks)
        threads = (int)nchunks;
    loop_state s = {.n = n, .chunk = chunk, .fn = fn, .ctx = ctx};
    atomic_init(&s.next_chunk, 0);
    atomic_init(&s.failed, 0);
    if (threads <= 1 || in_loop) {
        run_chunks(&s, 0);
        return atomic_load(&s.failed) ? -1 : 0;
    }
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    worker_arg *args = calloc((size_t)threads, sizeof *args);
    if (!tids || !args) {
        free(tids);
        free(args);
        run_chunks(&s, 0);
        return atomic_load(&s.failed) ? -1 : 0;
    }
    int started = 0;
    for (int t = 1; t < threads; t++) {
        args[t] = (worker_arg){&s, t};
        if (pthread_create(&tids[t], NULL, worker_main, &args[t]) != 0)
            break;
        started = t;
    }
    in_loop = 1;
    run_chunks(&s, 0);
    in_loop = 0;
    for (int t = 1; t <= started; t++)
        pthread_join(tids[t], NULL);
    free(tids);
    free(args);
    return atomic_load(&s.failed) ? -1 : 0;
}

int nq_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
