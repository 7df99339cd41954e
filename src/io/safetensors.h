/* Reading safetensors checkpoints: one file, or shards named by
 * model.safetensors.index.json.
 *
 * Every shard is mmap'd read-only and validated completely at open time
 * (header length, JSON, dtypes, shapes, offsets, overlaps, duplicate names,
 * index consistency), so the rest of nemoq can trust a tensor view without
 * re-checking it.  Peak memory is the headers, never the weights: data is
 * only touched through the mapping, page by page, when a caller reads it. */
#ifndef NQ_IO_SAFETENSORS_H
#define NQ_IO_SAFETENSORS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"

#define NQ_MAX_DIMS 8

struct nq_tensor;
/* Where a tensor's bytes come from when they are not the mapping's: a
 * transform applied while the tensor streams by (LoRA merging, export/lora.h).
 * produce writes t->nbytes bytes in t->dtype to out; it may read the
 * mapping's bytes through a copy of *t with source = NULL. */
typedef struct nq_tensor_source {
    void *ctx;
    int (*produce)(void *ctx, const struct nq_tensor *t, void *out, struct nq_error *err);
} nq_tensor_source;

typedef struct nq_tensor {
    const char *name;           /* owned by the checkpoint */
    nq_dtype dtype;
    int ndim;
    int64_t shape[NQ_MAX_DIMS];
    uint64_t numel;             /* product of shape (1 for a scalar) */
    uint64_t nbytes;            /* numel * dtype size */
    const unsigned char *data;  /* inside the mapping; valid until close */
    int shard;                  /* index of the file that holds it */
    uint64_t file_offset;       /* absolute offset of data in that file */
    /* NULL: the bytes are `data`.  Else they are produced on each read
     * (nq_tensor_bytes, nq_tensor_read_f32, nq_tensor_load_f32); `data`
     * then still points at the stored (unmerged) bytes. */
    const nq_tensor_source *source;
} nq_tensor;

typedef struct nq_checkpoint nq_checkpoint;

/* path: a directory holding model.safetensors.index.json or exactly one
 * *.safetensors file (model.safetensors preferred), or a .safetensors file.
 * Returns NULL and a one-line error naming the file on any problem. */
nq_checkpoint *nq_checkpoint_open(const char *path, nq_error *err);
void nq_checkpoint_close(nq_checkpoint *ck);

/* Tensors in file order: shards in index order, then by data offset. */
size_t nq_checkpoint_count(const nq_checkpoint *ck);
const nq_tensor *nq_checkpoint_tensor(const nq_checkpoint *ck, size_t i);
/* NULL if absent. O(log n). */
const nq_tensor *nq_checkpoint_find(const nq_checkpoint *ck, const char *name);

/* The directory the checkpoint was opened from (for config.json etc.). */
const char *nq_checkpoint_dir(const nq_checkpoint *ck);
int nq_checkpoint_shard_count(const nq_checkpoint *ck);
const char *nq_checkpoint_shard_path(const nq_checkpoint *ck, int shard);
uint64_t nq_checkpoint_shard_size(const nq_checkpoint *ck, int shard);
/* A __metadata__ string value of the first shard, or NULL. */
const char *nq_checkpoint_metadata(const nq_checkpoint *ck, const char *key);

/* Makes tensor `name`'s bytes come from src (borrowed; must outlive the
 * checkpoint's use).  -1 if there is no such tensor. */
int nq_checkpoint_set_source(nq_checkpoint *ck, const char *name, const nq_tensor_source *src,
                             nq_error *err);

/* The tensor's bytes (t->nbytes, in t->dtype): the mapping, or, for a
 * produced tensor, a malloc'd buffer returned in *owned too (caller frees
 * *owned; NULL when the mapping was returned).  NULL on error. */
const unsigned char *nq_tensor_bytes(const nq_tensor *t, void **owned, nq_error *err);

/* Converts elements [first, first+count) of a float tensor (any float dtype)
 * to f32 into out[count].  -1 for a non-float dtype or a range outside the
 * tensor. */
int nq_tensor_read_f32(const nq_tensor *t, uint64_t first, uint64_t count,
                       float *out, nq_error *err);
/* The whole tensor as a malloc'd f32 array (caller frees). Also fails, naming
 * the tensor, if any element is NaN or Inf when reject_nonfinite is set. */
float *nq_tensor_load_f32(const nq_tensor *t, bool reject_nonfinite, nq_error *err);

/* Fails, naming the tensor and the element ("tensor 'X': element N [r, c]
 * is NaN"), if an element of [first, first+count) is NaN or infinite.  Reads
 * the stored bits (an exponent test, no conversion), so it runs at memory
 * speed; integer and packed dtypes always pass.  Every tensor nemoq writes
 * goes through it or through an encoder that makes the same test.  It tests
 * t->data, the stored bytes: for a tensor with a source (LoRA), test a copy
 * of *t whose data are the produced bytes. */
int nq_tensor_check_finite(const nq_tensor *t, uint64_t first, uint64_t count, nq_error *err);

/* Drops the tensor's pages from this process's mapping (they stay in the
 * page cache). Streaming passes call it after each tensor so that resident
 * memory stays a few tensors, not the model. Reading the tensor again after
 * this is fine: it faults back in. */
void nq_tensor_release(const nq_tensor *t);

/* Validates a safetensors image held in memory (used by open and by the
 * fuzzer). `file_name` only labels errors. On success *out_tensors is a
 * malloc'd array of *out_count views into `bytes` with names malloc'd too;
 * free with nq_tensor_array_free. */
int nq_safetensors_parse(const unsigned char *bytes, uint64_t size, const char *file_name,
                         nq_tensor **out_tensors, size_t *out_count, nq_error *err);
void nq_tensor_array_free(nq_tensor *tensors, size_t count);

#endif
