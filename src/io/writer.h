/* Writing a checkpoint directory atomically.
 *
 * Everything goes into a hidden temporary sibling of the output directory
 * (".NAME.nemoq-tmp-XXXXXX"); only nq_writer_commit, after every file is
 * written and fsync'd, puts it in place in one atomic step (io/outdir.h:
 * no replacing what appeared at OUT meanwhile without force, an atomic swap
 * with it, never anything inside or around the input).  An interrupted or
 * failed run therefore never leaves an output that looks complete, and the
 * temporary directory is removed on every error path we control.
 *
 * Tensors are streamed: the caller first declares every tensor (name, dtype,
 * shape) in output order, then calls nq_writer_begin, then supplies the bytes
 * in the same order in chunks of any size.  Declaring first lets each shard's
 * header be written before its data, so no tensor is ever held whole. */
#ifndef NQ_IO_WRITER_H
#define NQ_IO_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"

#define NQ_DEFAULT_MAX_SHARD_BYTES (5ull * 1000 * 1000 * 1000)

typedef struct nq_writer_options {
    const char *out_dir;        /* must not exist, or be empty, or --force */
    const char *input_dir;      /* refused as, inside or around out_dir, by device and
                                   inode; may be NULL */
    uint64_t max_shard_bytes;   /* 0: NQ_DEFAULT_MAX_SHARD_BYTES */
    bool force;                 /* replace a non-empty out_dir */
} nq_writer_options;

typedef struct nq_writer nq_writer;

/* The checks nq_writer_create makes, creating nothing: run them before any
 * long work so that a bad OUT fails at once. */
int nq_writer_check(const nq_writer_options *opt, nq_error *err);
nq_writer *nq_writer_create(const nq_writer_options *opt, nq_error *err);
int nq_writer_declare(nq_writer *w, const char *name, nq_dtype dtype, int ndim,
                      const int64_t *shape, nq_error *err);
/* Assigns tensors to shards and opens the first. */
int nq_writer_begin(nq_writer *w, nq_error *err);
/* Appends bytes of the declared tensors, in declaration order. */
int nq_writer_write(nq_writer *w, const void *data, size_t nbytes, nq_error *err);
/* Writes a whole non-tensor file (config.json, tokenizer...) into the output. */
int nq_writer_add_file(nq_writer *w, const char *name, const void *data, size_t len,
                       nq_error *err);
int nq_writer_copy_file(nq_writer *w, const char *src_path, const char *name, nq_error *err);
/* Checks every declared byte arrived, fsyncs, writes the index, puts the
 * output in place. On failure the temporary directory is removed. */
int nq_writer_commit(nq_writer *w, nq_error *err);
/* Frees the writer; if not committed, removes the temporary directory. */
void nq_writer_free(nq_writer *w);

/* Shard count after nq_writer_begin (for reports). */
int nq_writer_shard_count(const nq_writer *w);
size_t nq_writer_tensor_count(const nq_writer *w);
uint64_t nq_writer_total_bytes(const nq_writer *w); /* declared tensor bytes */

#endif
