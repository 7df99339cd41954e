#include "nanow/nano_width_fixture.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/parallel.h"

int nq_nanow_fixture_checksum(void *ctx, const nq_nanow_spec *s, uint64_t sum, nq_error *err)
{
    nq_nanow_fixture *f = ctx;
    json_t *c = json_object_get(json_object_get(f->ref, "checksums"), s->name);
    if (!json_is_string(c))
        return nq_fail(err, "%s: no checksum in ref.json", s->name);
    uint64_t want = strtoull(json_string_value(c), NULL, 10);
    f->checked++;
    if (want != sum) {
        f->mismatched++;
        return nq_fail(err, "%s: generated checksum %llu, the Python generator's %llu", s->name,
                       (unsigned long long)sum, (unsigned long long)want);
    }
    return 0;
}

int nq_nanow_fixture_open(nq_nanow_fixture *f, const char *src_dir, bool check_checksums,
                          nq_error *err)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s/tests/fixtures/nano_width", src_dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", f->dir);
    if (nq_model_config_load(path, &f->cfg, err) != 0)
        return -1;
    f->specs = nq_nanow_specs(&f->cfg, &f->nspecs, err);
    if (!f->specs)
        return -1;
    snprintf(path, sizeof path, "%s/ref.json", f->dir);
    json_error_t jerr;
    f->ref = json_load_file(path, 0, &jerr);
    if (!f->ref)
        return nq_fail(err, "ref.json: %s", jerr.text);
    f->src = (nq_nanow_source){.specs = f->specs, .count = f->nspecs, .seed = NQ_NANOW_SEED,
                               .threads = nq_default_threads(),
                               .on_tensor = check_checksums ? nq_nanow_fixture_checksum : NULL,
                               .ctx = f};
    f->m = nq_model_open(NULL, &f->cfg, err);
    if (!f->m)
        return -1;
    nq_model_set_weights(f->m, (nq_weight_provider){.fetch = nq_nanow_fetch, .ctx = &f->src});
    nq_recipe_options ro = {.preset = "int4"};
    if (nq_plan_build(&f->cfg, NULL, &ro, &f->plan, err) != 0) {
        memset(&f->plan, 0, sizeof f->plan);
        return -1;
    }
    return 0;
}

void nq_nanow_fixture_close(nq_nanow_fixture *f)
{
    nq_plan_free(&f->plan);
    nq_model_close(f->m);
    json_decref(f->ref);
    free(f->specs);
    memset(f, 0, sizeof *f);
}

int32_t *nq_nanow_fixture_seq(const nq_nanow_fixture *f, int seq, int *n)
{
    json_t *a = json_array_get(json_object_get(f->ref, "seqs"), (size_t)seq);
    *n = (int)json_array_size(a);
    if (!a)
        return NULL;
    int32_t *ids = malloc((size_t)*n * sizeof *ids);
    for (int t = 0; ids && t < *n; t++)
        ids[t] = (int32_t)json_integer_value(json_array_get(a, (size_t)t));
    return ids;
}

float *nq_nanow_fixture_f32(const nq_nanow_fixture *f, const char *name, size_t count,
                            nq_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    size_t len = 0;
    float *b = (float *)nq_read_file(path, &len, err);
    if (b && len != count * sizeof(float)) {
        free(b);
        nq_fail(err, "%s: %zu bytes, expected %zu float32 values", path, len, count);
        return NULL;
    }
    return b;
}

double nq_nanow_max_rel(const float *a, const float *ref, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double scale = fabs((double)ref[i]) > 1.0 ? fabs((double)ref[i]) : 1.0;
        double d = fabs((double)a[i] - ref[i]) / scale;
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static int observe_linear(void *ctx, const nq_linear_input *in, nq_error *err)
{
    nq_nanow_observer *o = ctx;
    return o->calib.linear_input(o->calib.ctx, in, err);
}

static int observe_kv(void *ctx, const nq_kv_output *kv, nq_error *err)
{
    nq_nanow_observer *o = ctx;
    return o->calib.kv_output(o->calib.ctx, kv, err);
}

static int observe_routing(void *ctx, const nq_routing *r, nq_error *err)
{
    nq_nanow_observer *o = ctx;
    if (o->routed + r->tokens > o->cap)
        return nq_fail(err, "routing: more tokens than the sequence");
    memcpy(o->experts + (size_t)o->routed * r->top_k, r->experts,
           (size_t)r->tokens * r->top_k * sizeof *o->experts);
    o->routed += r->tokens;
    return 0;
}

void nq_nanow_observe(nq_nanow_fixture *f, nq_nanow_observer *o, int tokens)
{
    memset(o, 0, sizeof *o);
    o->stats.plan = &f->plan;
    o->calib = nq_calib_hooks(&o->stats);
    o->cap = tokens;
    o->top_k = f->cfg.num_experts_per_tok;
    o->experts = malloc((size_t)tokens * o->top_k * sizeof *o->experts);
    nq_forward_hooks h = {.linear_input = observe_linear, .kv_output = observe_kv,
                          .routing = observe_routing, .ctx = o};
    nq_model_set_hooks(f->m, &h);
}

void nq_nanow_unobserve(nq_nanow_fixture *f, nq_nanow_observer *o)
{
    nq_model_set_hooks(f->m, NULL);
    nq_calib_stats_reset(&o->stats);
    free(o->experts);
    o->experts = NULL;
}
