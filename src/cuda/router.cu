/* The MoE router on the GPU: model/moe.c's nq_moe_route (sigmoid scores,
 * e_score_correction_bias for the choice only, group top-k, norm_topk_prob,
 * routed_scaling_factor) one thread per token, and the rows of every
 * expert in ascending token order by a stable radix sort (cub's, which is
 * deterministic), so the experts' GEMMs and the combine see exactly the
 * layout the host code built.  See kernels.cuh. */
#include <cub/device/device_radix_sort.cuh>
#include <math.h>

#include "cuda/kernels.cuh"

/* moe.c's argmax_free: the largest value not taken, the lower index on
 * ties, a NaN never preferred. */
__device__ static int argmax_free(const float *v, const unsigned char *taken, int count)
{
    int best = -1;
    for (int i = 0; i < count; i++) {
        if (taken[i])
            continue;
        if (best < 0 || v[i] > v[best] || (isnan(v[best]) && !isnan(v[i])))
            best = i;
    }
    return best;
}

__global__ void nqk_moe_select(const float *logits, const float *bias, int n, int E, int ng,
                               int topk_group, int K, int norm, float scaling, int32_t *experts,
                               float *weights, int32_t *keys, int32_t *vals, float *rw)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n)
        return;
    float scores[NQ_CUDA_MAX_EXPERTS], choice[NQ_CUDA_MAX_EXPERTS], gscore[NQ_CUDA_MAX_EXPERTS];
    unsigned char taken[NQ_CUDA_MAX_EXPERTS];
    const float *lr = logits + (size_t)t * E;
    /* The same float operations in the same order as the host: the only
     * difference can be expf's last bit (CUDA's is within 2 ulp). */
    for (int e = 0; e < E; e++) {
        scores[e] = 1.0f / (1.0f + expf(-lr[e]));
        choice[e] = __fadd_rn(scores[e], bias ? bias[e] : 0.0f);
    }
    int gs = E / ng;
    for (int g = 0; g < ng; g++) {
        const float *c = choice + g * gs;
        int pick = gs < 2 ? gs : 2;
        for (int i = 0; i < gs; i++)
            taken[i] = 0;
        float sum = 0.0f;
        for (int k = 0; k < pick; k++) {
            int b = argmax_free(c, taken, gs);
            taken[b] = 1;
            sum = __fadd_rn(sum, c[b]);
        }
        gscore[g] = sum;
    }
    if (topk_group < ng) {
        for (int g = 0; g < ng; g++)
            taken[g] = 0;
        for (int k = 0; k < topk_group; k++)
            taken[argmax_free(gscore, taken, ng)] = 1;
        for (int g = 0; g < ng; g++)
            if (!taken[g])
                for (int e = 0; e < gs; e++)
                    choice[g * gs + e] = -INFINITY;
    }
    for (int e = 0; e < E; e++)
        taken[e] = 0;
    int32_t *ex = experts + (size_t)t * K;
    float *w = weights + (size_t)t * K;
    float sum = 0.0f;
    for (int k = 0; k < K; k++) {
        int b = argmax_free(choice, taken, E);
        taken[b] = 1;
        ex[k] = b;
        w[k] = scores[b];
        sum = __fadd_rn(sum, scores[b]);
    }
    if (norm) {
        float denom = __fadd_rn(sum, 1e-20f);
        for (int k = 0; k < K; k++)
            w[k] = __fdiv_rn(w[k], denom);
    }
    for (int k = 0; k < K; k++)
        w[k] = __fmul_rn(w[k], scaling);
    /* this token's (expert, weight) pairs in ascending expert order */
    int32_t se[NQ_CUDA_MAX_TOPK];
    float sw[NQ_CUDA_MAX_TOPK];
    for (int k = 0; k < K; k++) {
        int j = k;
        while (j > 0 && se[j - 1] > ex[k]) {
            se[j] = se[j - 1];
            sw[j] = sw[j - 1];
            j--;
        }
        se[j] = ex[k];
        sw[j] = w[k];
    }
    for (int k = 0; k < K; k++) {
        size_t i = (size_t)t * K + k;
        keys[i] = se[k];
        vals[i] = (int32_t)i;
        rw[i] = sw[k];
    }
}

__global__ void nqk_moe_place(const int32_t *sorted_vals, int total, int K, int32_t *tok,
                              int32_t *rows)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= total)
        return;
    int32_t v = sorted_vals[p];
    tok[p] = v / K;
    rows[v] = p;
}

__global__ void nqk_moe_starts(const int32_t *sorted_keys, int total, int E, int32_t *start)
{
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e > E)
        return;
    int lo = 0, hi = total; /* first position with key >= e */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (sorted_keys[mid] < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    start[e] = lo;
}

cudaError_t nqk_moe_sort(void *temp, size_t *temp_bytes, const int32_t *keys_in,
                         int32_t *keys_out, const int32_t *vals_in, int32_t *vals_out, int total,
                         int E)
{
    int bits = 1;
    while ((1 << bits) < E)
        bits++;
    return cub::DeviceRadixSort::SortPairs(temp, *temp_bytes, keys_in, keys_out, vals_in, vals_out,
                                           total, 0, bits);
}
