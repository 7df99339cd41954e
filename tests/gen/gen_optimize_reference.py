"""Reference values for tests/test_optimize.c (the --optimize techniques),
written independently of nemoq in numpy float64, with torch's float8_e4m3fn
cast for E4M3 (round to nearest even):

  - NVFP4 activation fake quantization (vLLM scaled_fp4_quant semantics: per
    16 block, scale e4m3(amax_b / (6 gs)) clamped to >= 2^-9, E2M1 codes
    round-to-nearest with ties to the even code, saturating at 6);
  - the served-input statistics Hq = Xq^T Xq;
  - GPTQ for NVFP4 whose block scales are chosen by the GPTQ loss of the
    block's 16 columns (candidates 1/2..3/2 of the max scale), and the
    four-over-six variant (scaled to 6 or 4, global scale amax / (6 x 256));
  - the ModelOpt local_hessian block scale (least dw^T H_b dw);
  - the activation global-scale candidates' squared errors.

    python3 tests/gen/gen_optimize_reference.py tests/fixtures/optimize
"""
import json, os, sys
import numpy as np
import torch

out = sys.argv[1]
R, C, N, percdamp = 16, 64, 256, 0.01
rng = np.random.default_rng(20261202)
w = (rng.standard_normal((R, C)) * 0.05).astype(np.float32)
mix = rng.standard_normal((C, C)) * 0.3 + np.eye(C)
x = (rng.standard_normal((N, C)) @ mix).astype(np.float32)
x[:, 5] *= 12.0                      # an outlier channel
x[3, 17] = 40.0                      # and an outlier token

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)


def e4m3(v):
    """float32 array -> (decoded float32 value, code uint8), RNE via torch."""
    t = torch.tensor(np.asarray(v, np.float32)).to(torch.float8_e4m3fn)
    return t.to(torch.float32).numpy(), t.view(torch.uint8).numpy()


def e2m1_q(a):
    """magnitudes (float32) -> nearest E2M1 magnitude, ties to the even code."""
    a = np.minimum(np.abs(a.astype(np.float64)), 6.0)
    d = np.abs(a[..., None] - E2M1)
    best = np.argmin(d, axis=-1)
    m = d.min(axis=-1)
    # a tie between codes k and k+1: take the even one
    tie = np.isclose(d[..., :], m[..., None], rtol=0, atol=0)
    cnt = tie.sum(-1)
    for idx in zip(*np.nonzero(cnt > 1)):
        ks = np.nonzero(tie[idx])[0]
        best[idx] = ks[ks % 2 == 0][0]
    return E2M1[best], best


def fake_quant(v, gs):
    v = v.astype(np.float32).reshape(-1, 16)
    amax = np.abs(v).max(axis=1)
    s = (amax / np.float32(6.0 * gs)).astype(np.float32)
    s[s == 0] = 1.0
    s = np.maximum(s, np.float32(2.0 ** -9))
    sv, _ = e4m3(s)
    denom = (sv * np.float32(gs)).astype(np.float32)
    mag, _ = e2m1_q((v / denom[:, None]).astype(np.float32))
    return (np.sign(v) * mag * denom[:, None]).astype(np.float32).reshape(-1)


# ---- served-input statistics ----------------------------------------------
amax_x = np.float32(np.abs(x).max())
act_gs = np.float32(amax_x / np.float32(6.0 * 448.0))
xq = fake_quant(x.reshape(-1), act_gs).reshape(N, C)
X, Xq = x.astype(np.float64), xq.astype(np.float64)
hq = Xq.T @ Xq

# ---- activation candidates ---------------------------------------------------
act_err = []
for k in range(12):
    g = np.float32(float(amax_x) / (6.0 * 448.0) * 2.0 ** (-k / 4.0))
    act_err.append(float(((X - fake_quant(x.reshape(-1), g).reshape(N, C)) ** 2).sum()))


# ---- GPTQ NVFP4 with the loss-chosen block scales ----------------------------
def gptq_nvfp4(wf, h, four_over_six):
    rows, cols = wf.shape
    amax = np.float32(np.abs(wf).max())
    gs = np.float32(amax / np.float32(6.0 * (256.0 if four_over_six else 448.0)))
    H = h.copy()
    H[np.arange(cols), np.arange(cols)] += percdamp * np.mean(np.diag(H))
    L = np.linalg.cholesky(H)
    Hinv = np.linalg.inv(L).T @ np.linalg.inv(L)
    U = np.linalg.cholesky(Hinv).T
    W = wf.astype(np.float64)
    codes = np.zeros((rows, cols), np.uint8)
    scodes = np.zeros((rows, cols // 16), np.uint8)
    for i1 in range(0, cols, 128):
        i2 = min(i1 + 128, cols)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        sval = np.zeros(rows, np.float32)
        for k in range(i2 - i1):
            i = i1 + k
            if i % 16 == 0:
                for r in range(rows):
                    blk = W1[r, k:k + 16].astype(np.float32)
                    bam = np.float32(np.abs(blk).max())
                    s = np.float32(bam / np.float32(6.0 * gs))
                    s = np.float32(1.0) if s == 0 else max(s, np.float32(2.0 ** -9))
                    ref, mc = e4m3([s])
                    cands = [int(mc[0])]
                    if four_over_six:
                        s4 = np.float32(bam / np.float32(4.0 * gs))
                        if s4 >= 2.0 ** -9:
                            c4 = int(e4m3([s4])[1][0])
                            if c4 != cands[0]:
                                cands.append(c4)
                    else:
                        vals = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
                        for c in range(cands[0] - 1, 0, -1):
                            if vals[c] < 0.5 * ref[0]:
                                break
                            cands.append(c)
                        for c in range(cands[0] + 1, 127):
                            if vals[c] > 1.5 * ref[0]:
                                break
                            cands.append(c)
                    best, best_loss = cands[0], None
                    for c in cands:
                        sv = np.float32(torch.tensor([c], dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).item()) * gs
                        loc = W1[r, k:k + 16].copy()
                        loss = 0.0
                        for kk in range(16):
                            mag, _ = e2m1_q(np.array([np.float32(loc[kk]) / sv], np.float32))
                            q = np.sign(np.float32(loc[kk])) * mag[0] * float(sv)
                            e = (loc[kk] - q) / U1[k + kk, k + kk]
                            loss += e * e
                            loc[kk + 1:] -= e * U1[k + kk, k + kk + 1:k + 16]
                        if best_loss is None or loss < best_loss:
                            best, best_loss = c, loss
                    scodes[r, i // 16] = best
                    sval[r] = np.float32(torch.tensor([best], dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).item()) * gs
            xcol = W1[:, k].astype(np.float32)
            mag, idx = e2m1_q((xcol / sval).astype(np.float32))
            codes[:, i] = idx + 8 * (xcol < 0)
            q = np.sign(xcol) * mag * sval.astype(np.float64)
            err = (W1[:, k] - q) / U1[k, k]
            W1[:, k:] -= np.outer(err, U1[k, k:])
            Err1[:, k] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return codes, scodes, gs


codes_s, scales_s, gs_s = gptq_nvfp4(w, hq, False)
codes_f, scales_f, gs_f = gptq_nvfp4(w, hq, True)

# ---- local_hessian block scales (ModelOpt), range 1/2..3/2 -------------------
gs_w = np.float32(np.abs(w).max() / np.float32(6.0 * 448.0))
vals = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
lh = np.zeros((R, C // 16), np.uint8)
for r in range(R):
    for b in range(C // 16):
        blk = w[r, b * 16:(b + 1) * 16]
        Hb = hq[b * 16:(b + 1) * 16, b * 16:(b + 1) * 16]
        s = max(np.float32(np.abs(blk).max() / np.float32(6.0 * gs_w)), np.float32(2.0 ** -9))
        ref, mc = e4m3([s])
        cands = [int(mc[0])] + [c for c in range(int(mc[0]) - 1, 0, -1) if vals[c] >= 0.5 * ref[0]] \
            + [c for c in range(int(mc[0]) + 1, 127) if vals[c] <= 1.5 * ref[0]]
        best, be = None, None
        for c in cands:
            den = np.float32(vals[c] * gs_w)
            mag, _ = e2m1_q((blk / den).astype(np.float32))
            d = blk.astype(np.float64) - np.sign(blk) * mag * float(den)
            e = d @ Hb @ d
            if be is None or e < be:
                best, be = c, e
        lh[r, b] = best

os.makedirs(out, exist_ok=True)
w.tofile(f"{out}/w.f32"); x.tofile(f"{out}/x.f32"); xq.tofile(f"{out}/xq.f32")
hq.tofile(f"{out}/hq.f64")
codes_s.tofile(f"{out}/codes_search.u8"); scales_s.tofile(f"{out}/scales_search.u8")
codes_f.tofile(f"{out}/codes_46.u8"); scales_f.tofile(f"{out}/scales_46.u8")
lh.tofile(f"{out}/scales_local_hessian.u8")
json.dump({"rows": R, "cols": C, "n": N, "percdamp": percdamp, "act_gs": float(act_gs),
           "gs_search": float(gs_s), "gs_46": float(gs_f), "act_err": act_err,
           "numpy": np.__version__, "torch": torch.__version__},
          open(f"{out}/case.json", "w"), indent=1)
print("wrote", out)
