"""Bits per weight outside the token embeddings and the output head: stored
bytes of every other tensor x 8 / the elements those tensors stand for.  For
a nemoq safetensors directory the elements are counted in the float model
(FLOAT_MODEL_DIR), whose tensors the quantized ones encode; a GGUF file
counts its own tensors' elements (llama.cpp's converter reshapes and drops
a few tiny ones).
    python3 bench/bits_outside_embeddings.py FLOAT_MODEL_DIR PATH [PATH...]
"""
import glob, json, struct, sys

def header(d):
    for f in sorted(glob.glob(d + "/*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            for k, v in json.loads(fh.read(n)).items():
                if k != "__metadata__":
                    yield k, v

def is_embedding(name):
    return any(s in name for s in ("embed_tokens", "embeddings", "lm_head", "token_embd")) or \
        name == "output.weight"

params = 0
for k, v in header(sys.argv[1]):
    if not is_embedding(k):
        p = 1
        for s in v["shape"]:
            p *= s
        params += p
for path in sys.argv[2:]:
    if path.endswith(".gguf"):
        import gguf
        r = gguf.GGUFReader(path)
        ts = [t for t in r.tensors if not is_embedding(t.name)]
        nbytes, n = sum(int(t.n_bytes) for t in ts), sum(int(t.n_elements) for t in ts)
    else:
        nbytes = sum(v["data_offsets"][1] - v["data_offsets"][0]
                     for k, v in header(path) if not is_embedding(k))
        n = params
    print(f"{path} {nbytes * 8 / n:.3f}")
