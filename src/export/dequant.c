/* Reading a quantized module back from a checkpoint (export/dequant.h):
 * which format it is stored in, and its dequantized weight, with every
 * companion tensor checked. */
#include "export/dequant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/floatconv.h"
#include "formats/fp8.h"
#include "formats/int4.h"
#include "formats/nvfp4.h"

/* ---- reading back ---------------------------------------------------------- */

static const nq_tensor *companion(const nq_checkpoint *ck, const char *module, const char *suffix)
{
    char name[600];
    snprintf(name, sizeof name, "%s.%s", module, suffix);
    return nq_checkpoint_find(ck, name);
}

nq_stored_format nq_stored_format_of(const nq_checkpoint *ck, const char *module)
{
    if (companion(ck, module, "qweight"))
        return NQ_STORED_GPTQ;
    const nq_tensor *w = companion(ck, module, "weight");
    if (!w)
        return NQ_STORED_NONE;
    if (companion(ck, module, "weight_scale_2"))
        return NQ_STORED_NVFP4;
    if (w->dtype == NQ_F8_E4M3)
        return NQ_STORED_FP8;
    return nq_dtype_is_float(w->dtype) ? NQ_STORED_FLOAT : NQ_STORED_NONE;
}

static int expect(const nq_tensor *t, const char *module, const char *suffix, nq_dtype dt,
                  int ndim, int64_t a, int64_t b, nq_error *err)
{
    if (!t)
        return nq_fail(err, "%s: missing %s", module, suffix);
    bool ok = t->dtype == dt && (ndim == 0 ? t->numel == 1 && t->ndim <= 1 : t->ndim == ndim);
    if (ok && ndim >= 1 && t->shape[0] != a)
        ok = false;
    if (ok && ndim == 2 && t->shape[1] != b)
        ok = false;
    if (!ok)
        return nq_fail(err, "%s.%s: expected %s %s[%lld%s%.0lld], found %s with %d dims", module,
                       suffix, nq_dtype_name(dt), ndim == 0 ? "scalar " : "", (long long)a,
                       ndim == 2 ? ", " : "", ndim == 2 ? (long long)b : 0LL,
                       nq_dtype_name(t->dtype), t->ndim);
    return 0;
}

static int positive_scalar(const nq_tensor *t, const char *module, float *v, nq_error *err)
{
    memcpy(v, t->data, sizeof *v);
    if (!(isfinite(*v) && *v > 0))
        return nq_fail(err, "%s.%s: scale %g is not finite and positive", module,
                       strrchr(t->name, '.') + 1, *v);
    return 0;
}

float *nq_decode_module(const nq_checkpoint *ck, const char *module, int gptq_group,
                        int64_t *rows, int64_t *cols, nq_error *err)
{
    nq_stored_format f = nq_stored_format_of(ck, module);
    float *out = NULL;
    if (f == NQ_STORED_NVFP4) {
        const nq_tensor *w = companion(ck, module, "weight");
        const nq_tensor *s = companion(ck, module, "weight_scale");
        const nq_tensor *s2 = companion(ck, module, "weight_scale_2");
        if (w->ndim != 2 || w->dtype != NQ_U8) {
            nq_fail(err, "%s.weight: NVFP4 weight must be U8 [out, in/2]", module);
            return NULL;
        }
        int64_t o = w->shape[0], i = w->shape[1] * 2;
        float gs;
        if (i % 16 != 0 || expect(s, module, "weight_scale", NQ_F8_E4M3, 2, o, i / 16, err) ||
            expect(s2, module, "weight_scale_2", NQ_F32, 0, 0, 0, err) ||
            positive_scalar(s2, module, &gs, err))
            return NULL;
        for (uint64_t k = 0; k < s->numel; k++) {
            float v = nq_e4m3_to_f32(s->data[k]);
            if (!(isfinite(v) && v > 0)) {
                nq_fail(err, "%s.weight_scale: block scale %llu is %g", module,
                        (unsigned long long)k, v);
                return NULL;
            }
        }
        out = malloc((size_t)(o * i) * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        for (int64_t r = 0; r < o; r++)
            nq_nvfp4_decode_row(w->data + r * i / 2, s->data + r * i / 16, gs, i, out + r * i);
        *rows = o;
        *cols = i;
    } else if (f == NQ_STORED_FP8) {
        const nq_tensor *w = companion(ck, module, "weight");
        const nq_tensor *s = companion(ck, module, "weight_scale");
        float scale;
        if (w->ndim != 2) {
            nq_fail(err, "%s.weight: FP8 weight must be 2-D", module);
            return NULL;
        }
        if (expect(s, module, "weight_scale", NQ_F32, 0, 0, 0, err) ||
            positive_scalar(s, module, &scale, err))
            return NULL;
        out = malloc(w->numel * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        for (uint64_t k = 0; k < w->numel; k++) {
            if ((w->data[k] & 0x7f) == 0x7f) { /* E4M3's only NaN encoding */
                free(out);
                nq_fail(err, "tensor '%s.weight': element %llu (row %llu, column %llu) is NaN "
                             "(E4M3 code 0x%02x)",
                        module, (unsigned long long)k,
                        (unsigned long long)(k / (uint64_t)w->shape[1]),
                        (unsigned long long)(k % (uint64_t)w->shape[1]), w->data[k]);
                return NULL;
            }
            out[k] = nq_e4m3_to_f32(w->data[k]) * scale;
        }
        *rows = w->shape[0];
        *cols = w->shape[1];
    } else if (f == NQ_STORED_GPTQ) {
        const nq_tensor *qw = companion(ck, module, "qweight");
        const nq_tensor *qz = companion(ck, module, "qzeros");
        const nq_tensor *sc = companion(ck, module, "scales");
        const nq_tensor *gi = companion(ck, module, "g_idx");
        if (qw->ndim != 2 || qw->dtype != NQ_I32 || !sc || sc->ndim != 2) {
            nq_fail(err, "%s: GPTQ qweight must be I32 [in/8, out] with 2-D scales", module);
            return NULL;
        }
        int64_t i = qw->shape[0] * 8, o = qw->shape[1];
        int64_t ngroups = sc->shape[0];
        if (ngroups <= 0 || i % ngroups != 0) {
            nq_fail(err, "%s.scales: %lld groups do not divide in_features %lld", module,
                    (long long)ngroups, (long long)i);
            return NULL;
        }
        int g = (int)(i / ngroups);
        (void)gptq_group; /* per-module `dynamic` overrides may differ from it */
        if (expect(sc, module, "scales", NQ_F16, 2, ngroups, o, err) ||
            expect(qz, module, "qzeros", NQ_I32, 2, ngroups, o / 8, err) ||
            expect(gi, module, "g_idx", NQ_I32, 1, i, 0, err))
            return NULL;
        out = malloc((size_t)(o * i) * sizeof *out);
        if (!out) {
            nq_fail(err, "%s: out of memory", module);
            return NULL;
        }
        if (nq_int4_unpack_gptq(qw->data, qz->data, sc->data, gi->data, o, i, g, out, err) != 0) {
            nq_error_name(err, "module", module);
            free(out);
            return NULL;
        }
        *rows = o;
        *cols = i;
    } else {
        nq_fail(err, "%s: not stored in a quantized format", module);
    }
    return out;
}
