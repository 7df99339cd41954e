/* Read-ahead for streaming a checkpoint larger than RAM.
 *
 * The kernel reads ahead of a mapping only read_ahead_kb (128 KB to 8 MB)
 * past the page being touched, less than one expert tensor: while the
 * encoder computes, the disk idles, and while it waits for a page, the CPU
 * idles.  A prefetcher thread asks the kernel (posix_fadvise WILLNEED, which
 * fills the page cache without mapping anything) for the tensors ahead of
 * the one being encoded, up to a byte window, so that reading overlaps
 * encoding.  Measured on the 2-core machine with a cold cache: see
 * bench/README or the README's benchmark section. */
#ifndef NQ_IO_PREFETCH_H
#define NQ_IO_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "io/safetensors.h"

typedef struct nq_prefetcher nq_prefetcher;

/* Starts prefetching tensors of ck in index order, at most window_bytes
 * beyond the consumer's current one.  NULL (with err set) on failure. */
nq_prefetcher *nq_prefetcher_start(const nq_checkpoint *ck, uint64_t window_bytes, nq_error *err);

/* The consumer is now at tensor `index`. */
void nq_prefetcher_advance(nq_prefetcher *p, size_t index);

/* Stops the thread and frees p (NULL is a no-op). */
void nq_prefetcher_stop(nq_prefetcher *p);

#endif
