/* A parsed GGUF file described as one JSON document (`nemoq inspect
 * FILE.gguf --json`): header fields, every metadata key in file order with
 * its GGUF type and full value, every tensor (name, ggml type, ggml-order
 * shape, elements, bytes, offset in the data section), totals by type. */
#ifndef NQ_IO_GGUF_INSPECT_H
#define NQ_IO_GGUF_INSPECT_H

#include <jansson.h>

#include "io/gguf.h"

/* New reference; `path` is only echoed. */
json_t *nq_gguf_inspect_json(const nq_gguf_file *f, const char *path);

#endif
