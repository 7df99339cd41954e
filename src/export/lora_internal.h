/* Shared by export/lora.c (the merge) and export/lora_resolve.c (adapter
 * keys -> checkpoint tensors, descriptions). */
#ifndef NQ_EXPORT_LORA_INTERNAL_H
#define NQ_EXPORT_LORA_INTERNAL_H

#include "export/lora.h"

typedef enum {
    NQ_LORA_LINEAR,
    NQ_LORA_EMBED,
    NQ_LORA_DORA,
    NQ_LORA_BIAS,
    NQ_LORA_REPLACE
} nq_lora_kind;

/* One change to one base tensor. */
typedef struct nq_lora_op {
    const nq_tensor *base;      /* in the checkpoint */
    nq_lora_kind kind;
    int adapter;                /* index in nq_lora.ad */
    size_t seq;                 /* creation order: adapter order, then key order */
    const nq_tensor *A, *B;     /* adapter tensors */
    const nq_tensor *mag;       /* DoRA magnitude [out] */
    const nq_tensor *src;       /* BIAS: lora_B.bias; REPLACE: the new tensor */
    int r;
    int E, e;                   /* fused experts: E > 0 and this op is expert e */
    float scale;                /* PEFT's scaling rounded to f32, times the WEIGHT */
} nq_lora_op;

typedef struct nq_lora_adapter_info {
    nq_adapter *a;
    double weight;
    char *name;                 /* the directory's last component */
    size_t modules, replaced;
    size_t untrained_out_proj;
    double untrained_max_b;
    bool fan_in_fan_out_ignored;
} nq_lora_adapter_info;

struct nq_lora {
    nq_lora_adapter_info *ad;
    size_t nad;
    nq_lora_op *ops;            /* sorted by base, then seq */
    size_t nops, cap;
    size_t ntensors;            /* distinct bases */
    nq_tensor_source source;
    int threads;
};

/* Opens and resolves (ck may be NULL: open and check configs only). */
nq_lora *nq_lora_resolve(const nq_checkpoint *ck, const nq_lora_spec *specs, size_t n,
                         const char *in_config_path, int threads, nq_error *err);

#endif
