#include "io/prefetch.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

struct nq_prefetcher {
    const nq_checkpoint *ck;
    uint64_t window;
    int *fds; /* per shard, -1 until opened */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    size_t current;
    bool stopping;
};

/* Advises in steps so that a large tensor is requested progressively. */
#define STEP (8ull << 20)

static void *run(void *arg)
{
    nq_prefetcher *p = arg;
    size_t n = nq_checkpoint_count(p->ck);
    size_t next = 0;      /* next tensor to request */
    uint64_t done_in = 0; /* bytes of `next` already requested */
    pthread_mutex_lock(&p->lock);
    while (!p->stopping && next < n) {
        if (next < p->current) {
            next = p->current;
            done_in = 0;
        }
        uint64_t ahead = 0;
        for (size_t k = p->current; k < next; k++)
            ahead += nq_checkpoint_tensor(p->ck, k)->nbytes;
        ahead += done_in;
        if (ahead >= p->window) {
            pthread_cond_wait(&p->changed, &p->lock);
            continue;
        }
        const nq_tensor *t = nq_checkpoint_tensor(p->ck, next);
        pthread_mutex_unlock(&p->lock);
        if (p->fds[t->shard] < 0)
            p->fds[t->shard] = open(nq_checkpoint_shard_path(p->ck, t->shard), O_RDONLY | O_CLOEXEC);
        uint64_t len = t->nbytes - done_in < STEP ? t->nbytes - done_in : STEP;
        if (p->fds[t->shard] >= 0 && len > 0)
            (void)posix_fadvise(p->fds[t->shard], (off_t)(t->file_offset + done_in), (off_t)len,
                                POSIX_FADV_WILLNEED);
        pthread_mutex_lock(&p->lock);
        done_in += len;
        if (done_in >= t->nbytes) {
            next++;
            done_in = 0;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

nq_prefetcher *nq_prefetcher_start(const nq_checkpoint *ck, uint64_t window_bytes, nq_error *err)
{
    nq_prefetcher *p = calloc(1, sizeof *p);
    int shards = nq_checkpoint_shard_count(ck);
    if (p)
        p->fds = malloc((size_t)(shards > 0 ? shards : 1) * sizeof *p->fds);
    if (!p || !p->fds) {
        if (p)
            free(p->fds);
        free(p);
        nq_fail(err, "out of memory");
        return NULL;
    }
    for (int s = 0; s < shards; s++)
        p->fds[s] = -1;
    p->ck = ck;
    p->window = window_bytes;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->changed, NULL);
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->changed);
        free(p->fds);
        free(p);
        nq_fail(err, "cannot start the prefetch thread");
        return NULL;
    }
    return p;
}

void nq_prefetcher_advance(nq_prefetcher *p, size_t index)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->current = index;
    pthread_cond_signal(&p->changed);
    pthread_mutex_unlock(&p->lock);
}

void nq_prefetcher_stop(nq_prefetcher *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_signal(&p->changed);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    for (int s = 0; s < nq_checkpoint_shard_count(p->ck); s++)
        if (p->fds[s] >= 0)
            close(p->fds[s]);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->changed);
    free(p->fds);
    free(p);
}
