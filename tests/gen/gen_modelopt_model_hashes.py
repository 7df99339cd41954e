#!/usr/bin/env python3
"""Per-module digests of a whole-model ModelOpt export (what
bench/modelopt_autoq.sh's ptq-nvfp4 / ptq-fp8 runs write), for
tests/cli_modelopt_rounding.sh: the checkpoints themselves are 11-16 MB,
their digests a few kB.

usage: python3 tests/gen/gen_modelopt_model_hashes.py EXPORT_DIR OUT.json

For every module with a weight_scale: the SHA-256 of its weight,
weight_scale and (NVFP4) weight_scale_2 bytes, concatenated in that order
as stored.  Input and KV-cache scales are left out: they come from
activations, which ModelOpt computes with transformers' BF16 forward and
nemoq with its own f32 forward.  Standard library only.
"""
import hashlib
import json
import struct
import sys


def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}


def digests(export_dir):
    t = tensors(export_dir + "/model.safetensors")
    out = {}
    for name in sorted(k[: -len(".weight_scale")] for k in t if k.endswith(".weight_scale")):
        h = hashlib.sha256()
        for part in ("weight", "weight_scale", "weight_scale_2"):
            if f"{name}.{part}" in t:
                h.update(t[f"{name}.{part}"])
        out[name] = h.hexdigest()
    return out


if __name__ == "__main__":
    src = json.load(open(sys.argv[1] + "/modelopt_run.json")).get("versions", {})
    json.dump({"producer": src, "modules": digests(sys.argv[1])}, open(sys.argv[2], "w"), indent=0)
