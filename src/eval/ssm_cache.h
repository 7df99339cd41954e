/* Emulation of the Mamba SSM state cache a server keeps between decode
 * steps: f32 (exact), f16 round-to-nearest-even (a plain cast), or f16 with
 * stochastic rounding as the serving kernels write it (FlashInfer's
 * selective_state_update with PHILOX_ROUNDS > 0, which vLLM calls with
 * --mamba-backend flashinfer --enable-mamba-cache-stochastic-rounding).
 *
 * The stochastic stream, as in FlashInfer's kernel_selective_state_update_stp
 * for cache slot 0: the state of one layer is [heads, head_dim, state]
 * row-major; element e takes word (e mod 4) of
 * Philox4x32-R(key = seed, counter = (e - e mod 4, 0, 0, 0)) and its low 13
 * bits go to nq_f32_to_f16_sr (formats/f16_stochastic.h).  The kernel gets a
 * fresh seed per call (vLLM: torch.randint(0, 2^32) on every layer call);
 * here it is derived from the user's seed, the window, the step and the
 * layer (nq_ssm_step_seed), so runs repeat exactly.
 *
 * Results never depend on the thread count: each element's rounding depends
 * only on its index, the value and the seed. */
#ifndef NQ_EVAL_SSM_CACHE_H
#define NQ_EVAL_SSM_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef enum nq_ssm_cache {
    NQ_SSM_CACHE_FP32 = 0,
    NQ_SSM_CACHE_FP16,     /* round to nearest even */
    NQ_SSM_CACHE_FP16_SR,  /* stochastic rounding */
} nq_ssm_cache;

/* "fp32", "fp16", "fp16-sr" */
const char *nq_ssm_cache_name(nq_ssm_cache mode);
/* 0, or -1 if s names no mode. */
int nq_ssm_cache_parse(const char *s, nq_ssm_cache *mode);

/* The 32-bit Philox seed of one kernel call: word 0 of
 * Philox4x32-10(key = user seed, counter = (step, layer, window, 0x53534d43)),
 * so in [0, 2^32) like vLLM's torch.randint(0, 2**32). */
uint64_t nq_ssm_step_seed(uint64_t user_seed, uint32_t window, uint32_t step, uint32_t layer);

/* Rounds s[n] in place through f16 (the value the next step reads back).
 * FP32: nothing.  FP16_SR: step_seed and rounds (>= 1) select the stream;
 * unused otherwise.  threads <= 1 runs inline. */
void nq_ssm_cache_round(nq_ssm_cache mode, float *s, size_t n, uint64_t step_seed, int rounds,
                        int threads);

#endif
