"""What `nemoq inspect FILE.gguf --json` must say about
tests/fixtures/gguf/gguf_py.gguf, read by gguf-py's GGUFReader (llama.cpp's
reference reader, gguf 2.4.6): every metadata key in file order with its
GGUF type, element type, count and values, every tensor's name, ggml type,
shape (ggml order), elements, bytes and offset in the data section, and the
header fields.  Writes tests/fixtures/gguf/gguf_py.inspect.json; the CLI
test compares nemoq's document with it key by key (tests/cli_gguf.sh)."""
import json, os
from gguf import GGUFReader, GGUFValueType

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "..", "fixtures", "gguf")
NAMES = {GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16",
         GGUFValueType.INT16: "i16", GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32",
         GGUFValueType.FLOAT32: "f32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "string",
         GGUFValueType.ARRAY: "array", GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64",
         GGUFValueType.FLOAT64: "f64"}


def value(field, idx, vtype):
    raw = field.parts[idx]
    if vtype == GGUFValueType.STRING:
        return bytes(raw).decode("utf-8")
    v = raw.tolist()[0]  # np.float32 -> the same value as a Python float
    return bool(v) if vtype == GGUFValueType.BOOL else v


r = GGUFReader(os.path.join(FX, "gguf_py.gguf"))
meta = {}
for f in r.fields.values():
    if f.name.startswith("GGUF."):  # gguf-py's pseudo-fields for the header
        continue
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        et = f.types[-1]
        meta[f.name] = {"type": "array", "element_type": NAMES[et], "count": len(f.data),
                        "value": [value(f, i, et) for i in f.data]}
    else:
        meta[f.name] = {"type": NAMES[t], "value": value(f, f.data[0], t)}
data_offset = min(int(t.data_offset) for t in r.tensors)
tensors = [{"name": t.name, "type": t.tensor_type.name.lower(), "shape": [int(x) for x in t.shape],
            "elements": int(t.n_elements), "bytes": int(t.n_bytes),
            "offset": int(t.data_offset) - data_offset} for t in r.tensors]
doc = {"version": int(r.fields["GGUF.version"].parts[-1][0]), "alignment": r.alignment,
       "data_offset": data_offset, "metadata_keys": len(meta), "tensors": len(tensors),
       "metadata": meta, "tensor_list": tensors}
with open(os.path.join(FX, "gguf_py.inspect.json"), "w") as fp:
    json.dump(doc, fp, indent=1, ensure_ascii=False)
    fp.write("\n")
