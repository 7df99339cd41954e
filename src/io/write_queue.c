#include "io/write_queue.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct item {
    nq_write_piece pieces[NQ_WRITE_PIECES];
    int n;
    const nq_tensor *release;
    const nq_tensor *copy; /* a whole stored tensor, checked for NaN/Inf as it is written */
} item;

struct nq_write_queue {
    nq_writer *w;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    item ring[NQ_WRITE_QUEUE_DEPTH];
    size_t head, count; /* ring[head] is the oldest */
    bool stopping, failed;
    nq_error error; /* the first failure */
};

static void free_owned(item *it)
{
    for (int i = 0; i < it->n; i++)
        if (it->pieces[i].owned)
            free((void *)it->pieces[i].data);
}

/* 4 MB at a time: checked, then written while still in cache. */
static int copy_checked(nq_writer *w, const nq_tensor *t, nq_error *err)
{
    size_t es = nq_dtype_size(t->dtype);
    uint64_t step = es ? (4u << 20) / es : 0;
    if (!es || !step)
        return nq_writer_write(w, t->data, (size_t)t->nbytes, err);
    for (uint64_t first = 0; first < t->numel; first += step) {
        uint64_t n = t->numel - first < step ? t->numel - first : step;
        if (nq_tensor_check_finite(t, first, n, err) != 0 ||
            nq_writer_write(w, t->data + first * es, (size_t)(n * es), err) != 0)
            return -1;
    }
    return 0;
}

static void *run(void *arg)
{
    nq_write_queue *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->count == 0 && !q->stopping)
            pthread_cond_wait(&q->changed, &q->lock);
        if (q->count == 0)
            break;
        item it = q->ring[q->head];
        bool skip = q->failed;
        pthread_mutex_unlock(&q->lock);
        /* write outside the lock: the producer keeps encoding meanwhile */
        nq_error e = {0};
        int rc = 0;
        for (int i = 0; i < it.n && rc == 0 && !skip; i++)
            rc = nq_writer_write(q->w, it.pieces[i].data, it.pieces[i].len, &e);
        if (it.copy && !skip)
            rc = copy_checked(q->w, it.copy, &e);
        free_owned(&it);
        if (it.release)
            nq_tensor_release(it.release);
        pthread_mutex_lock(&q->lock);
        if (rc != 0 && !q->failed) {
            q->failed = true;
            q->error = e;
        }
        q->head = (q->head + 1) % NQ_WRITE_QUEUE_DEPTH;
        q->count--;
        pthread_cond_broadcast(&q->changed);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

nq_write_queue *nq_write_queue_start(nq_writer *w, nq_error *err)
{
    nq_write_queue *q = calloc(1, sizeof *q);
    if (!q) {
        nq_fail(err, "out of memory");
        return NULL;
    }
    q->w = w;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->changed, NULL);
    if (pthread_create(&q->thread, NULL, run, q) != 0) {
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->changed);
        free(q);
        nq_fail(err, "cannot start the writer thread");
        return NULL;
    }
    return q;
}

static int enqueue(nq_write_queue *q, item *it, nq_error *err)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == NQ_WRITE_QUEUE_DEPTH && !q->failed)
        pthread_cond_wait(&q->changed, &q->lock);
    if (q->failed) {
        *err = q->error;
        pthread_mutex_unlock(&q->lock);
        free_owned(it);
        return -1;
    }
    q->ring[(q->head + q->count) % NQ_WRITE_QUEUE_DEPTH] = *it;
    q->count++;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

int nq_write_queue_push(nq_write_queue *q, const nq_write_piece *pieces, int n,
                        const nq_tensor *release, nq_error *err)
{
    item it = {.n = n, .release = release};
    memcpy(it.pieces, pieces, (size_t)n * sizeof *pieces);
    return enqueue(q, &it, err);
}

int nq_write_queue_push_tensor(nq_write_queue *q, const nq_tensor *t, nq_error *err)
{
    item it = {.n = 0, .release = t, .copy = t};
    return enqueue(q, &it, err);
}

int nq_write_queue_finish(nq_write_queue *q, nq_error *err)
{
    if (!q)
        return 0;
    pthread_mutex_lock(&q->lock);
    q->stopping = true;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->thread, NULL);
    int rc = 0;
    if (q->failed) {
        *err = q->error;
        rc = -1;
    }
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->changed);
    free(q);
    return rc;
}
