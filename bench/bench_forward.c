/* Forward-pass throughput: tokens/s and GFLOP/s with 1 and 2 threads,
 * against the sgemm peak measured on the same machine.
 *
 * Built and run by bench/bench_forward.sh.  Three workloads:
 *  1. the bundled tiny model (hidden 256), a 64-token prefill and
 *     token-by-token decoding;
 *  2. a slice of Nemotron 3 Nano 30B-A3B with its real shapes (hidden 2688,
 *     Mamba 64x64 heads, state 128, attention 32 heads / 2 KV of 128, MoE
 *     experts of 1856, top-6, shared expert 3712, vocab 131072), the first
 *     seven blocks "MEMEM*E", with random weights from a weight provider and
 *     16 routed experts instead of 128 (to fit in memory; top-6 keeps the
 *     per-token work of the real model).
 * Weights are converted once (keep_weights) and excluded from the timings.
 * GFLOP/s counts nq_model_flops_per_token (every Linear, routed experts
 * top-k, attention products, the scan). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/blas.h"
#include "core/parallel.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward.h"


static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what, const nq_error *err)
{
    fprintf(stderr, "bench_forward: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

/* ---- sgemm peak ---- */

typedef struct {
    const float *a, *b;
    float *c;
    int n;
} gemm_job;

static int gemm_rows(void *ctx, size_t begin, size_t end, int worker)
{
    (void)worker;
    const gemm_job *j = ctx;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, (int)(end - begin), j->n, 1.0f, j->a,
                j->n, j->b + begin * (size_t)j->n, j->n, 0.0f, j->c + begin, j->n);
    return 0;
}

/* Best of `reps` products of n x n x n, split into 64-row chunks of the
 * output (as nq_linear does) over `threads` threads. */
static double sgemm_gflops(int n, int threads, int reps)
{
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
    float *c = malloc((size_t)n * n * sizeof *c);
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(i % 7) * 0.1f;
        b[i] = (float)(i % 5) * 0.1f;
    }
    gemm_job j = {a, b, c, n};
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t = now();
        nq_parallel_for((size_t)n, (size_t)n / 2 > 64 ? 64 : (size_t)n, threads, gemm_rows, &j);
        t = now() - t;
        if (r > 0 && t < best) /* the first run warms up */
            best = t;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * (double)n * n / best / 1e9;
}

/* ---- random weights for the synthetic slice ---- */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Norm weights 1, A = -(1..heads), D 1, biases 0, everything else uniform
 * with variance 1/in_features (embeddings: 1), a fixed hash of name and
 * index so that runs are repeatable. */
static int random_fetch(void *ctx, const nq_weight_request *req, float *out, nq_error *err)
{
    (void)ctx;
    (void)err;
    const char *name = req->name;
    float fill = NAN;
    if (ends_with(name, "norm.weight") || ends_with(name, "norm_f.weight") || ends_with(name, ".D"))
        fill = 1.0f;
    else if (ends_with(name, "bias"))
        fill = 0.0f;
    if (!isnan(fill)) {
        for (uint64_t i = 0; i < req->numel; i++)
            out[i] = fill;
        return 0;
    }
    if (ends_with(name, "A_log")) {
        for (uint64_t i = 0; i < req->numel; i++)
            out[i] = logf((float)(i + 1));
        return 0;
    }
    uint64_t seed = 1469598103934665603ULL;
    for (const char *p = name; *p; p++)
        seed = (seed ^ (unsigned char)*p) * 1099511628211ULL;
    float scale = strstr(name, "embeddings") || req->ndim < 2
                      ? 1.0f
                      : 1.0f / sqrtf((float)req->shape[req->ndim - 1]);
    for (uint64_t i = 0; i < req->numel; i++) {
        uint64_t r = mix(seed + i);
        /* uniform on [-sqrt(3), sqrt(3)): unit variance */
        out[i] = ((float)(r >> 40) / (float)(1 << 24) - 0.5f) * 3.4641016f * scale;
    }
    return 0;
}

/* ---- model timing ---- */

/* argv[3]: a third thread count to measure besides 1 and 2 */
static int bench_max_threads = 2;

static double best_forward(nq_model *m, const int32_t *ids, int n, float *logits, int reps)
{
    nq_error err = {0};
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now();
        if (nq_model_forward(m, ids, n, logits, NULL, &err) != 0)
            die("forward", &err);
        t = now() - t;
        if (t < best)
            best = t;
    }
    return best;
}

static void bench_model(const char *label, nq_model *m, int n, int reps)
{
    const nq_model_config *c = nq_model_cfg(m);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int t = 0; t < n; t++)
        ids[t] = (int32_t)((7919u * (unsigned)t + 11u) % (unsigned)c->vocab_size);
    float *logits = malloc((size_t)n * c->vocab_size * sizeof *logits);
    nq_model_set_keep_weights(m, true);
    nq_error err = {0};
    double t0 = now();
    if (nq_model_forward(m, ids, n, logits, NULL, &err) != 0) /* loads the weights */
        die("forward", &err);
    printf("%s: first forward incl. weight loading %.2f s\n", label, now() - t0);
    double gflop = nq_model_flops_per_token(m, n) * n / 1e9;
    int list[3] = {1, 2, bench_max_threads};
    for (int k = 0; k < 3; k++) {
        int threads = list[k];
        if (k == 2 && threads <= 2)
            break;
        nq_model_set_threads(m, threads);
        /* The peak is measured right before, as the machine's load varies. */
        double peak = sgemm_gflops(1536, threads, 8);
        double t = best_forward(m, ids, n, logits, reps);
        printf("%s: prefill %d tokens, %d thread%s: %8.1f tokens/s  %6.2f GFLOP/s  = %3.0f%% of "
               "sgemm %.1f GFLOP/s\n",
               label, n, threads, threads > 1 ? "s" : " ", n / t, gflop / t,
               100.0 * gflop / t / peak, peak);
    }
    free(ids);
    free(logits);
}

static void bench_decode(const char *label, nq_model *m, int n)
{
    const nq_model_config *c = nq_model_cfg(m);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    nq_error err = {0};
    for (int threads = 1; threads <= 2; threads++) {
        nq_model_set_threads(m, threads);
        nq_state *st = nq_state_new(m, &err);
        if (!st)
            die("state", &err);
        double t = now();
        for (int i = 0; i < n; i++) {
            int32_t id = (int32_t)((7919u * (unsigned)i + 11u) % (unsigned)c->vocab_size);
            if (nq_model_step(m, st, &id, 1, logits, &err) != 0)
                die("step", &err);
        }
        t = now() - t;
        printf("%s: decode %d tokens one by one, %d thread%s: %8.1f tokens/s\n", label, n, threads,
               threads > 1 ? "s" : " ", n / t);
        nq_state_free(st);
    }
    free(logits);
}

int main(int argc, char **argv)
{
    const char *src = argc > 1 ? argv[1] : ".";
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    bench_max_threads = argc > 3 ? atoi(argv[3]) : 2;
    char path[4096];
    nq_error err = {0};

    nq_blas_init(); /* the kernels the forward pass uses */
    printf("%s; sgemm peak = best of 8 products 1536^3 cut in 64-row chunks like nq_linear\n",
           openblas_get_config());

    /* 1. the bundled tiny model */
    snprintf(path, sizeof path, "%s/models/tiny-nemotron-h", src);
    nq_checkpoint *ck = nq_checkpoint_open(path, &err);
    nq_model_config cfg;
    if (!ck || nq_model_config_load(path, &cfg, &err) != 0)
        die(path, &err);
    nq_model *m = nq_model_open(ck, &cfg, &err);
    if (!m)
        die("tiny model", &err);
    bench_model("tiny", m, 64, reps * 3);
    bench_model("tiny", m, 512, reps);
    bench_decode("tiny", m, 64);
    nq_model_close(m);
    nq_checkpoint_close(ck);

    /* 2. a slice of Nemotron 3 Nano with random weights */
    snprintf(path, sizeof path, "%s/tests/fixtures/nemotron-3-nano-30b-a3b.config.json", src);
    if (nq_model_config_load(path, &cfg, &err) != 0)
        die(path, &err);
    cfg.num_layers = 7;
    cfg.pattern[7] = '\0';
    cfg.n_routed_experts = 16;
    printf("nano slice: pattern %s, hidden %d, %d experts (real: 128) top-%d, vocab %d\n", cfg.pattern,
           cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.vocab_size);
    m = nq_model_open(NULL, &cfg, &err);
    if (!m)
        die("nano slice", &err);
    nq_model_set_weights(m, (nq_weight_provider){.fetch = random_fetch, .ctx = NULL});
    bench_model("nano-slice", m, 64, 1);
    bench_decode("nano-slice", m, 8);
    nq_model_close(m);
    return 0;
}
