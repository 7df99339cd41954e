/* The Nano-width reference model (tests/test_nano_width.c's, Nemotron 3
 * Nano's widths and routing, pattern M*E, weights generated from a seed) on
 * the GPU against transformers' outputs in tests/fixtures/nano_width (see
 * its PROVENANCE.md), with the CPU test's tolerances: logits within 2e-3
 * (max |d| / max(1, |ref|)), hidden states within 1e-4, the same 6 experts
 * for every token, calibration amax within 1e-4 relative.  And the device
 * router against model/moe.c's nq_moe_select on random logits, with and
 * without group-limited routing. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "gpu_check.h"
#include "model/config.h"
#include "model/forward.h"
#include "model/layers.h"
#include "nanow/nano_width_fixture.h"
#include "recipe/plan.h"

#define LOGIT_TOL 2e-3
#define HIDDEN_TOL 1e-4
#define AMAX_TOL 1e-4

typedef nq_nanow_observer observer;

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Worst amax error over what the reference recorded for blocks < upto;
 * *routing_ok: the same expert set for every token; *missing: modules
 * without statistics or with another row count. */
static double compare_stats(json_t *st, observer *o, int upto, int tokens, bool *routing_ok,
                            int *missing)
{
    double worst = 0.0;
    const char *key;
    json_t *v;
    *routing_ok = true;
    json_object_foreach(st, key, v) {
        int layer = -1;
        sscanf(key, "backbone.layers.%d.", &layer);
        if (layer < 0 || layer >= upto)
            continue;
        const char *leaf = strrchr(key, '.') + 1;
        if (!strcmp(leaf, "k_amax") || !strcmp(leaf, "v_amax")) {
            double mine = leaf[0] == 'k' ? o->stats.k_amax : o->stats.v_amax;
            double e = o->stats.has_kv ? fabs(mine / json_real_value(v) - 1.0) : INFINITY;
            worst = e > worst ? e : worst;
        } else if (!strcmp(leaf, "gate")) {
            json_t *rows = json_object_get(v, "experts");
            if (o->routed != tokens || (int)json_array_size(rows) != tokens) {
                *routing_ok = false;
                continue;
            }
            for (int t = 0; t < tokens; t++) {
                int32_t mine[32];
                memcpy(mine, o->experts + (size_t)t * o->top_k, (size_t)o->top_k * sizeof *mine);
                qsort(mine, (size_t)o->top_k, sizeof *mine, cmp_i32);
                for (int k = 0; k < o->top_k; k++)
                    if (mine[k] != json_integer_value(json_array_get(json_array_get(rows, t), k)))
                        *routing_ok = false;
            }
        } else {
            json_t *items = v;
            bool experts = !strcmp(leaf, "experts");
            const char *ek;
            json_t *ev;
            json_t *one = json_object();
            if (!experts) {
                json_object_set(one, "", v);
                items = one;
            }
            json_object_foreach(items, ek, ev) {
                for (int part = 0; part < (experts ? 2 : 1); part++) {
                    char name[256];
                    double ref;
                    if (experts) {
                        snprintf(name, sizeof name, "%s.%s.%s", key, ek, part ? "down_proj" : "up_proj");
                        ref = json_real_value(json_object_get(ev, part ? "down_amax" : "up_amax"));
                    } else {
                        snprintf(name, sizeof name, "%s", key);
                        ref = json_real_value(json_object_get(ev, "amax"));
                    }
                    nq_linear_stats *ls = nq_calib_find(&o->stats, name);
                    if (!ls || (long long)ls->rows != json_integer_value(json_object_get(ev, "rows"))) {
                        (*missing)++;
                        continue;
                    }
                    double e = fabs(ls->amax / ref - 1.0);
                    worst = e > worst ? e : worst;
                }
            }
            json_decref(one);
        }
    }
    return worst;
}

static float *read_f32(const nq_nanow_fixture *f, const char *name, size_t count)
{
    nq_error err = {0};
    float *b = nq_nanow_fixture_f32(f, name, count, &err);
    if (!b)
        printf("FAIL %s\n", err.msg);
    return b;
}

void test_nano_width_gpu(nq_cuda *gpu, const char *src_dir)
{
    nq_error err = {0};
    nq_nanow_fixture f;
    if (nq_nanow_fixture_open(&f, src_dir, false, &err) != 0) {
        check(false, "nano width: %s", err.msg);
        nq_nanow_fixture_close(&f);
        return;
    }
    nq_model_config cfg = f.cfg;
    json_t *ref = f.ref;
    nq_model *m = f.m;
    nq_model_set_keep_weights(m, true); /* generated once for every pass */
    nq_model_set_cuda(m, gpu);
    int L = cfg.num_layers, H = cfg.hidden_size, V = cfg.vocab_size;
    json_t *ls = json_object_get(ref, "logit_seqs");
    int short_seq = (int)json_integer_value(json_object_get(ref, "short_seq"));
    size_t total = 0;
    for (size_t i = 0; i < json_array_size(ls); i++) {
        int len;
        free(nq_nanow_fixture_seq(&f, (int)json_integer_value(json_array_get(ls, i)), &len));
        total += (size_t)len * V;
    }
    float *lref = read_f32(&f, "logits.f32", total);
    size_t off = 0;
    for (size_t i = 0; lref && i < json_array_size(ls); i++) {
        int s = (int)json_integer_value(json_array_get(ls, i)), n;
        int32_t *ids = nq_nanow_fixture_seq(&f, s, &n);
        float *logits = malloc((size_t)n * V * sizeof *logits);
        float *again = malloc((size_t)n * V * sizeof *again);
        float *hid = malloc((size_t)(L + 1) * n * H * sizeof *hid);
        observer o;
        nq_nanow_observe(&f, &o, n);
        int rc = nq_model_forward(m, ids, n, logits, hid, &err);
        nq_model_set_hooks(m, NULL);
        rc = rc ? rc : nq_model_forward(m, ids, n, again, NULL, &err);
        if (rc != 0) {
            check(false, "nano width seq %d: %s", s, err.msg);
        } else {
            double d = nq_nanow_max_rel(logits, lref + off, (size_t)n * V);
            check(d <= LOGIT_TOL, "nano width seq %d (%d tokens, GPU): logits vs transformers max "
                  "rel err %.3g (tol %g)", s, n, d, LOGIT_TOL);
            check(!memcmp(logits, again, (size_t)n * V * sizeof *logits),
                  "nano width seq %d: GPU logits byte-identical with and without hooks", s);
            bool routing_ok;
            int missing = 0;
            double a = compare_stats(json_array_get(json_object_get(ref, "stats"), (size_t)s), &o,
                                     L, n, &routing_ok, &missing);
            check(routing_ok, "nano width seq %d: GPU routing = transformers' for all %d tokens", s,
                  n);
            check(missing == 0 && a <= AMAX_TOL, "nano width seq %d: amax of every module, expert "
                  "and K/V within %.3g relative of transformers (tol %g; %d missing)", s, a,
                  AMAX_TOL, missing);
            if (s == short_seq) {
                float *href = read_f32(&f, "hidden_short.f32", (size_t)(L + 1) * n * H);
                double w = href ? nq_nanow_max_rel(hid, href, (size_t)(L + 1) * n * H) : INFINITY;
                check(w <= HIDDEN_TOL, "nano width seq %d: all %d hidden states max rel err %.3g "
                      "(tol %g)", s, L + 1, w, HIDDEN_TOL);
                free(href);
            }
        }
        nq_nanow_unobserve(&f, &o);
        free(ids);
        free(logits);
        free(again);
        free(hid);
        off += (size_t)n * V;
    }
    /* 200 tokens: two scan tiles of the SSD chunk size, several attention
     * query tiles */
    int s = (int)json_integer_value(json_object_get(ref, "long_seq"));
    int entry = (int)json_integer_value(json_object_get(ref, "long_hidden_entry")), n;
    int32_t *ids = nq_nanow_fixture_seq(&f, s, &n);
    float *href = read_f32(&f, "hidden_long_l2.f32", (size_t)n * H);
    float *x = malloc((size_t)n * H * sizeof *x);
    int rc = href && nq_model_embed(m, ids, n, x, &err) == 0 ? 0 : -1;
    for (int l = 0; rc == 0 && l < entry; l++)
        rc = nq_model_block(m, l, x, n, NULL, &err);
    double d = rc == 0 ? nq_nanow_max_rel(x, href, (size_t)n * H) : INFINITY;
    check(rc == 0 && d <= HIDDEN_TOL, "nano width seq %d (%d tokens, GPU): residual stream after "
          "blocks M and * max rel err %.3g (tol %g)%s%s", s, n, d, HIDDEN_TOL, rc ? ": " : "",
          rc ? err.msg : "");
    printf("  nano width: %.2f G weight values generated; peak GPU memory %.2f GiB\n",
           f.src.generated / 1e9, nq_cuda_peak_bytes(gpu) / 1073741824.0);
    free(x);
    free(href);
    free(ids);
    free(lref);
    nq_nanow_fixture_close(&f);
}

/* xorshift64*: reproducible test logits */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

void test_router_gpu(nq_cuda *gpu)
{
    static const struct { int E, K, ng, tg, norm; } cases[] = {
        {16, 4, 1, 1, 1},   /* the bundled model */
        {128, 6, 1, 1, 1},  /* Nemotron 3 Nano */
        {64, 6, 8, 4, 1},   /* group-limited routing */
        {256, 8, 8, 3, 0},  /* wide, no norm_topk_prob */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nq_model_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.n_routed_experts = cases[c].E;
        cfg.num_experts_per_tok = cases[c].K;
        cfg.n_group = cases[c].ng;
        cfg.topk_group = cases[c].tg;
        cfg.norm_topk_prob = cases[c].norm;
        cfg.routed_scaling_factor = 2.5f;
        int n = 20000, E = cases[c].E, K = cases[c].K;
        float *logits = malloc((size_t)n * E * sizeof *logits), *bias = malloc((size_t)E * sizeof *bias);
        int32_t *ge = malloc((size_t)n * K * sizeof *ge), *ce = malloc((size_t)n * K * sizeof *ce);
        float *gw = malloc((size_t)n * K * sizeof *gw), *cw = malloc((size_t)n * K * sizeof *cw);
        float *scores = malloc((size_t)E * sizeof *scores);
        for (size_t i = 0; i < (size_t)n * E; i++)
            logits[i] = (float)(uniform() * 8.0 - 4.0);
        /* some tokens with exactly tied logits (ties go to the lower index) */
        for (int t = 0; t < n; t += 97)
            for (int e = 0; e < E; e++)
                logits[(size_t)t * E + e] = (float)((e * 7) % 5);
        for (int e = 0; e < E; e++)
            bias[e] = (float)(uniform() * 0.2 - 0.1);
        nq_error err = {0};
        if (nq_cuda_moe_select(gpu, &cfg, logits, bias, n, ge, gw, &err) != 0) {
            check(false, "router: %s", err.msg);
            continue;
        }
        for (int t = 0; t < n; t++) {
            for (int e = 0; e < E; e++)
                scores[e] = 1.0f / (1.0f + expf(-logits[(size_t)t * E + e]));
            nq_moe_select(&cfg, scores, bias, ce + (size_t)t * K, cw + (size_t)t * K);
        }
        size_t bad = 0;
        double wmax = 0.0;
        for (size_t i = 0; i < (size_t)n * K; i++) {
            bad += ge[i] != ce[i];
            double r = fabs((double)gw[i] / cw[i] - 1.0);
            wmax = r > wmax ? r : wmax;
        }
        check(bad == 0 && wmax <= 1e-6, "router (%d experts, top-%d, %d groups keep %d%s): device "
              "choice = nq_moe_select for %d tokens (%zu differ), weights within %.2g relative "
              "(tol 1e-6)", E, K, cases[c].ng, cases[c].tg, cases[c].norm ? ", normalized" : "",
              n, bad, wmax);
        free(logits);
        free(bias);
        free(ge);
        free(ce);
        free(gw);
        free(cw);
        free(scores);
    }
}
