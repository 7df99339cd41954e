/* Export metadata against the expected files in tests/fixtures/export/
 * (written from ModelOpt's and vLLM's source, docs/export-spec.md). */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "export/metadata.h"
#include "model/roles.h"

static void plan_for(const char *preset, nq_model_config *cfg, nq_plan *plan)
{
    nq_error err = {0};
    if (nq_model_config_load(nq_test_path("models/tiny-nemotron-h"), cfg, &err) != 0)
        fail_msg("%s", err.msg);
    nq_checkpoint *ck = nq_checkpoint_open(nq_test_path("models/tiny-nemotron-h"), &err);
    nq_recipe_options opt = {.preset = preset};
    if (!ck || nq_plan_build(cfg, ck, &opt, plan, &err) != 0)
        fail_msg("%s", err.msg);
    nq_checkpoint_close(ck);
}

static void test_nvfp4_hf_quant_config_matches_fixture(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_plan plan;
    plan_for("nvfp4-conservative", &cfg, &plan);
    nq_export_info info = {.kv_cache_fp8 = true};
    json_t *ours = nq_modelopt_quant_config(&plan, &info);
    json_t *want = json_load_file(
        nq_test_path("tests/fixtures/export/nvfp4-conservative.hf_quant_config.json"), 0, NULL);
    assert_non_null(want);
    json_t *q = json_object_get(ours, "quantization");
    json_t *wq = json_object_get(want, "quantization");
    assert_string_equal(json_string_value(json_object_get(q, "quant_algo")), "NVFP4");
    assert_string_equal(json_string_value(json_object_get(q, "kv_cache_quant_algo")), "FP8");
    assert_int_equal(json_integer_value(json_object_get(q, "group_size")), 16);
    /* the fixture lists Linears, conv1d and lm_head; we also name the routers,
     * which are left unquantized too */
    json_t *ex = json_object_get(q, "exclude_modules");
    json_t *wex = json_object_get(wq, "exclude_modules");
    size_t i, routers = 0;
    json_t *v;
    json_array_foreach(ex, i, v)
    {
        const char *name = json_string_value(v);
        if (strstr(name, ".mixer.gate")) {
            routers++;
            continue;
        }
        int found = 0;
        size_t j;
        json_t *w;
        json_array_foreach(wex, j, w) found |= strcmp(json_string_value(w), name) == 0;
        if (!found)
            fail_msg("%s excluded but not in the fixture", name);
    }
    assert_int_equal(routers, 5);
    assert_int_equal(json_array_size(ex) - routers, json_array_size(wex));
    json_array_foreach(ex, i, v) if (i > 0) assert_true(
        strcmp(json_string_value(json_array_get(ex, i - 1)), json_string_value(v)) < 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ours, "producer"), "name")), "modelopt");
    /* config.json's flat form against the fixture (same ignore list as
     * exclude_modules, checked above) */
    json_t *flat = nq_modelopt_config_json_form(ours);
    json_t *wflat = json_load_file(
        nq_test_path("tests/fixtures/export/nvfp4-conservative.config_quantization_config.json"), 0,
        NULL);
    assert_non_null(wflat);
    const char *keys[] = {"config_groups", "quant_algo", "kv_cache_scheme", "quant_method"};
    for (size_t k = 0; k < 4; k++)
        assert_true(json_equal(json_object_get(flat, keys[k]), json_object_get(wflat, keys[k])));
    assert_true(json_equal(json_object_get(flat, "ignore"), ex));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(flat, "producer"), "version")),
        json_string_value(json_object_get(json_object_get(wflat, "producer"), "version")));
    json_decref(flat);
    json_decref(wflat);
    json_decref(ours);

    info.weights_only = true;
    info.kv_cache_fp8 = false;
    ours = nq_modelopt_quant_config(&plan, &info);
    q = json_object_get(ours, "quantization");
    assert_string_equal(json_string_value(json_object_get(q, "quant_algo")), "W4A16_NVFP4");
    assert_true(json_is_null(json_object_get(q, "kv_cache_quant_algo")));
    json_decref(ours);
    json_decref(want);
    nq_plan_free(&plan);
}

static void test_gptq_config_matches_fixture(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_plan plan;
    plan_for("int4", &cfg, &plan);
    json_t *ours = nq_gptq_quant_config(&plan);
    json_t *want = json_load_file(
        nq_test_path("tests/fixtures/export/int4-gptq.quantize_config.json"), 0, NULL);
    assert_non_null(want);
    /* tiny experts have in_features 192 = 3 x 64: group 64 for the model */
    assert_true(json_equal(ours, want));
    json_decref(ours);
    json_decref(want);
    nq_plan_free(&plan);
}

static void test_config_keeps_every_original_byte(void **state)
{
    (void)state;
    size_t len;
    unsigned char *text = nq_test_read_file(nq_test_path("models/tiny-nemotron-h/config.json"), &len);
    nq_model_config cfg;
    nq_error err = {0};
    assert_int_equal(nq_model_config_parse((char *)text, len, "config.json", &cfg, &err), 0);
    json_t *qc = json_pack("{s:s}", "quant_method", "gptq");
    size_t out_len;
    char *out = nq_config_with_quantization((char *)text, len, "config.json", &cfg, qc, &out_len, &err);
    assert_non_null(out);
    /* the original text up to its last field is a prefix of ours */
    const char *last = strstr((char *)text, "\"vocab_size\": 4096");
    size_t keep = (size_t)(last - (char *)text) + strlen("\"vocab_size\": 4096");
    assert_memory_equal(out, text, keep);
    json_t *parsed = json_loadb(out, out_len, 0, NULL);
    assert_non_null(parsed);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(parsed, "quantization_config"), "quant_method")),
                        "gptq");
    assert_string_equal(json_string_value(json_object_get(parsed, "hybrid_override_pattern")),
                        "MEM*EMEM*EME");
    assert_int_equal(json_integer_value(json_object_get(parsed, "num_hidden_layers")), 12);
    /* and the result still parses as the same model */
    nq_model_config again;
    assert_int_equal(nq_model_config_parse(out, out_len, "out", &again, &err), 0);
    assert_string_equal(again.pattern, cfg.pattern);
    /* an already quantized config is refused */
    assert_null(nq_config_with_quantization(out, out_len, "q/config.json", &cfg, qc, &out_len, &err));
    assert_non_null(strstr(err.msg, "q/config.json: already has a quantization_config"));
    json_decref(parsed);
    json_decref(qc);
    free(out);
    free(text);
}

/* config.json's quantization_config: ModelOpt 0.47's flat form.  The expected
 * strings are what NVIDIA/Model-Optimizer modelopt/torch/export/
 * convert_hf_config.py convert_hf_quant_config_format (0.47.0dev, commit
 * a2fbac7ba, 2026-08-21) returns for each input, printed with
 * json.dumps(..., separators=(",", ":")): keys, order and values. */
static void test_config_json_form_is_modelopt_047(void **state)
{
    (void)state;
    static const char *cases[][2] = {
        {"{\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quantization\":{\"quant_algo\":\"NVFP4\",\"kv_cache_quant_algo\":\"FP8\",\"group_size\":16,\"exclude_modules\":[\"backbone.layers.2.mixer.in_proj\",\"lm_head\"]}}",
         "{\"config_groups\":{\"group_0\":{\"input_activations\":{\"dynamic\":false,\"num_bits\":4,\"type\":\"float\",\"group_size\":16},\"weights\":{\"dynamic\":false,\"num_bits\":4,\"type\":\"float\",\"group_size\":16},\"targets\":[\"Linear\"]}},\"ignore\":[\"backbone.layers.2.mixer.in_proj\",\"lm_head\"],\"quant_algo\":\"NVFP4\",\"kv_cache_scheme\":{\"dynamic\":false,\"num_bits\":8,\"type\":\"float\"},\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quant_method\":\"modelopt\"}"},
        {"{\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quantization\":{\"quant_algo\":\"FP8\",\"kv_cache_quant_algo\":null,\"exclude_modules\":[\"lm_head\"]}}",
         "{\"config_groups\":{\"group_0\":{\"input_activations\":{\"dynamic\":false,\"num_bits\":8,\"type\":\"float\"},\"weights\":{\"dynamic\":false,\"num_bits\":8,\"type\":\"float\"},\"targets\":[\"Linear\"]}},\"ignore\":[\"lm_head\"],\"quant_algo\":\"FP8\",\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quant_method\":\"modelopt\"}"},
        {"{\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quantization\":{\"quant_algo\":\"W4A16_NVFP4\",\"kv_cache_quant_algo\":null,\"group_size\":16,\"exclude_modules\":[\"lm_head\"]}}",
         "{\"config_groups\":{\"group_0\":{\"weights\":{\"dynamic\":false,\"num_bits\":4,\"type\":\"float\",\"group_size\":16},\"targets\":[\"Linear\"]}},\"ignore\":[\"lm_head\"],\"quant_algo\":\"W4A16_NVFP4\",\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quant_method\":\"modelopt\"}"},
        {"{\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quantization\":{\"quant_algo\":\"MIXED_PRECISION\",\"kv_cache_quant_algo\":\"FP8\",\"quantized_layers\":{\"b.l.1.out_proj\":{\"quant_algo\":\"NVFP4\",\"group_size\":16},\"b.l.0.in_proj\":{\"quant_algo\":\"FP8\"},\"b.l.0.out_proj\":{\"quant_algo\":\"NVFP4\",\"group_size\":16}}}}",
         "{\"config_groups\":{\"group_0\":{\"input_activations\":{\"dynamic\":false,\"num_bits\":4,\"type\":\"float\",\"group_size\":16},\"weights\":{\"dynamic\":false,\"num_bits\":4,\"type\":\"float\",\"group_size\":16},\"targets\":[\"b.l.0.out_proj\",\"b.l.1.out_proj\"]},\"group_1\":{\"input_activations\":{\"dynamic\":false,\"num_bits\":8,\"type\":\"float\"},\"weights\":{\"dynamic\":false,\"num_bits\":8,\"type\":\"float\"},\"targets\":[\"b.l.0.in_proj\"]}},\"quantized_layers\":{\"b.l.1.out_proj\":{\"quant_algo\":\"NVFP4\",\"group_size\":16},\"b.l.0.in_proj\":{\"quant_algo\":\"FP8\"},\"b.l.0.out_proj\":{\"quant_algo\":\"NVFP4\",\"group_size\":16}},\"ignore\":[],\"quant_algo\":\"MIXED_PRECISION\",\"kv_cache_scheme\":{\"dynamic\":false,\"num_bits\":8,\"type\":\"float\"},\"producer\":{\"name\":\"modelopt\",\"version\":\"0.47.0\"},\"quant_method\":\"modelopt\"}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *in = json_loads(cases[i][0], 0, NULL);
        assert_non_null(in);
        json_t *flat = nq_modelopt_config_json_form(in);
        char *text = json_dumps(flat, JSON_COMPACT | JSON_PRESERVE_ORDER);
        assert_string_equal(text, cases[i][1]);
        /* and it reads back as the same declaration as the nested form */
        nq_modelopt_decl a, b;
        assert_true(nq_modelopt_decl_read(in, &a));
        assert_true(nq_modelopt_decl_read(flat, &b));
        assert_false(a.flat);
        assert_true(b.flat);
        assert_string_equal(a.quant_algo, b.quant_algo);
        assert_true((a.kv_cache_quant_algo == NULL) == (b.kv_cache_quant_algo == NULL));
        if (a.kv_cache_quant_algo)
            assert_string_equal(a.kv_cache_quant_algo, b.kv_cache_quant_algo);
        if (a.exclude)
            assert_true(json_equal(a.exclude, b.exclude));
        assert_true((a.quantized_layers == NULL) == (b.quantized_layers == NULL));
        free(text);
        json_decref(flat);
        json_decref(in);
    }
    /* nemoq's producer: the ModelOpt format version it follows */
    nq_model_config cfg;
    nq_plan plan;
    plan_for("nvfp4-conservative", &cfg, &plan);
    nq_export_info info = {.kv_cache_fp8 = true};
    json_t *ours = nq_modelopt_quant_config(&plan, &info);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ours, "producer"), "version")), "0.47.0");
    json_decref(ours);
    nq_plan_free(&plan);
}

/* Exclude entries as vLLM matches them (modelopt.py is_layer_excluded,
 * apply_vllm_mapper; quant_utils.py is_layer_skipped; docs/export-spec.md
 * 1.4): each case worked out by hand from that code. */
static void test_exclude_pattern_matches_like_vllm(void **state)
{
    (void)state;
    static const struct {
        const char *pattern, *module;
        bool match;
    } cases[] = {
        {"lm_head", "lm_head", true},
        {"backbone.layers.3.mixer.q_proj", "backbone.layers.3.mixer.q_proj", true},
        {"backbone.layers.3.mixer.q_proj", "backbone.layers.3.mixer.k_proj", false},
        /* ModelOpt's prefix wildcard = {name, name.*} */
        {"backbone.layers.2*", "backbone.layers.2.mixer.in_proj", true},
        {"backbone.layers.2*", "backbone.layers.3.mixer.in_proj", false},
        /* ... whose "name" half is also a substring of layer 20's names */
        {"backbone.layers.2*", "backbone.layers.20.mixer.in_proj", true},
        {"backbone.layers.4.*", "backbone.layers.4.mixer.in_proj", true},
        {"backbone.layers.4.*", "backbone.layers.40.mixer.in_proj", false},
        /* the legacy substring rule: the hazard of ModelOpt's pairs */
        {"backbone.layers.1", "backbone.layers.10.mixer.in_proj", true},
        {"backbone.layers.4.mixer.in_proj", "backbone.layers.40.mixer.in_proj", false},
        /* fnmatch: '*' crosses dots, no escape character */
        {"*mixer.gate*", "backbone.layers.1.mixer.gate", true},
        {"*.conv1d", "backbone.layers.0.mixer.conv1d", true},
        {"backbone.layers.?.mixer.conv1d", "backbone.layers.10.mixer.conv1d", false},
        /* the fused MoE prefix against per-expert entries */
        {"backbone.layers.1.mixer.experts.*", "backbone.layers.1.mixer.experts", true},
        {"backbone.layers.1.mixer.experts.3.up_proj", "backbone.layers.1.mixer.experts", true},
        {"backbone.layers.1.mixer.experts.*", "backbone.layers.1.mixer.experts.3.up_proj", true},
        {"backbone.layers.1.mixer.experts.*", "backbone.layers.4.mixer.experts", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (nq_exclude_matches(cases[i].pattern, cases[i].module) != cases[i].match)
            fail_msg("%s vs %s: expected %d", cases[i].pattern, cases[i].module, cases[i].match);
}

/* The entries ModelOpt 0.47 corrupts on NemotronH (a NUL and the renamed
 * sentinel "backbone.pt_name_sentinel" after the name). */
static void test_corrupt_exclude_entries(void **state)
{
    (void)state;
    char intended[64];
    static const char lm[] = "lm_head.\0backbone.pt_name_sentinel";
    json_t *v = json_stringn(lm, sizeof lm - 1);
    assert_true(nq_exclude_entry_corrupt(v, intended, sizeof intended));
    assert_string_equal(intended, "lm_head");
    json_decref(v);
    static const char wild[] = "backbone.layers.2.\0backbone.pt_name_sentinel*";
    v = json_stringn(wild, sizeof wild - 1);
    assert_true(nq_exclude_entry_corrupt(v, intended, sizeof intended));
    assert_string_equal(intended, "backbone.layers.2*");
    json_decref(v);
    static const char pair[] = "backbone.layers.4.\0backbone.pt_name_sentinel.*";
    v = json_stringn(pair, sizeof pair - 1);
    assert_true(nq_exclude_entry_corrupt(v, intended, sizeof intended));
    assert_string_equal(intended, "backbone.layers.4.*");
    json_decref(v);
    v = json_string("lm_head");
    assert_false(nq_exclude_entry_corrupt(v, intended, sizeof intended));
    json_decref(v);
    /* a config.json carrying one still parses as the model */
    static const char cfg_text[] =
        "{\"model_type\": \"nemotron_h\", \"quantization_config\": {\"ignore\": "
        "[\"lm_head.\\u0000backbone.pt_name_sentinel\"]}}";
    nq_model_config cfg;
    nq_error err = {0};
    nq_model_config_parse(cfg_text, sizeof cfg_text - 1, "config.json", &cfg, &err);
    assert_null(strstr(err.msg, "not valid JSON"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nvfp4_hf_quant_config_matches_fixture),
        cmocka_unit_test(test_gptq_config_matches_fixture),
        cmocka_unit_test(test_config_keeps_every_original_byte),
        cmocka_unit_test(test_config_json_form_is_modelopt_047),
        cmocka_unit_test(test_exclude_pattern_matches_like_vllm),
        cmocka_unit_test(test_corrupt_exclude_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
