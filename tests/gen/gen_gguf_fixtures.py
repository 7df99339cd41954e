#!/usr/bin/env python3
"""Reference fixtures for the GGUF reader/writer, the ggml block formats and
the GGUF export, all produced by llama.cpp's own Python code (gguf-py and
convert_hf_to_gguf.py from the llama.cpp vendored in PyPI's llama-cpp-python
0.3.36 sdist; scripts/build-llama-cpp.sh unpacks it).

  python3 tests/gen/gen_gguf_fixtures.py [--llama-cpp DIR] [--nemoq build/nemoq]

Writes tests/fixtures/gguf/:
  gguf_py.gguf      a small file written by gguf-py's GGUFWriter: every value
                    type, arrays, F32/F16/BF16/Q8_0/NVFP4/I32 tensors
  q8_0.bin          u32 n_blocks, f32 input, then gguf-py's Q8_0 bytes
                    (quants.py: "bit-exact same results as reference
                    implementation in ggml-quants.c")
  nvfp4.bin         u32 rows, u32 cols, ModelOpt packed [rows, cols/2],
                    E4M3 scales [rows, cols/16], the converter's repack
                    (conversion/base.py ModelBase._nvfp4_pack), then gguf-py's
                    NVFP4 dequantization of it (f32)
  tiny_llamacpp.json per-tensor and per-key FNV-1a 64 digests of
                    convert_hf_to_gguf.py's output for the bundled model:
                    BF16 -> q8_0, BF16 -> bf16, and nemoq's weights-only
                    expert-NVFP4 checkpoint -> q8_0
"""
import argparse, json, os, struct, subprocess, sys, tempfile
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ap = argparse.ArgumentParser()
ap.add_argument("--llama-cpp", default="/work/llamacpp-src/llama_cpp_python-0.3.36/vendor/llama.cpp")
ap.add_argument("--nemoq", default=os.path.join(ROOT, "build", "nemoq"))
args = ap.parse_args()
LC = args.llama_cpp
sys.path.insert(0, LC)
sys.path.insert(1, os.path.join(LC, "gguf-py"))
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(14)


def fnv(b: bytes) -> str:
    h = 0xcbf29ce484222325
    for c in b:
        h = ((h ^ c) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


# ---- a file from gguf-py's writer (the C test writes the same and compares bytes)
def write_gguf_py(path):
    w = gguf.GGUFWriter(path, "nemotron_h_moe")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 18000000000000000000)
    w.add_int64("t.i64", -9000000000000000000)
    w.add_float64("t.f64", 2.5e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo \"gguf\"\n")
    w.add_string("t.empty", "")
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_str", ["a", "", "Ġb c", "\u00e9"])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_array("t.arr_f32", [1.5, -0.25])
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    w.add_tensor("f32", x)
    w.add_tensor("f16", (x * 3).astype(np.float16))
    w.add_tensor("bf16", gguf.quants.quantize(x.reshape(2, 6), T.BF16), raw_dtype=T.BF16)
    q = rng.standard_normal((2, 64)).astype(np.float32)
    w.add_tensor("q8_0", gguf.quants.quantize(q, T.Q8_0), raw_dtype=T.Q8_0)
    nv = rng.integers(0, 256, size=(3, 72), dtype=np.uint8)
    nv[:, :4] &= 0x7E
    w.add_tensor("nvfp4.weight", nv, raw_dtype=T.NVFP4)
    w.add_tensor("i32", np.array([7, -7, 1 << 30], dtype=np.int32))
    w.add_tensor("blk.0.a.b", np.ones((2, 1, 1, 3), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


write_gguf_py(os.path.join(OUT, "gguf_py.gguf"))

# ---- Q8_0 reference
blocks = []
blocks.append(np.zeros(32, np.float32))                          # all zero: d = 0
blocks.append(np.full(32, -1.0, np.float32))                     # constant
b = np.arange(32, dtype=np.float32) - 15.5; blocks.append(b)     # halves after scaling
b = np.linspace(-127, 127, 32).astype(np.float32) / 254 * 3; blocks.append(b)
b = (np.arange(32, dtype=np.float32) + 0.5) * (127.0 / 32.5); blocks.append(b)  # x*id near k + 0.5
blocks.append(np.full(32, 1e-30, np.float32))                    # d underflows f16
blocks.append((rng.standard_normal(32) * 60000).astype(np.float32))  # d near f16 max
for _ in range(57):
    scale = float(np.exp(rng.uniform(-12, 8)))
    blocks.append((rng.standard_normal(32) * scale).astype(np.float32))
x = np.concatenate(blocks).astype(np.float32)
q = gguf.quants.quantize(x.reshape(-1, 32), T.Q8_0)
with open(os.path.join(OUT, "q8_0.bin"), "wb") as f:
    f.write(struct.pack("<I", len(blocks)))
    f.write(x.tobytes())
    f.write(np.asarray(q).tobytes())

# ---- NVFP4: the converter's repack and gguf-py's dequantization
import torch  # noqa: E402
from conversion.base import ModelBase  # noqa: E402

rows, cols = 5, 192
packed = rng.integers(0, 256, size=(rows, cols // 2), dtype=np.uint8)
scales = rng.integers(0, 0x7F, size=(rows, cols // 16), dtype=np.uint8)   # finite E4M3, positive
scales[0, 0] = 0x00       # zero scale
scales[1, 1] = 0x7E       # 448
scales[2, :3] |= 0x80     # a sign bit, which the repack strips
raw, shape = ModelBase._nvfp4_pack(torch.from_numpy(packed), torch.from_numpy(scales).view(torch.float8_e4m3fn))
raw = np.ascontiguousarray(raw, dtype=np.uint8)
assert list(shape) == [rows, cols]
deq = gguf.quants.dequantize(raw, T.NVFP4).astype(np.float32)
with open(os.path.join(OUT, "nvfp4.bin"), "wb") as f:
    f.write(struct.pack("<II", rows, cols))
    f.write(packed.tobytes()); f.write(scales.tobytes()); f.write(raw.tobytes()); f.write(deq.tobytes())


# ---- digests of llama.cpp's conversions of the bundled model
def digest(path):
    r = gguf.GGUFReader(path)
    meta = {}
    for k, fld in r.fields.items():
        if k.startswith("GGUF.") or k in ("general.name", "general.size_label"):
            continue
        vt = int(fld.types[0])
        at = int(fld.types[1]) if vt == 9 else -1
        start = 5 if vt == 9 else 3
        meta[k] = [vt, at, fnv(b"".join(p.tobytes() for p in fld.parts[start:]))]
    tens = {}
    for t in r.tensors:
        tens[t.name] = [int(t.tensor_type), [int(n) for n in t.shape], fnv(np.asarray(t.data).tobytes())]
    return {"metadata": meta, "tensors": tens}


CONV = """
import sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[1] + '/gguf-py')
import conversion.base as b
# The bundled tokenizer's hash is not in get_vocab_base_pre's list; its split
# regex is Llama 3's, so llama-bpe is what nemoq chooses too.
b.TextModel.get_vocab_base_pre = lambda self, tok: 'llama-bpe'
sys.argv = [sys.argv[1] + '/convert_hf_to_gguf.py'] + sys.argv[2:]
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""
model = os.path.join(ROOT, "models", "tiny-nemotron-h")
result = {"llama_cpp": "llama-cpp-python 0.3.36 vendored llama.cpp, convert_hf_to_gguf.py"}
with tempfile.TemporaryDirectory() as td:
    conv = os.path.join(td, "conv.py")
    open(conv, "w").write(CONV)
    ck = os.path.join(td, "nvfp4-experts")
    subprocess.run([args.nemoq, "quantize", model, ck, "--recipe", "nvfp4-conservative",
                    "--exclude", "*", "--include", "backbone.layers.*.mixer.experts.*=nvfp4",
                    "--weights-only"], check=True, stdout=subprocess.DEVNULL)
    for tag, src, outtype in (("bf16_to_q8_0", model, "q8_0"), ("bf16_to_bf16", model, "bf16"),
                              ("nvfp4_experts_to_q8_0", ck, "q8_0")):
        out = os.path.join(td, tag + ".gguf")
        subprocess.run([sys.executable, conv, LC, src, "--outfile", out, "--outtype", outtype],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result[tag] = digest(out)
with open(os.path.join(OUT, "tiny_llamacpp.json"), "w") as f:
    json.dump(result, f, indent=0, sort_keys=True)
print("wrote", OUT)
