"""Reference GPTQ with act-order and static groups for tests/test_gptq_actorder.c,
written from AutoGPTQ's `GPTQ.fasterquant(actorder=True, static_groups=True)`
in numpy float64: dead inputs (H_ii = 0) get H_ii = 1 and a zero weight
column; every group's quantizer is fixed from W (after that) before
anything else; perm = the columns by decreasing H_ii (nemoq breaks ties by
index: a stable sort); W and H permuted; damping, U = upper Cholesky factor
of H^-1; blocks of 128 columns in permuted order, column i quantized with
the quantizer of group perm[i] // group; codes un-permuted.

Conventions shared with nemoq's INT4 format (src/formats/int4.c): symmetric,
scale = float16(amax / 7) (1.0 for an all-zero group), code =
clamp(rint(float32(w) / scale) + 8, 0, 15), value = scale * (code - 8).

    python3 tests/gen/gen_gptq_actorder_reference.py tests/fixtures/gptq_actorder
writes case.json, w.f32 [rows, cols], h.f64 [cols, cols], codes.u8
[rows, cols] (0..15, plain column order) and scales.f16 [cols/group, rows].
"""
import json, os, sys
import numpy as np

out = sys.argv[1]
rows, cols, group, percdamp, blocksize = 24, 192, 64, 0.01, 128
rng = np.random.default_rng(20261202)
w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
# correlated inputs of very different sizes (so the order matters), one dead
mix = rng.standard_normal((cols, cols)) * 0.2 + np.eye(cols)
x = (rng.standard_normal((512, cols)) * np.exp(rng.standard_normal(cols))) @ mix
x[:, 7] = 0.0
h = x.T @ x

def scale_of(g):
    amax = np.max(np.abs(g.astype(np.float32)))
    return np.float16(amax / np.float32(7.0)) if amax > 0 else np.float16(1.0)

W = w.astype(np.float64)
H = h.copy()
dead = np.diag(H) == 0
H[dead, dead] = 1.0
W[:, dead] = 0.0
scales = np.zeros((cols // group, rows), np.float16)
for g in range(cols // group):
    for r in range(rows):
        scales[g, r] = scale_of(W[r, g * group:(g + 1) * group])
perm = np.argsort(-np.diag(H), kind="stable")
W = W[:, perm]
H = H[perm][:, perm]
damp = percdamp * np.mean(np.diag(H))
H[np.arange(cols), np.arange(cols)] += damp
L = np.linalg.cholesky(H)
Hinv = np.linalg.inv(L).T @ np.linalg.inv(L)
U = np.linalg.cholesky(Hinv).T
codes = np.zeros((rows, cols), np.uint8)
for i1 in range(0, cols, blocksize):
    i2 = min(i1 + blocksize, cols)
    W1 = W[:, i1:i2].copy()
    Err1 = np.zeros_like(W1)
    U1 = U[i1:i2, i1:i2]
    for k in range(i2 - i1):
        i = i1 + k
        cur = scales[perm[i] // group]
        x32 = W1[:, k].astype(np.float32)
        s32 = cur.astype(np.float32)
        c = np.clip(np.rint(x32 / s32) + 8, 0, 15).astype(np.uint8)
        codes[:, perm[i]] = c
        q = cur.astype(np.float64) * (c.astype(np.float64) - 8)
        err = (W1[:, k] - q) / U1[k, k]
        W1[:, k:] -= np.outer(err, U1[k, k:])
        Err1[:, k] = err
    W[:, i2:] -= Err1 @ U[i1:i2, i2:]

os.makedirs(out, exist_ok=True)
w.tofile(f"{out}/w.f32"); h.astype(np.float64).tofile(f"{out}/h.f64")
codes.tofile(f"{out}/codes.u8"); scales.tofile(f"{out}/scales.f16")
json.dump({"rows": rows, "cols": cols, "group": group, "percdamp": percdamp,
           "blocksize": blocksize, "dead_column": 7, "numpy": np.__version__},
          open(f"{out}/case.json", "w"), indent=1)
print("wrote", out)
