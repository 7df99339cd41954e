/* GPU tests of the CUDA backend (run by scripts/gpu-test.sh on a machine
 * with a CUDA GPU; not part of ctest, which runs where there is none).
 *
 *   gpu_test SOURCE_DIR TMP_DIR
 *
 * References: transformers' logits for the bundled model and the dense
 * fixture (tests/fixtures, the same files and tolerance the CPU test
 * uses), and the CPU path itself (logits, perplexity, calibrated
 * checkpoints).  Prints one line per check and "N passed, N failed". */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <time.h>

#include <cblas.h>

#include "algo/gptq.h"
#include "core/file.h"
#include "core/parallel.h"
#include "cuda/cuda.h"
#include "gpu_check.h"
#include "eval/loaded.h"
#include "eval/perplexity.h"
#include "export/quantize.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward.h"
#include "tok/tokenizer.h"

/* transformers vs nemoq on the fixtures: test_model.c's LOGIT_TOL (absolute). */
#define FIXTURE_TOL 2e-3
/* GPU vs CPU: max |g - c| / max(1, |c|) over every logit. */
#define GPU_CPU_REL_TOL 2e-3
/* perplexity, relative */
#define PPL_TOL 5e-4
/* calibrated input / KV scales, relative */
#define SCALE_TOL 1e-3

static const char *src_dir, *tmp_dir;
static int passed, failed;
static nq_cuda *gpu;

void check(bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok)
        passed++;
    else
        failed++;
}

static const char *path(const char *rel)
{
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", src_dir, rel);
    return b;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what, const nq_error *err)
{
    printf("FAIL %s: %s\n", what, err->msg);
    failed++;
    printf("%d passed, %d failed\n", passed, failed);
    exit(1);
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static double max_rel_diff(const float *a, const float *ref, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double s = fabs((double)ref[i]) > 1.0 ? fabs((double)ref[i]) : 1.0;
        double d = fabs((double)a[i] - ref[i]) / s;
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

typedef struct {
    nq_checkpoint *ck;
    nq_model_config cfg;
    nq_model *cpu, *gpu;
    int nseq, len[8];
    int32_t *ids[8];
} fixture;

static void open_fixture(fixture *f, const char *model_dir, const char *ref_json)
{
    nq_error err = {0};
    memset(f, 0, sizeof *f);
    if (!(f->ck = nq_checkpoint_open(path(model_dir), &err)) ||
        nq_model_config_load(path(model_dir), &f->cfg, &err) != 0 ||
        !(f->cpu = nq_model_open(f->ck, &f->cfg, &err)) ||
        !(f->gpu = nq_model_open(f->ck, &f->cfg, &err)))
        die(model_dir, &err);
    nq_model_set_cuda(f->gpu, gpu);
    json_error_t jerr;
    json_t *root = json_load_file(path(ref_json), 0, &jerr);
    json_t *seqs = root ? json_object_get(root, "seqs") : NULL;
    f->nseq = (int)json_array_size(seqs);
    if (f->nseq <= 0 || f->nseq > 8) {
        nq_fail(&err, "%s: no sequences", ref_json);
        die(ref_json, &err);
    }
    for (int s = 0; s < f->nseq; s++) {
        json_t *a = json_array_get(seqs, (size_t)s);
        f->len[s] = (int)json_array_size(a);
        f->ids[s] = malloc((size_t)f->len[s] * sizeof(int32_t));
        for (int t = 0; t < f->len[s]; t++)
            f->ids[s][t] = (int32_t)json_integer_value(json_array_get(a, (size_t)t));
    }
    json_decref(root);
}

static void close_fixture(fixture *f)
{
    for (int s = 0; s < f->nseq; s++)
        free(f->ids[s]);
    nq_model_close(f->cpu);
    nq_model_close(f->gpu);
    nq_checkpoint_close(f->ck);
}

/* GPU logits vs transformers' (fixture file) and vs the CPU path; twice on
 * the GPU for determinism. */
static void test_fixture_logits(const char *model_dir, const char *ref_json, const char *logits_rel)
{
    fixture f;
    open_fixture(&f, model_dir, ref_json);
    int V = f.cfg.vocab_size;
    size_t total = 0;
    for (int s = 0; s < f.nseq; s++)
        total += (size_t)f.len[s] * V;
    size_t len = 0;
    nq_error err = {0};
    float *ref = (float *)nq_read_file(path(logits_rel), &len, &err);
    if (!ref || len != total * sizeof(float))
        die(logits_rel, &err);
    double worst_ref = 0, worst_cpu = 0;
    bool same = true;
    size_t off = 0;
    for (int s = 0; s < f.nseq; s++) {
        size_t cnt = (size_t)f.len[s] * V;
        float *g = malloc(cnt * sizeof *g), *g2 = malloc(cnt * sizeof *g2),
              *c = malloc(cnt * sizeof *c);
        if (nq_model_forward(f.gpu, f.ids[s], f.len[s], g, NULL, &err) != 0 ||
            nq_model_forward(f.gpu, f.ids[s], f.len[s], g2, NULL, &err) != 0 ||
            nq_model_forward(f.cpu, f.ids[s], f.len[s], c, NULL, &err) != 0)
            die(model_dir, &err);
        double d = max_abs_diff(g, ref + off, cnt), r = max_rel_diff(g, c, cnt);
        worst_ref = d > worst_ref ? d : worst_ref;
        worst_cpu = r > worst_cpu ? r : worst_cpu;
        same = same && memcmp(g, g2, cnt * sizeof *g) == 0;
        off += cnt;
        free(g);
        free(g2);
        free(c);
    }
    check(worst_ref <= FIXTURE_TOL, "%s: GPU logits vs transformers: max |diff| %.3g (tol %g)",
          model_dir, worst_ref, FIXTURE_TOL);
    check(worst_cpu <= GPU_CPU_REL_TOL, "%s: GPU vs CPU logits: max rel diff %.3g (tol %g)",
          model_dir, worst_cpu, GPU_CPU_REL_TOL);
    check(same, "%s: GPU logits byte-identical run to run", model_dir);

    /* Decoding after a GPU prefill: the GPU leaves the state the CPU path
     * continues from (conv, SSM, KV cache). */
    int n = f.len[0], half = n / 2;
    float *full = malloc((size_t)n * V * sizeof *full), *step = malloc((size_t)n * V * sizeof *step);
    nq_state *st = nq_state_new(f.gpu, &err);
    if (!st || nq_model_forward(f.cpu, f.ids[0], n, full, NULL, &err) != 0 ||
        nq_model_step(f.gpu, st, f.ids[0], half, step, &err) != 0 ||
        nq_model_step(f.gpu, st, f.ids[0] + half, n - half, step + (size_t)half * V, &err) != 0)
        die("step", &err);
    double d = max_rel_diff(step, full, (size_t)n * V);
    check(d <= GPU_CPU_REL_TOL, "%s: GPU prefill of %d tokens + CPU decoding of %d vs CPU forward: "
          "max rel diff %.3g", model_dir, half, n - half, d);
    nq_state_free(st);
    free(full);
    free(step);
    free(ref);
    close_fixture(&f);
}

static int32_t *tokens(const char *model_dir, const char *text_rel, size_t *n)
{
    nq_error err = {0};
    char tp[4096];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", path(model_dir));
    size_t len = 0;
    nq_tokenizer *tok = nq_tokenizer_load(tp, &err);
    char *text = tok ? nq_read_file(path(text_rel), &len, &err) : NULL;
    int32_t *ids = NULL;
    if (!text || nq_tokenizer_encode(tok, text, len, false, &ids, n, &err) != 0)
        die(text_rel, &err);
    free(text);
    nq_tokenizer_free(tok);
    return ids;
}

/* Perplexity through the eval path (layer by layer over all windows) on
 * both devices; dir may be a quantized checkpoint (emulation hooks). */
static void test_perplexity(const char *dir, const char *label, const int32_t *ids, size_t n,
                            int windows, int ctx)
{
    nq_error err = {0};
    nq_loaded_model c = {0}, g = {0};
    if (nq_loaded_open(dir, 0, &c, &err) != 0 || nq_loaded_open(dir, 0, &g, &err) != 0)
        die(dir, &err);
    nq_model_set_cuda(g.model, gpu);
    nq_eval_options opt = {.ctx = ctx, .windows = windows};
    nq_eval_result rc, rg, rg2;
    double t0 = now();
    if (nq_eval_perplexity(c.model, NULL, ids, n, &opt, &rc, &err) != 0)
        die(dir, &err);
    double t1 = now();
    if (nq_eval_perplexity(g.model, NULL, ids, n, &opt, &rg, &err) != 0)
        die(dir, &err);
    double t2 = now();
    if (nq_eval_perplexity(g.model, NULL, ids, n, &opt, &rg2, &err) != 0)
        die(dir, &err);
    double rel = fabs(rg.ppl / rc.ppl - 1.0);
    check(rel <= PPL_TOL, "%s: perplexity GPU %.6f vs CPU %.6f (rel %.2e, tol %g); %d x %d tokens: "
          "CPU %.2f s, GPU %.2f s (eval path incl. host copies)", label, rg.ppl, rc.ppl, rel,
          PPL_TOL, rg.windows, ctx, t1 - t0, t2 - t1);
    check(rg.nll == rg2.nll, "%s: GPU perplexity identical run to run (nll %.17g)", label, rg.nll);
    nq_loaded_close(&c);
    nq_loaded_close(&g);
}

/* The summary of the last quantize() */
static nq_quantize_summary last_sum;
static bool quantize_mse;

static nq_act_scale_rule quantize_act_scale;

static int quantize(const char *out, nq_cuda *dev, const char *calib, bool gptq)
{
    nq_quantize_options o = {0};
    o.optimize.act_scale = quantize_act_scale;
    o.in_dir = path("models/tiny-nemotron-h");
    o.out_dir = out;
    o.recipe.preset = gptq ? "int4" : "nvfp4-conservative";
    o.gptq = gptq;
    o.threads = 0;
    o.force = true;
    o.calib_path = calib;
    o.calib_samples = 8;
    o.calib_len = 256;
    o.kv_cache_fp8 = true;
    o.cuda = dev;
    o.mse_scales = quantize_mse;
    nq_error err = {0};
    if (nq_quantize(&o, &last_sum, &err) != 0)
        die(out, &err);
    return 0;
}

static bool is_scale(const char *name)
{
    size_t n = strlen(name);
    return (n > 11 && strcmp(name + n - 11, "input_scale") == 0) ||
           (n > 7 && (strcmp(name + n - 7, "k_scale") == 0 || strcmp(name + n - 7, "v_scale") == 0));
}

/* Calibrated NVFP4 on the CPU and on the GPU: every weight byte-identical,
 * input and KV scales within SCALE_TOL; the GPU twice: identical bytes. */
static void test_calibrated_checkpoints(char *calib, bool mse)
{
    char cpu_dir[4200], gpu_dir[4200], gpu2_dir[4200];
    const char *tag = mse ? "calibrated nvfp4 (mse scales)" : "calibrated nvfp4";
    snprintf(cpu_dir, sizeof cpu_dir, "%s/q-cpu%s", tmp_dir, mse ? "-mse" : "");
    snprintf(gpu_dir, sizeof gpu_dir, "%s/q-gpu%s", tmp_dir, mse ? "-mse" : "");
    snprintf(gpu2_dir, sizeof gpu2_dir, "%s/q-gpu2%s", tmp_dir, mse ? "-mse" : "");
    quantize_mse = mse;
    double t0 = now();
    quantize(cpu_dir, NULL, calib, false);
    nq_quantize_summary sc = last_sum;
    double t1 = now();
    quantize(gpu_dir, gpu, calib, false);
    nq_quantize_summary sg = last_sum;
    double t2 = now();
    quantize(gpu2_dir, gpu, calib, false);
    quantize_mse = false;
    /* reported errors: the same quantities summed in another order (and
     * the output error on the GPU's own activations) */
    double we = fabs(sqrt(sg.sq_err / sg.sq_ref) / sqrt(sc.sq_err / sc.sq_ref) - 1.0);
    double oe = fabs(sqrt(sg.out_sq_err / sg.out_sq_ref) / sqrt(sc.out_sq_err / sc.out_sq_ref) - 1.0);
    check(we <= 1e-9 && oe <= 1e-3, "%s: reported weight error GPU vs CPU rel diff %.2g (tol 1e-9), "
          "output error on the calibration rows %.6f vs %.6f (rel %.2g, tol 1e-3)", tag, we,
          sqrt(sg.out_sq_err / sg.out_sq_ref), sqrt(sc.out_sq_err / sc.out_sq_ref), oe);
    nq_error err = {0};
    nq_checkpoint *a = nq_checkpoint_open(cpu_dir, &err), *b = a ? nq_checkpoint_open(gpu_dir, &err) : NULL;
    nq_checkpoint *b2 = b ? nq_checkpoint_open(gpu2_dir, &err) : NULL;
    if (!a || !b || !b2)
        die("calibrated checkpoints", &err);
    size_t n = nq_checkpoint_count(a), weights = 0, scales = 0, bad_w = 0, bad_s = 0, diff2 = 0;
    double worst = 0;
    bool same_count = n == nq_checkpoint_count(b) && n == nq_checkpoint_count(b2);
    for (size_t i = 0; same_count && i < n; i++) {
        const nq_tensor *ta = nq_checkpoint_tensor(a, i);
        const nq_tensor *tb = nq_checkpoint_find(b, ta->name), *tb2 = nq_checkpoint_find(b2, ta->name);
        if (!tb || !tb2 || tb->nbytes != ta->nbytes || tb2->nbytes != ta->nbytes) {
            bad_w++;
            continue;
        }
        if (memcmp(tb->data, tb2->data, tb->nbytes) != 0)
            diff2++;
        if (is_scale(ta->name) && ta->numel == 1) {
            float va, vb;
            if (nq_tensor_read_f32(ta, 0, 1, &va, &err) != 0 ||
                nq_tensor_read_f32(tb, 0, 1, &vb, &err) != 0)
                die(ta->name, &err);
            double r = fabs((double)vb / va - 1.0);
            worst = r > worst ? r : worst;
            bad_s += !(r <= SCALE_TOL);
            scales++;
        } else {
            bad_w += memcmp(ta->data, tb->data, ta->nbytes) != 0;
            weights++;
        }
    }
    check(same_count && bad_w == 0, "%s: %zu weight tensors byte-identical CPU vs GPU "
          "(%zu differ)", tag, weights, bad_w);
    check(same_count && scales > 0 && bad_s == 0, "%s: %zu input/KV scales CPU vs GPU "
          "max rel diff %.3g (tol %g); calibration+export CPU %.2f s, GPU %.2f s", tag, scales,
          worst, SCALE_TOL, t1 - t0, t2 - t1);
    check(same_count && diff2 == 0, "%s on the GPU twice: byte-identical (%zu tensors "
          "differ)", tag, diff2);
    nq_checkpoint_close(a);
    nq_checkpoint_close(b);
    nq_checkpoint_close(b2);
}


/* ---- calibration statistics on the GPU ---------------------------------- */

/* One pass of every block of the bundled model over one sequence of 200
 * tokens with the GPU statistics on (every Linear, Hessians, 256 sample
 * rows, so each Linear's rows are all sampled).  Reference per Linear: its
 * own sampled rows, amax and X^T X summed here in double (exact products).
 * Hessians of all layers are appended to *hs (for the determinism check). */
static void device_stats_pass(const int32_t *ids, int n, bool reference, double **hs,
                              size_t *hs_len, int *items, double *worst_h, double *worst_amax,
                              int *bad_rows)
{
    nq_error err = {0};
    nq_loaded_model lm = {0};
    if (nq_loaded_open(path("models/tiny-nemotron-h"), 0, &lm, &err) != 0)
        die("stats", &err);
    nq_model_set_cuda(lm.model, gpu);
    int H = lm.cfg.hidden_size;
    float *x = malloc((size_t)n * H * sizeof *x);
    if (nq_model_embed(lm.model, ids, n, x, &err) != 0)
        die("stats embed", &err);
    nq_cuda_stats_spec spec = {.hessians = true, .sample_rows = 256};
    for (int l = 0; l < lm.cfg.num_layers; l++) {
        if (nq_cuda_stats_begin(gpu, &spec, &err) != 0 ||
            nq_model_blocks(lm.model, l, x, 1, n, &err) != 0)
            die("stats layer", &err);
        for (size_t i = 0; i < nq_cuda_stats_count(gpu); i++) {
            nq_cuda_linear_stat st;
            if (nq_cuda_stats_item(gpu, i, &st, NULL, &err) != 0)
                die("stats item", &err);
            size_t d = (size_t)st.in_features;
            *hs = realloc(*hs, (*hs_len + d * d) * sizeof **hs);
            double *h = *hs + *hs_len;
            *hs_len += d * d;
            if (nq_cuda_stats_item(gpu, i, &st, h, &err) != 0)
                die("stats hessian", &err);
            (*items)++;
            *bad_rows += st.rows != (uint64_t)st.sample_rows || st.nonfinite;
            if (!reference)
                continue;
            float amax = 0;
            double *ref = calloc(d * d, sizeof *ref), hmax = 0, dmax = 0;
            for (int r = 0; r < st.sample_rows; r++) {
                const float *xr = st.sample + (size_t)r * d;
                for (size_t a = 0; a < d; a++) {
                    amax = fabsf(xr[a]) > amax ? fabsf(xr[a]) : amax;
                    for (size_t b = 0; b < d; b++)
                        ref[a * d + b] += (double)xr[a] * xr[b];
                }
            }
            for (size_t k = 0; k < d * d; k++) {
                hmax = fabs(ref[k]) > hmax ? fabs(ref[k]) : hmax;
                double df = fabs(h[k] - ref[k]);
                dmax = !(df <= dmax) ? df : dmax;
            }
            double rel = hmax > 0 ? dmax / hmax : dmax;
            *worst_h = !(rel <= *worst_h) ? rel : *worst_h;
            double ra = fabs((double)st.amax - amax);
            *worst_amax = ra > *worst_amax ? ra : *worst_amax;
            free(ref);
        }
        nq_cuda_stats_end(gpu);
    }
    free(x);
    nq_loaded_close(&lm);
}

static void test_device_stats(const int32_t *ids)
{
    double *h1 = NULL, *h2 = NULL;
    size_t n1 = 0, n2 = 0;
    int items = 0, bad_rows = 0, items2 = 0, bad2 = 0;
    double wh = 0, wa = 0, wh2 = 0, wa2 = 0;
    device_stats_pass(ids, 200, true, &h1, &n1, &items, &wh, &wa, &bad_rows);
    device_stats_pass(ids, 200, false, &h2, &n2, &items2, &wh2, &wa2, &bad2);
    check(items > 0 && bad_rows == 0 && wa == 0.0,
          "GPU statistics: %d Linear inputs (routed experts included): amax equal to max |x| of "
          "the rows (max diff %g), every row counted and sampled (%d mismatches)",
          items, wa, bad_rows);
    check(items > 0 && wh <= 1e-12,
          "GPU Hessians (DSYRK in float64) vs X^T X summed on the host in double: max |diff| / "
          "max |H| = %.3g (tol 1e-12)", wh);
    check(n1 == n2 && n1 > 0 && memcmp(h1, h2, n1 * sizeof *h1) == 0,
          "GPU Hessians byte-identical run to run (%zu values)", n1);
    free(h1);
    free(h2);
}

/* ---- GPTQ on the GPU ------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static double nrand(void)
{
    double u1 = urand() + 1e-300, u2 = urand();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* H = X^T X / rows for a random X with correlated columns, plus a few dead
 * columns (the Hessian of a real Linear input is far from diagonal). */
static double *random_hessian(int d, int rows, int dead)
{
    float *x = malloc((size_t)rows * d * sizeof *x);
    for (int r = 0; r < rows; r++) {
        double common = nrand();
        for (int c = 0; c < d; c++)
            x[(size_t)r * d + c] = (float)(nrand() + 0.5 * common * (c % 7 == 0 ? 3 : 1));
    }
    for (int c = 0; c < dead; c++)
        for (int r = 0; r < rows; r++)
            x[(size_t)r * d + (c * 37) % d] = 0.0f;
    double *h = calloc((size_t)d * d, sizeof *h);
    double *xd = malloc((size_t)rows * d * sizeof *xd);
    for (size_t k = 0; k < (size_t)rows * d; k++)
        xd[k] = x[k];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, rows, 1.0, xd, d, 0.0, h, d);
    for (int a = 0; a < d; a++)
        for (int b = 0; b < a; b++)
            h[(size_t)a * d + b] = h[(size_t)b * d + a];
    free(x);
    free(xd);
    return h;
}

static float *random_weight(int64_t rows, int64_t cols)
{
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    for (int64_t k = 0; k < rows * cols; k++)
        w[k] = (float)(0.02 * nrand());
    return w;
}

static size_t count_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += a[i] != b[i];
    return d;
}

/* NVFP4 and INT4 GPTQ of one weight on the CPU and on the GPU. */
static void gptq_pair(const char *label, const float *w, int64_t R, int64_t C, const double *h,
                      bool mse, bool expect_identical)
{
    nq_error err = {0};
    nq_gptq_stats sc, sg, sg2;
    size_t pb = (size_t)(R * C / 2), bb = (size_t)(R * C / 16);
    uint8_t *p1 = malloc(pb), *p2 = malloc(pb), *p3 = malloc(pb);
    uint8_t *b1 = malloc(bb), *b2 = malloc(bb), *b3 = malloc(bb);
    float g1, g2, g3;
    if (nq_gptq_nvfp4_on(NULL, w, R, C, h, mse, 0.01, 0, 0.0f, p1, b1, &g1, &sc, &err) != 0 ||
        nq_gptq_nvfp4_on(gpu, w, R, C, h, mse, 0.01, 0, 0.0f, p2, b2, &g2, &sg, &err) != 0 ||
        nq_gptq_nvfp4_on(gpu, w, R, C, h, mse, 0.01, 0, 0.0f, p3, b3, &g3, &sg2, &err) != 0)
        die(label, &err);
    size_t dp = count_diff(p1, p2, pb), db = count_diff(b1, b2, bb);
    double lrel = fabs(sg.proxy_loss / sc.proxy_loss - 1.0);
    bool same_run = memcmp(p2, p3, pb) == 0 && memcmp(b2, b3, bb) == 0;
    if (expect_identical)
        check(dp == 0 && db == 0 && same_run,
              "gptq nvfp4%s %s [%lld x %lld]: GPU bytes identical to the CPU's (%zu code bytes, "
              "%zu scale bytes differ); GPU run to run identical: %s", mse ? "+mse" : "", label,
              (long long)R, (long long)C, dp, db, same_run ? "yes" : "no");
    else
        check(dp <= pb / 100 && db <= bb / 100 && lrel <= 1e-3 && same_run,
              "gptq nvfp4%s %s [%lld x %lld]: GPU vs CPU %zu of %zu code bytes and %zu of %zu scale "
              "bytes differ (tol 1%%), proxy loss %.6g vs %.6g (rel %.2g, tol 1e-3); GPU run to run "
              "identical: %s", mse ? "+mse" : "", label, (long long)R, (long long)C, dp, pb, db,
              bb, sg.proxy_loss, sc.proxy_loss, lrel, same_run ? "yes" : "no");
    /* --optimize's NVFP4 scale searches: hessian-scales (lo 1/2, hi 3/2), and
     * four-over-six (global scale at M = 256) */
    for (int fos = 0; fos < 2; fos++) {
        nq_gptq_nvfp4_opts o = {.mse = mse, .search = !fos, .lo = 0.5f, .hi = 1.5f,
                                .four_over_six = fos, .scale_max = fos ? 256.0f : 448.0f};
        if (nq_gptq_nvfp4_ex_on(NULL, w, R, C, h, &o, 0.01, 0, p1, b1, &g1, &sc, &err) != 0 ||
            nq_gptq_nvfp4_ex_on(gpu, w, R, C, h, &o, 0.01, 0, p2, b2, &g2, &sg, &err) != 0)
            die(label, &err);
        dp = count_diff(p1, p2, pb), db = count_diff(b1, b2, bb);
        lrel = fabs(sg.proxy_loss / sc.proxy_loss - 1.0);
        const char *what = fos ? "four-over-six" : "hessian-scales";
        if (expect_identical)
            check(dp == 0 && db == 0 && g1 == g2 && lrel <= 1e-12,
                  "gptq nvfp4 %s%s %s: GPU bytes identical to the CPU's (%zu code bytes, %zu scale "
                  "bytes differ; proxy loss rel diff %.2g)", what, mse ? "+mse" : "", label, dp, db,
                  lrel);
        else
            check(dp <= pb / 100 && db <= bb / 100 && g1 == g2 && lrel <= 1e-3,
                  "gptq nvfp4 %s%s %s: GPU vs CPU %zu of %zu code bytes and %zu of %zu scale bytes "
                  "differ (tol 1%%), proxy loss rel diff %.2g (tol 1e-3)", what, mse ? "+mse" : "",
                  label, dp, pb, db, bb, lrel);
    }
    /* INT4, group 64 */
    int G = 64;
    size_t qn = (size_t)(C / 8 * R), zn = (size_t)(C / G * R / 8), sn = (size_t)(C / G * R);
    int32_t *q1 = malloc(qn * 4), *q2 = malloc(qn * 4), *z1 = malloc(zn * 4), *z2 = malloc(zn * 4);
    uint16_t *s1 = malloc(sn * 2), *s2 = malloc(sn * 2);
    int32_t *i1 = malloc((size_t)C * 4), *i2 = malloc((size_t)C * 4);
    if (nq_gptq_int4_on(NULL, w, R, C, h, G, mse, 0.01, 0, q1, z1, s1, i1, &sc, &err) != 0 ||
        nq_gptq_int4_on(gpu, w, R, C, h, G, mse, 0.01, 0, q2, z2, s2, i2, &sg, &err) != 0)
        die(label, &err);
    size_t dq = count_diff((uint8_t *)q1, (uint8_t *)q2, qn * 4);
    size_t ds = count_diff((uint8_t *)s1, (uint8_t *)s2, sn * 2);
    lrel = fabs(sg.proxy_loss / sc.proxy_loss - 1.0);
    if (expect_identical)
        check(dq == 0 && ds == 0, "gptq int4%s %s: GPU bytes identical to the CPU's (%zu qweight, "
              "%zu scale bytes differ)", mse ? "+mse" : "", label, dq, ds);
    else
        check(dq <= qn * 4 / 100 && ds <= sn * 2 / 100 && lrel <= 1e-3,
              "gptq int4%s %s: GPU vs CPU %zu of %zu qweight bytes and %zu of %zu scale bytes "
              "differ (tol 1%%), proxy loss rel diff %.2g (tol 1e-3)", mse ? "+mse" : "", label,
              dq, qn * 4, ds, sn * 2, lrel);
    /* INT4 act-order with static groups, group 64 */
    if (nq_gptq_int4_actorder_on(NULL, w, R, C, h, G, mse, 0.01, 0, q1, z1, s1, i1, &sc, &err) !=
            0 ||
        nq_gptq_int4_actorder_on(gpu, w, R, C, h, G, mse, 0.01, 0, q2, z2, s2, i2, &sg, &err) != 0)
        die(label, &err);
    dq = count_diff((uint8_t *)q1, (uint8_t *)q2, qn * 4);
    ds = count_diff((uint8_t *)s1, (uint8_t *)s2, sn * 2);
    size_t dz = count_diff((uint8_t *)z1, (uint8_t *)z2, zn * 4) +
                count_diff((uint8_t *)i1, (uint8_t *)i2, (size_t)C * 4);
    lrel = fabs(sg.proxy_loss / sc.proxy_loss - 1.0);
    if (expect_identical)
        check(dq == 0 && ds == 0 && dz == 0 && lrel <= 1e-12,
              "gptq int4 act-order%s %s: GPU bytes identical to the CPU's (%zu qweight, %zu "
              "scale, %zu qzeros/g_idx bytes differ; proxy loss rel diff %.2g)",
              mse ? "+mse" : "", label, dq, ds, dz, lrel);
    else
        check(dq <= qn * 4 / 100 && ds == 0 && dz == 0 && lrel <= 1e-3,
              "gptq int4 act-order%s %s: GPU vs CPU %zu of %zu qweight bytes differ (tol 1%%), "
              "%zu scale bytes (static: tol 0), proxy loss rel diff %.2g (tol 1e-3)",
              mse ? "+mse" : "", label, dq, qn * 4, ds, lrel);
    free(p1), free(p2), free(p3), free(b1), free(b2), free(b3);
    free(q1), free(q2), free(z1), free(z2), free(s1), free(s2), free(i1), free(i2);
}

/* Several weights at once (nq_gptq_*_batch_on: up to 8 on their own
 * streams): each item's bytes equal its one-weight GPU call's, for items of
 * different shapes and Hessians in one batch. */
static void test_gptq_batch(const float *w, int64_t R, int64_t C, const double *hd,
                            const double *h)
{
    nq_error err = {0};
    enum { N = 11 };
    nq_gptq_item it[N];
    memset(it, 0, sizeof it);
    size_t pb = (size_t)(R * C / 2), bb = (size_t)(R * C / 16);
    for (int k = 0; k < N; k++) {
        /* alternate Hessians; every third item a weight of half the rows */
        it[k] = (nq_gptq_item){.w = w + (k % 4) * C, .rows = k % 3 == 2 ? R / 2 : R - 8,
                               .cols = C, .hessian = k % 2 ? h : hd};
        it[k].packed = malloc(pb);
        it[k].block_scales = malloc(bb);
    }
    if (nq_gptq_nvfp4_batch_on(gpu, it, N, true, 0.01, 0, &err) != 0)
        die("gptq batch", &err);
    size_t diff = 0, bytes = 0;
    bool loss_same = true;
    uint8_t *p = malloc(pb), *b = malloc(bb);
    for (int k = 0; k < N; k++) {
        float gs;
        nq_gptq_stats st;
        if (nq_gptq_nvfp4_on(gpu, it[k].w, it[k].rows, C, it[k].hessian, true, 0.01, 0, 0.0f, p,
                             b, &gs, &st, &err) != 0)
            die("gptq batch", &err);
        size_t np = (size_t)(it[k].rows * C / 2), nb = (size_t)(it[k].rows * C / 16);
        diff += count_diff(p, it[k].packed, np) + count_diff(b, it[k].block_scales, nb) +
                (gs != it[k].global_scale);
        bytes += np + nb;
        loss_same = loss_same && st.proxy_loss == it[k].st.proxy_loss;
        free(it[k].packed);
        free(it[k].block_scales);
    }
    check(diff == 0 && loss_same,
          "gptq nvfp4+mse batch of %d weights (2 Hessians, 2 shapes) on the GPU: each item's "
          "bytes = its one-weight call's (%zu of %zu bytes differ; proxy losses equal: %s)",
          N, diff, bytes, loss_same ? "yes" : "no");
    /* INT4 act-order in a batch */
    nq_gptq_item iq[4];
    memset(iq, 0, sizeof iq);
    int G = 64;
    size_t qn = (size_t)(C / 8 * R), zn = (size_t)(C / G * R / 8), sn = (size_t)(C / G * R);
    for (int k = 0; k < 4; k++) {
        iq[k] = (nq_gptq_item){.w = w + k * C, .rows = R - 8 * k, .cols = C,
                               .hessian = k % 2 ? hd : h};
        iq[k].qweight = malloc(qn * 4), iq[k].qzeros = malloc(zn * 4);
        iq[k].scales = malloc(sn * 2), iq[k].g_idx = malloc((size_t)C * 4);
    }
    if (nq_gptq_int4_batch_on(gpu, iq, 4, G, false, true, 0.01, 0, &err) != 0)
        die("gptq batch", &err);
    int32_t *q = malloc(qn * 4), *z = malloc(zn * 4), *gi = malloc((size_t)C * 4);
    uint16_t *sc = malloc(sn * 2);
    diff = 0, bytes = 0;
    for (int k = 0; k < 4; k++) {
        nq_gptq_stats st;
        int64_t r = iq[k].rows;
        if (nq_gptq_int4_actorder_on(gpu, iq[k].w, r, C, iq[k].hessian, G, false, 0.01, 0, q, z, sc,
                                     gi, &st, &err) != 0)
            die("gptq batch", &err);
        diff += count_diff((uint8_t *)q, (uint8_t *)iq[k].qweight, (size_t)(C / 8 * r) * 4) +
                count_diff((uint8_t *)sc, (uint8_t *)iq[k].scales, (size_t)(C / G * r) * 2);
        bytes += (size_t)(C / 8 * r) * 4 + (size_t)(C / G * r) * 2;
        free(iq[k].qweight), free(iq[k].qzeros), free(iq[k].scales), free(iq[k].g_idx);
    }
    check(diff == 0, "gptq int4 act-order batch of 4 weights on the GPU: each item's bytes = its "
          "one-weight call's (%zu of %zu bytes differ)", diff, bytes);
    free(p), free(b), free(q), free(z), free(gi), free(sc);
}

static void test_gptq_kernels(void)
{
    int64_t R = 256, C = 512;
    float *w = random_weight(R, C);
    /* diagonal Hessian: U diagonal, every step exact on both sides */
    double *hd = calloc((size_t)(C * C), sizeof *hd);
    for (int64_t i = 0; i < C; i++)
        hd[i * C + i] = i % 11 == 3 ? 0.0 : 0.5 + urand();
    gptq_pair("diagonal Hessian", w, R, C, hd, false, true);
    gptq_pair("diagonal Hessian", w, R, C, hd, true, true);
    double *h = random_hessian((int)C, 2048, 5);
    gptq_pair("dense random Hessian", w, R, C, h, false, false);
    gptq_pair("dense random Hessian", w, R, C, h, true, false);
    test_gptq_batch(w, R, C, hd, h);
    free(w);
    free(hd);
    free(h);
}

/* Forward throughput (not a test): the layer-by-layer runner over
 * `windows` windows of ctx tokens, on the CPU and on the GPU: the blocks
 * alone (what calibration runs) and with the logits of every position
 * copied to the host (what eval runs); on the GPU also with TF32 GEMMs,
 * with the logits' distance from the FP32 run.  The weights stay in memory
 * (host and GPU) from pass to pass, as transformers holds its model on the
 * GPU; the best of 3 passes counts.  The token ids go to
 * TMP_DIR/bench_ids_CTX.i32 so that bench/transformers_forward.py times
 * transformers on the very same tokens.  Lines "BENCH[case who] ...
 * N tokens/s" are what scripts/gpu-test.sh turns into ratios. */
static void bench_forward(const int32_t *ids, size_t n, int windows, int ctx)
{
    if ((size_t)windows * ctx > n)
        windows = (int)(n / ctx);
    nq_error err = {0};
    char out[4200];
    snprintf(out, sizeof out, "%s/bench_ids_%d.i32", tmp_dir, ctx);
    FILE *f = fopen(out, "wb");
    if (f) {
        fwrite(ids, sizeof *ids, (size_t)windows * ctx, f);
        fclose(f);
    }
    nq_loaded_model lm = {0};
    if (nq_loaded_open(path("models/tiny-nemotron-h"), 0, &lm, &err) != 0)
        die("bench", &err);
    const nq_model_config *c = &lm.cfg;
    nq_model_set_keep_weights(lm.model, true);
    size_t plane = (size_t)ctx * c->hidden_size, lplane = (size_t)ctx * c->vocab_size;
    float *x = malloc((size_t)windows * plane * sizeof *x);
    float *logits = malloc(lplane * sizeof *logits), *ref = malloc(lplane * sizeof *ref);
    /* GPU: FP32 SGEMM, TF32, then the bf16 split modes (gemm.cu) */
    static const char *const who[] = {"nemoq-cpu", "nemoq-gpu-f32", "nemoq-gpu-tf32",
                                      "nemoq-gpu-bf16x3", "nemoq-gpu-bf16x3k", "nemoq-gpu-bf16x2"};
    static const nq_cuda_gemm_mode modes[] = {NQ_GEMM_F32, NQ_GEMM_F32, NQ_GEMM_F32,
                                              NQ_GEMM_BF16X3, NQ_GEMM_BF16X3K, NQ_GEMM_BF16X2};
    const nq_cuda_gemm_mode restore = nq_cuda_gemm_mode_get(gpu);
    for (int dev = 0; dev < 6; dev++) {
        nq_model_set_cuda(lm.model, dev ? gpu : NULL);
        if (dev) {
            nq_cuda_set_tf32(gpu, dev == 2);
            nq_cuda_set_gemm_mode(gpu, modes[dev]);
        }
        double best_bb = 1e30, best = 1e30;
        for (int rep = 0; rep < (dev ? 3 : 1); rep++) {
            double t0 = now();
            if (nq_run_layerwise(lm.model, ids, windows, ctx, x, NULL, "bench", &err) != 0)
                die("bench", &err);
            double t1 = now();
            for (int w = 0; w < windows; w++)
                if (nq_model_final(lm.model, x + w * plane, ctx, NULL, logits, &err) != 0)
                    die("bench", &err);
            double t2 = now();
            best_bb = t1 - t0 < best_bb ? t1 - t0 : best_bb;
            best = t2 - t0 < best ? t2 - t0 : best;
        }
        /* the last window's logits: FP32 GPU is the reference of the others */
        char extra[160] = "";
        if (dev == 1)
            memcpy(ref, logits, lplane * sizeof *ref);
        if (dev >= 2)
            snprintf(extra, sizeof extra, "; logits max rel diff vs FP32 %.3g",
                     max_rel_diff(logits, ref, lplane));
        printf("BENCH[bundled-%d-backbone %s] nemoq %s blocks (%d windows x %d tokens, no "
               "lm_head): %.3f s, %.0f tokens/s\n", ctx, who[dev], who[dev], windows, ctx, best_bb,
               windows * (double)ctx / best_bb);
        printf("BENCH[bundled-%d-logits %s] nemoq %s forward (%d windows x %d tokens, logits "
               "copied to the host): %.3f s, %.0f tokens/s%s%s\n", ctx, who[dev], who[dev], windows,
               ctx, best, windows * (double)ctx / best, dev ? " (best of 3)" : "", extra);
    }
    nq_cuda_set_tf32(gpu, false);
    nq_cuda_set_gemm_mode(gpu, restore);
    free(x);
    free(logits);
    free(ref);
    nq_loaded_close(&lm);
}

/* Bytes of the tensors of two checkpoints that differ, and whether they
 * hold the same tensors. */
static size_t checkpoint_diff(const char *a_dir, const char *b_dir, size_t *total, bool *same)
{
    nq_error err = {0};
    nq_checkpoint *a = nq_checkpoint_open(a_dir, &err), *b = a ? nq_checkpoint_open(b_dir, &err) : NULL;
    if (!a || !b)
        die("checkpoint diff", &err);
    size_t d = 0;
    *total = 0;
    *same = nq_checkpoint_count(a) == nq_checkpoint_count(b);
    for (size_t i = 0; *same && i < nq_checkpoint_count(a); i++) {
        const nq_tensor *ta = nq_checkpoint_tensor(a, i), *tb = nq_checkpoint_find(b, ta->name);
        if (!tb || tb->nbytes != ta->nbytes) {
            *same = false;
            break;
        }
        d += count_diff(ta->data, tb->data, ta->nbytes);
        *total += ta->nbytes;
    }
    nq_checkpoint_close(a);
    nq_checkpoint_close(b);
    return d;
}

/* Where the calibration activations live (export/calibrated_acts.c, acts_open):
 * resident on the GPU from the embedding to the last layer, or on the host
 * and streamed through the GPU a chunk at a time when they do not fit
 * (forced here with NEMOQ_CUDA_ACT_MIB=0).  Chunks of 512 rows (2 of the 8
 * calibration sequences) so that both paths run several chunks per layer.
 * The same arithmetic either way: byte-identical checkpoints, for plain
 * NVFP4 (one copy of the activations), GPTQ INT4 (the layer's input kept
 * for the quantized propagation: device save/restore vs host memcpy) and
 * NVFP4 with the act-mse search (the --optimize pass with host hooks
 * rerunning the layer on the resident input).  The summary's host
 * activation bytes say which placement ran. */
static void test_act_placement(char *calib)
{
    nq_error err = {0};
    nq_model_config cfg;
    if (nq_model_config_load(path("models/tiny-nemotron-h/config.json"), &cfg, &err) != 0)
        die("config", &err);
    nq_cuda_set_chunk_rows(gpu, 512);
    static const char *const names[3] = {"nvfp4", "gptq int4", "nvfp4 act-mse"};
    for (int c = 0; c < 3; c++) {
        char res_dir[4200], str_dir[4200];
        snprintf(res_dir, sizeof res_dir, "%s/place-res-%d", tmp_dir, c);
        snprintf(str_dir, sizeof str_dir, "%s/place-str-%d", tmp_dir, c);
        quantize_act_scale = c == 2 ? NQ_ACT_SCALE_MSE : NQ_ACT_SCALE_AMAX;
        unsetenv("NEMOQ_CUDA_ACT_MIB");
        double t0 = now();
        quantize(res_dir, gpu, calib, c == 1);
        nq_quantize_summary sr = last_sum;
        double t1 = now();
        setenv("NEMOQ_CUDA_ACT_MIB", "0", 1);
        quantize(str_dir, gpu, calib, c == 1);
        nq_quantize_summary ss = last_sum;
        double t2 = now();
        unsetenv("NEMOQ_CUDA_ACT_MIB");
        quantize_act_scale = NQ_ACT_SCALE_AMAX;
        uint64_t one = (uint64_t)sr.calib_samples * sr.calib_len * cfg.hidden_size * 4;
        uint64_t want = one * (c == 0 ? 1 : 2);
        size_t total = 0;
        bool same = false;
        size_t d = checkpoint_diff(res_dir, str_dir, &total, &same);
        check(same && d == 0 && total > 0, "calibration activations resident on the GPU vs "
              "streamed through it in chunks of 512 rows (%s): byte-identical checkpoints (%zu of "
              "%zu bytes differ); %.2f s vs %.2f s", names[c], d, total, t1 - t0, t2 - t1);
        /* the summary's host bytes: the statistics plus, streamed, the
         * activations (twice when the layer's input is kept) */
        check(ss.peak_activation_bytes == sr.peak_activation_bytes + want,
              "%s: host memory for activations and statistics %llu bytes streamed, %llu "
              "resident: %llu more = %llu x %s (the activations stay on the GPU)", names[c],
              (unsigned long long)ss.peak_activation_bytes,
              (unsigned long long)sr.peak_activation_bytes,
              (unsigned long long)(ss.peak_activation_bytes - sr.peak_activation_bytes),
              (unsigned long long)one, c == 0 ? "1" : "2");
    }
    nq_cuda_set_chunk_rows(gpu, 0);
}

/* GPTQ INT4 with the calibration forward, the Hessians and GPTQ itself on
 * each device: KL against the float model on windows 600..615 of the text
 * (the 8 evenly spaced calibration windows cover under 1% of it) must agree
 * within noise; the GPU twice gives the same bytes. */
static void test_gptq(char *calib, const int32_t *ids, size_t n)
{
    char cpu_dir[4200], gpu_dir[4200], gpu2_dir[4200];
    snprintf(cpu_dir, sizeof cpu_dir, "%s/gptq-cpu", tmp_dir);
    snprintf(gpu_dir, sizeof gpu_dir, "%s/gptq-gpu", tmp_dir);
    snprintf(gpu2_dir, sizeof gpu2_dir, "%s/gptq-gpu2", tmp_dir);
    double t0 = now();
    quantize(cpu_dir, NULL, calib, true);
    double t1 = now();
    quantize(gpu_dir, gpu, calib, true);
    double t2 = now();
    quantize(gpu2_dir, gpu, calib, true);
    size_t total = 0, total2 = 0;
    bool same = false, same2 = false;
    size_t d_cpu = checkpoint_diff(cpu_dir, gpu_dir, &total, &same);
    size_t d_run = checkpoint_diff(gpu_dir, gpu2_dir, &total2, &same2);
    check(same2 && d_run == 0, "gptq int4 on the GPU twice: byte-identical checkpoints (%zu of "
          "%zu bytes differ)", d_run, total2);
    printf("INFO gptq int4 checkpoint GPU vs CPU: %zu of %zu bytes differ (same tensors: %s); "
           "calibration+GPTQ+export CPU %.2f s, GPU %.2f s\n", d_cpu, total, same ? "yes" : "no",
           t1 - t0, t2 - t1);
    nq_error err = {0};
    nq_loaded_model base = {0}, qc = {0}, qg = {0};
    if (nq_loaded_open(path("models/tiny-nemotron-h"), 0, &base, &err) != 0 ||
        nq_loaded_open(cpu_dir, 0, &qc, &err) != 0 || nq_loaded_open(gpu_dir, 0, &qg, &err) != 0)
        die("gptq", &err);
    /* held out: windows past the calibration ones */
    nq_eval_options opt = {.ctx = 256, .windows = 16, .skip = 600};
    nq_eval_result rc, rg;
    if (nq_eval_perplexity(qc.model, base.model, ids, n, &opt, &rc, &err) != 0 ||
        nq_eval_perplexity(qg.model, base.model, ids, n, &opt, &rg, &err) != 0)
        die("gptq eval", &err);
    double rel = fabs(rg.kl / rc.kl - 1.0);
    check(rel <= 0.05, "gptq int4: held-out KL with GPU calibration %.5f vs CPU %.5f (rel %.3f, "
          "tol 0.05); perplexity %.4f vs %.4f", rg.kl, rc.kl, rel, rg.ppl, rc.ppl);
    nq_loaded_close(&base);
    nq_loaded_close(&qc);
    nq_loaded_close(&qg);
}

/* --bench-backbone MODEL IDS CTX WINDOWS: the blocks (no lm_head) of a
 * model, e.g. the Nano-width checkpoint, over WINDOWS windows of CTX
 * tokens of the int32 ids file, on the GPU, three passes: time per pass and
 * peak GPU memory.  By default the weights are streamed from the checkpoint
 * every pass (read, widened to f32 on the host, uploaded: what a model too
 * large for the GPU costs); NEMOQ_BENCH_RESIDENT=1 keeps them on the host
 * and the device after the first pass (as transformers holds its model on
 * the GPU), so later passes time the computation.  NEMOQ_BENCH_TAG names
 * the case in the BENCH lines.  Not a test. */
static int bench_backbone(char **argv)
{
    const char *dir = argv[2], *ids_path = argv[3];
    int ctx = atoi(argv[4]), windows = atoi(argv[5]);
    const char *tag = getenv("NEMOQ_BENCH_TAG") ? getenv("NEMOQ_BENCH_TAG") : "model";
    bool resident = getenv("NEMOQ_BENCH_RESIDENT") && atoi(getenv("NEMOQ_BENCH_RESIDENT"));
    nq_error err = {0};
    size_t len = 0;
    int32_t *ids = (int32_t *)nq_read_file(ids_path, &len, &err);
    if (!ids || len < (size_t)ctx * windows * sizeof *ids) {
        fprintf(stderr, "%s: too few ids\n", ids_path);
        return 1;
    }
    if (resident)
        setenv("NEMOQ_CUDA_WEIGHT_CACHE_MIB", "65536", 1);
    char desc[384];
    nq_loaded_model lm = {0};
    if (nq_device_open("cuda", &gpu, desc, sizeof desc, &err) != 0 ||
        nq_loaded_open(dir, 0, &lm, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    nq_model_set_cuda(lm.model, gpu);
    if (resident)
        nq_model_set_keep_weights(lm.model, true);
    size_t plane = (size_t)ctx * lm.cfg.hidden_size;
    float *x = malloc((size_t)windows * plane * sizeof *x);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        if (nq_run_layerwise(lm.model, ids, windows, ctx, x, NULL, "bench", &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        double t = now() - t0;
        char label[32];
        snprintf(label, sizeof label, "pass %d", rep + 1);
        nq_cuda_timing_report(gpu, label);
        printf("BENCH[%s-%d-backbone nemoq-gpu-%s%s] nemoq GPU backbone %s (%d layers %s, hidden "
               "%d): %d windows x %d tokens: %.3f s, %.0f tokens/s, %.3f s per layer (pass %d, "
               "%s)\n", tag, ctx, nq_cuda_gemm_mode_name(nq_cuda_gemm_mode_get(gpu)),
               resident && rep ? "-resident" : "", desc, lm.cfg.num_layers,
               lm.cfg.pattern, lm.cfg.hidden_size, windows, ctx, t, windows * (double)ctx / t,
               t / lm.cfg.num_layers, rep + 1,
               resident && rep ? "weights resident on the GPU"
                               : "weights streamed from the checkpoint included");
        fflush(stdout);
    }
    printf("peak GPU memory allocated by nemoq: %.2f GiB (resident activations %.2f GiB)\n",
           nq_cuda_peak_bytes(gpu) / 1073741824.0, windows * plane * 4 / 1073741824.0);
    fflush(stdout);
    free(x);
    free(ids);
    nq_loaded_close(&lm);
    nq_cuda_close(gpu);
    return 0;
}

/* --bench-gptq-moe CPU_EXPERTS: GPTQ (NVFP4, max scales) of the 128
 * routed experts of one Nano-width MoE layer (up_proj [1856, 2688],
 * down_proj [2688, 1856], random weights, one random dense Hessian per
 * shape): all 128 on the GPU one module per call (as quantize calls it)
 * and as one batch (nq_gptq_nvfp4_batch_on: up to 8 modules on their own
 * streams), CPU_EXPERTS of them on the CPU with every core (the CPU total
 * is that time x 128 / CPU_EXPERTS).  Not a test. */
static int bench_gptq_moe(char **argv)
{
    int cpu_experts = atoi(argv[2]);
    const int E = 128, inter = 1856, hidden = 2688;
    nq_error err = {0};
    char desc[384];
    if (nq_device_open("cuda", &gpu, desc, sizeof desc, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    double t0 = now();
    double *h_up = random_hessian(hidden, 2 * hidden, 0), *h_down = random_hessian(inter, 2 * inter, 0);
    float *w_up = random_weight(inter, hidden), *w_down = random_weight(hidden, inter);
    printf("bench gptq: Hessians and weights generated in %.1f s\n", now() - t0);
    fflush(stdout);
    size_t pb = (size_t)inter * hidden / 2, bb = (size_t)inter * hidden / 16;
    uint8_t *pc = malloc(pb), *bc = malloc(bb);
    nq_gptq_item *it = calloc(2 * E, sizeof *it);
    for (int k = 0; k < 2 * E; k++) {
        int m = k % 2;
        it[k] = (nq_gptq_item){.w = m ? w_down : w_up, .rows = m ? hidden : inter,
                               .cols = m ? inter : hidden, .hessian = m ? h_down : h_up};
        it[k].packed = malloc(pb);
        it[k].block_scales = malloc(bb);
    }
    float gs;
    nq_gptq_stats st;
    size_t diff = 0, bytes = 0, bdiff = 0;
    /* warm-up: cuSOLVER's loading, the streams' handles and pinned staging
     * (created once per process) are not timed */
    double tw = now();
    if (nq_gptq_nvfp4_batch_on(gpu, it, 16, false, 0.01, 0, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("bench gptq: warm-up (16 modules, first use) %.2f s\n", now() - tw);
    fflush(stdout);
    double t = now();
    for (int k = 0; k < 2 * E; k++)
        if (nq_gptq_nvfp4_on(gpu, it[k].w, it[k].rows, it[k].cols, it[k].hessian, false, 0.01, 0,
                             0.0f, it[k].packed, it[k].block_scales, &gs, &st, &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
    double tg = now() - t;
    size_t peak1 = nq_cuda_peak_bytes(gpu);
    uint8_t *p1 = malloc(pb), *b1 = malloc(bb); /* the last down_proj, one per call */
    memcpy(p1, it[2 * E - 1].packed, pb);
    memcpy(b1, it[2 * E - 1].block_scales, bb);
    uint8_t *p0 = malloc(pb), *b0 = malloc(bb); /* the first up_proj */
    memcpy(p0, it[0].packed, pb);
    memcpy(b0, it[0].block_scales, bb);
    t = now();
    if (nq_gptq_nvfp4_batch_on(gpu, it, 2 * E, false, 0.01, 0, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    double tb = now() - t;
    bdiff = count_diff(p1, it[2 * E - 1].packed, pb) + count_diff(b1, it[2 * E - 1].block_scales, bb) +
            count_diff(p0, it[0].packed, pb) + count_diff(b0, it[0].block_scales, bb);
    for (int k = 2; k < 2 * E; k++) /* same weight and Hessian: same bytes */
        bdiff += count_diff(it[k].packed, it[k % 2].packed, pb) +
                 count_diff(it[k].block_scales, it[k % 2].block_scales, bb);
    t = now();
    for (int e = 0; e < cpu_experts; e++)
        for (int m = 0; m < 2; m++) {
            const float *w = m ? w_down : w_up;
            int64_t R = m ? hidden : inter, C = m ? inter : hidden;
            if (nq_gptq_nvfp4_on(NULL, w, R, C, m ? h_down : h_up, false, 0.01, 0, 0.0f, pc, bc,
                                 &gs, &st, &err) != 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
        }
    double tc = now() - t;
    /* pc, bc hold the CPU's down_proj */
    diff += count_diff(pc, it[1].packed, pb) + count_diff(bc, it[1].block_scales, bb);
    bytes += pb + bb;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("BENCH gptq nvfp4, one Nano-width MoE layer (128 experts x up [1856 x 2688] + down "
           "[2688 x 1856]) on %s: GPU one module per call %.2f s (%.1f ms per module, peak GPU "
           "memory allocated by nemoq %.2f GiB); GPU batched %.2f s (%.1f ms per module, peak "
           "%.2f GiB), %zu bytes differ from the per-call results; CPU (%d threads) %.2f s for %d "
           "experts = %.1f s per expert, %.0f s for 128 extrapolated; GPU batched %.0fx faster "
           "than the CPU; peak host RSS %.2f GiB; down_proj GPU vs CPU: %zu of %zu bytes differ\n",
           desc, tg, 1000.0 * tg / (2 * E), peak1 / 1073741824.0, tb, 1000.0 * tb / (2 * E),
           nq_cuda_peak_bytes(gpu) / 1073741824.0, bdiff, nq_default_threads(), tc, cpu_experts,
           tc / cpu_experts, tc / cpu_experts * E, tc / cpu_experts * E / tb,
           ru.ru_maxrss / 1048576.0, diff, bytes);
    fflush(stdout);
    for (int k = 0; k < 2 * E; k++)
        free(it[k].packed), free(it[k].block_scales);
    free(it), free(pc), free(bc), free(p0), free(b0), free(p1), free(b1);
    nq_cuda_close(gpu);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--bench-gptq-moe") == 0)
        return bench_gptq_moe(argv);
    if (argc == 6 && strcmp(argv[1], "--bench-backbone") == 0)
        return bench_backbone(argv);
    if (argc != 3) {
        fprintf(stderr, "usage: gpu_test SOURCE_DIR TMP_DIR\n"
                        "       gpu_test --bench-backbone MODEL IDS CTX WINDOWS\n"
                        "       gpu_test --bench-gptq-moe CPU_EXPERTS\n");
        return 2;
    }
    src_dir = argv[1];
    tmp_dir = argv[2];
    nq_error err = {0};
    char desc[384];
    if (nq_device_open("cuda", &gpu, desc, sizeof desc, &err) != 0)
        die("device", &err);
    printf("device: %s, Linear GEMMs %s\n", desc, nq_cuda_gemm_mode_name(nq_cuda_gemm_mode_get(gpu)));

    test_router_gpu(gpu);
    test_gemm_modes_gpu(gpu);
    test_fixture_logits("models/tiny-nemotron-h", "tests/fixtures/tiny_ref.json",
                        "tests/fixtures/tiny_logits_4x64.f32");
    test_fixture_logits("tests/fixtures/dense", "tests/fixtures/dense/dense_ref.json",
                        "tests/fixtures/dense/dense_logits.f32");

    if (getenv("NEMOQ_GPU_QUICK")) { /* the logit checks only (=nano: and the Nano-width model) */
        if (strcmp(getenv("NEMOQ_GPU_QUICK"), "nano") == 0)
            test_nano_width_gpu(gpu, src_dir);
        nq_cuda_close(gpu);
        printf("%d passed, %d failed\n", passed, failed);
        return failed ? 1 : 0;
    }
    size_t n = 0;
    int32_t *ids = tokens("models/tiny-nemotron-h", "tests/fixtures/calib.txt", &n);
    test_perplexity(path("models/tiny-nemotron-h"), "bundled model", ids, n, 32, 256);

    char calib[4200];
    snprintf(calib, sizeof calib, "%s", path("tests/fixtures/calib.txt"));
    test_calibrated_checkpoints(calib, false);
    test_calibrated_checkpoints(calib, true);
    char qdir[4200];
    snprintf(qdir, sizeof qdir, "%s/q-cpu", tmp_dir);
    test_perplexity(qdir, "calibrated nvfp4 (W4A4 + FP8 KV emulated)", ids, n, 16, 256);
    test_device_stats(ids);
    test_gptq_kernels();
    test_gptq(calib, ids, n);
    test_act_placement(calib);
    if (!getenv("NEMOQ_GPU_SKIP_NANO"))
        test_nano_width_gpu(gpu, src_dir);
    bench_forward(ids, n, 64, 256);
    bench_forward(ids, n, 32, 2048);
    printf("peak GPU memory allocated by nemoq: %.1f MiB\n", nq_cuda_peak_bytes(gpu) / 1048576.0);
    free(ids);
    nq_cuda_close(gpu);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
