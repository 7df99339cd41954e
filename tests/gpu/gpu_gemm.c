/* The Linear layers' GEMM modes (cuda/gemm.cu) against a float64 host GEMM
 * on random data: the bf16 split GEMMs with bf16-exact weights, and weights
 * that are not bf16-exact going through SGEMM in every mode. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_check.h"

static uint64_t state = 0x2545F4914F6CDD1Dull;

static double uniform(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0;
}

static double normal(void)
{
    double u = uniform(), v = uniform();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static float to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct errs {
    double max_norm; /* max |y - ref| / sum |x||w| */
    double rms_rel;  /* sqrt(sum (y - ref)^2 / sum ref^2) */
} errs;

static errs compare(const float *y, const double *ref, const double *mag, size_t count)
{
    errs e = {0, 0};
    double se = 0, sr = 0;
    for (size_t i = 0; i < count; i++) {
        double d = fabs((double)y[i] - ref[i]);
        double r = mag[i] > 0 ? d / mag[i] : d;
        if (r > e.max_norm || isnan(d))
            e.max_norm = isnan(d) ? INFINITY : r;
        se += d * d;
        sr += ref[i] * ref[i];
    }
    e.rms_rel = sqrt(se / sr);
    return e;
}

static void run(nq_cuda *gpu, nq_cuda_gemm_mode m, const float *x, int n, int in, const float *w,
                int out, float *y, bool *bf16)
{
    nq_error err = {0};
    nq_cuda_set_gemm_mode(gpu, m);
    if (nq_cuda_gemm(gpu, x, n, in, w, out, y, bf16, &err) != 0) {
        fprintf(stderr, "gemm %s: %s\n", nq_cuda_gemm_mode_name(m), err.msg);
        exit(1);
    }
}

void test_gemm_modes_gpu(nq_cuda *gpu)
{
    const nq_cuda_gemm_mode restore = nq_cuda_gemm_mode_get(gpu);
    const int n = 384, in = 2688, out = 640;
    size_t xc = (size_t)n * in, wc = (size_t)out * in, yc = (size_t)n * out;
    float *x = malloc(xc * sizeof *x), *w = malloc(wc * sizeof *w);
    float *y = malloc(yc * sizeof *y), *y2 = malloc(yc * sizeof *y2), *yf = malloc(yc * sizeof *yf);
    double *ref = malloc(yc * sizeof *ref), *mag = malloc(yc * sizeof *mag);
    /* activations with outliers (a few columns 50x, as RMSNorm outputs
     * have), full f32 mantissas; weights rounded to bf16 */
    for (size_t i = 0; i < xc; i++)
        x[i] = (float)(normal() * ((i % in) % 97 == 5 ? 50.0 : 1.0));
    for (size_t i = 0; i < wc; i++)
        w[i] = to_bf16((float)(normal() * 0.02));
    for (int r = 0; r < n; r++)
        for (int o = 0; o < out; o++) {
            double s = 0, a = 0;
            for (int k = 0; k < in; k++) {
                double p = (double)x[(size_t)r * in + k] * w[(size_t)o * in + k];
                s += p;
                a += fabs(p);
            }
            ref[(size_t)r * out + o] = s;
            mag[(size_t)r * out + o] = a;
        }
    bool bf16 = true;
    run(gpu, NQ_GEMM_F32, x, n, in, w, out, yf, &bf16);
    errs ef = compare(yf, ref, mag, yc);
    check(!bf16 && ef.max_norm <= (in + 1) * 0x1p-24,
          "gemm f32 (SGEMM) vs float64 [%d x %d] x [%d x %d]^T: max |err|/sum|xw| %.3g (bound "
          "%.3g), rms rel %.3g", n, in, out, in, ef.max_norm, (in + 1) * 0x1p-24, ef.rms_rel);
    static const nq_cuda_gemm_mode split[] = {NQ_GEMM_BF16X3, NQ_GEMM_BF16X3K, NQ_GEMM_BF16X2};
    for (int i = 0; i < 3; i++) {
        nq_cuda_gemm_mode m = split[i];
        run(gpu, m, x, n, in, w, out, y, &bf16);
        errs e = compare(y, ref, mag, yc);
        /* three terms: the products are exact, only f32 accumulation (one
         * more rounding per term added); two: + 2^-17 of each input.  RMS:
         * the tensor cores' f32 accumulation measured ~10x SGEMM's error
         * on the H200 (3.2e-6 vs 3.4e-7 here), bf16x2 4.0e-6; a single
         * bf16 term would give ~1e-3, so 2e-5 tells a lost term apart. */
        double bound = (in + 3) * 0x1p-24 + (m == NQ_GEMM_BF16X2 ? 0x1p-17 : 0.0);
        bool ok = bf16 && e.max_norm <= bound && e.rms_rel <= 2e-5;
        check(ok, "gemm %s (bf16 tensor cores, bf16-exact weight) vs float64: max |err|/sum|xw| "
              "%.3g (bound %.3g), rms rel %.3g (tol 2e-5; SGEMM's %.3g)",
              nq_cuda_gemm_mode_name(m), e.max_norm, bound, e.rms_rel, ef.rms_rel);
        run(gpu, m, x, n, in, w, out, y2, &bf16);
        check(memcmp(y, y2, yc * sizeof *y) == 0, "gemm %s: the same bytes twice",
              nq_cuda_gemm_mode_name(m));
    }
    /* Weights bf16 does not hold exactly take SGEMM in every mode: full
     * f32 weights, and a bf16 weight with a single value off by one f32
     * ulp. */
    for (int k = 0; k < 2; k++) {
        if (k == 0)
            for (size_t i = 0; i < wc; i++)
                w[i] = (float)(normal() * 0.02);
        else {
            for (size_t i = 0; i < wc; i++)
                w[i] = to_bf16(w[i]);
            w[wc - 1] = nextafterf(w[wc - 1], 1.0f);
        }
        run(gpu, NQ_GEMM_F32, x, n, in, w, out, yf, &bf16);
        for (int i = 0; i < 3; i++) {
            bool b = true;
            run(gpu, split[i], x, n, in, w, out, y, &b);
            check(!b && memcmp(y, yf, yc * sizeof *y) == 0,
                  "gemm %s with %s: SGEMM taken, output byte-identical to mode f32",
                  nq_cuda_gemm_mode_name(split[i]),
                  k ? "a bf16 weight with one value 1 ulp off" : "an f32 weight");
        }
    }
    nq_cuda_set_gemm_mode(gpu, restore);
    free(x);
    free(w);
    free(y);
    free(y2);
    free(yf);
    free(ref);
    free(mag);
}
