/* A fixed-partition parallel loop.
 *
 * Determinism rule: work is cut into items whose boundaries never depend on
 * the thread count; threads only decide WHO computes an item, never WHAT an
 * item is.  Anything reduced across items must be reduced in item order by
 * the caller after the loop (never with a shared accumulator). */
#ifndef NQ_CORE_PARALLEL_H
#define NQ_CORE_PARALLEL_H

#include <stddef.h>

/* Called for items [begin, end). Returns 0, or -1 to stop the loop. `worker`
 * is 0..threads-1, for per-thread scratch buffers. */
typedef int (*nq_range_fn)(void *ctx, size_t begin, size_t end, int worker);

/* Runs fn over [0, n) in chunks of `chunk` items (chunk >= 1) using up to
 * `threads` threads (<= 1: inline on the caller's thread; a loop started
 * from inside another loop's fn also runs inline). Returns -1 if any
 * call returned -1 (the first failing chunk in item order is the one whose
 * error the caller should report; fn stores errors per chunk if it needs
 * them). */
int nq_parallel_for(size_t n, size_t chunk, int threads, nq_range_fn fn, void *ctx);

/* Threads to use when the user gave none: online CPUs, at least 1. */
int nq_default_threads(void);

#endif
