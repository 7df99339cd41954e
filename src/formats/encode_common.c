/* The parts every whole-tensor encoder shares (encode_internal.h): kernel
 * selection, widening the stored matrix, the tensor amax, statistics. */
#include "formats/encode_internal.h"

#include <math.h>
#include <stdlib.h>

#include "core/parallel.h"
#include "formats/floatconv.h"


static int kernel_override = -1; /* nq_encode_force_generic */

void nq_encode_force_generic(bool generic)
{
    kernel_override = generic ? 0 : -1;
}

/* 1 when the AVX2 kernels are to be used. */
int nq_enc_use_avx2(void)
{
#if NQ_HAVE_AVX2_KERNELS
    if (kernel_override == 0)
        return 0;
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}


void nq_enc_reduce_stats(const chunk_stats *cs, size_t nchunks, nq_encode_stats *st)
{
    nq_encode_stats s = {0};
    for (size_t c = 0; c < nchunks; c++) {
        s.sq_err += cs[c].sq_err;
        s.sq_err_max_scale += cs[c].sq_err_max;
        s.sq_ref += cs[c].sq_ref;
    }
    if (st)
        *st = s;
}

/* ---- the source matrix ------------------------------------------------------ */

static bool view_dtype_ok(nq_dtype d)
{
    return d == NQ_BF16 || d == NQ_F16 || d == NQ_F32;
}

/* Rows [r0, r0+n) as f32: a pointer into the view when it already holds
 * aligned f32, else widened into `buf`. */
NQ_HOT const float *nq_enc_view_rows(const nq_weight_view *w, int64_t r0, int64_t n, float *buf)
{
    const unsigned char *p = (const unsigned char *)w->data;
    uint64_t first = (uint64_t)(r0 * w->cols), count = (uint64_t)(n * w->cols);
    if (w->dtype == NQ_F32) {
        if (((uintptr_t)p & 3) == 0)
            return (const float *)(const void *)p + first;
        memcpy(buf, p + 4 * first, 4 * count);
    } else if (w->dtype == NQ_BF16) {
        p += 2 * first;
        for (uint64_t k = 0; k < count; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            buf[k] = nq_bf16_to_f32_inline(h);
        }
    } else {
        p += 2 * first;
        for (uint64_t k = 0; k < count; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            buf[k] = nq_f16_to_f32_inline(h);
        }
    }
    return buf;
}

/* Pass one: the largest magnitude, as the bits of a non-negative float of
 * the view's dtype (for non-negative IEEE values the integer order is the
 * numeric order), per row chunk. */
typedef struct amax_job {
    const nq_weight_view *w;
    uint32_t *chunk_max;
} amax_job;

NQ_HOT static int amax_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    amax_job *j = ctx;
    const unsigned char *p = (const unsigned char *)j->w->data;
    uint64_t first = (uint64_t)begin * (uint64_t)j->w->cols;
    uint64_t count = (uint64_t)(end - begin) * (uint64_t)j->w->cols;
    uint32_t m = 0;
    if (j->w->dtype == NQ_F32) {
        p += 4 * first;
        for (uint64_t k = 0; k < count; k++) {
            uint32_t u;
            memcpy(&u, p + 4 * k, 4);
            u &= 0x7fffffffu;
            m = u > m ? u : m;
        }
    } else {
        p += 2 * first;
        uint16_t m16 = 0;
        for (uint64_t k = 0; k < count; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            h &= 0x7fffu;
            m16 = h > m16 ? h : m16;
        }
        m = m16;
    }
    j->chunk_max[begin / ROWS_PER_CHUNK] = m;
    return 0;
}

/* The tensor's amax, or an error naming the first Inf/NaN element (the same
 * message whatever the thread count: the chunks are searched in order). */
int nq_enc_view_amax(const nq_weight_view *w, int threads, float *amax, nq_error *err)
{
    if (!view_dtype_ok(w->dtype))
        return nq_fail(err, "internal: cannot encode from %s", nq_dtype_name(w->dtype));
    size_t nchunks = ((size_t)w->rows + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    uint32_t *cm = calloc(nchunks ? nchunks : 1, sizeof *cm);
    if (!cm)
        return nq_fail(err, "out of memory");
    amax_job job = {w, cm};
    nq_parallel_for((size_t)w->rows, ROWS_PER_CHUNK, threads, amax_rows, &job);
    uint32_t inf_bits = w->dtype == NQ_F32 ? 0x7f800000u : w->dtype == NQ_BF16 ? 0x7f80u : 0x7c00u;
    uint32_t m = 0;
    for (size_t c = 0; c < nchunks; c++) {
        if (cm[c] >= inf_bits) {
            float buf_one;
            int64_t r0 = (int64_t)c * ROWS_PER_CHUNK;
            int64_t n = w->rows - r0 < ROWS_PER_CHUNK ? w->rows - r0 : ROWS_PER_CHUNK;
            for (int64_t k = 0; k < n * w->cols; k++) {
                nq_weight_view one = *w;
                one.cols = 1;
                float v = *nq_enc_view_rows(&one, r0 * w->cols + k, 1, &buf_one);
                if (!isfinite(v)) {
                    free(cm);
                    return nq_fail(err, "element %llu is %s",
                                   (unsigned long long)(r0 * w->cols + k),
                                   isnan(v) ? "NaN" : "infinite");
                }
            }
        }
        m = cm[c] > m ? cm[c] : m;
    }
    free(cm);
    *amax = w->dtype == NQ_F32 ? nq_bits_to_f32(m)
            : w->dtype == NQ_BF16 ? nq_bf16_to_f32_inline((uint16_t)m)
                                  : nq_f16_to_f32_inline((uint16_t)m);
    return 0;
}

/* Per-thread widening buffers for pass two. */
float *nq_enc_worker_buffers(const nq_weight_view *w, int threads)
{
    int t = threads < 1 ? 1 : threads;
    return malloc((size_t)t * ROWS_PER_CHUNK * (size_t)w->cols * sizeof(float));
}


int nq_weight_view_amax(const nq_weight_view *w, int threads, float *amax, nq_error *err)
{
    return nq_enc_view_amax(w, threads, amax, err);
}
