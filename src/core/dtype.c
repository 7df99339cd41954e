#include "core/dtype.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
    bool is_float;
} dtype_table[NQ_DTYPE_COUNT] = {
    [NQ_BOOL] = {"BOOL", 1, false},       [NQ_U8] = {"U8", 1, false},
    [NQ_I8] = {"I8", 1, false},           [NQ_I16] = {"I16", 2, false},
    [NQ_I32] = {"I32", 4, false},         [NQ_I64] = {"I64", 8, false},
    [NQ_F8_E4M3] = {"F8_E4M3", 1, true}, [NQ_F8_E5M2] = {"F8_E5M2", 1, true},
    [NQ_BF16] = {"BF16", 2, true},        [NQ_F16] = {"F16", 2, true},
    [NQ_F32] = {"F32", 4, true},          [NQ_F64] = {"F64", 8, true},
};

const char *nq_dtype_name(nq_dtype t)
{
    return (unsigned)t < NQ_DTYPE_COUNT ? dtype_table[t].name : "?";
}

int nq_dtype_from_name(const char *name, nq_dtype *out)
{
    for (int i = 0; i < NQ_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (nq_dtype)i;
            return 0;
        }
    }
    return -1;
}

size_t nq_dtype_size(nq_dtype t)
{
    return (unsigned)t < NQ_DTYPE_COUNT ? dtype_table[t].size : 0;
}

bool nq_dtype_is_float(nq_dtype t)
{
    return (unsigned)t < NQ_DTYPE_COUNT && dtype_table[t].is_float;
}
