/* PEFT LoRA merging against PEFT's own merge_and_unload on the bundled
 * model (fixtures from tests/gen/gen_lora_reference.py: peft 0.21.2,
 * transformers 5.24, torch 2.15 CPU), PEFT's matching rules, and the
 * refusals.
 *
 * Per changed tensor the fixture has an FNV-1a 64 hash of PEFT's whole
 * tensor and its rows r % 8 == 0.  "exact" tensors must match the hash and
 * the rows bit for bit.  The others differ for a known reason, named in the
 * fixture's note, and must stay inside its bound:
 *   "ulp"             |nemoq - peft| <= 1 bf16 ulp of the larger (DoRA:
 *                     PEFT's f32 row norm sums in another order);
 *   "delta_rounding"  <= ulp(|dW|)/2 + ulp(max(|nemoq|, |peft|)): PEFT
 *                     rounds dW to bf16 before adding it (Embedding and
 *                     ParamWrapper paths), nemoq rounds once. */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "export/lora.h"
#include "export/quantize.h"
#include "formats/floatconv.h"
#include "io/adapter.h"
#include "io/safetensors.h"
#include "io/writer.h"

static const char *model_dir(void) { return nq_test_path("models/tiny-nemotron-h"); }

static uint64_t fnv1a64(const unsigned char *p, uint64_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* One bf16 ulp at |x| (normal range). */
static double ulp_bf16(double x)
{
    x = fabs(x);
    if (x < 1e-30)
        return ldexp(1.0, -133);
    int e;
    frexp(x, &e); /* x = m 2^e, m in [0.5, 1) */
    return ldexp(1.0, e - 1 - 7);
}

static int merge(const char *out, const nq_lora_spec *specs, size_t n, int threads,
                 nq_error *err)
{
    nq_quantize_options o = {.in_dir = model_dir(), .out_dir = out, .lora = specs, .nlora = n,
                             .threads = threads};
    nq_quantize_summary sum;
    return nq_merge(&o, &sum, err);
}

typedef struct result {
    size_t changed, exact_tensors, checked_elems, differing, over;
    double worst; /* in units of the bound */
} result;

/* Compares a merged output directory with a case's PEFT reference. */
static void compare_case(const char *out_dir, const char *case_name, result *res)
{
    char path[1024];
    snprintf(path, sizeof path, "tests/fixtures/lora/%s/reference.json", case_name);
    json_error_t je;
    json_t *ref = json_load_file(nq_test_path(path), 0, &je);
    assert_non_null(ref);
    snprintf(path, sizeof path, "tests/fixtures/lora/%s/reference.safetensors", case_name);
    nq_error err = {0};
    nq_checkpoint *rows = nq_checkpoint_open(nq_test_path(path), &err);
    nq_checkpoint *base = nq_checkpoint_open(model_dir(), &err);
    nq_checkpoint *got = nq_checkpoint_open(out_dir, &err);
    assert_non_null(rows);
    assert_non_null(base);
    assert_non_null(got);
    const char *bound = json_string_value(json_object_get(ref, "bound"));
    json_t *tensors = json_object_get(ref, "tensors");
    memset(res, 0, sizeof *res);
    assert_int_equal(nq_checkpoint_count(got), nq_checkpoint_count(base));
    for (size_t i = 0; i < nq_checkpoint_count(base); i++) {
        const nq_tensor *b = nq_checkpoint_tensor(base, i);
        const nq_tensor *g = nq_checkpoint_find(got, b->name);
        assert_non_null(g);
        assert_int_equal(g->dtype, b->dtype);
        assert_int_equal(g->nbytes, b->nbytes);
        json_t *meta = json_object_get(tensors, b->name);
        if (!meta) {
            if (memcmp(g->data, b->data, b->nbytes) != 0)
                fail_msg("%s: %s changed but PEFT left it alone", case_name, b->name);
            continue;
        }
        res->changed++;
        bool exact = json_is_true(json_object_get(meta, "exact"));
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64(g->data, g->nbytes));
        if (exact) {
            res->exact_tensors++;
            if (strcmp(hex, json_string_value(json_object_get(meta, "fnv1a64"))) != 0)
                fail_msg("%s: %s differs from PEFT's merge (hash)", case_name, b->name);
        }
        const nq_tensor *r = nq_checkpoint_find(rows, b->name);
        assert_non_null(r);
        assert_int_equal(b->dtype, NQ_BF16);
        int64_t cols = b->ndim == 2 ? b->shape[1] : 1;
        for (int64_t row = 0; row * 8 < (b->ndim == 2 ? b->shape[0] : (int64_t)b->numel); row++) {
            for (int64_t c = 0; c < cols; c++) {
                uint64_t gi = (uint64_t)(row * 8 * cols + c), ri = (uint64_t)(row * cols + c);
                if (b->ndim != 2)
                    gi = (uint64_t)row * 8, ri = (uint64_t)row;
                uint16_t gv, rv, bv;
                memcpy(&gv, g->data + 2 * gi, 2);
                memcpy(&bv, b->data + 2 * gi, 2);
                memcpy(&rv, r->data + 2 * ri, 2);
                res->checked_elems++;
                if (gv == rv)
                    continue;
                res->differing++;
                double n = nq_bf16_to_f32(gv), p = nq_bf16_to_f32(rv), w = nq_bf16_to_f32(bv);
                double lim = ulp_bf16(fmax(fabs(n), fabs(p)));
                if (!exact && strcmp(bound, "delta_rounding") == 0)
                    lim += ulp_bf16(2.0 * fabs(n - w)) / 2.0;
                double q = fabs(n - p) / lim;
                if (q > res->worst)
                    res->worst = q;
                if (exact || q > 1.0) {
                    res->over++;
                    if (res->over <= 3)
                        print_message("%s: %s[%lld, %lld]: nemoq %.9g, PEFT %.9g, base %.9g\n",
                                      case_name, b->name, (long long)(row * 8), (long long)c, n,
                                      p, w);
                }
            }
            if (b->ndim != 2)
                break;
        }
    }
    assert_int_equal(res->changed, json_object_size(tensors));
    print_message("%-18s %zu tensors changed (%zu bit-identical by hash); sampled rows: %zu of "
                  "%zu elements differ, worst %.2f of the bound (%s)\n",
                  case_name, res->changed, res->exact_tensors, res->differing, res->checked_elems,
                  res->worst, bound);
    assert_int_equal(res->over, 0);
    nq_checkpoint_close(rows);
    nq_checkpoint_close(base);
    nq_checkpoint_close(got);
    json_decref(ref);
}

static void run_case(const char *name, int threads)
{
    char *tmp = nq_test_tmpdir(name);
    char out[1024], dir[1024];
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(dir, sizeof dir, "tests/fixtures/lora/%s", name);
    nq_lora_spec spec = {.dir = nq_test_path(dir), .weight = 1.0};
    nq_error err = {0};
    if (merge(out, &spec, 1, threads, &err) != 0)
        fail_msg("%s: %s", name, err.msg);
    result res;
    compare_case(out, name, &res);
    nq_test_rmtree(tmp);
    free(tmp);
}

static void test_plain_backbone(void **s) { (void)s; run_case("plain_backbone", 1); }
static void test_rslora_native(void **s) { (void)s; run_case("rslora_native", 2); }
static void test_patterns_backbone(void **s) { (void)s; run_case("patterns_backbone", 1); }
static void test_dora_backbone(void **s) { (void)s; run_case("dora_backbone", 3); }
static void test_embed_native(void **s) { (void)s; run_case("embed_native", 1); }
static void test_experts_native(void **s) { (void)s; run_case("experts_native", 2); }
static void test_experts_backbone(void **s) { (void)s; run_case("experts_backbone", 1); }

/* A copy of a fixture adapter with its config edited by `edit`. */
static char *edited_copy(const char *tmp, const char *name, const char *tag,
                         void (*edit)(json_t *))
{
    char src[1024], dst[1024], p[1100];
    snprintf(src, sizeof src, "%s", nq_test_path("tests/fixtures/lora"));
    snprintf(dst, sizeof dst, "%s/%s", tmp, tag);
    mkdir(dst, 0755);
    snprintf(p, sizeof p, "%s/%s/adapter_model.safetensors", src, name);
    size_t len;
    unsigned char *w = nq_test_read_file(p, &len);
    assert_non_null(w);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dst);
    assert_int_equal(nq_test_write_file(p, w, len), 0);
    free(w);
    snprintf(p, sizeof p, "%s/%s/adapter_config.json", src, name);
    json_error_t je;
    json_t *c = json_load_file(p, 0, &je);
    assert_non_null(c);
    edit(c);
    snprintf(p, sizeof p, "%s/adapter_config.json", dst);
    assert_int_equal(json_dump_file(c, p, JSON_INDENT(1)), 0);
    json_decref(c);
    return strdup(dst);
}

static void set_fan_in_fan_out(json_t *c) { json_object_set_new(c, "fan_in_fan_out", json_true()); }

/* PEFT resets fan_in_fan_out to False on nn.Linear and merges untransposed */
static void test_fan_in_fan_out_ignored(void **s)
{
    (void)s;
    char *tmp = nq_test_tmpdir("lora_fifo");
    char *ad = edited_copy(tmp, "plain_backbone", "fifo", set_fan_in_fan_out);
    char out[1024];
    snprintf(out, sizeof out, "%s/out", tmp);
    nq_lora_spec spec = {.dir = ad, .weight = 1.0};
    nq_error err = {0};
    assert_int_equal(merge(out, &spec, 1, 1, &err), 0);
    result res;
    compare_case(out, "plain_backbone", &res);
    json_t *doc = nq_adapter_inspect(ad, model_dir(), &err);
    assert_non_null(doc);
    char *notes = json_dumps(json_object_get(doc, "notes"), 0);
    assert_non_null(strstr(notes, "fan_in_fan_out=true ignored"));
    assert_non_null(strstr(notes, "out_proj"));
    free(notes);
    json_decref(doc);
    free(ad);
    nq_test_rmtree(tmp);
    free(tmp);
}

/* Output bytes do not depend on the thread count; several adapters apply in
 * order and touch the union of their tensors. */
static void test_threads_and_stacking(void **s)
{
    (void)s;
    char *tmp = nq_test_tmpdir("lora_threads");
    char a[1024], b[1024], c[1024];
    snprintf(a, sizeof a, "%s/t1", tmp);
    snprintf(b, sizeof b, "%s/t4", tmp);
    snprintf(c, sizeof c, "%s/two", tmp);
    nq_lora_spec specs[2] = {
        {.dir = nq_test_path("tests/fixtures/lora/dora_backbone"), .weight = 1.0},
        {.dir = nq_test_path("tests/fixtures/lora/experts_native"), .weight = 0.5}};
    nq_error err = {0};
    assert_int_equal(merge(a, specs, 1, 1, &err), 0);
    assert_int_equal(merge(b, specs, 1, 4, &err), 0);
    size_t la, lb;
    char pa[1100], pb[1100];
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    unsigned char *x = nq_test_read_file(pa, &la), *y = nq_test_read_file(pb, &lb);
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(la, lb);
    assert_memory_equal(x, y, la);
    free(y);
    /* two adapters: DoRA's tensors as with DoRA alone; the experts' ones changed */
    assert_int_equal(merge(c, specs, 2, 2, &err), 0);
    nq_checkpoint *one = nq_checkpoint_open(a, &err), *two = nq_checkpoint_open(c, &err),
                  *base = nq_checkpoint_open(model_dir(), &err);
    assert_non_null(one);
    assert_non_null(two);
    const char *dora = "backbone.layers.3.mixer.q_proj.weight";
    const char *exp = "backbone.layers.1.mixer.experts.7.up_proj.weight";
    assert_memory_equal(nq_checkpoint_find(one, dora)->data, nq_checkpoint_find(two, dora)->data,
                        nq_checkpoint_find(one, dora)->nbytes);
    assert_memory_not_equal(nq_checkpoint_find(base, exp)->data,
                            nq_checkpoint_find(two, exp)->data,
                            nq_checkpoint_find(base, exp)->nbytes);
    /* the shared layer-4 down_proj experts take DoRA then nothing else;
     * layer-1 shared up_proj only the second adapter: W + 0.5 s B A */
    snprintf(pa, sizeof pa, "%s/config.json", c);
    json_error_t je;
    json_t *cfg = json_load_file(pa, 0, &je);
    json_t *rec = json_object_get(cfg, "nemoq_merged_adapters");
    assert_int_equal(json_array_size(rec), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rec, 1), "name")),
                        "experts_native");
    assert_true(json_real_value(json_object_get(json_array_get(rec, 1), "weight")) == 0.5);
    json_decref(cfg);
    nq_checkpoint_close(one);
    nq_checkpoint_close(two);
    nq_checkpoint_close(base);
    free(x);
    nq_test_rmtree(tmp);
    free(tmp);
}

/* Every refusal is one line, names the adapter and the problem, and leaves
 * no output directory behind. */
static void test_errors(void **s)
{
    (void)s;
    static const struct {
        const char *name, *expect;
    } cases[] = {
        {"err_conv1d", "(a convolution) is not supported"},
        {"err_lora_bias", "lora_bias on a Linear without a bias"},
        {"err_unmatched", "the checkpoint has no backbone.layers.3.mixer.qkv_proj.weight"},
        {"err_shape", "do not fit backbone.layers.3.mixer.q_proj.weight [256, 256]"},
        {"err_rank", "lora_A has 8 rows but r is 4 after rank_pattern"},
        {"err_not_targeted", "target_modules/layers_to_transform do not select"},
        {"err_layer", "target_modules/layers_to_transform do not select"},
        {"err_missing_a", "has no matching lora_A"},
        {"err_bin", "a pickle (nemoq never unpickles); convert it once with"},
    };
    char *tmp = nq_test_tmpdir("lora_err");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[1024], out[1024];
        snprintf(dir, sizeof dir, "tests/fixtures/lora/%s", cases[i].name);
        snprintf(out, sizeof out, "%s/%s", tmp, cases[i].name);
        nq_lora_spec spec = {.dir = nq_test_path(dir), .weight = 1.0};
        nq_error err = {0};
        assert_int_equal(merge(out, &spec, 1, 1, &err), -1);
        if (!strstr(err.msg, cases[i].expect))
            fail_msg("%s: got '%s'", cases[i].name, err.msg);
        assert_null(strchr(err.msg, '\n'));
        struct stat st;
        assert_int_not_equal(stat(out, &st), 0);
    }
    nq_test_rmtree(tmp);
    free(tmp);
}

static void set_base_model(json_t *c) { json_object_set_new(c, "base_model_name_or_path", json_string("OTHER")); }

/* base_model_name_or_path naming a local model of another shape is refused */
static void test_base_model_mismatch(void **s)
{
    (void)s;
    char *tmp = nq_test_tmpdir("lora_base");
    char other[1024], p[1100];
    snprintf(other, sizeof other, "%s/other", tmp);
    mkdir(other, 0755);
    snprintf(p, sizeof p, "%s/config.json", other);
    const char *cfg = "{\"model_type\": \"nemotron_h\", \"hidden_size\": 2688}\n";
    assert_int_equal(nq_test_write_file(p, cfg, strlen(cfg)), 0);
    char *ad = edited_copy(tmp, "rslora_native", "ad", set_base_model);
    /* point it at the other model by absolute path */
    snprintf(p, sizeof p, "%s/adapter_config.json", ad);
    json_error_t je;
    json_t *c = json_load_file(p, 0, &je);
    json_object_set_new(c, "base_model_name_or_path", json_string(other));
    json_dump_file(c, p, 0);
    json_decref(c);
    char out[1024];
    snprintf(out, sizeof out, "%s/out", tmp);
    nq_lora_spec spec = {.dir = ad, .weight = 1.0};
    nq_error err = {0};
    assert_int_equal(merge(out, &spec, 1, 1, &err), -1);
    assert_non_null(strstr(err.msg, "has hidden_size 2688 but the input has 256"));
    free(ad);
    nq_test_rmtree(tmp);
    free(tmp);
}

/* PEFT's rules, case by case (peft/tuners/tuners_utils.py, utils/other.py) */
static void test_rules(void **s)
{
    (void)s;
    nq_error err = {0};
    nq_adapter *a = nq_adapter_open(nq_test_path("tests/fixtures/lora/patterns_backbone"), &err);
    assert_non_null(a);
    int r;
    double alpha;
    /* rank_pattern {"q_proj": 8, "layers.0.mixer.in_proj": 2},
     * alpha_pattern {"k_proj": 32, "v_.*": 3}; r 4, alpha 8 */
    assert_int_equal(nq_adapter_rank_alpha(a, "backbone.layers.3.mixer.q_proj", &r, &alpha, &err), 0);
    assert_int_equal(r, 8);
    assert_true(alpha == 8.0);
    nq_adapter_rank_alpha(a, "backbone.layers.0.mixer.in_proj", &r, &alpha, &err);
    assert_int_equal(r, 2);
    nq_adapter_rank_alpha(a, "backbone.layers.10.mixer.in_proj", &r, &alpha, &err);
    assert_int_equal(r, 4); /* "(.*\.)?(layers.0.mixer.in_proj)$" needs the dot before */
    nq_adapter_rank_alpha(a, "backbone.layers.3.mixer.v_proj", &r, &alpha, &err);
    assert_true(alpha == 3.0);
    nq_adapter_rank_alpha(a, "backbone.layers.3.mixer.k_proj", &r, &alpha, &err);
    assert_true(alpha == 32.0);
    /* target_modules as a string: a full match */
    assert_int_equal(nq_adapter_selects(a, "backbone.layers.3.mixer.q_proj", &err), 1);
    assert_int_equal(nq_adapter_selects(a, "backbone.layers.3.mixer.o_proj", &err), 0);
    assert_int_equal(nq_adapter_selects(a, "backbone.layers.13.mixer.q_proj", &err), 0);
    assert_int_equal(nq_regex_fullmatch("q_proj", "x.q_proj", &err), 0);
    assert_int_equal(nq_regex_fullmatch(".*q_proj", "x.q_proj", &err), 1);
    assert_int_equal(nq_regex_fullmatch("(", "x", &err), -1);
    nq_adapter_close(a);
    /* a list: exact name or ".name" suffix, then layers_to_transform */
    a = nq_adapter_open(nq_test_path("tests/fixtures/lora/plain_backbone"), &err);
    assert_non_null(a);
    assert_int_equal(nq_adapter_selects(a, "backbone.layers.3.mixer.q_proj", &err), 1);
    assert_int_equal(nq_adapter_selects(a, "backbone.layers.2.mixer.in_proj", &err), 0);
    assert_int_equal(nq_adapter_selects(a, "backbone.layers.1.mixer.experts.3.up_proj", &err), 1);
    assert_int_equal(nq_adapter_selects(a, "backbone.layers.3.mixer.xq_proj", &err), 0);
    assert_int_equal(nq_adapter_selects(a, "q_proj", &err), 1);
    nq_adapter_close(a);
    nq_lora_spec spec;
    assert_int_equal(nq_lora_spec_parse("/nonexistent/x:0.5", &spec, &err), 0);
    assert_string_equal(spec.dir, "/nonexistent/x");
    assert_true(spec.weight == 0.5);
    free(spec.owned);
    assert_int_equal(nq_lora_spec_parse("/nonexistent/x:abc", &spec, &err), -1);
}


static uint32_t lcg = 12345;
static float rnd(void)
{
    lcg = lcg * 1664525u + 1013904223u;
    return (float)(lcg >> 8) / (float)(1 << 24) - 0.5f;
}

static void write_st(const char *dir, const char *file, const char **names, const int64_t (*shapes)[2],
                     nq_dtype *dts, const void **data, int n)
{
    nq_writer_options wo = {.out_dir = dir, .force = true};
    nq_error err = {0};
    nq_writer *w = nq_writer_create(&wo, &err);
    assert_non_null(w);
    for (int i = 0; i < n; i++)
        assert_int_equal(nq_writer_declare(w, names[i], dts[i], 2, shapes[i], &err), 0);
    assert_int_equal(nq_writer_begin(w, &err), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(nq_writer_write(w, data[i], (size_t)(shapes[i][0] * shapes[i][1]) *
                                                         nq_dtype_size(dts[i]), &err), 0);
    assert_int_equal(nq_writer_commit(w, &err), 0);
    nq_writer_free(w);
    char a[1100], b[1100];
    snprintf(a, sizeof a, "%s/model.safetensors", dir);
    snprintf(b, sizeof b, "%s/%s", dir, file);
    assert_int_equal(rename(a, b), 0);
}

/* Shapes off the 4 x 32 tiling (edges take the per-element path) give
 * exactly the definition: acc = fma chain over k, W + acc * s in f32, one
 * rounding; and the same bytes for any thread count. */
static void test_odd_shapes(void **s)
{
    (void)s;
    enum { O = 7, I = 45, R = 3 };
    uint16_t W[O * I];
    float A[R * I], B[O * R];
    for (int i = 0; i < O * I; i++)
        W[i] = nq_f32_to_bf16(rnd() * 0.1f);
    for (int i = 0; i < R * I; i++)
        A[i] = rnd();
    for (int i = 0; i < O * R; i++)
        B[i] = rnd() * 0.1f;
    char *tmp = nq_test_tmpdir("lora_odd");
    char bdir[1024], adir[1024], p[1100];
    snprintf(bdir, sizeof bdir, "%s/base", tmp);
    snprintf(adir, sizeof adir, "%s/ad", tmp);
    const char *bn[] = {"m.lin.weight"};
    const int64_t bs[][2] = {{O, I}};
    nq_dtype bd[] = {NQ_BF16};
    const void *bv[] = {W};
    write_st(bdir, "model.safetensors", bn, bs, bd, bv, 1);
    const char *an[] = {"base_model.model.m.lin.lora_A.weight", "base_model.model.m.lin.lora_B.weight"};
    const int64_t as[][2] = {{R, I}, {O, R}};
    nq_dtype ad[] = {NQ_F32, NQ_F32};
    const void *av[] = {A, B};
    write_st(adir, "adapter_model.safetensors", an, as, ad, av, 2);
    snprintf(p, sizeof p, "%s/adapter_config.json", adir);
    const char *cfg = "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 5, "
                      "\"target_modules\": [\"lin\"]}";
    assert_int_equal(nq_test_write_file(p, cfg, strlen(cfg)), 0);
    const float scale = (float)(5.0 / 3.0);
    uint16_t expect[O * I];
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++) {
            float acc = 0.0f;
            for (int k = 0; k < R; k++)
                acc = fmaf(B[o * R + k], A[k * I + i], acc);
            expect[o * I + i] = nq_f32_to_bf16(nq_bf16_to_f32(W[o * I + i]) + acc * scale);
        }
    for (int threads = 1; threads <= 3; threads += 2) {
        nq_error err = {0};
        snprintf(p, sizeof p, "%s/model.safetensors", bdir);
        nq_checkpoint *ck = nq_checkpoint_open(p, &err);
        assert_non_null(ck);
        nq_lora_spec spec = {.dir = adir, .weight = 1.0};
        nq_lora *l = nq_lora_attach(ck, &spec, 1, NULL, threads, &err);
        if (!l)
            fail_msg("%s", err.msg);
        assert_int_equal(nq_lora_tensor_count(l), 1);
        void *owned;
        const unsigned char *got = nq_tensor_bytes(nq_checkpoint_find(ck, "m.lin.weight"), &owned, &err);
        assert_non_null(got);
        assert_non_null(owned);
        assert_memory_equal(got, expect, sizeof expect);
        /* the f32 reader sees the merge too (what calibration reads) */
        float f[O * I];
        assert_int_equal(nq_tensor_read_f32(nq_checkpoint_find(ck, "m.lin.weight"), 0, O * I, f, &err), 0);
        for (int i = 0; i < O * I; i++)
            assert_true(f[i] == nq_bf16_to_f32(expect[i]));
        free(owned);
        nq_lora_free(l);
        nq_checkpoint_close(ck);
    }
    /* the adapter twice (weights 1 and 2): both deltas added in f32, one rounding */
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++) {
            float acc = 0.0f;
            for (int k = 0; k < R; k++)
                acc = fmaf(B[o * R + k], A[k * I + i], acc);
            float v = nq_bf16_to_f32(W[o * I + i]) + acc * scale;
            v = v + acc * (float)(5.0 / 3.0 * 2.0);
            expect[o * I + i] = nq_f32_to_bf16(v);
        }
    nq_error err = {0};
    snprintf(p, sizeof p, "%s/model.safetensors", bdir);
    nq_checkpoint *ck = nq_checkpoint_open(p, &err);
    nq_lora_spec two[2] = {{.dir = adir, .weight = 1.0}, {.dir = adir, .weight = 2.0}};
    nq_lora *l = nq_lora_attach(ck, two, 2, NULL, 2, &err);
    assert_non_null(l);
    void *owned;
    const unsigned char *got = nq_tensor_bytes(nq_checkpoint_find(ck, "m.lin.weight"), &owned, &err);
    assert_non_null(got);
    assert_memory_equal(got, expect, sizeof expect);
    free(owned);
    nq_lora_free(l);
    nq_checkpoint_close(ck);
    nq_test_rmtree(tmp);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_backbone),
        cmocka_unit_test(test_rslora_native),
        cmocka_unit_test(test_patterns_backbone),
        cmocka_unit_test(test_dora_backbone),
        cmocka_unit_test(test_embed_native),
        cmocka_unit_test(test_experts_native),
        cmocka_unit_test(test_experts_backbone),
        cmocka_unit_test(test_fan_in_fan_out_ignored),
        cmocka_unit_test(test_threads_and_stacking),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_base_model_mismatch),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_odd_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
