/* Reading a PEFT LoRA adapter directory: adapter_config.json and
 * adapter_model.safetensors (the tensors stay mmap'd; nothing is converted
 * until a merge asks for it), and PEFT's rules for which modules a config
 * selects and which rank and alpha each one gets.
 *
 * The rules follow peft 0.21 (tuners/tuners_utils.py check_target_module_exists,
 * utils/other.py get_pattern_key, tuners/lora/layer.py update_layer):
 *   target_modules as a list: a module is selected when its name equals an
 *     entry or ends with "." + entry; as a string: the whole name matches it
 *     as a regular expression (PCRE2 here, Python's re in PEFT);
 *   layers_to_transform: the first ".<digits>." after layers_pattern (or after
 *     any first segment when no pattern is given) must be listed;
 *   rank_pattern / alpha_pattern: the first key, in file order, for which
 *     "(.*\.)?(KEY)$" matches the whole module name;
 *   scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora. */
#ifndef NQ_IO_ADAPTER_H
#define NQ_IO_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "io/safetensors.h"

typedef struct nq_pattern_value {
    char *key;
    double value;
} nq_pattern_value;

typedef struct nq_adapter {
    char *dir;
    char *base_model;           /* base_model_name_or_path, or NULL */
    int r;
    double alpha;
    bool use_rslora, use_dora, fan_in_fan_out, lora_bias;
    char *bias;                 /* "none", "all" or "lora_only" */
    /* target_modules: a list (targets, ntargets) or a regex (target_regex) */
    char **targets;
    size_t ntargets;
    char *target_regex;
    char **exclude;             /* exclude_modules as a list */
    size_t nexclude;
    char *exclude_regex;        /* exclude_modules as a string */
    char **target_parameters;
    size_t ntarget_parameters;
    char **modules_to_save;
    size_t nmodules_to_save;
    int *layers;                /* layers_to_transform; NULL: every layer */
    size_t nlayers;
    char **layers_pattern;
    size_t nlayers_pattern;
    nq_pattern_value *rank_pattern, *alpha_pattern;
    size_t nrank_pattern, nalpha_pattern;
    nq_checkpoint *tensors;     /* adapter_model.safetensors */
} nq_adapter;

/* Opens DIR (adapter_config.json + adapter_model.safetensors).  Refuses a
 * directory that has only adapter_model.bin (a pickle) with a conversion
 * hint, a peft_type other than LORA, and options that change the math in
 * ways nemoq does not implement.  NULL and a one-line error on failure. */
nq_adapter *nq_adapter_open(const char *dir, nq_error *err);
void nq_adapter_close(nq_adapter *a);

/* PEFT's check_target_module_exists for a module name as PEFT saw it
 * (e.g. "model.layers.3.mixer.q_proj"): 1 selected, 0 not, -1 on a regex
 * error. */
int nq_adapter_selects(nq_adapter *a, const char *module, nq_error *err);
/* target_parameters: does "MODULE.PARAM" match an entry? */
bool nq_adapter_selects_parameter(const nq_adapter *a, const char *key);
/* modules_to_save: PEFT's "(^|.*\.)M($|\..*)" on a tensor key. */
int nq_adapter_saves(nq_adapter *a, const char *key, nq_error *err);
/* r and lora_alpha for a module after rank_pattern / alpha_pattern. */
int nq_adapter_rank_alpha(nq_adapter *a, const char *module, int *r, double *alpha,
                          nq_error *err);
/* The scaling PEFT computes (in double; PEFT multiplies an f32 tensor by it,
 * which rounds it to f32). */
double nq_adapter_scaling(const nq_adapter *a, int r, double alpha);

/* Python-re-compatible helpers used above, exposed for tests: a full match
 * of `pattern` against `s`; -1 and an error for a bad pattern. */
int nq_regex_fullmatch(const char *pattern, const char *s, nq_error *err);

#endif
