#!/usr/bin/env python3
"""Edits a single-file safetensors checkpoint in place, for the CLI tests that
build hostile inputs and tampered outputs (tests/cli_lies.sh,
tests/cli_verify.sh).  Standard library only.

    st_edit.py FILE set TENSOR ELEMENT VALUE      element = VALUE in the tensor's
                                                  dtype (BF16/F16/F32; nan, inf ok)
    st_edit.py FILE bytes TENSOR BYTE_OFFSET HEX  raw bytes at an offset inside
                                                  the tensor's data
    st_edit.py FILE xor-word TENSOR ELEMENT MASK  an I32 element XOR MASK
    st_edit.py FILE drop-layers FIRST             removes every tensor of layers
                                                  >= FIRST
    st_edit.py FILE rename OLD NEW                renames a tensor
"""
import json
import math
import struct
import sys


def load(path):
    b = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", b[:8])[0]
    return b, n, json.loads(b[8:8 + n])


def rewrite(path, header, data_of):
    """Writes the tensors of `header` (in data order) with bytes from data_of(name)."""
    items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                   key=lambda kv: kv[1]["data_offsets"][0])
    out, chunks, pos = {"__metadata__": header.get("__metadata__", {"format": "pt"})}, [], 0
    for k, v in items:
        d = data_of(k, v)
        chunks.append(d)
        out[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [pos, pos + len(d)]}
        pos += len(d)
    hb = json.dumps(out).encode()
    hb += b" " * (-len(hb) % 8)
    open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + b"".join(chunks))


def encode(dtype, value):
    v = float(value)
    if dtype == "F32":
        return struct.pack("<f", v)
    if dtype == "F16":
        return struct.pack("<e", v)
    if dtype == "BF16":
        if math.isnan(v):
            return b"\xc0\x7f"
        return struct.pack("<f", v)[2:]  # truncation: exact for the test values
    raise SystemExit(f"set: dtype {dtype} not supported")


def main():
    path, op = sys.argv[1], sys.argv[2]
    b, n, h = load(path)
    base = 8 + n
    size = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U8": 1, "F8_E4M3": 1}
    if op == "set":
        t, e, val = sys.argv[3], int(sys.argv[4]), sys.argv[5]
        d = h[t]
        off = base + d["data_offsets"][0] + e * size[d["dtype"]]
        enc = encode(d["dtype"], val)
        b[off:off + len(enc)] = enc
        open(path, "wb").write(b)
    elif op == "bytes":
        t, o, hexs = sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5])
        off = base + h[t]["data_offsets"][0] + o
        b[off:off + len(hexs)] = hexs
        open(path, "wb").write(b)
    elif op == "xor-word":
        t, e, mask = sys.argv[3], int(sys.argv[4]), int(sys.argv[5], 0)
        off = base + h[t]["data_offsets"][0] + 4 * e
        w = struct.unpack("<I", b[off:off + 4])[0] ^ mask
        b[off:off + 4] = struct.pack("<I", w)
        open(path, "wb").write(b)
    elif op == "drop-layers":
        first = int(sys.argv[3])

        def layer(k):
            p = k.split(".")
            return int(p[2]) if len(p) > 2 and p[1] == "layers" and p[2].isdigit() else -1
        keep = {k: v for k, v in h.items() if k == "__metadata__" or layer(k) < first}
        rewrite(path, keep, lambda k, v: bytes(b[base + v["data_offsets"][0]:base + v["data_offsets"][1]]))
    elif op == "rename":
        old, new = sys.argv[3], sys.argv[4]
        h[new] = h.pop(old)
        rewrite(path, h, lambda k, v: bytes(b[base + v["data_offsets"][0]:base + v["data_offsets"][1]]))
    else:
        raise SystemExit(f"unknown operation {op}")


if __name__ == "__main__":
    main()
