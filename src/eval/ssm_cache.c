#include "eval/ssm_cache.h"

#include <string.h>

#include "core/parallel.h"
#include "formats/f16_stochastic.h"
#include "formats/floatconv.h"
#include "formats/philox.h"

static const char *const names[] = {"fp32", "fp16", "fp16-sr"};

const char *nq_ssm_cache_name(nq_ssm_cache mode)
{
    return (unsigned)mode < 3 ? names[mode] : "?";
}

int nq_ssm_cache_parse(const char *s, nq_ssm_cache *mode)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(s, names[i]) == 0) {
            *mode = (nq_ssm_cache)i;
            return 0;
        }
    return -1;
}

uint64_t nq_ssm_step_seed(uint64_t user_seed, uint32_t window, uint32_t step, uint32_t layer)
{
    uint32_t ctr[4] = {step, layer, window, 0x53534d43u /* "SSMC" */};
    uint32_t key[2] = {(uint32_t)user_seed, (uint32_t)(user_seed >> 32)};
    uint32_t out[4];
    nq_philox4x32(ctr, key, 10, out);
    return out[0];
}

typedef struct {
    nq_ssm_cache mode;
    float *s;
    size_t n;
    uint64_t seed;
    int rounds;
} round_job;

/* Items are groups of 4 elements: one Philox call serves a group, as in the
 * kernel (philox_randint4x at every 4-aligned offset). */
static int round_groups(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    const round_job *j = ctx;
    for (size_t g = begin; g < end; g++) {
        size_t e0 = g * 4, e1 = e0 + 4 < j->n ? e0 + 4 : j->n;
        if (j->mode == NQ_SSM_CACHE_FP16) {
            for (size_t e = e0; e < e1; e++)
                j->s[e] = nq_f16_to_f32_inline(nq_f32_to_f16_inline(j->s[e]));
            continue;
        }
        uint32_t r[4];
        nq_philox_randint4x(j->seed, (uint64_t)e0, j->rounds, r);
        for (size_t e = e0; e < e1; e++)
            j->s[e] = nq_f16_to_f32_inline(nq_f32_to_f16_sr(j->s[e], r[e - e0] & 0x1fffu));
    }
    return 0;
}

void nq_ssm_cache_round(nq_ssm_cache mode, float *s, size_t n, uint64_t step_seed, int rounds,
                        int threads)
{
    if (mode == NQ_SSM_CACHE_FP32 || n == 0)
        return;
    round_job job = {.mode = mode, .s = s, .n = n, .seed = step_seed, .rounds = rounds};
    size_t groups = (n + 3) / 4;
    /* small states (the bundled model: 16 K elements a layer) are not worth
     * waking threads for */
    int t = n < (size_t)1 << 16 ? 1 : threads;
    nq_parallel_for(groups, 1024, t, round_groups, &job);
}
