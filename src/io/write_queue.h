/* A background thread that performs an nq_writer's tensor writes in order,
 * so that encoding tensor i+1 overlaps with copying tensor i into the page
 * cache (the write() copy is a sixth of a quantize run's CPU time, and it
 * would otherwise run while the encoding threads wait).
 *
 * Only the queue's thread touches the nq_writer between
 * nq_write_queue_start and nq_write_queue_finish.  At most
 * NQ_WRITE_QUEUE_DEPTH items wait, so memory stays bounded by a few encoded
 * tensors. */
#ifndef NQ_IO_WRITE_QUEUE_H
#define NQ_IO_WRITE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/writer.h"

#define NQ_WRITE_QUEUE_DEPTH 2
#define NQ_WRITE_PIECES 4

typedef struct nq_write_piece {
    const void *data;
    size_t len;
    bool owned; /* free(data) once written (or dropped after a failure) */
} nq_write_piece;

typedef struct nq_write_queue nq_write_queue;

nq_write_queue *nq_write_queue_start(nq_writer *w, nq_error *err);

/* Queues pieces[0..n) (n <= NQ_WRITE_PIECES) to be written in order, then
 * nq_tensor_release(release) if release is not NULL.  Blocks while the queue
 * is full.  Returns -1, with the earlier failure's message, if a write has
 * failed; the owned pieces are freed either way. */
int nq_write_queue_push(nq_write_queue *q, const nq_write_piece *pieces, int n,
                        const nq_tensor *release, nq_error *err);

/* Queues a stored tensor to be copied whole into the output, then released.
 * The queue's thread checks each chunk for NaN/Inf (nq_tensor_check_finite)
 * just before writing it, while the bytes are in cache: a non-finite
 * element fails the queue naming the tensor and the element. */
int nq_write_queue_push_tensor(nq_write_queue *q, const nq_tensor *t, nq_error *err);

/* Waits for every queued write, stops the thread and frees the queue (NULL
 * is a no-op).  Returns -1 with the first write failure's message. */
int nq_write_queue_finish(nq_write_queue *q, nq_error *err);

#endif
