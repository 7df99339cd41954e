/* The Nano-width reference fixture (tests/fixtures/nano_width), opened the
 * same way by the CPU test (tests/test_nano_width.c) and the GPU test
 * (tests/gpu/gpu_nano_width.c), so that both compare the same model, plan
 * and reference data; neither needs cmocka here (the GPU test runs without
 * it), so every function reports through nq_error or its return value. */
#ifndef NQ_TESTS_NANO_WIDTH_FIXTURE_H
#define NQ_TESTS_NANO_WIDTH_FIXTURE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calib/calib.h"
#include "core/error.h"
#include "model/config.h"
#include "model/forward.h"
#include "nanow/nano_width_gen.h"
#include "recipe/plan.h"

typedef struct nq_nanow_fixture {
    char dir[4096];        /* SRC/tests/fixtures/nano_width */
    nq_model_config cfg;
    nq_nanow_spec *specs;
    size_t nspecs;
    nq_nanow_source src;   /* the model's weight provider */
    json_t *ref;           /* ref.json: sequences, statistics, checksums */
    nq_model *m;           /* weights generated on demand from src */
    nq_plan plan;          /* the int4 preset: every Linear but the router quantized */
    int checked, mismatched; /* generated tensors compared with ref.json's checksums */
} nq_nanow_fixture;

/* Opens the fixture under src_dir (the source tree).  With check_checksums
 * every tensor the model generates is compared with the Python generator's
 * checksum in ref.json, and a mismatch fails the fetch.  On error fills
 * *err; nq_nanow_fixture_close is safe either way. */
int nq_nanow_fixture_open(nq_nanow_fixture *f, const char *src_dir, bool check_checksums,
                          nq_error *err);
void nq_nanow_fixture_close(nq_nanow_fixture *f);

/* nq_nanow_source.on_tensor: ctx is the fixture; counts into checked and
 * mismatched. */
int nq_nanow_fixture_checksum(void *ctx, const nq_nanow_spec *s, uint64_t sum, nq_error *err);

/* Token ids of ref.json's sequence `seq` (malloc'd, *n set); NULL when
 * there is no such sequence. */
int32_t *nq_nanow_fixture_seq(const nq_nanow_fixture *f, int seq, int *n);

/* The fixture file `name`, which must hold exactly `count` float32 values
 * (malloc'd); NULL with *err filled otherwise. */
float *nq_nanow_fixture_f32(const nq_nanow_fixture *f, const char *name, size_t count,
                            nq_error *err);

/* max |a - ref| / max(1, |ref|), the tolerance measure of the Nano-width
 * tests; INFINITY when any value is NaN. */
double nq_nanow_max_rel(const float *a, const float *ref, size_t n);

/* Calibration statistics with nemoq's own hooks (the fixture's plan) plus
 * the experts each token was routed to. */
typedef struct nq_nanow_observer {
    nq_calib_stats stats;
    nq_forward_hooks calib;
    int32_t *experts; /* [tokens, top_k] as routed, in token order */
    int routed, cap, top_k;
} nq_nanow_observer;

/* Installs the observer's hooks on the fixture's model for a pass over at
 * most `tokens` tokens; unobserve removes them and frees what it holds. */
void nq_nanow_observe(nq_nanow_fixture *f, nq_nanow_observer *o, int tokens);
void nq_nanow_unobserve(nq_nanow_fixture *f, nq_nanow_observer *o);

#endif
