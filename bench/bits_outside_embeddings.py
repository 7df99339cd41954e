"""Bits per weight outside the embeddings and the output head, for a nemoq
safetensors checkpoint (directory) or a GGUF file: stored bytes of every other
tensor x 8 / the parameters of the float model they stand for.  Parameters are
counted from the float model (BF16 directory) so both sides divide by the same
number.
    python3 bench/bits_outside_embeddings.py FLOAT_MODEL_DIR PATH [PATH...]
"""
import glob, json, struct, sys

def st_tensors(d):
    out = {}
    for f in sorted(glob.glob(d + "/*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
        for k, v in h.items():
            if k != "__metadata__":
                out[k] = v["data_offsets"][1] - v["data_offsets"][0]
    return out

def numel(d):
    tot = 0
    for f in sorted(glob.glob(d + "/*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
        for k, v in h.items():
            if k == "__metadata__" or is_embedding(k):
                continue
            p = 1
            for s in v["shape"]:
                p *= s
            tot += p
    return tot

def is_embedding(name):
    return any(s in name for s in ("embed", "lm_head", "token_embd", "output.weight")) and \
        "output_norm" not in name

params = numel(sys.argv[1])
for p in sys.argv[2:]:
    if p.endswith(".gguf"):
        import gguf
        r = gguf.GGUFReader(p)
        nbytes = sum(int(t.n_bytes) for t in r.tensors if not is_embedding(t.name))
    else:
        nbytes = sum(b for k, b in st_tensors(p).items() if not is_embedding(k))
    print(f"{p}: {nbytes * 8 / params:.3f} bits/weight outside embeddings ({params} params)")
