/* GGUF v3 files (llama.cpp / ggml): a validating reader and a streaming,
 * atomic writer.
 *
 * Layout (ggml/src/gguf.cpp, docs/gguf.md): "GGUF", u32 version, u64 tensor
 * count, u64 key/value count; the key/value pairs (string key, u32 type,
 * value; arrays carry an element type and a u64 count); the tensor infos
 * (string name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type,
 * u64 offset into the data section); padding to general.alignment (default
 * 32); the data section, each tensor padded to the alignment.  Strings are
 * a u64 length and bytes, no terminator.  Little-endian throughout.
 *
 * The reader accepts exactly what gguf.cpp accepts and checks everything
 * before anything is used: every length against the bytes left, counts
 * against the file size, value and element types, nested arrays, duplicate
 * keys and tensor names, names under 64 bytes, at most 4 dimensions,
 * non-negative extents whose product (and byte size) does not overflow,
 * known ggml types, rows a whole number of blocks, general.alignment a u32
 * power of two, tensor offsets equal to the padded running sum (gguf.cpp's
 * rule), and the data section inside the file. */
#ifndef NQ_IO_GGUF_H
#define NQ_IO_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define NQ_GGUF_MAX_DIMS 4
#define NQ_GGUF_MAX_NAME 64 /* GGML_MAX_NAME: names must be shorter */
#define NQ_GGUF_DEFAULT_ALIGNMENT 32

typedef enum nq_gguf_vtype {
    NQ_GGUF_U8 = 0,
    NQ_GGUF_I8 = 1,
    NQ_GGUF_U16 = 2,
    NQ_GGUF_I16 = 3,
    NQ_GGUF_U32 = 4,
    NQ_GGUF_I32 = 5,
    NQ_GGUF_F32 = 6,
    NQ_GGUF_BOOL = 7,
    NQ_GGUF_STRING = 8,
    NQ_GGUF_ARRAY = 9,
    NQ_GGUF_U64 = 10,
    NQ_GGUF_I64 = 11,
    NQ_GGUF_F64 = 12,
    NQ_GGUF_VTYPE_COUNT
} nq_gguf_vtype;

/* The ggml tensor types nemoq writes (ggml.h's enum ggml_type values). */
enum {
    NQ_GGML_F32 = 0,
    NQ_GGML_F16 = 1,
    NQ_GGML_Q8_0 = 8,
    NQ_GGML_BF16 = 30,
    NQ_GGML_NVFP4 = 40,
    NQ_GGML_TYPE_COUNT = 43,
};

/* Block size (elements) and block bytes of a ggml type, and its name
 * ("q8_0", "nvfp4", ...); -1 for a type number ggml does not define or has
 * removed from GGUF files. */
int nq_ggml_type_info(uint32_t type, int64_t *block, size_t *block_bytes, const char **name);
const char *nq_gguf_vtype_name(uint32_t vtype);

typedef struct nq_gguf_kv {
    char *key;                  /* NUL-terminated copy */
    uint32_t type;              /* nq_gguf_vtype */
    uint32_t arr_type;          /* element type when type == ARRAY */
    uint64_t n;                 /* array length (1 for scalars) */
    const unsigned char *data;  /* the value's bytes in the image (after the type/count) */
    uint64_t nbytes;            /* bytes of the value */
} nq_gguf_kv;

typedef struct nq_gguf_tensor {
    char name[NQ_GGUF_MAX_NAME];
    uint32_t ndim;
    int64_t ne[NQ_GGUF_MAX_DIMS]; /* ggml order: ne[0] innermost; unused dims 1 */
    uint32_t type;
    uint64_t offset;              /* from the start of the data section */
    uint64_t nbytes;
    uint64_t nelements;
    const unsigned char *data;    /* inside the image */
} nq_gguf_tensor;

typedef struct nq_gguf_file {
    uint32_t version;
    size_t nkv, ntensors;
    nq_gguf_kv *kv;
    nq_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;   /* file offset of the data section */
    uint64_t data_size;     /* padded sum of the tensors */
    const unsigned char *image;
    uint64_t size;
    void *map;              /* non-NULL when opened from a file */
} nq_gguf_file;

/* Validates a GGUF image in memory (`name` labels errors).  On success *out
 * holds views into `bytes` (which must outlive it); free with nq_gguf_free. */
int nq_gguf_parse(const unsigned char *bytes, uint64_t size, const char *name, nq_gguf_file *out,
                  nq_error *err);
/* mmaps and parses a file; NULL with a one-line error naming it. */
nq_gguf_file *nq_gguf_open(const char *path, nq_error *err);
void nq_gguf_close(nq_gguf_file *f);  /* for nq_gguf_open */
void nq_gguf_free(nq_gguf_file *f);   /* for nq_gguf_parse (frees what it allocated) */

const nq_gguf_kv *nq_gguf_find_kv(const nq_gguf_file *f, const char *key);
const nq_gguf_tensor *nq_gguf_find_tensor(const nq_gguf_file *f, const char *name);
/* Scalar accessors: -1 when the key is absent or has another type. */
int nq_gguf_get_u32(const nq_gguf_file *f, const char *key, uint32_t *v);
/* A STRING value (not NUL-terminated) */
int nq_gguf_get_str(const nq_gguf_file *f, const char *key, const char **s, uint64_t *len);
/* Element i of a STRING array (O(i): walks the validated strings). */
int nq_gguf_kv_str_at(const nq_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len);
/* Element size of a fixed-size value type (0 for STRING/ARRAY). */
size_t nq_gguf_vtype_size(uint32_t vtype);

/* ---- writer ----
 *
 * Metadata is collected in memory, tensors are declared (name, type, ggml
 * extents) in file order, then nq_gguf_writer_begin writes the header and
 * the tensor bytes are streamed in the same order in chunks of any size; the
 * writer inserts the alignment padding.  Everything goes to a hidden
 * temporary file beside OUT (".NAME.nemoq-tmp-XXXXXX"), fsync'd and renamed
 * into place by commit; on any failure or without commit the temporary file
 * is removed, so OUT never holds a partial file. */
typedef struct nq_gguf_writer nq_gguf_writer;

/* Refuses an existing OUT unless force; refuses OUT == input (a file or
 * inside the input directory) when `input` is given. */
nq_gguf_writer *nq_gguf_writer_create(const char *out_path, const char *input, bool force,
                                      nq_error *err);
int nq_gguf_add_u32(nq_gguf_writer *w, const char *key, uint32_t v, nq_error *err);
int nq_gguf_add_i32(nq_gguf_writer *w, const char *key, int32_t v, nq_error *err);
int nq_gguf_add_f32(nq_gguf_writer *w, const char *key, float v, nq_error *err);
int nq_gguf_add_bool(nq_gguf_writer *w, const char *key, bool v, nq_error *err);
int nq_gguf_add_str(nq_gguf_writer *w, const char *key, const char *s, nq_error *err);
int nq_gguf_add_arr_i32(nq_gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                        nq_error *err);
int nq_gguf_add_arr_bool(nq_gguf_writer *w, const char *key, const bool *v, uint64_t n,
                         nq_error *err);
/* lens may be NULL (then strlen) */
int nq_gguf_add_arr_str(nq_gguf_writer *w, const char *key, const char *const *s,
                        const size_t *lens, uint64_t n, nq_error *err);
/* A value given as its little-endian bytes exactly as they follow the type
 * (for arrays: after the element type and count, which n supplies), e.g. a
 * key copied from another file (nq_gguf_kv's data/nbytes). Not validated. */
int nq_gguf_add_raw(nq_gguf_writer *w, const char *key, uint32_t type, uint32_t arr_type,
                    uint64_t n, const void *value, size_t nbytes, nq_error *err);
/* ne in ggml order (innermost first). */
int nq_gguf_declare_tensor(nq_gguf_writer *w, const char *name, uint32_t type, int ndim,
                           const int64_t *ne, nq_error *err);
int nq_gguf_writer_begin(nq_gguf_writer *w, nq_error *err);
int nq_gguf_writer_write(nq_gguf_writer *w, const void *data, size_t n, nq_error *err);
int nq_gguf_writer_commit(nq_gguf_writer *w, nq_error *err);
void nq_gguf_writer_free(nq_gguf_writer *w);
uint64_t nq_gguf_writer_bytes(const nq_gguf_writer *w); /* file size after commit */

#endif
