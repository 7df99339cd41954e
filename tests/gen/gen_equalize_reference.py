"""Reference for tests/test_equalize.c: the AWQ-style search of
src/algo/equalize.h, written from the AWQ paper / llm-awq `auto_scale`
(s = x_mean^alpha normalised by sqrt(max * min), alpha on a grid, the first
minimum of the output error), with nemoq's conventions: the channel
statistic is the input RMS (clamped below at 1e-2 of its max), the error is
the exact calibration-set output error sum_r d_r H d_r^T with
d = W - Q(W diag c) diag(1/c), and Q is INT4 round-to-nearest with max
scales (src/formats/int4.c: scale = float16(amax / 7) in float32, code =
clamp(rint(w / scale) + 8, 0, 15), value = scale * (code - 8)).

Two consumers share one input (as the experts and router share a norm):
the result is one set of scales for both.

    python3 tests/gen/gen_equalize_reference.py tests/fixtures/equalize
writes case.json, w1.f32 [r1, cols], w2.f32 [r2, cols], h1.f64, h2.f64
[cols, cols], rms.f64 [cols], c.f32 [cols] (the chosen scales).
"""
import json, os, sys
import numpy as np

out = sys.argv[1]
r1, r2, cols, group, grid = 24, 16, 64, 32, 10
rng = np.random.default_rng(20261202)
# inputs with a few outlier channels (what equalization is for)
mag = np.exp(rng.standard_normal(cols) * 1.0).astype(np.float64)
mag[[3, 17, 40]] *= 25.0
x1 = rng.standard_normal((400, cols)) * mag
x2 = rng.standard_normal((150, cols)) * mag
w1 = (rng.standard_normal((r1, cols)) * 0.05).astype(np.float32)
w2 = (rng.standard_normal((r2, cols)) * 0.05).astype(np.float32)
h1, h2 = x1.T @ x1, x2.T @ x2
rms = np.sqrt(np.diag(h1) / 400.0)     # the consumer with the most rows

def qdq(w):
    w = w.astype(np.float32)
    q = np.empty_like(w)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], group):
            x = w[r, g:g + group]
            amax = np.max(np.abs(x))
            s = np.float16(amax / np.float32(7.0)) if amax > 0 else np.float16(1.0)
            s32 = np.float32(s)
            code = np.clip(np.rint(x / s32) + 8, 0, 15)
            q[r, g:g + group] = s32 * (code - 8).astype(np.float32)
    return q

def scales(alpha):
    m = np.maximum(rms, 1e-2 * rms.max())
    v = m ** alpha
    c = v.astype(np.float32)
    norm = np.sqrt(v.max() * v.min())
    return (c.astype(np.float64) / norm).astype(np.float32)

def error(w, h, c):
    q = qdq(w * c)
    d = w.astype(np.float64) - q.astype(np.float64) / c.astype(np.float64)
    return float(np.einsum("ra,ab,rb->", d, h, d))

best, res = np.inf, None
errs = []
for g in range(grid):
    alpha = g / grid
    c = scales(alpha)
    e = error(w1, h1, c) + error(w2, h2, c)
    errs.append(e)
    if e < best:
        best, res = e, (alpha, c, e)
alpha, c, e = res
os.makedirs(out, exist_ok=True)
w1.tofile(f"{out}/w1.f32"); w2.tofile(f"{out}/w2.f32")
h1.tofile(f"{out}/h1.f64"); h2.tofile(f"{out}/h2.f64")
rms.tofile(f"{out}/rms.f64"); c.tofile(f"{out}/c.f32")
json.dump({"r1": r1, "r2": r2, "cols": cols, "group": group, "grid": grid, "alpha": alpha,
           "err_best": e, "err_identity": errs[0], "errors": errs, "numpy": np.__version__},
          open(f"{out}/case.json", "w"), indent=1)
print("wrote", out, "alpha", alpha, "error", errs[0], "->", e)
