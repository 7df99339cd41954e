#!/usr/bin/env python3
"""Compare two GGUF files key by key and tensor by tensor (byte for byte), with
llama.cpp's own gguf-py reader.  Tensor order may differ (llama.cpp's converter
writes NVFP4 tensors first).  Exit 0 when identical apart from the keys named
by --ignore-key.  Used by scripts/interop.sh."""
import argparse, sys
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("a"); ap.add_argument("b")
ap.add_argument("--gguf-py", help="path of llama.cpp's gguf-py")
ap.add_argument("--ignore-key", action="append", default=[])
ap.add_argument("--max-ulp-f32", type=int, default=0,
                help="allow F32 tensors to differ by this many units in the last place")
args = ap.parse_args()
if args.gguf_py:
    sys.path.insert(0, args.gguf_py)
from gguf import GGUFReader, GGUFValueType

def meta(r):
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if f.types and f.types[0] == GGUFValueType.ARRAY:
            out[k] = (tuple(int(t) for t in f.types), [f.contents(i) for i in range(len(f.data))])
        else:
            out[k] = (tuple(int(t) for t in f.types), f.contents())
    return out

ra, rb = GGUFReader(args.a), GGUFReader(args.b)
ma, mb = meta(ra), meta(rb)
bad = 0
for k in sorted(set(ma) | set(mb)):
    if k in args.ignore_key:
        continue
    if k not in ma or k not in mb:
        print(f"key {k}: only in {'B' if k not in ma else 'A'}"); bad += 1
    elif ma[k] != mb[k]:
        va, vb = ma[k], mb[k]
        print(f"key {k}: differs: {str(va)[:120]} vs {str(vb)[:120]}"); bad += 1
ta = {t.name: t for t in ra.tensors}
tb = {t.name: t for t in rb.tensors}
same = 0
for n in sorted(set(ta) | set(tb)):
    if n not in ta or n not in tb:
        print(f"tensor {n}: only in {'B' if n not in ta else 'A'}"); bad += 1; continue
    x, y = ta[n], tb[n]
    if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
        print(f"tensor {n}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}"); bad += 1; continue
    da, db = np.asarray(x.data).tobytes(), np.asarray(y.data).tobytes()
    if da == db:
        same += 1; continue
    if x.tensor_type.name == "F32" and args.max_ulp_f32 > 0:
        ia = np.frombuffer(da, dtype=np.int32).astype(np.int64)
        ib = np.frombuffer(db, dtype=np.int32).astype(np.int64)
        ulp = int(np.max(np.abs(ia - ib)))
        if ulp <= args.max_ulp_f32:
            print(f"tensor {n}: F32 within {ulp} ulp"); same += 1; continue
    diff = sum(1 for i in range(len(da)) if da[i] != db[i])
    print(f"tensor {n}: {diff} of {len(da)} bytes differ"); bad += 1
print(f"{same} of {len(set(ta) | set(tb))} tensors byte-identical, {bad} differences")
sys.exit(1 if bad else 0)
