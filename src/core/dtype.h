/* Element types of safetensors tensors, with their on-disk names and sizes. */
#ifndef NQ_CORE_DTYPE_H
#define NQ_CORE_DTYPE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum nq_dtype {
    NQ_BOOL,
    NQ_U8,
    NQ_I8,
    NQ_I16,
    NQ_I32,
    NQ_I64,
    NQ_F8_E4M3,
    NQ_F8_E5M2,
    NQ_BF16,
    NQ_F16,
    NQ_F32,
    NQ_F64,
    NQ_DTYPE_COUNT
} nq_dtype;

/* "BF16", "F8_E4M3", ... exactly as safetensors spells them. */
const char *nq_dtype_name(nq_dtype t);
/* Returns -1 for a name safetensors does not define (or we do not support). */
int nq_dtype_from_name(const char *name, nq_dtype *out);
size_t nq_dtype_size(nq_dtype t);
bool nq_dtype_is_float(nq_dtype t);

#endif
