/* --device auto|cpu|cuda[:N]: which backend runs the forward pass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda.h"

int nq_device_open(const char *spec, nq_cuda **out, char *desc, size_t desc_size, nq_error *err)
{
    *out = NULL;
    if (strcmp(spec, "cpu") == 0) {
        snprintf(desc, desc_size, "cpu");
        return 0;
    }
    bool is_auto = strcmp(spec, "auto") == 0;
    int index = 0;
    if (!is_auto && strcmp(spec, "cuda") != 0) {
        char *end = NULL;
        long v = -1;
        if (strncmp(spec, "cuda:", 5) == 0 && spec[5] >= '0' && spec[5] <= '9')
            v = strtol(spec + 5, &end, 10);
        if (v < 0 || v > 1023 || !end || *end != '\0')
            return nq_fail(err, "--device '%s': expected auto, cpu, cuda or cuda:N", spec);
        index = (int)v;
    }
    nq_error why = {0};
    int count = nq_cuda_device_count(&why);
    if (count <= 0) {
        if (is_auto) {
            snprintf(desc, desc_size, "cpu (no usable CUDA GPU: %s)", why.msg);
            return 0;
        }
        return nq_fail(err, "--device %s: no usable CUDA GPU: %s", spec, why.msg);
    }
    if (index >= count)
        return nq_fail(err, "--device %s: this machine has %d CUDA GPU%s (cuda:0..cuda:%d)", spec,
                       count, count == 1 ? "" : "s", count - 1);
    nq_cuda *g = nq_cuda_open(index, &why);
    if (!g) {
        if (is_auto) {
            snprintf(desc, desc_size, "cpu (CUDA GPU unusable: %s)", why.msg);
            return 0;
        }
        return nq_fail(err, "--device %s: %s", spec, why.msg);
    }
    snprintf(desc, desc_size, "%s", nq_cuda_describe(g));
    *out = g;
    return 0;
}
