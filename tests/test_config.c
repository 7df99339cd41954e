/* config.json parsing: both pattern spellings, NVIDIA's real 52-layer file,
 * and the errors a lying or broken config must produce. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "model/config.h"

static void test_bundled_layers_block_type(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_error err = {0};
    assert_int_equal(nq_model_config_load(nq_test_path("models/tiny-nemotron-h"), &cfg, &err), 0);
    assert_true(cfg.is_nemotron_h);
    assert_string_equal(cfg.pattern, "MEM*EMEM*EME");
    assert_int_equal(cfg.num_layers, 12);
    assert_int_equal(cfg.hidden_size, 256);
    assert_int_equal(cfg.n_routed_experts, 16);
    assert_int_equal(cfg.moe_intermediate_size, 192);
    assert_int_equal(cfg.head_dim, 32);
    assert_int_equal(cfg.num_key_value_heads, 2);
    assert_int_equal(nq_mamba_intermediate(&cfg), 512);
    assert_int_equal(nq_mamba_conv_dim(&cfg), 640); /* conv1d weight is [640,1,4] */
    assert_int_equal(nq_mamba_in_proj_dim(&cfg), 512 + 640 + 8);
    assert_float_equal(cfg.time_step_limit[0], 0.0f, 0.0f);
    assert_true(isinf(cfg.time_step_limit[1]) && cfg.time_step_limit[1] > 0);
    assert_float_equal(cfg.layer_norm_epsilon, 1e-5f, 1e-12f);
    assert_float_equal(cfg.routed_scaling_factor, 2.5f, 0.0f);
}

static void test_nvidia_nano_config(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_error err = {0};
    int rc = nq_model_config_load(nq_test_path("tests/fixtures/nemotron-3-nano-30b-a3b.config.json"),
                                  &cfg, &err);
    assert_int_equal(rc, 0);
    assert_string_equal(cfg.pattern, "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME");
    assert_int_equal(cfg.num_layers, 52);
    assert_int_equal(nq_model_config_count(&cfg, NQ_BLOCK_MAMBA), 23);
    assert_int_equal(nq_model_config_count(&cfg, NQ_BLOCK_MOE), 23);
    assert_int_equal(nq_model_config_count(&cfg, NQ_BLOCK_ATTENTION), 6);
    const int attention_at[] = {5, 12, 19, 26, 33, 42};
    int k = 0;
    for (int i = 0; i < cfg.num_layers; i++)
        if (cfg.pattern[i] == NQ_BLOCK_ATTENTION)
            assert_int_equal(i, attention_at[k++]);
    assert_int_equal(k, 6);
    assert_int_equal(cfg.hidden_size, 2688);
    assert_int_equal(cfg.n_routed_experts, 128);
    assert_int_equal(cfg.moe_intermediate_size, 1856);
    assert_int_equal(cfg.moe_shared_expert_intermediate_size, 3712);
    assert_int_equal(cfg.vocab_size, 131072);
    assert_int_equal(cfg.head_dim, 128);
    assert_int_equal(cfg.mamba_num_heads, 64);
    assert_int_equal(cfg.mamba_head_dim, 64);
    assert_int_equal(cfg.ssm_state_size, 128);
    assert_int_equal(cfg.n_groups, 8);
    assert_int_equal(cfg.num_experts_per_tok, 6);
    /* no time_step_limit in NVIDIA's file: transformers' default (0, inf) */
    assert_true(isinf(cfg.time_step_limit[1]));
}

static int parse(const char *json, nq_model_config *cfg, nq_error *err)
{
    memset(err, 0, sizeof *err);
    return nq_model_config_parse(json, strlen(json), "cfg.json", cfg, err);
}

#define NH_BASE                                                                                    \
    "\"model_type\":\"nemotron_h\",\"hidden_size\":64,\"vocab_size\":100,"                          \
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"mamba_num_heads\":4,"                     \
    "\"mamba_head_dim\":16,\"ssm_state_size\":8,\"n_groups\":2,\"n_routed_experts\":4,"             \
    "\"moe_intermediate_size\":32,\"num_experts_per_tok\":2,\"intermediate_size\":96"

static void test_pattern_spellings_agree(void **state)
{
    (void)state;
    nq_model_config a, b;
    nq_error err;
    assert_int_equal(parse("{" NH_BASE ",\"hybrid_override_pattern\":\"M-*E\"}", &a, &err), 0);
    assert_int_equal(parse("{" NH_BASE ",\"layers_block_type\":[\"mamba\",\"mlp\",\"attention\",\"moe\"]}",
                           &b, &err),
                     0);
    assert_string_equal(a.pattern, "M-*E");
    assert_string_equal(b.pattern, "M-*E");
    assert_int_equal(nq_model_config_count(&a, NQ_BLOCK_MLP), 1);
    /* norm_eps alone is honoured */
    assert_int_equal(parse("{" NH_BASE ",\"norm_eps\":1e-6,\"hybrid_override_pattern\":\"M\"}", &a, &err), 0);
    assert_float_equal(a.layer_norm_epsilon, 1e-6f, 1e-13f);
}

static void test_errors_name_the_problem(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_error err;
    assert_int_equal(parse("{" NH_BASE ",\"hybrid_override_pattern\":\"MXE\"}", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "'X' at layer 1"));
    assert_int_equal(parse("{" NH_BASE ",\"layers_block_type\":[\"mamba\",\"transformer\"]}", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "layers_block_type[1]"));
    assert_int_equal(parse("{" NH_BASE ",\"hybrid_override_pattern\":\"ME\",\"num_hidden_layers\":3}", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "num_hidden_layers is 3"));
    assert_int_equal(parse("{" NH_BASE "}", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "neither hybrid_override_pattern nor layers_block_type"));
    assert_int_equal(parse("{\"model_type\":\"nemotron_h\",\"hidden_size\":64,\"vocab_size\":10,"
                           "\"hybrid_override_pattern\":\"M\"}", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "missing required field \"mamba_num_heads\""));
    assert_int_equal(parse("{\"model_type\": \"nemotron_h\", ", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "cfg.json: not valid JSON"));
    assert_int_equal(parse("{" NH_BASE ",\"hybrid_override_pattern\":\"M\",\"time_step_limit\":[1,{\"__float__\":\"bogus\"}]}", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "time_step_limit"));
    assert_int_equal(parse("{" NH_BASE ",\"hybrid_override_pattern\":\"E\",\"num_experts_per_tok\":9}", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "num_experts_per_tok (9) exceeds"));
    assert_int_equal(parse("[1,2]", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "not a JSON object"));
}

static void test_other_models_stay_inspectable(void **state)
{
    (void)state;
    nq_model_config cfg;
    nq_error err;
    assert_int_equal(parse("{\"model_type\":\"llama\",\"hidden_size\":4096}", &cfg, &err), 0);
    assert_false(cfg.is_nemotron_h);
    assert_string_equal(cfg.model_type, "llama");
    assert_int_equal(cfg.num_layers, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bundled_layers_block_type),
        cmocka_unit_test(test_nvidia_nano_config),
        cmocka_unit_test(test_pattern_spellings_agree),
        cmocka_unit_test(test_errors_name_the_problem),
        cmocka_unit_test(test_other_models_stay_inspectable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
