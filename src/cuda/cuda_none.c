/* The CUDA backend's entry points in a build without CUDA: each says so. */
#include "cuda/cuda.h"

#define NO_CUDA "this nemoq was built without CUDA (no nvcc / CUDA toolkit when it was configured)"

bool nq_cuda_built(void) { return false; }

int nq_cuda_device_count(nq_error *err)
{
    nq_fail(err, NO_CUDA);
    return 0;
}

nq_cuda *nq_cuda_open(int device, nq_error *err)
{
    nq_fail(err, "cuda:%d: " NO_CUDA, device);
    return NULL;
}

void nq_cuda_close(nq_cuda *g) { (void)g; }
const char *nq_cuda_describe(const nq_cuda *g) { return g ? "cuda" : "cpu"; }
size_t nq_cuda_peak_bytes(const nq_cuda *g) { (void)g; return 0; }

int nq_cuda_run_block(nq_cuda *g, const nq_exec *ex, const nq_model_config *cfg,
                      const nq_cuda_block *b, float *x, int samples, int len, unsigned flags)
{
    return nq_fail(ex->err, NO_CUDA);
}

int nq_cuda_run_final(nq_cuda *g, const nq_exec *ex, const nq_model_config *cfg, uint64_t head_id,
                      const float *norm_f, const float *lm_head, const float *x, int n,
                      float *normed_out, float *logits)
{
    return nq_fail(ex->err, NO_CUDA);
}

int nq_cuda_moe_select(nq_cuda *g, const nq_model_config *cfg, const float *logits,
                       const float *score_bias, int n, int32_t *experts, float *weights,
                       nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

int nq_cuda_stats_begin(nq_cuda *g, const nq_cuda_stats_spec *spec, nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

size_t nq_cuda_stats_count(const nq_cuda *g) { return 0; }

int nq_cuda_stats_item(nq_cuda *g, size_t i, nq_cuda_linear_stat *out, double *hessian,
                       nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

void nq_cuda_set_tf32(nq_cuda *g, bool on) { (void)g; (void)on; }
void nq_cuda_set_gemm_mode(nq_cuda *g, nq_cuda_gemm_mode m) { (void)g; (void)m; }
nq_cuda_gemm_mode nq_cuda_gemm_mode_get(const nq_cuda *g) { (void)g; return NQ_GEMM_F32; }
const char *nq_cuda_gemm_mode_name(nq_cuda_gemm_mode m) { (void)m; return "none"; }

int nq_cuda_gemm(nq_cuda *g, const float *x, int n, int in, const float *w, int out, float *y,
                 bool *bf16, nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

void nq_cuda_timing_report(nq_cuda *g, const char *label) { (void)g; (void)label; }
int nq_cuda_stats_kv(nq_cuda *g, float *k_amax, float *v_amax, bool *seen, bool *nonfinite,
                     nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

void nq_cuda_stats_end(nq_cuda *g) { (void)g; }

int nq_cuda_gptq(nq_cuda *g, nq_cuda_gptq_job *j, nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

int nq_cuda_gptq_batch(nq_cuda *g, nq_cuda_gptq_job *jobs, size_t count, nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

int nq_cuda_output_error(nq_cuda *g, const float *x, int rows, const float *w, const float *q,
                         int64_t out, int64_t in, double *err_sq, double *ref_sq, nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

int nq_cuda_encode_nvfp4(nq_cuda *g, const float *w, int64_t out, int64_t in, bool mse,
                         const float *x, int rows, uint8_t *packed, uint8_t *scales,
                         float *global_scale, double stats[5], nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

int nq_cuda_resident_embed(nq_cuda *g, const float *table, int64_t vocab, int hidden,
                           const int32_t *ids, size_t n, nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

int nq_cuda_resident_save(nq_cuda *g, nq_error *err) { return nq_fail(err, NO_CUDA); }
int nq_cuda_resident_restore(nq_cuda *g, nq_error *err) { return nq_fail(err, NO_CUDA); }

int nq_cuda_resident_download(nq_cuda *g, float *x, size_t count, nq_error *err)
{
    return nq_fail(err, NO_CUDA);
}

void nq_cuda_resident_free(nq_cuda *g) { (void)g; }

int nq_cuda_mem_info(nq_cuda *g, size_t *free_bytes, size_t *total_bytes, nq_error *err)
{
    *free_bytes = *total_bytes = 0;
    return nq_fail(err, NO_CUDA);
}

void nq_cuda_trim(nq_cuda *g) { (void)g; }
void *nq_cuda_host_alloc(size_t bytes) { (void)bytes; return NULL; }
void nq_cuda_host_free(void *p) { (void)p; }
void nq_cuda_set_chunk_rows(nq_cuda *g, int rows) { (void)g; (void)rows; }
