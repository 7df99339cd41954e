/* The Nano-width random checkpoint, generated from a seed (C twin of
 * tests/gen/nano_width_weights.py; the formulas are documented there).
 *
 * Every element is a pure function of (seed, tensor name, index), so any
 * tensor can be produced alone, in any order, by any number of threads, and
 * the test never stores or reads gigabytes: a weight provider
 * (nq_nanow_fetch) generates what the forward pass asks for. */
#ifndef NQ_TESTS_NANO_WIDTH_GEN_H
#define NQ_TESTS_NANO_WIDTH_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "model/config.h"
#include "model/forward.h"

#define NQ_NANOW_SEED 0x4E414E4F57494454ull /* "NANOWIDT" */

typedef struct nq_nanow_spec {
    char name[160];
    int ndim;
    int64_t shape[3];
    uint64_t numel;
    nq_dtype dtype;      /* NQ_BF16, or NQ_F32 for e_score_correction_bias */
    char kind;           /* 'n': std a, mean b; 'u': uniform [a, b) */
    double a, b;
} nq_nanow_spec;

/* Every tensor of the checkpoint the config describes, in checkpoint order
 * (malloc'd, *count set).  Block kinds M, * and E only. */
nq_nanow_spec *nq_nanow_specs(const nq_model_config *cfg, size_t *count, nq_error *err);

/* BF16 bit patterns of elements [begin, begin+count) of the tensor. */
void nq_nanow_bits(const nq_nanow_spec *s, uint64_t seed, uint64_t begin, uint64_t count,
                   uint16_t *bits);

/* sum of bits[i] * (2 (begin+i) + 1) mod 2^64, added to acc (the checksum
 * of the Python generator when run over the whole tensor). */
uint64_t nq_nanow_checksum(uint64_t acc, const uint16_t *bits, uint64_t begin, uint64_t count);

/* Weight provider: ctx is an nq_nanow_source. */
typedef struct nq_nanow_source {
    const nq_nanow_spec *specs;
    size_t count;
    uint64_t seed;
    int threads;
    /* Called after each generated tensor with its checksum (may be NULL);
     * returning non-zero fails the fetch. */
    int (*on_tensor)(void *ctx, const nq_nanow_spec *s, uint64_t checksum, nq_error *err);
    void *ctx;
    uint64_t generated;  /* elements generated so far */
} nq_nanow_source;

int nq_nanow_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err);

#endif
