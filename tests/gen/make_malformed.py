#!/usr/bin/env python3
"""Writes the malformed-checkpoint corpus in tests/malformed/ and its
EXPECTED table (path<TAB>substring of the one-line error nemoq must print).

Run from the repository root: python3 tests/gen/make_malformed.py
Uses only the standard library, so the corpus is reproducible anywhere."""
import json, os, shutil, struct

OUT = "tests/malformed"


def image(header, data):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def good():
    return image({"__metadata__": {"format": "pt"},
                  "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                  "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]}},
                 bytes(range(24)))


def write(rel, data):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    cases = []

    def case(rel, data, expect):
        write(rel, data)
        cases.append((rel, expect))

    g = good()
    case("truncated.safetensors", g[:-5], "beyond the data region")
    case("header_larger_than_file.safetensors", struct.pack("<Q", 10 ** 6) + g[8:],
         "is larger than the file")
    case("offset_outside.safetensors",
         image({"a": {"dtype": "U8", "shape": [64], "data_offsets": [0, 64]}}, bytes(16)),
         "beyond the data region")
    case("overlap.safetensors",
         image({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, bytes(12)),
         "overlap")
    case("unknown_dtype.safetensors",
         image({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1)),
         "unknown dtype 'F4'")
    case("shape_overflow.safetensors",
         image({"a": {"dtype": "F32", "shape": [2 ** 33, 2 ** 33, 4], "data_offsets": [0, 4]}},
               bytes(4)), "overflows 64 bits")
    case("size_mismatch.safetensors",
         image({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
         "shape x dtype needs 12")
    name_hdr = b'{"a\xff\xfe":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    case("non_utf8_name.safetensors", image(name_hdr, bytes(1)), "not valid JSON")
    case("header_not_json.safetensors", image(b'{"a": {"dtype": "U8",', bytes(1)),
         "not valid JSON")
    dup_hdr = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
               b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}')
    case("duplicate_name.safetensors", image(dup_hdr, bytes(2)), "duplicate")
    case("trailing_bytes.safetensors", g + b"junk", "data region holds")
    case("hole.safetensors",
         image({"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}, bytes(8)),
         "unindexed bytes")
    case("empty.safetensors", b"", "file is empty")
    case("tiny.safetensors", b"\x02\x00\x00", "too short")
    case("negative_dim.safetensors",
         image({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, bytes(1)),
         "shape entry 0")

    # sharded checkpoints
    index = {"metadata": {"total_size": 24},
             "weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    shard1 = image({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16))
    write("missing_shard/model.safetensors.index.json", json.dumps(index).encode())
    write("missing_shard/model-00001-of-00002.safetensors", shard1)
    cases.append(("missing_shard", "names shard 'model-00002-of-00002.safetensors', which is missing"))

    idx2 = {"weight_map": {"a": "model-00001-of-00001.safetensors",
                           "ghost": "model-00001-of-00001.safetensors"}}
    write("index_names_missing_tensor/model.safetensors.index.json", json.dumps(idx2).encode())
    write("index_names_missing_tensor/model-00001-of-00001.safetensors", shard1)
    cases.append(("index_names_missing_tensor", "tensor 'ghost' is listed in shard"))

    idx3 = {"weight_map": {"a": "../model-00001-of-00001.safetensors"}}
    write("index_escapes_directory/model.safetensors.index.json", json.dumps(idx3).encode())
    cases.append(("index_escapes_directory", "which is not a file in"))

    idx4 = {"weight_map": {"x": "model-00001-of-00001.safetensors"}}
    both = image({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                  "unlisted": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, bytes(2))
    write("shard_tensor_not_in_index/model.safetensors.index.json", json.dumps(idx4).encode())
    write("shard_tensor_not_in_index/model-00001-of-00001.safetensors", both)
    cases.append(("shard_tensor_not_in_index", "tensor 'unlisted' of shard"))

    write("index_not_json/model.safetensors.index.json", b"{weight_map: }")
    cases.append(("index_not_json", "not valid JSON"))

    idx5 = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                           "b": "model-00002-of-00002.safetensors"}}
    s2 = image({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, bytes(1))
    write("tensor_in_two_shards/model.safetensors.index.json", json.dumps(idx5).encode())
    write("tensor_in_two_shards/model-00001-of-00002.safetensors", s2)
    write("tensor_in_two_shards/model-00002-of-00002.safetensors",
          image({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                 "b": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, bytes(2)))
    cases.append(("tensor_in_two_shards", "appears in both"))

    os.makedirs(os.path.join(OUT, "two_files_no_index"), exist_ok=True)
    write("two_files_no_index/a.safetensors", g)
    write("two_files_no_index/b.safetensors", g)
    cases.append(("two_files_no_index", "no model.safetensors.index.json to say which"))

    write("bad_config/model.safetensors", g)
    write("bad_config/config.json",
          json.dumps({"model_type": "nemotron_h", "hidden_size": 8, "vocab_size": 4,
                      "hybrid_override_pattern": "M?E"}).encode())
    cases.append(("bad_config", "'?' at layer 1"))

    with open(os.path.join(OUT, "EXPECTED"), "w") as f:
        f.write("# path\tsubstring of the one-line error (generated by tests/gen/make_malformed.py)\n")
        for rel, expect in cases:
            f.write(f"{rel}\t{expect}\n")


if __name__ == "__main__":
    main()
