/* libFuzzer target: config.json parsing (both block-pattern spellings, the
 * {"__float__": ...} encoding, every numeric field's validation). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nq_model_config cfg;
    nq_error err = {0};
    if (nq_model_config_parse((const char *)data, size, "fuzz.json", &cfg, &err) == 0) {
        /* accepted configs must be internally consistent */
        if (cfg.is_nemotron_h) {
            if (cfg.num_layers < 1 || cfg.num_layers > NQ_MAX_LAYERS ||
                strlen(cfg.pattern) != (size_t)cfg.num_layers)
                abort();
            for (int i = 0; i < cfg.num_layers; i++)
                if (!strchr("ME*-", cfg.pattern[i]))
                    abort();
        }
    } else if (err.msg[0] == '\0') {
        abort();
    }
    return 0;
}
