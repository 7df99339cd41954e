/* Export metadata against the expected files in tests/fixtures/export/
 * (written from ModelOpt's and vLLM's source, docs/export-spec.md). */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "export/metadata.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nvfp4_hf_quant_config_matches_fixture),
        cmocka_unit_test(test_gptq_config_matches_fixture),
        cmocka_unit_test(test_config_keeps_every_original_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
