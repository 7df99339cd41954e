"""Reference GPTQ for tests/test_gptq.c, written from the paper and the
reference implementation (IST-DASLab/gptq gptq.py `fasterquant`, AutoGPTQ
`GPTQ.fasterquant` without act-order or static groups), in numpy float64.

Conventions shared with nemoq's INT4 format (src/formats/int4.c): symmetric,
scale = float16(amax / 7) of the group's weights as they stand when the
128-column block holding it starts (AutoGPTQ: find_params(W[:, i:i+g])) (1.0 for an all-zero group), code = clamp(rint(float32(w) /
scale) + 8, 0, 15) with the division in float32, value = scale * (code - 8).

    python3 tests/gen/gen_gptq_reference.py tests/fixtures/gptq
writes case.json, w.f32 [rows, cols], h.f64 [cols, cols], codes.u8
[rows, cols] (0..15) and scales.f16 [cols/group, rows].
"""
import json, os, sys
import numpy as np

out = sys.argv[1]
rows, cols, group, percdamp, blocksize = 24, 192, 64, 0.01, 128
rng = np.random.default_rng(20261122)
w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
# correlated inputs with a few dominant directions, and one dead input
mix = rng.standard_normal((cols, cols)) * 0.2 + np.eye(cols)
x = rng.standard_normal((512, cols)) @ mix
x[:, 7] = 0.0
h = x.T @ x                                    # any positive multiple of 2 X^T X / n

def scale_of(g):
    amax = np.max(np.abs(g.astype(np.float32)))
    s = np.float16(amax / np.float32(7.0)) if amax > 0 else np.float16(1.0)
    return s

W = w.astype(np.float64)
H = h.copy()
dead = np.diag(H) == 0
H[dead, dead] = 1.0
W[:, dead] = 0.0
damp = percdamp * np.mean(np.diag(H))
H[np.arange(cols), np.arange(cols)] += damp
L = np.linalg.cholesky(H)
Hinv = np.linalg.inv(L).T @ np.linalg.inv(L)   # cholesky_inverse
U = np.linalg.cholesky(Hinv).T                 # upper: Hinv = U^T U
codes = np.zeros((rows, cols), np.uint8)
scales = np.zeros((cols // group, rows), np.float16)
cur = np.zeros(rows, np.float16)
for i1 in range(0, cols, blocksize):
    i2 = min(i1 + blocksize, cols)
    W1 = W[:, i1:i2].copy()
    Err1 = np.zeros_like(W1)
    U1 = U[i1:i2, i1:i2]
    for k in range(i2 - i1):
        i = i1 + k
        if i % group == 0:
            for r in range(rows):
                # AutoGPTQ: find_params(W[:, i:i+group]): W as of the block's
                # start (the within-block updates live in W1)
                cur[r] = scale_of(W[r, i:i + group])
            scales[i // group] = cur
        x32 = W1[:, k].astype(np.float32)
        s32 = cur.astype(np.float32)
        c = np.clip(np.rint(x32 / s32) + 8, 0, 15).astype(np.uint8)
        codes[:, i] = c
        q = cur.astype(np.float64) * (c.astype(np.float64) - 8)
        err = (W1[:, k] - q) / U1[k, k]
        W1[:, k:] -= np.outer(err, U1[k, k:])
        Err1[:, k] = err
    W[:, i2:] -= Err1 @ U[i1:i2, i2:]

os.makedirs(out, exist_ok=True)
w.tofile(f"{out}/w.f32"); h.astype(np.float64).tofile(f"{out}/h.f64")
codes.tofile(f"{out}/codes.u8"); scales.tofile(f"{out}/scales.f16")
json.dump({"rows": rows, "cols": cols, "group": group, "percdamp": percdamp,
           "blocksize": blocksize, "dead_column": 7, "numpy": np.__version__}, open(f"{out}/case.json", "w"), indent=1)
print("wrote", out)
