"""Reference for tests/test_equalize.c's served (W4A4) objective
(nq_equalize_search_served, src/algo/equalize.h), written from the AWQ
paper / llm-awq `auto_scale` (s = x_rms^alpha normalised by
sqrt(max * min), alpha on a grid, the first minimum of the output error;
activations divided by s, weight columns multiplied) and vLLM's NVFP4 W4A4
semantics, in numpy float64 with torch's float8_e4m3fn cast for E4M3:

  - weights: NVFP4 round-to-nearest with max scales (ModelOpt: global scale
    amax / (6 * 448), per-16 block scale e4m3(block_amax / (6 gs)) clamped
    to >= 2^-9, E2M1 codes round-to-nearest ties-to-even, saturating at 6);
  - activations: the same quantizer with gs = amax(x / s) / (6 * 448), the
    input_scale a calibration of the equalized model computes, for the
    consumers served W4A4; untouched for the W4A16 one;
  - error: || X W^T - A(X / s) Q(W diag s)^T ||^2 summed over consumers,
    candidates alpha = 0 (s = 1), 0.1, ..., 0.9, the channel RMS given
    (nemoq passes the RMS over all calibration rows; here over the first
    consumer's rows) clamped below at 1e-2 of its max; the first minimum
    wins.

Three consumers share one input with outlier channels (the second sees a
subset of the rows, as a routed expert does; the third is W4A16).

    python3 tests/gen/gen_equalize_served_reference.py tests/fixtures/equalize_served
writes case.json (the errors per candidate, the choice), w{1,2,3}.f32,
x{1,2,3}.f32, rms.f64, c.f32 (the chosen scales).
"""
import json, os, sys
import numpy as np
import torch

out = sys.argv[1]
cols, grid = 64, 10
rows = [32, 16, 24]
rng = np.random.default_rng(20261203)
mag = np.exp(rng.standard_normal(cols) * 0.5)
mag[[5, 21, 50]] *= 30.0                       # activation outlier channels
x1 = (rng.standard_normal((128, cols)) * mag).astype(np.float32)
xs = [x1, x1[::2].copy(), (rng.standard_normal((96, cols)) * mag).astype(np.float32)]
act = [True, True, False]
ws = [(rng.standard_normal((r, cols)) * 0.05).astype(np.float32) for r in rows]
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)


def e4m3(v):
    t = torch.tensor(np.asarray(v, np.float32)).to(torch.float8_e4m3fn)
    return t.to(torch.float32).numpy()


def e2m1_q(a):
    a = np.minimum(np.abs(a.astype(np.float64)), 6.0)
    d = np.abs(a[..., None] - E2M1)
    best = np.argmin(d, axis=-1)
    m = d.min(axis=-1)
    tie = d == m[..., None]
    for idx in zip(*np.nonzero(tie.sum(-1) > 1)):
        ks = np.nonzero(tie[idx])[0]
        best[idx] = ks[ks % 2 == 0][0]
    return E2M1[best]


def fake_quant(v, gs):
    shape = v.shape
    v = v.astype(np.float32).reshape(-1, 16)
    amax = np.abs(v).max(axis=1)
    s = (amax / np.float32(np.float32(6.0) * gs)).astype(np.float32)
    s[s == 0] = 1.0
    s = np.maximum(s, np.float32(2.0 ** -9))
    denom = (e4m3(s) * np.float32(gs)).astype(np.float32)
    mag_ = e2m1_q((v / denom[:, None]).astype(np.float32))
    return (np.sign(v) * mag_ * denom[:, None]).astype(np.float32).reshape(shape)


def global_scale(amax):
    amax = np.float32(amax)
    return np.float32(amax / np.float32(6.0 * 448.0)) if amax > 0 else np.float32(1.0)


def qdq_weight(w):
    return fake_quant(w, global_scale(np.abs(w).max()))


rms = np.sqrt((x1.astype(np.float64) ** 2).mean(axis=0))


def scales(alpha):
    m = np.maximum(rms, 1e-2 * rms.max())
    v = m ** alpha
    c = v.astype(np.float32)
    norm = np.sqrt(v.max() * v.min())
    return (c.astype(np.float64) / norm).astype(np.float32)


def error(c):
    amax = max(float(np.abs((x / c).astype(np.float32)).max()) for x in xs)
    gs = global_scale(amax)
    e = 0.0
    for w, x, a in zip(ws, xs, act):
        ref = x.astype(np.float64) @ w.astype(np.float64).T
        q = qdq_weight((w * c).astype(np.float32))
        xq = (x / c).astype(np.float32)
        if a:
            xq = fake_quant(xq, gs)
        e += float(((ref - xq.astype(np.float64) @ q.astype(np.float64).T) ** 2).sum())
    return e


cands = [(g / grid, scales(g / grid)) for g in range(grid)]
errs = [error(c) for _, c in cands]
best = int(np.argmin(errs))
srt = sorted(errs)
assert srt[1] > srt[0] * (1 + 1e-3), "the fixture needs a clear winner"
assert best != 0, "the fixture must call for equalization"
os.makedirs(out, exist_ok=True)
for i in range(3):
    ws[i].tofile(os.path.join(out, f"w{i + 1}.f32"))
    xs[i].tofile(os.path.join(out, f"x{i + 1}.f32"))
cands[best][1].tofile(os.path.join(out, "c.f32"))
rms.tofile(os.path.join(out, "rms.f64"))
json.dump({"cols": cols, "rows": rows, "xrows": [len(x) for x in xs], "act_nvfp4": act,
           "grid": grid, "errors": errs, "best": best, "alpha": cands[best][0],
           "err_identity": errs[0], "err_best": errs[best]},
          open(os.path.join(out, "case.json"), "w"), indent=1)
print("errors:", ["%.6g" % e for e in errs], "best", best, cands[best][0])
