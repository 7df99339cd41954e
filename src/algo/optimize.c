#include "algo/optimize.h"

#include <stddef.h>
#include <string.h>

/* One technique: a bool field of nq_optimize (offset), or a value of the
 * act_scale rule (act >= 0). */
typedef struct technique {
    const char *name;
    bool winner;             /* part of plain --optimize */
    size_t field;            /* offsetof a bool, or (size_t)-1 */
    int act;                 /* nq_act_scale_rule, or -1 */
    const char *effect;
    const char *cost;
} technique;

#define FIELD(f) offsetof(nq_optimize, f), -1
#define ACT(r) (size_t)-1, r

static const technique table[] = {
    {"served-hessian", false, FIELD(served_hessian),
     "GPTQ Hessian from the NVFP4-quantized inputs a W4A4 server feeds (input_scale global)",
     "one more forward pass per layer"},
    {"hessian-scales", true, FIELD(hessian_scales),
     "each NVFP4 block's E4M3 scale by the output (GPTQ) loss it causes, 1/2..3/2 of the max",
     "about 20 trial quantizations of every block"},
    {"four-over-six", false, FIELD(four_over_six),
     "each NVFP4 block scaled to 6 or to 4, global scale amax / (6 x 256)", "two trials per block"},
    {"global-sweep", false, FIELD(global_sweep),
     "NVFP4 weight_scale_2 = amax / (6 M), M in 448, 384, 320, 256, the least GPTQ loss",
     "GPTQ of every NVFP4 module 4 times"},
    {"equalize-nvfp4", false, FIELD(equalize_nvfp4),
     "exact equalization (norm, gated and relu2 pairs) searched on the NVFP4 readers' W4A4 "
     "output error (--equalize-pairs norm,gated,relu2 --equalize-objective served); the float "
     "model unchanged, verify --against sees rescaled weights",
     "one more forward pass per layer, 10 trial quantizations of every NVFP4 reader"},
    {"int4-act-order", true, FIELD(int4_act_order),
     "INT4 GPTQ in act-order with static groups (--gptq-act-order: the plain layout, "
     "g_idx = i / group)",
     "a permuted copy of each Hessian; runs where GPTQ runs (the GPU with --device cuda)"},
    {"act-percentile", false, ACT(NQ_ACT_SCALE_PERCENTILE),
     "NVFP4 input_scale from the 99.99th percentile of |x| instead of the amax",
     "one more forward pass per layer"},
    {"act-mse", false, ACT(NQ_ACT_SCALE_MSE),
     "NVFP4 input_scale: of amax/2688 x 2^(-k/4), k = 0..11, the one with the least error",
     "one more forward pass per layer, 12 trial quantizations of every input"},
};
#define NTECH (sizeof table / sizeof table[0])

static bool is_on(const nq_optimize *o, const technique *t)
{
    if (t->act >= 0)
        return (int)o->act_scale == t->act;
    return *(const bool *)((const char *)o + t->field);
}

static void turn_on(nq_optimize *o, const technique *t)
{
    if (t->act >= 0)
        o->act_scale = (nq_act_scale_rule)t->act;
    else
        *(bool *)((char *)o + t->field) = true;
    o->enabled = true;
}

void nq_optimize_default(nq_optimize *o)
{
    memset(o, 0, sizeof *o);
    for (size_t i = 0; i < NTECH; i++)
        if (table[i].winner)
            turn_on(o, &table[i]);
}

int nq_optimize_parse(const char *list, nq_optimize *o, nq_error *err)
{
    memset(o, 0, sizeof *o);
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        bool found = false;
        if (len == 7 && strncmp(p, "default", 7) == 0) {
            nq_optimize o2;
            nq_optimize_default(&o2);
            for (size_t i = 0; i < NTECH; i++)
                if (is_on(&o2, &table[i]))
                    turn_on(o, &table[i]);
            found = true;
        } else if (len == 4 && strncmp(p, "none", 4) == 0) {
            found = true;
        }
        for (size_t i = 0; i < NTECH && !found; i++)
            if (strlen(table[i].name) == len && strncmp(p, table[i].name, len) == 0) {
                if (table[i].act >= 0 && o->act_scale != NQ_ACT_SCALE_AMAX &&
                    (int)o->act_scale != table[i].act)
                    return nq_fail(err, "--optimize-techniques: act-percentile and act-mse "
                                        "exclude each other");
                turn_on(o, &table[i]);
                found = true;
            }
        if (!found) {
            char names[512] = "default, none";
            for (size_t i = 0; i < NTECH; i++) {
                strncat(names, ", ", sizeof names - strlen(names) - 1);
                strncat(names, table[i].name, sizeof names - strlen(names) - 1);
            }
            return nq_fail(err, "--optimize-techniques: unknown technique '%.*s' (known: %s)",
                           (int)len, p, names);
        }
        p += len + (e ? 1 : 0);
        if (e && !*p)
            return nq_fail(err, "--optimize-techniques: empty name after ','");
    }
    return 0;
}

void nq_optimize_describe(const nq_optimize *o, char *buf, size_t size)
{
    buf[0] = '\0';
    for (size_t i = 0; i < NTECH; i++)
        if (is_on(o, &table[i])) {
            if (buf[0])
                strncat(buf, ",", size - strlen(buf) - 1);
            strncat(buf, table[i].name, size - strlen(buf) - 1);
        }
    if (!buf[0])
        snprintf(buf, size, "none");
}

void nq_optimize_print_table(FILE *f)
{
    for (size_t i = 0; i < NTECH; i++)
        fprintf(f, "  %-16s %s %s (cost: %s)\n", table[i].name, table[i].winner ? "[on] " : "[off]",
                table[i].effect, table[i].cost);
}
